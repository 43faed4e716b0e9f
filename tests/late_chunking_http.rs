//! Late chunking over HTTP (docs/long-documents.md) through the real daemon and real MLX
//! workers: `POST /v1/late_chunking` and the `late_chunking` extension of
//! `POST /v1/embeddings`, against transformers + sentence-transformers on the same weights
//! (tests/fixtures/make_late_chunking_http.py → tests/fixtures/reference/
//! late_chunking_http.json): explicit spans, a separator, sentences up to N tokens, and
//! documents longer than the window in overlapping macro-windows, on all-MiniLM-L6-v2
//! (mean) and a CLS + Dense + Normalize fixture (spans by mean). Bad spans and wrong
//! models are 400s in OpenAI's error shape; the `openai` package reads the chunks back.

use mlx_serve_tests::server::{run_client, Server, ServerOptions};
use serde_json::{json, Value};

/// The bar for late chunking against its reference.
const MIN_COSINE: f64 = 0.99999;
const MINILM: &str = "all-MiniLM-L6-v2";
const CLS: &str = "tiny-pipe-cls-dense-tanh";
const RERANKER: &str = "tiny-bert-rerank";
/// Chunks and windows one request may ask for, set low here to see the bound.
const MAX_ROWS: usize = 200;

fn reference() -> Value {
    let path = mlx_serve_tests::fixtures::repo_root().join("tests/fixtures/reference/late_chunking_http.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn server() -> Server {
    Server::start(ServerOptions {
        models: vec![MINILM, CLS, RERANKER],
        config: Some(format!("limits:\n  max_inputs_per_request: {MAX_ROWS}\n")),
        ..Default::default()
    })
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap_or_else(|| panic!("not a vector: {v}")).iter().map(|x| x.as_f64().unwrap()).collect()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    dot / (a.iter().map(|x| x * x).sum::<f64>().sqrt() * b.iter().map(|x| x * x).sum::<f64>().sqrt())
}

/// `got` within the bar of `want`, printed.
fn close(label: &str, got: &Value, want: &Value) -> f64 {
    let c = cosine(&floats(got), &floats(want));
    assert!(c >= MIN_COSINE, "{label}: cosine {c}");
    c
}

/// The request fields of a reference case, with `input` and `model`.
fn request(model: &str, case: &Value) -> Value {
    let mut body = case["request"].clone();
    body["model"] = json!(model);
    body["input"] = case["input"].clone();
    body
}

#[test]
fn chunks_match_transformers_for_spans_separators_sentences_and_macro_windows() {
    let server = server();
    let reference = reference();
    for (model, cases) in reference.as_object().unwrap() {
        for case in cases.as_array().unwrap() {
            let label = format!("{model}, {}", case["name"]);
            let (status, body) = server.post("/v1/late_chunking", &request(model, case));
            assert_eq!(status, 200, "{label}: {body}");
            let data = body["data"].as_array().unwrap();
            let spans: Vec<&Value> = data.iter().map(|c| &c["span"]).collect();
            assert_eq!(json!(spans), case["spans"], "{label}: the rule's spans");
            assert_eq!(body["windows"], case["windows"], "{label}");
            assert_eq!(body["usage"]["prompt_tokens"], case["tokens"], "{label}: every window's tokens");
            assert_eq!(body["pooling"], case["pooling"], "{label}");
            let mut worst: f64 = 1.0;
            for (k, (chunk, want)) in data.iter().zip(case["chunks"].as_array().unwrap()).enumerate() {
                assert_eq!(chunk["index"], k);
                worst = worst.min(close(&format!("{label}, chunk {k}"), &chunk["embedding"], want));
            }
            let doc = close(&format!("{label}, document"), &body["embedding"], &case["embedding"]);
            println!(
                "{label}: {} windows, {} chunks, worst 1 - cos {:.1e}, document {:.1e}",
                case["windows"],
                data.len(),
                1.0 - worst,
                1.0 - doc
            );

            // The same on the OpenAI route's extension, which keeps OpenAI's shape.
            let mut late = case["request"].clone();
            let openai = json!({"model": model, "input": [case["input"]], "late_chunking": late.take()});
            let (status, body) = server.post("/v1/embeddings", &openai);
            assert_eq!(status, 200, "{label}: {body}");
            let item = &body["data"][0];
            assert_eq!(item["object"], "embedding");
            close(&format!("{label}, OpenAI embedding"), &item["embedding"], &case["embedding"]);
            let chunks = item["late_chunks"].as_array().unwrap();
            assert_eq!(chunks.len(), case["chunks"].as_array().unwrap().len(), "{label}");
            for (chunk, want) in chunks.iter().zip(case["chunks"].as_array().unwrap()) {
                close(&format!("{label}, OpenAI chunk"), &chunk["embedding"], want);
            }
            let windows = case["windows"].as_u64().unwrap();
            assert_eq!(item.get("chunks").cloned(), (windows > 1).then(|| json!(windows)), "{label}");
            assert_eq!(body["chunk_pooling"], case["pooling"], "{label}");
        }
    }
}

/// `dimensions` and base64 apply to every chunk, as on plain embeddings.
#[test]
fn dimensions_and_base64_apply_to_every_chunk() {
    let server = server();
    let case = &reference()[MINILM][0];
    let mut body = request(MINILM, case);
    body["dimensions"] = json!(64);
    let (status, short) = server.post("/v1/late_chunking", &body);
    assert_eq!(status, 200, "{short}");
    body["encoding_format"] = json!("base64");
    let (status, b64) = server.post("/v1/late_chunking", &body);
    assert_eq!(status, 200, "{b64}");
    for (k, (s, b)) in short["data"].as_array().unwrap().iter().zip(b64["data"].as_array().unwrap()).enumerate() {
        let f = floats(&s["embedding"]);
        assert_eq!(f.len(), 64);
        assert!((f.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-5, "renormalized");
        let full = floats(&case["chunks"][k]);
        assert!(cosine(&f, &full[..64]) > MIN_COSINE, "the first 64 dimensions, renormalized");
        let decoded = mlx_serve_tests::base64::floats(b["embedding"].as_str().unwrap());
        assert_eq!(decoded, f.iter().map(|&x| x as f32).collect::<Vec<_>>(), "the same float32 values");
    }
}

/// Every bad request is a 400 (413 past a limit) in OpenAI's error shape, naming what is
/// wrong, with no internals.
#[test]
fn bad_spans_and_wrong_models_are_refused_with_openai_errors() {
    let server = server();
    let doc = "The json module encodes JSON.  It is in the standard library.";
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"model": MINILM, "input": doc, "spans": [[3, 3]]}), 400, "chunk 0: span [3, 3) is empty"),
        (
            json!({"model": MINILM, "input": doc, "spans": [[0, 10], [5, 200]]}),
            400,
            "chunk 1: span [5, 200) is empty or outside",
        ),
        (
            json!({"model": MINILM, "input": doc, "spans": [[0, 10], [5, 20]]}),
            400,
            "chunk 1: spans must be in ascending order",
        ),
        (
            json!({"model": MINILM, "input": doc, "spans": [[0, 29], [29, 31]]}),
            400,
            "chunk 1: span [29, 31) holds no token",
        ),
        (json!({"model": MINILM, "input": doc, "spans": [[0, -1]]}), 400, "non-negative integers"),
        (json!({"model": MINILM, "input": doc}), 400, "exactly one of `spans`, `separator`, `max_chunk_tokens`"),
        (
            json!({"model": MINILM, "input": doc, "separator": "|", "overlap_tokens": 254}),
            400,
            "overlap_tokens 254 leaves no room",
        ),
        (json!({"model": MINILM, "input": "", "separator": "|"}), 400, "input 0 is an empty string"),
        (json!({"model": MINILM, "input": "   ", "separator": "|"}), 400, "no chunks"),
        (json!({"model": RERANKER, "input": doc, "separator": "."}), 400, "rerank"),
        (
            json!({"model": MINILM, "input": "a. ".repeat(300), "max_chunk_tokens": 1}),
            413,
            "limits.max_inputs_per_request",
        ),
    ];
    for (body, status, needle) in cases {
        let (got, err) = server.post("/v1/late_chunking", &body);
        assert_eq!(got, status, "{body}: {err}");
        let e = &err["error"];
        let message = e["message"].as_str().unwrap_or_else(|| panic!("OpenAI error shape: {err}"));
        assert!(message.contains(needle), "{body}: {message}");
        assert!(e["type"].is_string(), "{err}");
        assert!(!message.contains(".rs") && !message.contains("/work") && !message.contains("panicked"), "{message}");
    }
    // The OpenAI route's extension: per-input spans, conflicts, token ids.
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"model": MINILM, "input": [doc, doc], "late_chunking": {"spans": [[0, 3]]}}),
            "one list of spans per input",
        ),
        (
            json!({"model": MINILM, "input": [doc, doc], "late_chunking": {"spans": [[[0, 3]], [[0, 3], [2, 9]]]}}),
            "input 1: chunk 1: spans must be in ascending order",
        ),
        (
            json!({"model": MINILM, "input": doc, "late_chunking": {"separator": "."}, "chunking": true}),
            "cannot be combined with `chunking`",
        ),
        (
            json!({"model": MINILM, "input": doc, "late_chunking": {"separator": "."}, "prompt": "q: "}),
            "cannot be combined with `prompt`",
        ),
        (
            json!({"model": MINILM, "input": [1, 2, 3], "late_chunking": {"separator": "."}}),
            "text input, not token ids",
        ),
        (json!({"model": MINILM, "input": doc, "late_chunking": {"sep": "."}}), "unknown field"),
    ];
    for (body, needle) in cases {
        let (got, err) = server.post("/v1/embeddings", &body);
        assert_eq!(got, 400, "{body}: {err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
    }
}

/// The `openai` package, unmodified, sends `late_chunking` through `extra_body` and reads
/// each item's chunks from its extra fields (tests/clients/late_chunking_client.py).
#[test]
fn the_openai_client_reads_chunk_vectors_back() {
    let server = server();
    let out = run_client("late_chunking_client.py", &server, &[]);
    eprintln!("{out}");
    assert!(out.contains("chunks read back"), "{out}");
}
