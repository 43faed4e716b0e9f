//! The worker pool seen from outside, end to end: which worker the server stops and when
//! (the per-type limit evicts the least recently used idle model, the TTL stops idle ones,
//! preloaded and busy models stay), and a model whose worker cannot load. Every claim is
//! checked on the OS process table, not only on what the server reports.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlx_serve_tests::cli::wait_gone;
use mlx_serve_tests::process::Frozen;
use mlx_serve_tests::server::{Server, ServerOptions};
use serde_json::{json, Value};

const MINILM: &str = "all-MiniLM-L6-v2";

fn texts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("sentence number {i} about things")).collect()
}

/// One embedding from `model`'s worker: each call sends a new text, since a repeated one is
/// answered from the embedding cache without the worker (and uses nothing of it).
fn embed_ok(server: &Server, model: &str) {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let text = format!("hello {}", CALLS.fetch_add(1, Ordering::Relaxed));
    let (status, resp) = server.post("/v1/embeddings", &json!({"model": model, "input": text}));
    assert_eq!(status, 200, "{model}: {resp}");
}

#[test]
fn least_recently_used_idle_worker_is_evicted_over_the_limit() {
    // TTL off, so only the per-type limit can stop a worker, however slowly models load.
    let server = Server::start(ServerOptions {
        models: vec!["tiny-bert-embed", "tiny-xlmr-embed", "tiny-qwen3-embed"],
        config: Some("cache:\n  ttl_seconds: 0\n  max_embedding_models: 2\n".into()),
        ..Default::default()
    });
    embed_ok(&server, "tiny-bert-embed");
    embed_ok(&server, "tiny-xlmr-embed");
    embed_ok(&server, "tiny-bert-embed"); // now xlmr is the least recently used
    let (bert, xlmr) =
        (server.worker_pid_of("tiny-bert-embed").unwrap(), server.worker_pid_of("tiny-xlmr-embed").unwrap());
    assert_eq!(server.worker_pids().len(), 2);
    // A third embedding model pushes out the least recently used one.
    embed_ok(&server, "tiny-qwen3-embed");
    assert_eq!(server.loaded_models(), ["tiny-bert-embed", "tiny-qwen3-embed"]);
    assert_eq!(server.worker_pid_of("tiny-bert-embed"), Some(bert), "the recently used worker was not touched");
    assert!(wait_gone(xlmr as i32, Duration::from_secs(10)), "the LRU worker process is still there");
    assert_eq!(server.worker_pids().len(), 2);
    // And an evicted model comes back on demand (evicting bert, now the LRU).
    embed_ok(&server, "tiny-xlmr-embed");
    assert_eq!(server.loaded_models(), ["tiny-qwen3-embed", "tiny-xlmr-embed"]);
}

#[test]
fn idle_worker_is_stopped_after_the_ttl() {
    // One model, so nothing but the TTL can stop its worker.
    let server = Server::start(ServerOptions {
        models: vec!["tiny-bert-embed"],
        config: Some("cache:\n  ttl_seconds: 2\n".into()),
        ..Default::default()
    });
    // Taken before the request: the server's own "last used" is later than this.
    let last_use = Instant::now();
    embed_ok(&server, "tiny-bert-embed");
    let pid = server.worker_pid_of("tiny-bert-embed").unwrap();
    // The sweeper runs every ttl/4 (0.5 s): gone within 2–2.5 s of the last use.
    assert!(wait_gone(pid as i32, Duration::from_secs(30)), "TTL eviction did not happen");
    let idle = last_use.elapsed();
    assert!(idle >= Duration::from_secs(2), "stopped after {idle:?}, before the TTL of 2 s");
    assert!(server.loaded_models().is_empty());
    assert_eq!(server.worker_row("tiny-bert-embed")["state"], "stopped");
    // And it comes back on demand.
    embed_ok(&server, "tiny-bert-embed");
    assert_eq!(server.worker_pids().len(), 1);
}

