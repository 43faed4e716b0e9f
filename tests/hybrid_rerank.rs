//! Ranking with an embedding model through `/v1/rerank` (and `/v1/score`'s `weights`):
//! bge-m3's dense, sparse and ColBERT scores combined with caller weights, checked against
//! BGEM3FlagModel.compute_score's arithmetic on the same weights (the `rerank_cases` of
//! `tests/fixtures/make_bge_m3.py`'s reference), over HTTP with a real worker and with the
//! unmodified `cohere` client; a plain embedding model ranks by the cosine of its dense
//! vectors; weights the model cannot honour are a 400 naming them. A PyLate ColBERT model
//! pulls and ranks by its own MaxSim (`tests/colbert_models.rs` checks it against PyLate).

use mlx_serve_tests::fixtures::{cosine, model_dir, repo_root};
use mlx_serve_tests::reference_checks::reference_json;
use mlx_serve_tests::server::{run_client, Server, ServerOptions};
use serde_json::{json, Value};

const EMBEDDER: &str = "tiny-xlmr-embed";
const RERANKER: &str = "tiny-bert-rerank";
const TOL: f64 = 1e-4;

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// A server with tiny-bge-m3 pulled as `m3` (its heads converted), a plain embedding
/// model and a reranker.
fn server_with_m3() -> Server {
    let server = Server::start(ServerOptions { models: vec![EMBEDDER, RERANKER], ..Default::default() });
    let src = model_dir("tiny-bge-m3");
    let out = server.cli(&["pull", src.to_str().unwrap(), "--name", "m3"]);
    assert!(out.ok(), "{}", out.text());
    server
}

/// The request's `weights` object from the reference's `[dense, sparse, colbert]` (or none).
fn weights_object(w: &Value) -> Option<Value> {
    let w = w.as_array()?;
    Some(json!({"dense": w[0], "sparse": w[1], "colbert": w[2]}))
}

/// Document indices by descending score, ties by index (as the server sorts).
fn order(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order
}

fn assert_close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() <= TOL, "{what}: {got} vs reference {want}");
}

