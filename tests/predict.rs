//! TEI's `/predict` end to end: the real `mlx-serve` with a real worker classifying texts and
//! pairs with a tiny BertForSequenceClassification of three named labels
//! (tests/fixtures/make_classifier.py), against transformers' logits on the same weights;
//! huggingface_hub's `InferenceClient.text_classification` unmodified; and the refusals
//! (a classifier on the embedding and rerank routes, `/predict` on an embedding model).

use mlx_serve_tests::fixtures::repo_root;
use mlx_serve_tests::reference_checks::reference_json;
use mlx_serve_tests::server::{run_client, Server, ServerOptions};
use serde_json::{json, Value};

const CLASSIFIER: &str = "tiny-bert-classify";

fn reference() -> Value {
    reference_json(CLASSIFIER)
}

fn softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = logits.iter().map(|x| (x - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|x| x / sum).collect()
}

/// Checks one input's predictions against `want` (per label, in id order): every label
/// once, sorted by score descending, each score within `tol`. Returns the largest difference.
fn check_row(got: &Value, want: &[f64], labels: &[&str], tol: f64, what: &str) -> f64 {
    let got = got.as_array().unwrap_or_else(|| panic!("{what}: {got}"));
    assert_eq!(got.len(), labels.len(), "{what}: {got:?}");
    let mut worst = 0f64;
    for (k, p) in got.iter().enumerate() {
        let label = p["label"].as_str().unwrap();
        let i = labels.iter().position(|l| *l == label).unwrap_or_else(|| panic!("{what}: label {label}"));
        let d = (p["score"].as_f64().unwrap() - want[i]).abs();
        assert!(d <= tol, "{what}: {label} {} vs reference {}", p["score"], want[i]);
        worst = worst.max(d);
        if k > 0 {
            assert!(got[k - 1]["score"].as_f64() >= p["score"].as_f64(), "{what}: not sorted: {got:?}");
        }
    }
    worst
}

#[test]
fn predict_matches_transformers_for_texts_pairs_and_batches() {
    let server = Server::start(ServerOptions { models: vec![CLASSIFIER, "tiny-bert-embed"], ..Default::default() });
    let reference = reference();
    let labels: Vec<&str> = reference["id2label"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    let mut worst = 0f64;
    for case in reference["cases"].as_array().unwrap() {
        let inputs = case["inputs"].as_array().unwrap();
        let rows = case["rows"].as_array().unwrap();
        let logits =
            |r: &Value| -> Vec<f64> { r["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect() };
        // Each input alone (a string or a pair: TEI's single input, a bare list back).
        for (input, row) in inputs.iter().zip(rows) {
            let (status, got) = server.post("/predict", &json!({"model": CLASSIFIER, "inputs": input}));
            assert_eq!(status, 200, "{got}");
            worst = worst.max(check_row(&got, &softmax(&logits(row)), &labels, 1e-5, case["name"].as_str().unwrap()));
            let (status, raw) =
                server.post("/predict", &json!({"model": CLASSIFIER, "inputs": input, "raw_scores": true}));
            assert_eq!(status, 200, "{raw}");
            worst = worst.max(check_row(&raw, &logits(row), &labels, 1e-5, "raw_scores"));
        }
        // The whole case as one batch: a list per input, in order.
        let batch: Vec<Value> = inputs.iter().map(|i| if i.is_string() { json!([i]) } else { i.clone() }).collect();
        let (status, got) = server.post("/predict", &json!({"model": CLASSIFIER, "inputs": batch}));
        assert_eq!(status, 200, "{got}");
        let got = got.as_array().unwrap();
        assert_eq!(got.len(), rows.len());
        for (g, row) in got.iter().zip(rows) {
            worst = worst.max(check_row(g, &softmax(&logits(row)), &labels, 1e-5, "batch"));
        }
    }
    println!("predict: max abs diff to transformers {worst:.2e}");

    // TEI's /info names the labels.
    let (_, info) = server.get(&format!("/info?model={CLASSIFIER}"));
    assert_eq!(info["model_type"]["classifier"]["id2label"]["2"], "positive", "{info}");
    // The model list says what it is.
    let (_, m) = server.get(&format!("/v1/models/{CLASSIFIER}"));
    assert!(m.to_string().contains("classifier"), "{m}");

    // Refusals, each a 400 that says where to go.
    let (status, body) = server.post("/v1/embeddings", &json!({"model": CLASSIFIER, "input": "hi"}));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("/predict"), "{body}");
    let (status, body) = server.post("/v1/rerank", &json!({"model": CLASSIFIER, "query": "q", "documents": ["d"]}));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("classifier"), "{body}");
    let (status, body) = server.post("/predict", &json!({"model": "tiny-bert-embed", "inputs": "hi"}));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error_type"], "Validation", "{body}");
    assert!(body["error"].as_str().unwrap().contains("embedding model"), "{body}");
    for bad in [
        json!({"model": CLASSIFIER, "inputs": ["a", "b", "c"]}),
        json!({"model": CLASSIFIER, "inputs": []}),
        json!({"model": CLASSIFIER, "inputs": "a", "truncation_direction": "left"}),
        json!({"model": CLASSIFIER, "inputs": "a", "raw_score": true}),
    ] {
        let (status, body) = server.post("/predict", &bad);
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error_type"], "Validation", "{body}");
    }
    let long = "word ".repeat(400);
    let (status, body) =
        server.post("/predict", &json!({"model": CLASSIFIER, "inputs": [["a"], [long]], "truncate": false}));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("1"), "names the input: {body}");

    // Counted in the metrics as its own endpoint.
    let metrics = server.get_text("/metrics").1;
    assert!(metrics.contains("endpoint=\"/predict\""), "no /predict series");
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn inference_client_text_classification_gets_transformers_scores() {
    let server = Server::start(ServerOptions { models: vec![CLASSIFIER], ..Default::default() });
    let path = repo_root().join(format!("tests/fixtures/reference/{CLASSIFIER}.json"));
    let out = run_client("hf_classify.py", &server, &[path.to_str().unwrap()]);
    assert!(out.contains("text_classification OK"), "{out}");
    assert_eq!(server.stop(), Some(0));
}