#[test]
fn preloaded_models_are_exempt_from_lru_eviction() {
    // TTL off: only the limit of two embedding models can stop a worker.
    let server = Server::start(ServerOptions {
        models: vec!["tiny-bert-embed", "tiny-xlmr-embed", "tiny-qwen3-embed"],
        config: Some("cache:\n  ttl_seconds: 0\n  max_embedding_models: 2\n".into()),
        args: vec!["--preload".into(), "tiny-bert-embed".into()],
        ..Default::default()
    });
    server.wait_for("the preloaded worker", Duration::from_secs(60), || {
        server.worker_pid_of("tiny-bert-embed").is_some()
    });
    let preloaded = server.worker_pid_of("tiny-bert-embed").unwrap();
    assert_eq!(server.worker_row("tiny-bert-embed")["preload"], true);
    // The preloaded model is the least recently used of the three; the third start must
    // evict xlmr all the same.
    embed_ok(&server, "tiny-xlmr-embed");
    let xlmr = server.worker_pid_of("tiny-xlmr-embed").unwrap();
    embed_ok(&server, "tiny-qwen3-embed");
    assert!(wait_gone(xlmr as i32, Duration::from_secs(10)), "xlmr should have made room");
    assert_eq!(server.worker_pid_of("tiny-bert-embed"), Some(preloaded), "the preloaded worker was evicted");
    assert_eq!(server.loaded_models(), ["tiny-bert-embed", "tiny-qwen3-embed"]);
}

#[test]
fn preloaded_models_are_exempt_from_the_ttl() {
    let server = Server::start(ServerOptions {
        models: vec!["tiny-bert-embed", "tiny-xlmr-embed"],
        config: Some("cache:\n  ttl_seconds: 1\n".into()),
        args: vec!["--preload".into(), "tiny-bert-embed".into()],
        ..Default::default()
    });
    server.wait_for("the preloaded worker", Duration::from_secs(60), || {
        server.worker_pid_of("tiny-bert-embed").is_some()
    });
    let preloaded = server.worker_pid_of("tiny-bert-embed").unwrap();
    // xlmr is used after the preload, so the preloaded worker has been idle longer: the
    // sweep that stops xlmr has seen the preloaded one past its TTL too.
    embed_ok(&server, "tiny-xlmr-embed");
    let xlmr = server.worker_pid_of("tiny-xlmr-embed").unwrap();
    assert!(wait_gone(xlmr as i32, Duration::from_secs(30)), "TTL eviction did not happen");
    assert_eq!(server.worker_pid_of("tiny-bert-embed"), Some(preloaded), "the preloaded worker was stopped");
    assert_eq!(server.loaded_models(), ["tiny-bert-embed"]);
}

#[test]
fn busy_worker_is_not_evicted() {
    // TTL off; room for two embedding models; no watchdog, which would find the frozen
    // worker hung and replace it (the premise is a busy worker, kept).
    let server = Arc::new(Server::start(ServerOptions {
        models: vec![MINILM, "tiny-bert-embed", "tiny-xlmr-embed"],
        config: Some("cache:\n  ttl_seconds: 0\n  max_embedding_models: 2\nlimits:\n  hung_worker_seconds: 0\n".into()),
        ..Default::default()
    }));
    embed_ok(&server, MINILM);
    let minilm = server.worker_pid_of(MINILM).unwrap();
    // Freeze MiniLM's worker and give it a request: it stays in flight until we thaw it.
    let frozen = Frozen::new(minilm);
    let busy = {
        let server = server.clone();
        std::thread::spawn(move || server.post("/v1/embeddings", &json!({"model": MINILM, "input": texts(8)})))
    };
    server.wait_for("MiniLM busy", Duration::from_secs(30), || server.queue_state(MINILM).0 == "busy");
    // tiny-bert loads (2 of 2) and is used after MiniLM's request: MiniLM is now the least
    // recently used, so a third model must skip it (busy) and evict tiny-bert (idle).
    embed_ok(&server, "tiny-bert-embed");
    let bert = server.worker_pid_of("tiny-bert-embed").unwrap();
    embed_ok(&server, "tiny-xlmr-embed");
    assert!(!busy.is_finished(), "premise: MiniLM's request was in flight the whole time");
    assert_eq!(server.queue_state(MINILM).0, "busy");
    assert!(wait_gone(bert as i32, Duration::from_secs(10)), "the idle model was not evicted");
    assert_eq!(server.worker_pid_of(MINILM), Some(minilm), "the busy worker was replaced");
    assert_eq!(server.loaded_models(), [MINILM, "tiny-xlmr-embed"]);
    drop(frozen);
    let (status, resp) = busy.join().unwrap();
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["data"].as_array().unwrap().len(), 8);
    assert_eq!(server.worker_pid_of(MINILM), Some(minilm), "same MiniLM worker after the request");
    assert_eq!(server.worker_row(MINILM)["restarts"], 0);
}

/// Seconds since midnight of a log line's timestamp (`2026-11-30T08:15:13.006369Z ...`).
fn log_time(line: &str) -> Option<f64> {
    let time = line.split_whitespace().next()?.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = time.split(':').map(|p| p.parse::<f64>().ok());
    Some(parts.next()?? * 3600.0 + parts.next()?? * 60.0 + parts.next()??)
}

