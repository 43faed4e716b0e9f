//! vLLM's Score API (`POST /v1/score`, `/score`) end to end: the real `mlx-serve` with real
//! workers, a reranker scoring pairs (cross-encoder, against CrossEncoder's reference
//! scores) and an embedding model scoring the cosine of two embeddings (against the cosine
//! of sentence-transformers' reference vectors), in 1:1, 1:N and N:N pairing; bad requests
//! get a 400 in OpenAI's error shape.

use mlx_serve_tests::fixtures::cosine;
use mlx_serve_tests::reference_checks::reference_json;
use mlx_serve_tests::server::{Server, ServerOptions};
use serde_json::{json, Value};

const RERANKER: &str = "tiny-bert-rerank";
const EMBEDDER: &str = "tiny-xlmr-embed";

fn case<'a>(reference: &'a Value, name: &str) -> &'a Value {
    reference["cases"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// POSTs `body` to `path`, checks vLLM's response shape, and returns the scores in order.
fn scores(server: &Server, path: &str, body: &Value) -> Vec<f64> {
    let (status, resp) = server.post(path, body);
    assert_eq!(status, 200, "{path} {body}: {resp}");
    assert_eq!(resp["object"], "list", "{resp}");
    assert_eq!(resp["model"], body["model"], "{resp}");
    assert!(resp["id"].as_str().unwrap().starts_with("score-"), "{resp}");
    assert!(resp["created"].as_u64().unwrap() > 1_600_000_000, "{resp}");
    let tokens = resp["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(tokens > 0 && resp["usage"]["total_tokens"] == tokens, "{resp}");
    let data = resp["data"].as_array().unwrap();
    for (i, d) in data.iter().enumerate() {
        assert_eq!((d["index"].as_u64(), d["object"].as_str()), (Some(i as u64), Some("score")), "{resp}");
    }
    data.iter().map(|d| d["score"].as_f64().unwrap()).collect()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "{what} pair {i}: {g} vs reference {w}");
    }
}

