//! The API dialects' request rules: a request without `model` needs exactly one model of
//! its type, TEI options we cannot honour are refused in TEI's shape, and `truncate:
//! false` (or `limits.truncate: false`) refuses long inputs on every route in the route's
//! own error shape. Moved here from tests/dialects.rs, which keeps the official clients
//! and the vectors compared with sentence-transformers'.

use serde_json::{json, Value};

use super::harness::Daemon;

const BERT: &str = "tiny-bert-embed";
const QWEN: &str = "tiny-qwen3-embed";
const RERANK: &str = "tiny-bert-rerank";

#[test]
fn model_omitted_needs_exactly_one_model_of_the_type() {
    let daemon = Daemon::start(&[QWEN, BERT, RERANK], "");
    // Two embedding models: the request must name one, and the error lists them.
    let (status, resp) = daemon.post("/embed", &json!({"inputs": "x"}));
    assert_eq!(status, 400, "{resp}");
    let msg = resp["error"].as_str().unwrap();
    assert!(msg.contains("tiny-bert-embed, tiny-qwen3-embed"), "{msg}");
    let (status, _) = daemon.post("/embed", &json!({"inputs": "x", "model": BERT}));
    assert_eq!(status, 200);
    // One reranker: TEI's rerank shape on `/` goes to it without a name.
    let (status, resp) = daemon.post("/", &json!({"query": "q", "texts": ["a", "b"]}));
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp.as_array().unwrap().len(), 2);
    assert_eq!(daemon.get("/info").0, 400);
}

#[test]
fn tei_options_we_cannot_honour_are_refused_in_teis_shape() {
    let daemon = Daemon::start(&[QWEN], "");
    let (status, resp) = daemon.post("/embed", &json!({"inputs": "x", "truncation_direction": "Left"}));
    assert_eq!((status, resp["error_type"].as_str()), (400, Some("Validation")), "{resp}");
    let (status, resp) = daemon.post("/embed", &json!({"inputs": "x", "normalize": false}));
    assert_eq!(status, 400, "{resp}");
    let (status, info) = daemon.get("/info");
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["model_id"], QWEN);
    assert_eq!(info["model_type"]["embedding"]["pooling"], "last_token", "{info}");
    assert_eq!(info["max_input_length"], 64);
}

/// A route, a body it must refuse, and whether the answer has the route's error shape.
type Refusal = (&'static str, Value, fn(&Value) -> bool);

#[test]
fn truncate_false_refuses_long_inputs_on_every_route() {
    let long = "word ".repeat(5000);
    let daemon = Daemon::start(&[BERT, RERANK], "");
    // Each route's own way to say it, refused in its own error shape; truncated without it.
    let refused: [Refusal; 7] = [
        ("/embed", json!({"model": BERT, "inputs": long, "truncate": false}), |v| v["error_type"] == "Validation"),
        ("/v2/embed", json!({"model": BERT, "texts": [long], "truncate": "NONE"}), |v| {
            v["id"].is_string() && v["message"].is_string()
        }),
        ("/api/embed", json!({"model": BERT, "input": long, "truncate": false}), |v| v["error"].is_string()),
        ("/v1/embeddings", json!({"model": BERT, "input": long, "truncate": false}), |v| {
            v["error"]["code"] == "context_length_exceeded"
        }),
        ("/v1/rerank", json!({"model": RERANK, "query": "q", "documents": [long], "truncate": false}), |v| {
            v["error"]["code"] == "context_length_exceeded"
        }),
        ("/v1/score", json!({"model": RERANK, "text_1": "q", "text_2": [long], "truncate": false}), |v| {
            v["error"]["code"] == "context_length_exceeded" && v["error"]["param"] == "text_2"
        }),
        ("/v1/score", json!({"model": BERT, "text_1": "q", "text_2": [long], "truncate": false}), |v| {
            v["error"]["code"] == "context_length_exceeded" && v["error"]["param"] == "text_2"
        }),
    ];
    for (path, body, shape) in refused {
        let (status, v) = daemon.post(path, &body);
        assert_eq!(status, 400, "{path}: {v}");
        assert!(shape(&v), "{path}: not the route's error shape: {v}");
        assert!(v.to_string().contains("longer than the model's limit"), "{path}: {v}");
        let mut truncated = body.clone();
        truncated["truncate"] = if path == "/v2/embed" { json!("END") } else { json!(true) };
        let (status, v) = daemon.post(path, &truncated);
        assert_eq!(status, 200, "{path} truncating: {v}");
    }
    drop(daemon);
    // `limits.truncate: false`: refused without a flag, truncated when the request asks.
    let daemon = Daemon::start(&[BERT], "limits:\n  truncate: false\n");
    let (status, v) = daemon.post("/v1/embeddings", &json!({"model": BERT, "input": long}));
    assert_eq!((status, &v["error"]["code"]), (400, &json!("context_length_exceeded")), "{v}");
    let (status, v) = daemon.post("/embed", &json!({"inputs": long}));
    assert_eq!(status, 400, "{v}");
    let (status, v) = daemon.post("/v1/embeddings", &json!({"model": BERT, "input": long, "truncate": true}));
    assert_eq!(status, 200, "{v}");
}