/// A copy of tiny-bert-embed named `broken-bert` in the server's store, with its weights cut
/// in half: config.json and tokenizer.json are fine, so only the worker finds out, when it
/// loads. Returns the folder and the good weights.
fn broken_model(server: &Server) -> (std::path::PathBuf, Vec<u8>) {
    let dir = server.home.path().join("models").join("broken-bert");
    std::fs::create_dir_all(&dir).unwrap();
    let source = mlx_serve_tests::fixtures::model_dir("tiny-bert-embed");
    for e in std::fs::read_dir(&source).unwrap().flatten() {
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        } else {
            mlx_serve_tests::server::link_model(&e.path(), &dir.join(e.file_name()));
        }
    }
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &weights[..weights.len() / 2]).unwrap();
    (dir, weights)
}

#[test]
fn a_model_that_fails_to_load_is_reported_and_retried_after_a_back_off() {
    let server = Server::start(ServerOptions::default());
    let model = "broken-bert";
    let (dir, weights) = broken_model(&server);

    // The request fails with 503, the worker's reason, a Retry-After, and no internals.
    let body = json!({"model": model, "input": "hello"});
    let first = ureq::post(&server.url("/v1/embeddings")).send_json(&body);
    let Err(ureq::Error::Status(503, resp)) = first else { panic!("expected 503, got {first:?}") };
    assert!(resp.header("retry-after").is_some(), "503 without Retry-After");
    let err: Value = resp.into_json().unwrap();
    let message = err["error"]["message"].as_str().unwrap();
    assert_eq!(err["error"]["type"], "server_error", "{err}");
    assert!(
        message.contains(model) && message.contains("failed to load") && message.contains("truncated"),
        "{message}"
    );
    assert!(!message.contains("RUST_BACKTRACE") && !message.contains("panicked"), "{message}");
    // Seen from the server: state failed with the reason, no worker process.
    let row = server.worker_row(model);
    assert_eq!(row["state"], "failed", "{row}");
    assert!(row["last_error"].as_str().unwrap_or("").contains("truncated"), "{row}");
    assert_eq!(row["pid"], Value::Null);
    assert!(server.worker_pids().is_empty(), "a worker process is left: {:?}", server.worker_pids());
    assert_eq!(server.metric("mlx_serve_worker_state", &[("model", model), ("state", "failed")]), 1.0);

    // Requests right after do not start a worker each: they wait out the back-off (0.5 s,
    // then 1 s: runner.rs `backoff`), then one attempt answers them all.
    for _ in 0..2 {
        let (status, err) = server.post("/v1/embeddings", &body);
        assert_eq!(status, 503, "{err}");
    }
    let attempts = || -> Vec<f64> {
        server
            .log_text()
            .lines()
            .filter(|l| l.contains("worker failed to start") && l.contains(&format!("model={model}")))
            .filter_map(log_time)
            .collect()
    };
    // The log is read by another thread: the third attempt's line may land just after the
    // answer it caused.
    server.wait_for("the third load attempt in the log", Duration::from_secs(5), || attempts().len() >= 3);
    let attempts = attempts();
    assert_eq!(attempts.len(), 3, "one load attempt per request, spaced:\n{}", server.log_text());
    let gaps: Vec<f64> = attempts.windows(2).map(|w| (w[1] - w[0]).rem_euclid(86400.0)).collect();
    assert!(gaps[0] >= 0.5 && gaps[1] >= 1.0, "attempts {gaps:?} s apart, want the back-off of 0.5 s then 1 s");

    // Repaired on disk, the model loads on the next request (after the back-off).
    std::fs::write(dir.join("model.safetensors"), &weights).unwrap();
    let started = Instant::now();
    let (status, resp) = server.post("/v1/embeddings", &body);
    assert_eq!(status, 200, "{resp}");
    eprintln!("repaired model answered after {:?}", started.elapsed());
    assert_eq!(server.worker_row(model)["state"], "ready");
    assert!(server.worker_pid_of(model).is_some());
}

#[test]
fn a_load_failure_message_shows_no_server_paths() {
    let server = Server::start(ServerOptions::default());
    broken_model(&server);
    let (status, err) = server.post("/v1/embeddings", &json!({"model": "broken-bert", "input": "hello"}));
    assert_eq!(status, 503, "{err}");
    let message = err["error"]["message"].as_str().unwrap();
    let home = server.home.path().to_str().unwrap();
    assert!(!message.contains(home) && !message.contains("/models/"), "internals in an API error: {message}");
    assert!(message.contains("truncated"), "the reason stays: {message}");
}