/// `mlx_serve_tokens_total` of `model`: the tokens sent to its worker so far.
fn tokens_sent(server: &Server, model: &str) -> f64 {
    let (status, text) = server.get_text("/metrics");
    assert_eq!(status, 200);
    let series = format!("mlx_serve_tokens_total{{model=\"{model}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&series)).map_or(0.0, |v| v.trim().parse().unwrap())
}

#[test]
fn bge_m3_reranks_by_compute_scores_weighted_combination() {
    let server = server_with_m3();
    let reference = reference_json("tiny-bge-m3");
    for case in reference["rerank_cases"].as_array().unwrap() {
        let what = format!("weights {}", case["weights"]);
        let want = floats(&case["scores"]["colbert+sparse+dense"]);
        let mut req =
            json!({"model": "m3", "query": case["query"], "documents": case["documents"], "return_scores": true});
        if let Some(w) = weights_object(&case["weights"]) {
            req["weights"] = w;
        }
        let (status, body) = server.post("/v1/rerank", &req);
        assert_eq!(status, 200, "{what}: {body}");
        let results = body["results"].as_array().unwrap();
        let got_order: Vec<usize> = results.iter().map(|r| r["index"].as_u64().unwrap() as usize).collect();
        assert_eq!(got_order, order(&want), "{what}: {body}");
        for r in results {
            let i = r["index"].as_u64().unwrap() as usize;
            assert_close(r["relevance_score"].as_f64().unwrap(), want[i], &format!("{what} document {i}"));
            for part in ["dense", "sparse", "colbert"] {
                let want_part = case["scores"][part][i].as_f64().unwrap();
                assert_close(r["scores"][part].as_f64().unwrap(), want_part, &format!("{what} document {i} {part}"));
            }
            assert_eq!(r["document"]["text"], case["documents"][i], "{what}");
        }
        assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 0, "{body}");

        // vLLM's /v1/score with the same weights: the same numbers, in the documents' order.
        let mut req = json!({"model": "m3", "text_1": case["query"], "text_2": case["documents"]});
        req["weights"] = weights_object(&case["weights"]).unwrap_or(json!({"dense": 1, "sparse": 1, "colbert": 1}));
        let (status, body) = server.post("/v1/score", &req);
        assert_eq!(status, 200, "{what}: {body}");
        for (i, d) in body["data"].as_array().unwrap().iter().enumerate() {
            assert_close(d["score"].as_f64().unwrap(), want[i], &format!("/v1/score {what} pair {i}"));
        }
    }

    // One forward pass per text for all three scores: the tokens sent to the worker are the
    // request's tokens once (the query and each document), not once per output.
    let before = tokens_sent(&server, "m3");
    let case = &reference["rerank_cases"][1];
    let req = json!({"model": "m3", "query": case["query"], "documents": case["documents"], "return_scores": true});
    let (status, body) = server.post("/v1/rerank", &req);
    assert_eq!(status, 200, "{body}");
    let usage = body["usage"]["total_tokens"].as_f64().unwrap();
    assert_eq!(tokens_sent(&server, "m3") - before, usage, "{body}");

    // TEI's shape: a bare array; `return_text` adds the text; no `scores` unless asked.
    let case = &reference["rerank_cases"][0];
    let want = floats(&case["scores"]["colbert+sparse+dense"]);
    let req = json!({"model": "m3", "query": case["query"], "texts": case["documents"], "return_text": true});
    let (status, body) = server.post("/rerank", &req);
    assert_eq!(status, 200, "{body}");
    for r in body.as_array().unwrap() {
        let i = r["index"].as_u64().unwrap() as usize;
        assert_close(r["score"].as_f64().unwrap(), want[i], &format!("TEI shape document {i}"));
        assert_eq!(r["text"], case["documents"][i]);
        assert!(r.get("scores").is_none(), "{r}");
    }

    // The unmodified cohere client, the extension fields in its request options.
    let path = repo_root().join("tests/fixtures/reference/tiny-bge-m3.json");
    let out = run_client("cohere_hybrid_rerank.py", &server, &[path.to_str().unwrap(), "m3"]);
    assert!(out.contains("OK"), "{out}");
    eprint!("{out}");
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn a_plain_embedding_model_reranks_by_cosine_and_weights_it_cannot_honour_are_refused() {
    let server = server_with_m3();
    let xlmr = reference_json(EMBEDDER);
    let case = xlmr["cases"].as_array().unwrap().iter().find(|c| c["name"] == "batch_padded").unwrap();
    let texts = case["texts"].as_array().unwrap();
    let cos = |j: usize| {
        cosine(
            &floats(&case["embeddings"][0]).iter().map(|&x| x as f32).collect::<Vec<_>>(),
            &floats(&case["embeddings"][j]).iter().map(|&x| x as f32).collect::<Vec<_>>(),
        )
    };
    let req = json!({"model": EMBEDDER, "query": texts[0], "documents": texts[1..], "return_scores": true});
    let (status, body) = server.post("/v1/rerank", &req);
    assert_eq!(status, 200, "{body}");
    for r in body["results"].as_array().unwrap() {
        let j = r["index"].as_u64().unwrap() as usize;
        assert_close(r["relevance_score"].as_f64().unwrap(), cos(j + 1), &format!("cosine document {j}"));
        // Only the score the model can give.
        assert_eq!(r["scores"].as_object().unwrap().len(), 1, "{r}");
    }

    let refused = |req: Value, param: &str, says: &str| {
        let (status, body) = server.post("/v1/rerank", &req);
        assert_eq!(status, 400, "{req}: {body}");
        assert_eq!(body["error"]["param"], param, "{req}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{req}: {message}");
    };
    let base = |model: &str, extra: Value| {
        let mut req = json!({"model": model, "query": "capital of France", "documents": ["Paris", "cats"]});
        req.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        req
    };
    refused(base(EMBEDDER, json!({"weights": {"dense": 0.5, "sparse": 0.5}})), "weights", "sparse_linear");
    refused(base(EMBEDDER, json!({"weights": {"colbert": 1}})), "weights", "colbert_linear");
    refused(base("m3", json!({"weights": {"dense": -1, "colbert": 2}})), "weights", "weights.dense");
    refused(base("m3", json!({"weights": {"dense": 0, "sparse": 0}})), "weights", "above 0");
    refused(base("m3", json!({"return_text": true})), "return_text", "embedding model");
    refused(base(RERANKER, json!({"weights": {"dense": 1}})), "weights", "embedding model");
    refused(base(RERANKER, json!({"return_scores": true})), "return_scores", "embedding model");
    let (status, body) = server.post("/v1/rerank", &base("m3", json!({"weights": {"lexical": 1}})));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("lexical"), "{body}");
    let tei = json!({"model": "m3", "query": "q", "texts": ["d"], "raw_scores": true});
    let (status, body) = server.post("/rerank", &tei);
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("raw_scores"), "{body}");

    // /v1/score: weights or late_interaction, not both; and not on a reranker.
    let score = |req: Value| server.post("/v1/score", &req);
    let (status, body) = score(
        json!({"model": "m3", "text_1": "a", "text_2": "b", "weights": {"colbert": 1}, "late_interaction": true}),
    );
    assert_eq!((status, body["error"]["param"].as_str()), (400, Some("weights")), "{body}");
    let (status, body) = score(json!({"model": RERANKER, "text_1": "a", "text_2": "b", "weights": {"dense": 1}}));
    assert_eq!((status, body["error"]["param"].as_str()), (400, Some("weights")), "{body}");
    let (status, body) = score(json!({"model": EMBEDDER, "text_1": "a", "text_2": "b", "weights": {"sparse": 1}}));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("sparse_linear"), "{body}");

    // The OpenAPI document describes the extension on both routes.
    let (status, doc) = server.get("/openapi.json");
    assert_eq!(status, 200);
    let schemas = &doc["components"]["schemas"];
    for (request, fields) in [("RerankRequest", &["weights", "return_scores"][..]), ("ScoreRequest", &["weights"][..])]
    {
        for field in fields {
            assert!(schemas[request]["properties"].get(*field).is_some(), "{request}.{field}: {}", schemas[request]);
        }
    }
    assert!(schemas["ScoreWeights"]["properties"]["colbert"].is_object(), "{}", schemas["ScoreWeights"]);
    assert!(schemas["PartScores"]["properties"]["sparse"].is_object(), "{}", schemas["PartScores"]);
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn a_pylate_colbert_model_pulls_and_ranks_by_its_maxsim() {
    // Once refused at pull; now `pull` of a folder PyLate saved installs it, and
    // /v1/rerank ranks by PyLate's MaxSim (tests/colbert_models.rs checks the numbers).
    let server = Server::start(ServerOptions { models: vec![EMBEDDER], ..Default::default() });
    let src = model_dir("tiny-bert-pylate");
    let out = server.cli(&["pull", src.to_str().unwrap(), "--name", "colbert"]);
    assert!(out.ok(), "{}", out.text());
    let r = reference_json("tiny-bert-pylate");
    let req = json!({"model": "colbert", "query": r["queries"][0], "documents": r["documents"]});
    let (status, body) = server.post("/v1/rerank", &req);
    assert_eq!(status, 200, "{body}");
    let got: Vec<u64> = body["results"].as_array().unwrap().iter().map(|x| x["index"].as_u64().unwrap()).collect();
    let want: Vec<u64> = r["rerank"][0].as_array().unwrap().iter().map(|x| x["index"].as_u64().unwrap()).collect();
    assert_eq!(got, want, "{body}");
    // Its weights are PyLate's only score: a dense weight is refused naming what it gives.
    let req = json!({"model": "colbert", "query": "q", "documents": ["d"], "weights": {"dense": 1}});
    let (status, body) = server.post("/v1/rerank", &req);
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("PyLate ColBERT"), "{body}");
    assert_eq!(server.stop(), Some(0));
}
