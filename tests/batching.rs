//! Batching, backpressure and the self-healing worker pool, end to end: the real daemon,
//! real workers, concurrent real HTTP clients, `kill -9` on real worker processes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlx_serve_tests::fixtures::cosine;
use mlx_serve_tests::server::{run_client, signal, Server, ServerOptions};
use serde_json::{json, Value};

const MINILM: &str = "all-MiniLM-L6-v2";

fn vector(resp: &Value, i: usize) -> Vec<f32> {
    resp["data"][i]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn texts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("sentence number {i} about {} things", ["red", "green", "blue", "quiet", "long-winded and very detailed"][i % 5])).collect()
}

/// Sum of `mlx_serve_batch_size` observations and their count, from /metrics.
fn batch_stats(server: &Server) -> (f64, f64) {
    let (_, text) = server.get_text("/metrics");
    let get = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains("endpoint=\"embed\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (get("mlx_serve_batch_size_sum"), get("mlx_serve_batch_size_count"))
}

#[test]
fn concurrent_requests_share_batches_and_get_the_same_vectors() {
    let server = Arc::new(Server::start(ServerOptions {
        models: vec![MINILM],
        config: Some("batch:\n  max_batch_size: 32\n  max_wait_ms: 20\n".into()),
        ..Default::default()
    }));
    let probe = "The quick brown fox jumps over the lazy dog.";
    let (status, alone) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": probe}));
    assert_eq!(status, 200);
    let alone = vector(&alone, 0);
    let (sum0, count0) = batch_stats(&server);

    // 16 clients × 8 requests, each request one text; every 4th request is the probe.
    let mut handles = Vec::new();
    for c in 0..16 {
        let server = server.clone();
        handles.push(std::thread::spawn(move || {
            let mut probes = Vec::new();
            for (k, t) in texts(8).into_iter().enumerate() {
                let input = if k % 4 == 0 { probe.to_owned() } else { format!("client {c}: {t}") };
                let (status, resp) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": input}));
                assert_eq!(status, 200, "{resp}");
                if k % 4 == 0 {
                    probes.push(vector(&resp, 0));
                }
            }
            probes
        }));
    }
    for h in handles {
        for v in h.join().unwrap() {
            let cos = cosine(&v, &alone);
            assert!(cos > 0.99999, "probe inside a busy batch differs: cosine {cos}");
        }
    }
    let (sum, count) = batch_stats(&server);
    let mean = (sum - sum0) / (count - count0);
    assert!(mean > 1.5, "requests were not batched together: {} items in {} batches", sum - sum0, count - count0);
    println!("128 concurrent single-text requests went in {} batches (mean size {mean:.1})", count - count0);

    // A many-input request goes as vectorized batches, not one by one.
    let (_, before) = batch_stats(&server);
    let (status, resp) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": texts(64)}));
    assert_eq!(status, 200);
    assert_eq!(resp["data"].as_array().unwrap().len(), 64);
    let (_, after) = batch_stats(&server);
    assert!(after - before <= 3.0, "64 inputs took {} batches", after - before);
}

#[test]
fn killed_worker_is_restarted_and_no_request_fails() {
    let server = Arc::new(Server::start(ServerOptions { models: vec![MINILM], ..Default::default() }));
    let (status, reference) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": "steady text"}));
    assert_eq!(status, 200);
    let reference = Arc::new(vector(&reference, 0));
    let first_pid = server.worker_pids()[0];

    let done = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for c in 0..6 {
        let (server, done, reference) = (server.clone(), done.clone(), reference.clone());
        handles.push(std::thread::spawn(move || {
            for k in 0..25 {
                let input = vec!["steady text".to_owned(), format!("client {c} request {k} {}", "padding words ".repeat(k))];
                let (status, resp) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": input}));
                assert_eq!(status, 200, "request failed across a worker crash: {resp}");
                let cos = cosine(&vector(&resp, 0), &reference);
                assert!(cos > 0.99999);
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // Kill the worker twice while requests are in flight.
    for round in 0..2 {
        let start = Instant::now();
        while done.load(Ordering::SeqCst) < 20 + round * 40 && start.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let pids = server.worker_pids();
        assert_eq!(pids.len(), 1, "one worker per model");
        signal(pids[0], nix::sys::signal::Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(200));
    }
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 150);
    let pids = server.worker_pids();
    assert_eq!(pids.len(), 1);
    assert_ne!(pids[0], first_pid, "worker was restarted");
    let log = server.log_text();
    assert!(log.matches("worker died").count() >= 2, "{log}");
}

#[test]
fn queue_bound_answers_429_with_retry_after() {
    let server = Arc::new(Server::start(ServerOptions {
        models: vec![MINILM],
        config: Some("batch:\n  max_batch_size: 1\n  max_queue_size: 2\n".into()),
        ..Default::default()
    }));
    let counts = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0)]);
    let mut handles = Vec::new();
    for c in 0..24 {
        let (server, counts) = (server.clone(), counts.clone());
        handles.push(std::thread::spawn(move || {
            let input = vec![format!("text {c} {}", "many words ".repeat(40)); 2];
            let body = json!({"model": MINILM, "input": input});
            let resp = ureq::post(&server.url("/v1/embeddings")).send_json(&body);
            match resp {
                Ok(_) => counts[0].fetch_add(1, Ordering::SeqCst),
                Err(ureq::Error::Status(429, r)) => {
                    assert!(r.header("retry-after").is_some(), "429 without Retry-After");
                    let body: Value = r.into_json().unwrap();
                    assert_eq!(body["error"]["type"], "rate_limit_error");
                    counts[1].fetch_add(1, Ordering::SeqCst)
                }
                Err(e) => {
                    eprintln!("unexpected: {e}");
                    counts[2].fetch_add(1, Ordering::SeqCst)
                }
            };
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    let (ok, limited, other) = (counts[0].load(Ordering::SeqCst), counts[1].load(Ordering::SeqCst), counts[2].load(Ordering::SeqCst));
    println!("ok {ok}, 429 {limited}, other {other}");
    assert!(ok > 0 && limited > 0 && other == 0, "ok {ok}, 429 {limited}, other {other}");
    // Still healthy afterwards.
    let (status, _) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": "after the storm"}));
    assert_eq!(status, 200);
}

#[test]
fn idle_workers_are_evicted_by_ttl_and_lru() {
    let server = Server::start(ServerOptions {
        models: vec!["tiny-bert-embed", "tiny-xlmr-embed", "tiny-qwen3-embed"],
        config: Some("cache:\n  ttl_seconds: 2\n  max_embedding_models: 2\n".into()),
        ..Default::default()
    });
    let embed = |m: &str| {
        let (status, resp) = server.post("/v1/embeddings", &json!({"model": m, "input": "hello"}));
        assert_eq!(status, 200, "{resp}");
    };
    let loaded = || -> Vec<String> {
        let (_, ps) = server.get("/api/ps");
        ps["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap().to_owned()).collect()
    };
    embed("tiny-bert-embed");
    std::thread::sleep(Duration::from_millis(300));
    embed("tiny-xlmr-embed");
    assert_eq!(server.worker_pids().len(), 2);
    // A third embedding model pushes out the least recently used one.
    embed("tiny-qwen3-embed");
    let now = loaded();
    assert_eq!(server.worker_pids().len(), 2, "{now:?}");
    assert!(!now.contains(&"tiny-bert-embed".to_owned()), "LRU evicted: {now:?}");
    // All idle: TTL stops them (checked every ttl/4).
    let start = Instant::now();
    while !server.worker_pids().is_empty() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(server.worker_pids().is_empty(), "TTL eviction did not happen");
    assert!(loaded().is_empty());
    // And an evicted model comes back on demand.
    embed("tiny-bert-embed");
    assert_eq!(server.worker_pids().len(), 1);
}

#[test]
fn busy_worker_is_not_evicted() {
    let server = Arc::new(Server::start(ServerOptions {
        models: vec![MINILM, "tiny-bert-embed"],
        config: Some("cache:\n  max_embedding_models: 1\n".into()),
        ..Default::default()
    }));
    let busy = {
        let server = server.clone();
        std::thread::spawn(move || {
            for k in 0..20 {
                let (status, resp) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": texts(32 + k)}));
                assert_eq!(status, 200, "{resp}");
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        let (status, _) = server.post("/v1/embeddings", &json!({"model": "tiny-bert-embed", "input": "x"}));
        assert_eq!(status, 200);
    }
    busy.join().unwrap();
}

#[test]
fn sigterm_finishes_accepted_requests_then_exits_zero() {
    let server = Server::start(ServerOptions { models: vec![MINILM], ..Default::default() });
    let (status, _) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": "warm up"}));
    assert_eq!(status, 200);
    let worker = server.worker_pids()[0];
    let url = server.url("/v1/embeddings");
    let mut handles = Vec::new();
    for c in 0..4 {
        let url = url.clone();
        handles.push(std::thread::spawn(move || {
            ureq::post(&url).send_json(json!({"model": MINILM, "input": texts(200 + c)})).map(|r| r.status())
        }));
    }
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(server.stop(), Some(0));
    for h in handles {
        assert_eq!(h.join().unwrap().expect("accepted request finished"), 200);
    }
    assert!(!std::path::Path::new(&format!("/proc/{worker}")).exists(), "worker stopped with the server");
}

#[test]
fn official_openai_and_ollama_clients() {
    let server = Server::start(ServerOptions { models: vec![MINILM, "tiny-bert-rerank"], ..Default::default() });
    let out = run_client("openai_client.py", &server, &[MINILM]);
    println!("{out}");
    let out = run_client("ollama_client.py", &server, &[MINILM]);
    println!("{out}");
}

#[test]
fn rerank_in_jina_cohere_and_tei_shapes() {
    let server = Server::start(ServerOptions { models: vec!["tiny-bert-rerank"], ..Default::default() });
    let docs = ["the cat sat on the mat", "stock markets fell today", "a kitten on a rug"];
    // Jina: documents as objects, results with document.text.
    let (status, jina) = server.post(
        "/v1/rerank",
        &json!({"model": "tiny-bert-rerank", "query": "cat", "documents": docs.iter().map(|d| json!({"text": d})).collect::<Vec<_>>(), "top_n": 2}),
    );
    assert_eq!(status, 200, "{jina}");
    let results = jina["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    let first = results[0]["index"].as_u64().unwrap() as usize;
    assert_eq!(results[0]["document"]["text"], docs[first]);
    assert!(jina["usage"]["total_tokens"].as_u64().unwrap() > 0);
    // Cohere v2: same body, strings, return_documents false.
    let (status, cohere) = server.post(
        "/v2/rerank",
        &json!({"model": "tiny-bert-rerank", "query": "cat", "documents": docs, "return_documents": false}),
    );
    assert_eq!(status, 200);
    assert_eq!(cohere["results"].as_array().unwrap().len(), 3);
    assert_eq!(cohere["results"][0]["index"], jina["results"][0]["index"]);
    assert!(cohere["results"][0].get("document").is_none());
    // Seed extras: return_text with a decision threshold.
    let (_, extra) = server.post(
        "/v1/rerank",
        &json!({"model": "tiny-bert-rerank", "query": "cat", "documents": docs, "return_text": true, "decision_threshold": 0.0}),
    );
    assert!(extra["results"].as_array().unwrap().iter().all(|r| r["text_output"] == "yes"));
    // TEI: texts + raw_scores → bare array with logits.
    let (status, tei) = server.post("/rerank", &json!({"query": "cat", "texts": docs, "raw_scores": true, "return_text": true}));
    assert_eq!(status, 200, "{tei}");
    let arr = tei.as_array().unwrap();
    assert_eq!(arr.len(), 3);
    let p = cohere["results"][0]["relevance_score"].as_f64().unwrap();
    let logit = arr[0]["score"].as_f64().unwrap();
    assert!((1.0 / (1.0 + (-logit).exp()) - p).abs() < 1e-5);
    assert_eq!(arr[0]["text"], docs[arr[0]["index"].as_u64().unwrap() as usize]);
}

/// `mlx_serve_tokens_total` for a model, from /metrics.
fn tokens_total(server: &Server, model: &str) -> f64 {
    let (_, text) = server.get_text("/metrics");
    text.lines()
        .find(|l| l.starts_with("mlx_serve_tokens_total") && l.contains(&format!("model=\"{model}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn disconnected_clients_have_their_queued_inputs_dropped() {
    let server = Arc::new(Server::start(ServerOptions { models: vec![MINILM], ..Default::default() }));
    let (status, _) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": "warm"}));
    assert_eq!(status, 200);
    let before = tokens_total(&server, MINILM);
    // Keep the worker busy with many long inputs...
    let big: Vec<String> = (0..256).map(|i| format!("{i} {}", "long passage words ".repeat(40))).collect();
    let big_tokens = {
        let (_, tok) = server.post("/v1/tokenize", &json!({"model": MINILM, "input": big}));
        tok["usage"]["prompt_tokens"].as_f64().unwrap()
    };
    let busy = {
        let (server, big) = (server.clone(), big.clone());
        std::thread::spawn(move || server.post("/v1/embeddings", &json!({"model": MINILM, "input": big})).0)
    };
    std::thread::sleep(Duration::from_millis(100));
    // ...while a client gives up on a request that is still queued.
    let gave_up = ureq::post(&server.url("/v1/embeddings"))
        .timeout(Duration::from_millis(50))
        .send_json(json!({"model": MINILM, "input": "a request whose client goes away"}));
    assert!(gave_up.is_err(), "the client should have timed out");
    assert_eq!(busy.join().unwrap(), 200);
    std::thread::sleep(Duration::from_millis(200));
    let computed = tokens_total(&server, MINILM) - before;
    assert_eq!(computed, big_tokens, "the abandoned input must not reach the worker");
    let (_, metrics) = server.get_text("/metrics");
    assert!(metrics.lines().any(|l| l.starts_with("mlx_serve_queue_depth") && l.ends_with(" 0")));
}

#[test]
fn ready_and_health() {
    let server = Server::start(ServerOptions { models: vec![MINILM], ..Default::default() });
    let (status, health) = server.get("/health");
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    let (status, ready) = server.get("/ready");
    assert_eq!((status, ready["status"].as_str()), (200, Some("ready")));
}

#[test]
fn poison_input_fails_alone_after_two_crashes() {
    // The worker aborts on any batch holding token 7777 (test fault injection), like an
    // MLX abort on a bad input would. Token 7777 is an ordinary vocabulary id.
    let server = Arc::new(Server::start(ServerOptions {
        models: vec![MINILM],
        env: vec![("MLX_SERVE_WORKER_ABORT_ON_TOKEN".into(), "7777".into())],
        config: Some("batch:\n  max_wait_ms: 50\n".into()),
        ..Default::default()
    }));
    let (status, _) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": "warm up"}));
    assert_eq!(status, 200);
    let mut handles = Vec::new();
    for c in 0..8 {
        let server = server.clone();
        handles.push(std::thread::spawn(move || {
            server.post("/v1/embeddings", &json!({"model": MINILM, "input": format!("innocent request {c} {}", "words ".repeat(30))}))
        }));
    }
    let poison = server.post("/v1/embeddings", &json!({"model": MINILM, "input": [[101, 7777, 102]]}));
    for h in handles {
        let (status, resp) = h.join().unwrap();
        assert_eq!(status, 200, "an innocent request failed: {resp}");
    }
    assert_eq!(poison.0, 500, "{}", poison.1);
    let message = poison.1["error"]["message"].as_str().unwrap();
    assert!(message.contains("crashed twice"), "{message}");
    // The model keeps serving.
    let (status, _) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": "still alive"}));
    assert_eq!(status, 200);
}
