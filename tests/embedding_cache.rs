//! The embedding cache through the real daemon and a real MiniLM worker: a repeated text
//! is answered without the worker (frozen with SIGSTOP, it could not answer), byte for
//! byte as the first time; a request mixing cached and new texts keeps its order; `cache
//! stats|clear` over the control socket; deleting the model drops its vectors; the byte
//! budget holds.

use std::time::Duration;

use mlx_serve_tests::base64;
use mlx_serve_tests::process::Frozen;
use mlx_serve_tests::server::{Server, ServerOptions};
use serde_json::{json, Value};

const MINILM: &str = "all-MiniLM-L6-v2";

fn texts(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("sentence {i} about the river and the {} hills", ["green", "far", "quiet"][i % 3])).collect()
}

fn embed(server: &Server, input: &[String]) -> (u16, Value) {
    let body = json!({"model": MINILM, "input": input, "encoding_format": "base64"});
    match ureq::post(&server.url("/v1/embeddings")).timeout(Duration::from_secs(30)).send_json(body) {
        Ok(r) => (r.status(), r.into_json().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("request failed: {e}"),
    }
}

fn rows(resp: &Value) -> Vec<String> {
    resp["data"].as_array().unwrap().iter().map(|d| d["embedding"].as_str().unwrap().to_owned()).collect()
}

fn stats(server: &Server) -> Value {
    let out = server.cli(&["cache", "stats", "--json", "--port", &server.port.to_string()]);
    assert!(out.ok(), "{}", out.text());
    serde_json::from_str(&out.stdout).unwrap()
}

fn batches(server: &Server) -> f64 {
    server.metric("mlx_serve_batch_size_count", &[("endpoint", "embed")])
}

#[test]
fn a_repeated_text_skips_the_worker_and_is_byte_identical() {
    let server = Server::start(ServerOptions { models: vec![MINILM], ..Default::default() });
    let a = texts(0..40);
    let (status, first) = embed(&server, &a);
    assert_eq!(status, 200, "{first}");
    assert_eq!(server.metric("mlx_serve_embedding_cache_misses_total", &[]), 40.0);
    let s = stats(&server);
    assert_eq!(s["entries"], 40, "{s}");
    assert!(s["bytes"].as_u64().unwrap() > 40 * 384 * 4, "{s}");

    // The worker cannot answer while frozen: a cached answer must not need it.
    let before = batches(&server);
    let frozen = Frozen::new(server.worker_pid_of(MINILM).expect("worker"));
    let (status, second) = embed(&server, &a);
    drop(frozen);
    assert_eq!(status, 200, "{second}");
    assert_eq!(rows(&first), rows(&second), "cached vectors are the computed ones, byte for byte");
    assert_eq!(first["usage"], second["usage"], "usage counts the cached inputs' tokens");
    assert_eq!(batches(&server), before, "no batch went to the worker");
    assert_eq!(server.metric("mlx_serve_embedding_cache_hits_total", &[]), 40.0);

    // Cached and new texts mixed: each row where it belongs. The new ones are checked
    // against the same texts computed alone.
    let mut mixed: Vec<String> = Vec::new();
    for (i, text) in a.iter().take(20).enumerate() {
        mixed.push(text.clone());
        mixed.push(format!("a new text number {i}"));
    }
    let (status, m) = embed(&server, &mixed);
    assert_eq!(status, 200, "{m}");
    let m = rows(&m);
    let first = rows(&first);
    for (i, row) in first.iter().take(20).enumerate() {
        assert_eq!(&m[2 * i], row, "cached row {i} in place");
    }
    let cleared = server.cli(&["cache", "clear", "--port", &server.port.to_string()]);
    assert!(cleared.ok() && cleared.stdout.contains("cleared 60 vectors"), "{}", cleared.text());
    assert_eq!(stats(&server)["entries"], 0);
    let new_alone: Vec<String> = (0..20).map(|i| format!("a new text number {i}")).collect();
    let before = batches(&server);
    let (_, alone) = embed(&server, &new_alone);
    assert!(batches(&server) > before, "after clear the worker computes again");
    let alone = rows(&alone);
    for (i, row) in alone.iter().enumerate() {
        let (x, y) = (base64::floats(&m[2 * i + 1]), base64::floats(row));
        let cos: f32 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
        assert!(cos > 0.99999, "new row {i} in place (cosine {cos})");
    }

    // A deleted model's vectors go with it.
    assert!(stats(&server)["entries"].as_u64().unwrap() > 0);
    let resp = ureq::delete(&server.url("/api/delete")).send_json(json!({"model": MINILM})).unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(stats(&server)["entries"], 0, "deleting the model dropped its vectors");
}

#[test]
fn the_cache_stays_within_its_budget() {
    let server = Server::start(ServerOptions {
        models: vec![MINILM],
        config: Some("embedding_cache:\n  memory_mb: 1\n".into()),
        ..Default::default()
    });
    // 1,200 vectors of 384 floats take about 1.9 MB: more than the 1 MiB budget.
    for chunk in 0..12 {
        let (status, body) = embed(&server, &texts(chunk * 100..(chunk + 1) * 100));
        assert_eq!(status, 200, "{body}");
    }
    let s = stats(&server);
    let (bytes, budget) = (s["bytes"].as_u64().unwrap(), s["budget_bytes"].as_u64().unwrap());
    assert_eq!(budget, 1 << 20);
    assert!(bytes <= budget, "{s}");
    assert!(s["evictions"].as_u64().unwrap() > 0, "{s}");
    assert!(s["entries"].as_u64().unwrap() > 300, "{s}");
    assert!(server.metric("mlx_serve_embedding_cache_bytes", &[]) <= budget as f64);
    // The most recent texts are the ones kept.
    let before = server.metric("mlx_serve_embedding_cache_hits_total", &[]);
    embed(&server, &texts(1100..1200));
    assert_eq!(server.metric("mlx_serve_embedding_cache_hits_total", &[]) - before, 100.0);
}
