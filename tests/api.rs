//! End-to-end tests of the HTTP API: the real `mlx-serve` binary on loopback, real workers
//! running MLX, real model files, reference outputs from sentence-transformers.

use mlx_serve_tests::fixtures::{cosine, embed_reference, max_abs_diff, rerank_reference};
use mlx_serve_tests::server::{Server, ServerOptions};
use serde_json::{json, Value};

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn embeddings(resp: &Value) -> Vec<Vec<f32>> {
    resp["data"].as_array().expect("data").iter().map(|d| floats(&d["embedding"])).collect()
}

fn error_of(resp: &Value) -> (&str, &str) {
    (resp["error"]["type"].as_str().unwrap_or(""), resp["error"]["message"].as_str().unwrap_or(""))
}

#[test]
fn minilm_over_http_matches_sentence_transformers() {
    let server = Server::start(ServerOptions { models: vec!["all-MiniLM-L6-v2"], ..Default::default() });
    let reference = embed_reference("all-MiniLM-L6-v2").unwrap();
    for case in &reference.cases {
        // OpenAI's API refuses empty strings; so do we (checked in the error test).
        let keep: Vec<usize> = (0..case.texts.len()).filter(|&i| !case.texts[i].is_empty()).collect();
        let texts: Vec<&String> = keep.iter().map(|&i| &case.texts[i]).collect();
        if texts.is_empty() {
            continue;
        }
        let (status, resp) = server.post("/v1/embeddings", &json!({"model": "all-MiniLM-L6-v2", "input": texts}));
        assert_eq!(status, 200, "{resp}");
        let got = embeddings(&resp);
        assert_eq!(got.len(), texts.len());
        let wanted: Vec<&Vec<f32>> = keep.iter().map(|&i| &case.embeddings[i]).collect();
        for (i, (g, want)) in got.iter().zip(wanted).enumerate() {
            let cos = cosine(g, want);
            assert!(cos >= 0.9999, "case {} text {i}: cosine {cos}", case.name);
            assert!(max_abs_diff(g, want) <= 1e-4, "case {} text {i}", case.name);
        }
        // Tokenization equals the reference tokenizer's ids, truncation included.
        let (status, tok) = server.post("/v1/tokenize", &json!({"model": "all-MiniLM-L6-v2", "input": texts}));
        assert_eq!(status, 200, "{tok}");
        let wanted: Vec<&Vec<u32>> = keep.iter().map(|&i| &case.input_ids[i]).collect();
        for (i, want) in wanted.into_iter().enumerate() {
            let got: Vec<u32> =
                tok["data"][i]["token_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            assert_eq!(&got, want, "case {} text {i}", case.name);
        }
    }
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn token_ids_embed_like_their_text() {
    let server = Server::start(ServerOptions { models: vec!["all-MiniLM-L6-v2"], ..Default::default() });
    let text = "Token ids from /v1/tokenize are the complete model input.";
    let (_, tok) = server.post("/v1/tokenize", &json!({"model": "all-MiniLM-L6-v2", "input": text}));
    let ids = tok["data"][0]["token_ids"].clone();
    let (s1, by_text) = server.post("/v1/embeddings", &json!({"model": "all-MiniLM-L6-v2", "input": text}));
    let (s2, by_ids) = server.post("/v1/embeddings", &json!({"model": "all-MiniLM-L6-v2", "input": ids}));
    let (s3, by_lists) = server.post("/v1/embeddings", &json!({"model": "all-MiniLM-L6-v2", "input": [ids, ids]}));
    assert_eq!((s1, s2, s3), (200, 200, 200));
    let a = &embeddings(&by_text)[0];
    assert!(cosine(a, &embeddings(&by_ids)[0]) > 0.99999);
    assert!(cosine(a, &embeddings(&by_lists)[1]) > 0.99999);
    assert_eq!(by_text["usage"]["prompt_tokens"], by_ids["usage"]["prompt_tokens"]);
}

#[test]
fn rerankers_match_reference_scores_over_http() {
    let models = vec!["tiny-bert-rerank", "tiny-xlmr-rerank", "tiny-qwen3-rerank"];
    let server = Server::start(ServerOptions { models: models.clone(), ..Default::default() });
    for model in models {
        let reference = rerank_reference(model).unwrap();
        let raw: Value = serde_json::from_str(
            &std::fs::read_to_string(mlx_serve_tests::fixtures::repo_root().join(format!("tests/fixtures/reference/{model}.json"))).unwrap(),
        )
        .unwrap();
        for (case, raw_case) in reference.cases.iter().zip(raw["cases"].as_array().unwrap()) {
            let query = raw_case["query"].clone();
            let documents = raw_case["documents"].clone();
            let mut body = json!({"model": model, "query": query, "documents": documents, "return_documents": false});
            if raw_case["instruction"].is_string() {
                body["instruction"] = raw_case["instruction"].clone();
            }
            // The supervisor's pair tokenization (templates, segment ids, truncation)
            // reproduces the reference tokenizer's ids exactly.
            let (status, tok) = server.post("/v1/tokenize", &body);
            assert_eq!(status, 200, "{tok}");
            for (i, want) in case.pairs_input_ids.iter().enumerate() {
                assert_eq!(&tok["data"][i]["token_ids"], &json!(want), "{model} {} pair {i} ids", case.name);
                let types = case.pairs_token_type_ids.as_ref().map(|t| &t[i]).filter(|t| t.iter().any(|&x| x != 0));
                match types {
                    Some(t) => assert_eq!(&tok["data"][i]["token_type_ids"], &json!(t), "{model} {} pair {i} types", case.name),
                    None => assert!(tok["data"][i].get("token_type_ids").is_none()),
                }
            }
            let (status, resp) = server.post("/v1/rerank", &body);
            assert_eq!(status, 200, "{model} {}: {resp}", case.name);
            let results = resp["results"].as_array().unwrap();
            assert_eq!(results.len(), case.scores.len());
            let mut prev = f64::INFINITY;
            for r in results {
                let i = r["index"].as_u64().unwrap() as usize;
                let score = r["relevance_score"].as_f64().unwrap();
                assert!(score <= prev, "sorted by score");
                prev = score;
                assert!((score - case.scores[i] as f64).abs() <= 1e-4, "{model} {} doc {i}: {score} vs {}", case.name, case.scores[i]);
                assert!(r.get("document").is_none());
            }
        }
    }
}

#[test]
fn errors_have_openai_shape_and_status() {
    let server = Server::start(ServerOptions {
        models: vec!["all-MiniLM-L6-v2", "tiny-bert-rerank"],
        config: Some("limits:\n  max_request_bytes: 4096\n  max_inputs_per_request: 4\n".into()),
        ..Default::default()
    });
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"model": "nope", "input": "x"}), 404, "does not exist"),
        (json!({"model": "all-MiniLM-L6-v2"}), 400, "`input` is required"),
        (json!({"model": "all-MiniLM-L6-v2", "input": ""}), 400, "empty string"),
        (json!({"model": "all-MiniLM-L6-v2", "input": []}), 400, "empty"),
        (json!({"model": "all-MiniLM-L6-v2", "input": [1, -2]}), 400, "outside the model's vocabulary"),
        (json!({"model": "all-MiniLM-L6-v2", "input": [[101, 30522]]}), 400, "outside the model's vocabulary"),
        (json!({"model": "all-MiniLM-L6-v2", "input": [{"a": 1}]}), 400, "must be a string"),
        (json!({"model": "all-MiniLM-L6-v2", "input": "x", "encoding_format": "int8"}), 400, "encoding_format"),
        (json!({"model": "all-MiniLM-L6-v2", "input": "x", "dimensions": 999}), 400, "larger"),
        (json!({"model": "all-MiniLM-L6-v2", "input": ["a", "b", "c", "d", "e"]}), 413, "max_inputs_per_request"),
        (json!({"model": "tiny-bert-rerank", "input": "x"}), 400, "reranker"),
        (json!({"model": "all-MiniLM-L6-v2", "input": "x".repeat(5000)}), 413, "max_request_bytes"),
    ];
    for (body, status, needle) in cases {
        let (got, resp) = server.post("/v1/embeddings", &body);
        assert_eq!(got, status, "{body}: {resp}");
        let (_, message) = error_of(&resp);
        assert!(message.contains(needle), "{body}: {message:?} lacks {needle:?}");
    }
    let long = "word ".repeat(400);
    let (got, resp) = server.post("/v1/embeddings", &json!({"model": "all-MiniLM-L6-v2", "input": long, "truncate": false}));
    assert_eq!(got, 400, "{resp}");
    assert_eq!(resp["error"]["code"], "context_length_exceeded");
    let (got, resp) = server.post("/v1/embeddings", &json!({"model": "all-MiniLM-L6-v2", "input": long}));
    assert_eq!(got, 200, "truncated by default: {resp}");
    assert_eq!(resp["usage"]["prompt_tokens"], 256);
    // Invalid JSON, wrong method, unknown route.
    let resp = ureq::post(&server.url("/v1/embeddings")).set("content-type", "application/json").send_string("{not json");
    assert!(matches!(resp, Err(ureq::Error::Status(400, _))));
    let (got, _) = server.get("/v1/embeddings");
    assert_eq!(got, 405);
    let (got, resp) = server.get("/v1/nothing");
    assert_eq!(got, 404);
    assert!(resp["error"]["message"].is_string());
    // Rerank errors.
    let (got, _) = server.post("/v1/rerank", &json!({"model": "tiny-bert-rerank", "query": "q", "documents": []}));
    assert_eq!(got, 400);
    let (got, _) = server.post("/v1/rerank", &json!({"model": "all-MiniLM-L6-v2", "query": "q", "documents": ["d"]}));
    assert_eq!(got, 400);
    let (got, _) = server.post("/v1/rerank", &json!({"model": "tiny-bert-rerank", "query": "q", "documents": [3]}));
    assert_eq!(got, 400);
}
