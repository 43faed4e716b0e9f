//! Chunked embedding (docs/long-documents.md) through the real daemon and a real MiniLM
//! worker (256 tokens a window): a long text's vector is the token-weighted mean of its
//! windows' vectors, then normalized, each window embedded on its own as token ids, the
//! windows computed independently of the server (tests/clients/window_ids.py); a text
//! within the window is unchanged; the overlap decides the windows; provenance (`chunks`)
//! and usage; bad values are 400s in each route's shape; windows count against the
//! request limits; `models.chunking` makes it the default; the cache keeps chunked and
//! truncated vectors apart.

use std::io::Write;
use std::process::Stdio;

use mlx_serve_tests::server::{model_source, python_command, run_client, Server, ServerOptions};
use serde_json::{json, Value};

const MINILM: &str = "all-MiniLM-L6-v2";
/// MiniLM's `max_seq_length` (sentence_bert_config.json).
const MAX_TOKENS: usize = 256;

/// About 900 MiniLM tokens of varied English (about 3.5 windows).
fn long_text() -> String {
    let words = [
        "river", "mountain", "quietly", "engine", "library", "harvest", "silver", "window", "theory", "market",
        "ancient", "signal", "garden", "protocol", "winter", "citizen", "orbit", "lantern", "measure", "forest",
    ];
    (0..700).map(|i| words[(i * 7 + i / 20) % words.len()]).collect::<Vec<_>>().join(" ")
        + ". The end of the document names the harbour."
}

/// The windows the server should make of `text`, from tests/clients/window_ids.py.
fn reference_windows(text: &str, overlap: usize) -> Vec<Vec<i64>> {
    windows_of(MINILM, MAX_TOKENS, text, overlap)
}