#[test]
fn a_reranker_scores_pairs_as_the_cross_encoder_reference() {
    let server = Server::start(ServerOptions { models: vec![RERANKER], ..Default::default() });
    let reference = reference_json(RERANKER);
    let one = case(&reference, "single_pair");
    let many = case(&reference, "batch_padded");
    let want = |c: &Value| floats(&c["scores"]).into_iter().map(f64::from).collect::<Vec<_>>();

    // 1:1, strings on both sides, on both paths.
    for path in ["/v1/score", "/score"] {
        let body = json!({"model": RERANKER, "text_1": one["query"], "text_2": one["documents"][0]});
        assert_close(&scores(&server, path, &body), &want(one), 1e-5, &format!("1:1 {path}"));
    }
    // 1:N: the query with each document, in the documents' order (not sorted by score).
    let body = json!({"model": RERANKER, "text_1": many["query"], "text_2": many["documents"]});
    assert_close(&scores(&server, "/v1/score", &body), &want(many), 1e-5, "1:N");
    // A one-item list for text_1 is 1:N too.
    let body = json!({"model": RERANKER, "text_1": [many["query"]], "text_2": many["documents"]});
    assert_close(&scores(&server, "/v1/score", &body), &want(many), 1e-5, "[1]:N");
    // N:N: item by item, each pair its own query.
    let body = json!({
        "model": RERANKER,
        "text_1": [one["query"], many["query"], many["query"]],
        "text_2": [one["documents"][0], many["documents"][2], many["documents"][0]],
    });
    let pairs_want = [want(one)[0], want(many)[2], want(many)[0]];
    assert_close(&scores(&server, "/v1/score", &body), &pairs_want, 1e-5, "N:N");

    // The tokens read are the ones /v1/rerank reads for the same pairs.
    let (_, scored) =
        server.post("/v1/score", &json!({"model": RERANKER, "text_1": many["query"], "text_2": many["documents"]}));
    let (_, ranked) =
        server.post("/v1/rerank", &json!({"model": RERANKER, "query": many["query"], "documents": many["documents"]}));
    assert_eq!(scored["usage"]["prompt_tokens"], ranked["usage"]["prompt_tokens"], "{scored} {ranked}");
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn an_embedding_model_scores_the_cosine_of_the_two_embeddings() {
    let server = Server::start(ServerOptions { models: vec![EMBEDDER], ..Default::default() });
    let reference = reference_json(EMBEDDER);
    let c = case(&reference, "batch_padded");
    let texts = c["texts"].as_array().unwrap();
    let e = |i: usize| floats(&c["embeddings"][i]);
    let cos = |i: usize, j: usize| cosine(&e(i), &e(j));

    let body = json!({"model": EMBEDDER, "text_1": texts[0], "text_2": texts[1]});
    assert_close(&scores(&server, "/v1/score", &body), &[cos(0, 1)], 1e-4, "1:1");
    let body = json!({"model": EMBEDDER, "text_1": texts[0], "text_2": texts[1..]});
    assert_close(&scores(&server, "/v1/score", &body), &[cos(0, 1), cos(0, 2), cos(0, 3)], 1e-4, "1:N");
    let body = json!({"model": EMBEDDER, "text_1": [texts[0], texts[1]], "text_2": [texts[2], texts[3]]});
    assert_close(&scores(&server, "/score", &body), &[cos(0, 2), cos(1, 3)], 1e-4, "N:N");
    // The same text on both sides: cosine 1.
    let body = json!({"model": EMBEDDER, "text_1": texts[2], "text_2": texts[2]});
    assert_close(&scores(&server, "/v1/score", &body), &[1.0], 1e-5, "self");
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn bad_score_requests_are_400s_in_openais_shape() {
    let server = Server::start(ServerOptions { models: vec![RERANKER, EMBEDDER], ..Default::default() });
    let refused = |body: Value, param: &str, says: &str| {
        let (status, resp) = server.post("/v1/score", &body);
        assert_eq!(status, 400, "{body}: {resp}");
        let err = &resp["error"];
        assert_eq!(err["type"], "invalid_request_error", "{resp}");
        if !param.is_empty() {
            assert_eq!(err["param"], param, "{resp}");
        }
        let msg = err["message"].as_str().unwrap();
        assert!(msg.contains(says), "{body}: {msg}");
    };
    for model in [RERANKER, EMBEDDER] {
        // Lengths that are neither 1:N nor N:N.
        refused(json!({"model": model, "text_1": ["a", "b"], "text_2": ["c", "d", "e"]}), "text_2", "has 2 texts");
        refused(json!({"model": model, "text_1": ["a", "b"], "text_2": "c"}), "text_2", "item by item");
        refused(json!({"model": model, "text_2": "c"}), "text_1", "`text_1` is required");
        refused(json!({"model": model, "text_1": "a"}), "text_2", "`text_2` is required");
        refused(json!({"model": model, "text_1": "a", "text_2": ["b", ""]}), "text_2", "text 1 is empty");
        refused(json!({"model": model, "text_1": "", "text_2": "b"}), "text_1", "text 0 is empty");
        refused(json!({"model": model, "text_1": "a", "text_2": []}), "", "non-empty list of strings");
        refused(json!({"model": model, "text_1": "a", "text_2": [1]}), "", "list of strings");
        refused(json!({"model": model, "text_1": "a", "text_2": "b", "text_3": "c"}), "", "unknown field `text_3`");
    }
    refused(json!({"text_1": "a", "text_2": "b"}), "model", "`model` is required");
    // A reranker's pair: text the tokenizer drops entirely, and an over-long pair with
    // `truncate: false`, name the side and the pair.
    refused(json!({"model": RERANKER, "text_1": ["a", "\u{200b}"], "text_2": ["b", "c"]}), "text_1", "text_1` text 1");
    refused(
        json!({"model": RERANKER, "text_1": ["a", "b"], "text_2": ["c", "\u{200b}"]}),
        "text_2",
        "input 1 is empty",
    );
    let long = "the history of computing is a long story ".repeat(40);
    let body = json!({"model": RERANKER, "text_1": ["a", "b"], "text_2": ["c", long], "truncate": false});
    refused(body.clone(), "text_2", "input 1 is longer than the model's limit");
    let (status, resp) = server.post("/v1/score", &body);
    assert_eq!((status, resp["error"]["code"].as_str()), (400, Some("context_length_exceeded")), "{resp}");
    // The same for an embedding model: the side and the text's place in it (here an
    // over-long text; XLM-R's tokenizer keeps zero-width spaces as a token).
    let embed_body =
        json!({"model": EMBEDDER, "text_1": [long.as_str(), "a"], "text_2": ["b", "c"], "truncate": false});
    refused(embed_body, "text_1", "`text_1` text 0 is longer than the model's limit");
    // Truncated by default: the same pair scores.
    let mut body = body;
    body.as_object_mut().unwrap().remove("truncate");
    assert_eq!(scores(&server, "/v1/score", &body).len(), 2);
    let (status, resp) = server.post("/v1/score", &json!({"model": "no-such-model", "text_1": "a", "text_2": "b"}));
    assert_eq!(status, 404, "{resp}");
    assert!(resp["error"]["message"].as_str().unwrap().contains("no-such-model"), "{resp}");
    assert_eq!(server.stop(), Some(0));
}

/// FlagEmbedding's `colbert_score` of two texts' reference ColBERT rows: each query row's
/// best dot product with a document row, averaged over the query rows.
fn reference_max_sim(query: &Value, document: &Value) -> f64 {
    let rows = |v: &Value| v.as_array().unwrap().iter().map(floats).collect::<Vec<_>>();
    let (q, d) = (rows(query), rows(document));
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum::<f64>();
    q.iter().map(|qr| d.iter().map(|dr| dot(qr, dr)).fold(f64::MIN, f64::max)).sum::<f64>() / q.len() as f64
}

#[test]
fn bge_m3_scores_by_dense_cosine_or_by_late_interaction() {
    let server = Server::start(ServerOptions { models: vec![RERANKER, EMBEDDER], ..Default::default() });
    let src = mlx_serve_tests::fixtures::model_dir("tiny-bge-m3");
    let out = server.cli(&["pull", src.to_str().unwrap(), "--name", "m3"]);
    assert!(out.ok(), "{}", out.text());
    let reference = reference_json("tiny-bge-m3");
    let c = case(&reference, "batch_padded");
    let texts = c["texts"].as_array().unwrap();
    let cos = |i: usize, j: usize| cosine(&floats(&c["embeddings"][i]), &floats(&c["embeddings"][j]));
    let late = |i: usize, j: usize| reference_max_sim(&c["colbert"][i], &c["colbert"][j]);

    let body = json!({"model": "m3", "text_1": texts[0], "text_2": texts[1..]});
    assert_close(&scores(&server, "/v1/score", &body), &[cos(0, 1), cos(0, 2)], 1e-4, "dense 1:N");
    let body = json!({"model": "m3", "text_1": texts[0], "text_2": texts[1..], "late_interaction": true});
    let got = scores(&server, "/v1/score", &body);
    assert_close(&got, &[late(0, 1), late(0, 2)], 1e-4, "late interaction 1:N");
    // Not the dense cosine under another name.
    assert!((got[0] - cos(0, 1)).abs() > 1e-3, "{got:?}");
    // MaxSim is not symmetric: N:N pairs keep which side is the query.
    let body = json!({"model": "m3", "text_1": [texts[1], texts[2]], "text_2": [texts[0], texts[0]], "late_interaction": true});
    assert_close(&scores(&server, "/v1/score", &body), &[late(1, 0), late(2, 0)], 1e-4, "late interaction N:N");

    // Without a ColBERT head, or with a reranker: a 400 that says why.
    let body = json!({"model": EMBEDDER, "text_1": "a", "text_2": "b", "late_interaction": true});
    let (status, resp) = server.post("/v1/score", &body);
    assert_eq!(status, 400, "{resp}");
    assert!(resp["error"]["message"].as_str().unwrap().contains("colbert_linear"), "{resp}");
    let body = json!({"model": RERANKER, "text_1": "a", "text_2": "b", "late_interaction": true});
    let (status, resp) = server.post("/v1/score", &body);
    assert_eq!((status, resp["error"]["param"].as_str()), (400, Some("late_interaction")), "{resp}");
    assert_eq!(server.stop(), Some(0));
}
