//! Bad input gets a 4xx in the route's own JSON shape: OpenAI's `error` object with the
//! right status and message, empty documents refused as an empty embeddings input is,
//! TEI's JSON error for a malformed query string. Moved here from the end-to-end suites
//! (tests/api.rs, tests/refusals.rs): none of it reaches a worker's computation.

use serde_json::{json, Value};

use super::harness::Daemon;

const EMBED: &str = "tiny-bert-embed";
const RERANK: &str = "tiny-bert-rerank";

/// The model's token limit, as `/v1/models` lists it.
fn max_tokens(daemon: &Daemon, model: &str) -> u64 {
    let (_, models) = daemon.get("/v1/models");
    let m = models["data"].as_array().unwrap().iter().find(|m| m["id"] == model).unwrap().clone();
    m["max_tokens"].as_u64().unwrap_or_else(|| panic!("no max_tokens in {m}"))
}

#[test]
fn errors_have_openai_shape_and_status() {
    let daemon = Daemon::start(&[EMBED, RERANK], "limits:\n  max_request_bytes: 4096\n  max_inputs_per_request: 4\n");
    // The fixture's vocabulary has 1000 ids.
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"model": "nope", "input": "x"}), 404, "does not exist"),
        (json!({"model": EMBED}), 400, "`input` is required"),
        (json!({"model": EMBED, "input": ""}), 400, "empty string"),
        (json!({"model": EMBED, "input": []}), 400, "empty"),
        (json!({"model": EMBED, "input": [1, -2]}), 400, "outside the model's vocabulary"),
        (json!({"model": EMBED, "input": [[101, 1000]]}), 400, "outside the model's vocabulary"),
        (json!({"model": EMBED, "input": [{"a": 1}]}), 400, "must be a string"),
        (json!({"model": EMBED, "input": "x", "encoding_format": "int8"}), 400, "encoding_format"),
        (json!({"model": EMBED, "input": "x", "dimensions": 999}), 400, "larger"),
        (json!({"model": RERANK, "input": "x"}), 400, "reranker"),
        (json!({"model": EMBED, "input": "x".repeat(5000)}), 413, "max_request_bytes"),
    ];
    for (body, status, needle) in cases {
        let (got, resp) = daemon.post("/v1/embeddings", &body);
        assert_eq!(got, status, "{body}: {resp}");
        let message = resp["error"]["message"].as_str().unwrap_or("");
        assert!(resp["error"]["type"].is_string(), "{body}: {resp}");
        assert!(message.contains(needle), "{body}: {message:?} lacks {needle:?}");
    }
    // More inputs than limits.max_inputs_per_request are not refused: they are computed
    // in pieces of that many and the answer streamed (docs/long-documents.md, "Limits").
    let (got, resp) = daemon.post("/v1/embeddings", &json!({"model": EMBED, "input": ["a", "b", "c", "d", "e"]}));
    assert_eq!(got, 200, "{resp}");
    let indices: Vec<u64> = resp["data"].as_array().unwrap().iter().map(|d| d["index"].as_u64().unwrap()).collect();
    assert_eq!(indices, [0, 1, 2, 3, 4], "{resp}");
    let long = "word ".repeat(400);
    let (got, resp) = daemon.post("/v1/embeddings", &json!({"model": EMBED, "input": long, "truncate": false}));
    assert_eq!(got, 400, "{resp}");
    assert_eq!(resp["error"]["code"], "context_length_exceeded");
    let (got, resp) = daemon.post("/v1/embeddings", &json!({"model": EMBED, "input": long}));
    assert_eq!(got, 200, "truncated by default: {resp}");
    assert_eq!(resp["usage"]["prompt_tokens"], max_tokens(&daemon, EMBED));
    // Invalid JSON, wrong method, unknown route.
    let a = daemon.request("POST /v1/embeddings HTTP/1.1\r\nContent-Type: application/json", b"{not json");
    assert_eq!(a.status, 400, "{a:?}");
    assert_eq!(daemon.get("/v1/embeddings").0, 405);
    let (got, resp) = daemon.get("/v1/nothing");
    assert_eq!(got, 404);
    assert!(resp["error"]["message"].is_string(), "{resp}");
    // Rerank errors.
    for body in [
        json!({"model": RERANK, "query": "q", "documents": []}),
        // An embedding model ranks by its dense cosine; weights on a head it lacks are refused.
        json!({"model": EMBED, "query": "q", "documents": ["d"], "weights": {"colbert": 1}}),
        json!({"model": RERANK, "query": "q", "documents": [3]}),
    ] {
        let (got, resp) = daemon.post("/v1/rerank", &body);
        assert_eq!(got, 400, "{body}: {resp}");
    }
}

#[test]
fn empty_documents_and_bad_queries_are_refused_in_shape() {
    let daemon = Daemon::start(&[EMBED, RERANK], "");
    let (status, body) = daemon.post("/v1/embeddings", &json!({"model": EMBED, "input": ["a", ""]}));
    assert_eq!(status, 400, "{body}");
    for docs in [json!(["a doc", ""]), json!(["\u{200b}"])] {
        let (status, body) = daemon.post("/v1/rerank", &json!({"model": RERANK, "query": "q", "documents": docs}));
        assert_eq!(status, 400, "rerank {docs}: {body}");
        assert_eq!(body["error"]["param"], "documents", "{body}");
        let (status, body) = daemon.post("/v1/tokenize", &json!({"model": RERANK, "query": "q", "documents": docs}));
        assert_eq!(status, 400, "tokenize {docs}: {body}");
    }
    let (status, body) = daemon.post("/v1/rerank", &json!({"model": RERANK, "query": "q", "documents": ["a", "b"]}));
    assert_eq!(status, 200, "{body}");

    let a = daemon.request(&format!("GET /info?model={EMBED}&model={RERANK} HTTP/1.1"), b"");
    assert_eq!(a.status, 400, "{a:?}");
    assert!(a.header("content-type").is_some_and(|t| t.starts_with("application/json")), "{a:?}");
    assert_eq!(a.json()["error_type"], "Validation", "TEI's shape: {a:?}");
    assert_eq!(daemon.request(&format!("GET /info?model={EMBED} HTTP/1.1"), b"").status, 200);
}