/// [`reference_windows`] for `model`, whose limit is `max_tokens`.
fn windows_of(model: &str, max_tokens: usize, text: &str, overlap: usize) -> Vec<Vec<i64>> {
    let dir = model_source(model);
    let mut child = python_command()
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/window_ids.py"))
        .args([dir.to_str().unwrap(), &max_tokens.to_string(), &overlap.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "window_ids.py failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn embedding(item: &Value) -> Vec<f64> {
    item["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn cosine_distance(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    1.0 - dot / (na * nb)
}

/// Each window embedded alone, as token ids.
fn window_rows(server: &Server, windows: &[Vec<i64>]) -> Vec<Vec<f64>> {
    rows_of(server, MINILM, windows)
}

fn rows_of(server: &Server, model: &str, windows: &[Vec<i64>]) -> Vec<Vec<f64>> {
    let (status, body) = server.post("/v1/embeddings", &json!({"model": model, "input": windows, "chunking": false}));
    assert_eq!(status, 200, "{body}");
    body["data"].as_array().unwrap().iter().map(embedding).collect()
}

/// The mean of `rows` weighted by `weights`, L2-normalized (every model here normalizes).
fn normalized_mean(rows: &[Vec<f64>], weights: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut sum = vec![0.0; rows[0].len()];
    for (row, w) in rows.iter().zip(weights) {
        for (s, x) in sum.iter_mut().zip(row) {
            *s += x * w;
        }
    }
    let norm = sum.iter().map(|x| x * x).sum::<f64>().sqrt();
    sum.iter().map(|x| x / norm).collect()
}

/// The reference: each window's vector weighted by its tokens, then normalized.
fn weighted_mean_of_windows(server: &Server, windows: &[Vec<i64>]) -> Vec<f64> {
    normalized_mean(&window_rows(server, windows), windows.iter().map(|w| w.len() as f64))
}

fn minilm(config: Option<&str>) -> Server {
    Server::start(ServerOptions { models: vec![MINILM], config: config.map(str::to_owned), ..Default::default() })
}

#[test]
fn a_chunked_vector_is_the_weighted_mean_of_its_windows() {
    let server = minilm(None);
    let text = long_text();
    for (chunking, overlap) in
        [(json!(true), 0), (json!({"overlap_tokens": 32}), 32), (json!({"overlap_tokens": 200}), 200)]
    {
        let windows = reference_windows(&text, overlap);
        assert!(windows.len() >= 3 && windows.iter().all(|w| w.len() <= MAX_TOKENS));
        let (status, body) = server
            .post("/v1/embeddings", &json!({"model": MINILM, "input": [text, "a short one"], "chunking": chunking}));
        assert_eq!(status, 200, "{body}");
        let item = &body["data"][0];
        assert_eq!(item["chunks"], windows.len(), "overlap {overlap}: {}", body["data"][0]["chunks"]);
        assert!(body["data"][1].get("chunks").is_none(), "a text within the window is not split: {}", body["data"][1]);
        let window_tokens: usize = windows.iter().map(Vec::len).sum();
        let short_tokens = 5; // [CLS] a short one [SEP]
        assert_eq!(body["usage"]["prompt_tokens"], window_tokens + short_tokens, "usage counts every window's tokens");

        let got = embedding(item);
        let norm = got.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "normalized like the model's vectors: {norm}");
        let reference = weighted_mean_of_windows(&server, &windows);
        let d = cosine_distance(&got, &reference);
        assert!(d < 1e-5, "overlap {overlap}: cosine distance {d} to the weighted mean of the windows");
        // The tolerance tells the weights apart: the plain mean of the windows is farther.
        let plain = normalized_mean(&window_rows(&server, &windows), windows.iter().map(|_| 1.0));
        let d_plain = cosine_distance(&got, &plain);
        assert!(d_plain > 10.0 * d.max(1e-7), "overlap {overlap}: plain mean at {d_plain}, weighted at {d}");
        eprintln!("overlap {overlap}: {} windows, cosine distance {d:.2e} (plain mean: {d_plain:.2e})", windows.len());
        // Not the truncated vector: the document's later windows count.
        let (_, truncated) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": text, "truncate": true}));
        assert!(cosine_distance(&got, &embedding(&truncated["data"][0])) > 1e-3);
    }
    // The overlap decides the windows: more overlap, more windows, each the reference's.
    let counts: Vec<usize> = [0, 32, 200].iter().map(|&o| reference_windows(&text, o).len()).collect();
    assert!(counts[0] < counts[1] && counts[1] < counts[2], "{counts:?}");
}

#[test]
fn a_text_within_the_window_is_unchanged() {
    let server = minilm(None);
    let text = "Chunking leaves a text that fits the model's window as it is.";
    let (_, plain) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": text}));
    let (status, chunked) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": text, "chunking": true}));
    assert_eq!(status, 200, "{chunked}");
    assert!(chunked["data"][0].get("chunks").is_none(), "{chunked}");
    assert_eq!(plain["usage"], chunked["usage"]);
    let d = cosine_distance(&embedding(&plain["data"][0]), &embedding(&chunked["data"][0]));
    assert!(d < 1e-6, "{d}");
}

#[test]
fn other_routes_chunk_too_and_bad_values_are_400_in_their_shapes() {
    let server = minilm(None);
    let text = long_text();
    let (_, openai) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": text, "chunking": true}));
    let reference = embedding(&openai["data"][0]);
    let (status, tei) = server.post("/embed", &json!({"model": MINILM, "inputs": text, "chunking": true}));
    assert_eq!(status, 200, "{tei}");
    let tei: Vec<f64> = tei[0].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert!(cosine_distance(&tei, &reference) < 1e-6);
    let (status, ollama) = server.post("/api/embed", &json!({"model": MINILM, "input": text, "chunking": true}));
    assert_eq!(status, 200, "{ollama}");
    let ollama: Vec<f64> = ollama["embeddings"][0].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert!(cosine_distance(&ollama, &reference) < 1e-6);

    for bad in
        [json!("yes"), json!(1), json!({"overlap_tokens": -1}), json!({"overlap": 4}), json!({"overlap_tokens": 254})]
    {
        let (status, body) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": text, "chunking": bad}));
        assert_eq!(status, 400, "{bad}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("chunking") || message.contains("overlap_tokens"), "{bad}: {message}");
        let (status, body) = server.post("/embed", &json!({"model": MINILM, "inputs": text, "chunking": bad}));
        assert_eq!((status, body["error_type"].as_str()), (400, Some("Validation")), "{bad}: {body}");
        let (status, body) = server.post("/api/embed", &json!({"model": MINILM, "input": text, "chunking": bad}));
        assert!(status == 400 && body["error"].is_string(), "{bad}: {body}");
    }
    // An overlap that leaves no new token per window names the window.
    let (_, body) =
        server.post("/v1/embeddings", &json!({"model": MINILM, "input": text, "chunking": {"overlap_tokens": 254}}));
    assert_eq!(body["error"]["param"], "chunking", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("254 tokens"), "{body}");
    // Token ids are the complete model input: chunking them is refused, not guessed.
    let (status, body) =
        server.post("/v1/embeddings", &json!({"model": MINILM, "input": [[101, 7592, 102]], "chunking": true}));
    assert_eq!((status, body["error"]["param"].as_str()), (400, Some("chunking")), "{body}");
}

#[test]
fn windows_count_against_the_request_limits() {
    let text = long_text();
    let windows = reference_windows(&text, 0);
    let tokens: usize = windows.iter().map(Vec::len).sum();
    // Room for the document's windows and nothing more.
    let config =
        format!("limits:\n  max_inputs_per_request: {}\n  max_tokens_per_request: {}\n", windows.len(), tokens + 10);
    let server = minilm(Some(&config));
    let (status, body) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": [text], "chunking": true}));
    assert_eq!(status, 200, "{body}");
    // The document's windows and one more input.
    let (status, body) =
        server.post("/v1/embeddings", &json!({"model": MINILM, "input": [text, "one more"], "chunking": true}));
    assert_eq!(status, 413, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("limits.max_inputs_per_request"), "{body}");
    // More tokens than the request may hold, refused before any window reaches the worker.
    let longer = format!("{text} {text}");
    let (status, body) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": longer, "chunking": true}));
    assert_eq!(status, 413, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("limits.max_tokens_per_request"), "{body}");
}

#[test]
fn models_chunking_is_the_default_and_the_cache_keeps_modes_apart() {
    let config =
        format!("models:\n  chunking:\n    per_model:\n      {MINILM}: {{enabled: true, overlap_tokens: 32}}\n");
    let server = minilm(Some(&config));
    let text = long_text();
    let windows = reference_windows(&text, 32);
    // Truncated first: the cache then holds the truncated vector of this text.
    let (_, truncated) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": text, "truncate": true}));
    assert!(truncated["data"][0].get("chunks").is_none(), "an explicit truncate wins over the config");
    for round in 0..2 {
        let (status, body) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": text}));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"][0]["chunks"], windows.len(), "round {round}: {body}");
        assert_eq!(body["usage"]["prompt_tokens"], windows.iter().map(Vec::len).sum::<usize>(), "round {round}");
        let got = embedding(&body["data"][0]);
        assert!(
            cosine_distance(&got, &embedding(&truncated["data"][0])) > 1e-3,
            "round {round}: not the truncated vector"
        );
        assert!(cosine_distance(&got, &weighted_mean_of_windows(&server, &windows)) < 1e-5, "round {round}");
    }
    assert_eq!(server.metric("mlx_serve_embedding_cache_hits_total", &[]), 1.0, "the second round came from the cache");
}

#[test]
fn one_request_larger_than_a_batch_and_the_queue_is_answered_in_several_batches() {
    // A request's inputs (or a document's windows) queue as
    // one job and are cut into as many batches as they need; the queue bound refuses only
    // a request that arrives while others wait (docs/long-documents.md, "Limits").
    let server = minilm(Some("batch:\n  max_batch_size: 4\n  max_queue_size: 8\n"));
    let batches = || server.metric("mlx_serve_batch_size_count", &[("endpoint", "embed")]);
    let before = batches();
    let inputs: Vec<String> = (0..40).map(|i| format!("input {i} of a request larger than a batch")).collect();
    let (status, body) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": inputs}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 40);
    assert!(batches() - before >= 10.0, "40 inputs in batches of at most 4: {}", batches() - before);

    let text = long_text();
    let windows = reference_windows(&text, 200).len();
    assert!(windows > 8, "more windows than the queue holds: {windows}");
    let before = batches();
    let (status, body) =
        server.post("/v1/embeddings", &json!({"model": MINILM, "input": text, "chunking": {"overlap_tokens": 200}}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["chunks"], windows);
    assert!(batches() - before >= (windows / 4) as f64, "{} batches", batches() - before);
}

#[test]
fn every_family_chunks_into_windows_wrapped_as_its_inputs() {
    // WordPiece with [CLS]/[SEP] (BERT), Unigram with <s>/</s> (XLM-R), byte-level BPE with
    // a trailing end-of-text and last-token pooling (Qwen3): 64 tokens a window each.
    let models = ["tiny-bert-embed", "tiny-xlmr-embed", "tiny-qwen3-embed"];
    let server = Server::start(ServerOptions { models: models.to_vec(), ..Default::default() });
    let text = long_text();
    for model in models {
        let windows = windows_of(model, 64, &text, 8);
        assert!(windows.len() > 5, "{model}");
        let (status, body) =
            server.post("/v1/embeddings", &json!({"model": model, "input": text, "chunking": {"overlap_tokens": 8}}));
        assert_eq!(status, 200, "{model}: {body}");
        assert_eq!(body["data"][0]["chunks"], windows.len(), "{model}");
        assert_eq!(body["usage"]["prompt_tokens"], windows.iter().map(Vec::len).sum::<usize>(), "{model}");
        let reference = normalized_mean(&rows_of(&server, model, &windows), windows.iter().map(|w| w.len() as f64));
        let d = cosine_distance(&embedding(&body["data"][0]), &reference);
        assert!(d < 1e-5, "{model}: cosine distance {d}");
        eprintln!("{model}: {} windows, cosine distance {d:.2e}", windows.len());
    }
}

#[test]
fn real_clients_send_a_20k_word_document_to_a_server_that_chunks_by_default() {
    let server = minilm(Some("models:\n  chunking:\n    enabled: true\n"));
    let out = run_client("long_document_client.py", &server, &[]);
    eprintln!("{out}");
    assert!(out.contains("one vector"), "{out}");
}
