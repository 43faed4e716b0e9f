//! Batching, backpressure and the self-healing worker pool, end to end: the real daemon,
//! real workers, concurrent real HTTP clients, `kill -9` on real worker processes.
//!
//! Tests that need work to be "in flight" make it so instead of hoping a sleep is long
//! enough: they freeze the worker process with SIGSTOP (a request sent to it then stays in
//! flight for as long as the test wants), check the premise through `ctl workers`, and
//! thaw it with SIGCONT.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mlx_serve_tests::cli::wait_gone;
use mlx_serve_tests::fixtures::{cosine, rerank_reference};
use mlx_serve_tests::process::{children, Frozen};
use mlx_serve_tests::raw;
use mlx_serve_tests::server::{binary, run_client, signal, Server, ServerOptions};
use serde_json::{json, Value};

const MINILM: &str = "all-MiniLM-L6-v2";

/// Config for the tests that freeze a worker: the watchdog (`limits.hung_worker_seconds`)
/// would find the frozen worker hung, kill it and retry its inputs, which on a loaded
/// machine can happen before the test has checked its premise.
const NO_WATCHDOG: &str = "limits:\n  hung_worker_seconds: 0\n";

fn vector(resp: &Value, i: usize) -> Vec<f32> {
    resp["data"][i]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn texts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "sentence number {i} about {} things",
                ["red", "green", "blue", "quiet", "long-winded and very detailed"][i % 5]
            )
        })
        .collect()
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
        // No time bound on batches (scheduling.max_batch_ms, tested in tests/scheduling.rs):
        // on a loaded machine it cuts 64 inputs into more batches than the size limit does.
        config: Some("batch:\n  max_batch_size: 32\n  max_wait_ms: 20\nscheduling:\n  max_batch_ms: 0\n".into()),
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
fn a_token_budget_not_a_count_sizes_batches() {
    // Workers pack batches, so the budget counts real tokens: 64 short queries fit one
    // batch, 16 long passages of the same budget need several.
    let server = Server::start(ServerOptions {
        models: vec![MINILM],
        // No time bound on batches (`scheduling.max_batch_ms`): the token budget alone.
        config: Some("batch:\n  max_batch_size: 64\n  max_batch_tokens: 1024\nscheduling:\n  max_batch_ms: 0\n".into()),
        ..Default::default()
    });
    let run = |input: Vec<String>| {
        let (_, tok) = server.post("/v1/tokenize", &json!({"model": MINILM, "input": input}));
        let tokens = tok["usage"]["prompt_tokens"].as_f64().unwrap();
        let (_, before) = batch_stats(&server);
        let (status, resp) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": input}));
        assert_eq!(status, 200, "{resp}");
        let (_, after) = batch_stats(&server);
        (tokens, after - before)
    };
    let (short_tokens, short_batches) = run((0..64).map(|i| format!("query {i}")).collect());
    assert!(short_tokens <= 1024.0, "the premise: 64 short queries fit the budget ({short_tokens} tokens)");
    assert_eq!(short_batches, 1.0, "64 short queries ({short_tokens} tokens) went in one batch");
    let (long_tokens, long_batches) =
        run((0..16).map(|i| format!("{i} {}", "a long passage of words ".repeat(24))).collect());
    let least = (long_tokens / 1024.0).ceil();
    assert!(least >= 2.0, "the premise: 16 passages overflow the budget ({long_tokens} tokens)");
    assert!(
        long_batches >= least && long_batches <= least + 1.0,
        "16 passages ({long_tokens} tokens) went in {long_batches} batches"
    );
    let (_, text) = server.get_text("/metrics");
    let counter =
        |name: &str| text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert_eq!(
        counter("mlx_serve_padded_tokens_total"),
        counter("mlx_serve_tokens_total"),
        "a packed worker computes no padding"
    );
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
                let input =
                    vec!["steady text".to_owned(), format!("client {c} request {k} {}", "padding words ".repeat(k))];
                let (status, resp) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": input}));
                assert_eq!(status, 200, "request failed across a worker crash: {resp}");
                let cos = cosine(&vector(&resp, 0), &reference);
                assert!(cos > 0.99999);
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // Kill the worker twice while requests are in flight: once 20 and once 60 requests
    // have been answered (so clients are mid-stream), each time after the restarted worker
    // is up.
    let mut killed = Vec::new();
    for round in 0..2 {
        server
            .wait_for("answered requests", Duration::from_secs(120), || done.load(Ordering::SeqCst) >= 20 + round * 40);
        server.wait_for("a (re)started worker", Duration::from_secs(60), || {
            server.worker_pids().iter().any(|p| !killed.contains(p))
        });
        let pids = server.worker_pids();
        assert_eq!(pids.len(), 1, "one worker per model");
        signal(pids[0], nix::sys::signal::Signal::SIGKILL);
        killed.push(pids[0]);
    }
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 150);
    let pids = server.worker_pids();
    assert_eq!(pids.len(), 1);
    assert_ne!(pids[0], first_pid, "worker was restarted");
    // The log arrives through a pipe read by another thread: wait for the lines.
    server.wait_for("two deaths in the log", Duration::from_secs(10), || {
        server.log_text().matches("worker died").count() >= 2
    });
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
    let (ok, limited, other) =
        (counts[0].load(Ordering::SeqCst), counts[1].load(Ordering::SeqCst), counts[2].load(Ordering::SeqCst));
    println!("ok {ok}, 429 {limited}, other {other}");
    assert!(ok > 0 && limited > 0 && other == 0, "ok {ok}, 429 {limited}, other {other}");
    // Still healthy afterwards.
    let (status, _) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": "after the storm"}));
    assert_eq!(status, 200);
}

#[test]
fn tei_and_cohere_routes_answer_429_with_retry_after() {
    const BERT: &str = "tiny-bert-embed";
    let server = Arc::new(Server::start(ServerOptions {
        models: vec![BERT],
        config: Some(format!("batch:\n  max_batch_size: 1\n  max_queue_size: 1\n{NO_WATCHDOG}")),
        ..Default::default()
    }));
    assert_eq!(server.post("/v1/embeddings", &json!({"model": BERT, "input": "warm up"})).0, 200);
    // A frozen worker: two one-input batches go to it (one computing, one sent ahead) and
    // the next input waits in the queue, which is then full.
    let frozen = Frozen::new(server.worker_pids()[0]);
    let filler = |i: usize| {
        let server = server.clone();
        std::thread::spawn(move || {
            server.post("/v1/embeddings", &json!({"model": BERT, "input": format!("filler {i}")})).0
        })
    };
    // The batch sent ahead is cut just before the worker is predicted to be free
    // (`batch/policy.rs`), so two fillers first, one at a time (the queue holds one input:
    // two sent together could find it full), then the one that waits in the queue.
    let mut fillers = vec![filler(0)];
    server.wait_for("one batch in flight", Duration::from_secs(30), || server.queue_state(BERT).2 == 1);
    fillers.push(filler(1));
    server.wait_for("two batches in flight", Duration::from_secs(30), || server.queue_state(BERT).2 == 2);
    fillers.extend([filler(2), filler(3)]);
    server.wait_for("a full queue", Duration::from_secs(30), || server.queue_state(BERT).1 == 1);
    for (path, body) in [
        ("/embed", json!({"inputs": "refused"})),
        ("/v1/embed", json!({"model": BERT, "texts": ["refused"]})),
        (
            "/v2/embed",
            json!({"model": BERT, "texts": ["refused"], "input_type": "search_document", "embedding_types": ["float"]}),
        ),
    ] {
        let a = raw::post_json(server.port, path, &[], &body);
        assert_eq!(a.status, 429, "{path}: {a:?}");
        assert!(a.header("retry-after").is_some_and(|s| s.parse::<u64>().is_ok()), "{path}: no Retry-After: {a:?}");
        let v = a.json();
        if path == "/embed" {
            assert_eq!(v["error_type"], "Overloaded", "TEI shape: {a:?}");
        } else {
            assert!(v["message"].is_string() && v["id"].is_string(), "Cohere shape: {a:?}");
        }
    }
    drop(frozen);
    for f in fillers {
        assert!(matches!(f.join().unwrap(), 200 | 429));
    }
}

/// Inputs the runner of `model` has accepted since `dispatched_before` (a reading of
/// [`dispatched`]): the ones sent to the worker plus the ones waiting in its queue.
fn accepted(server: &Server, model: &str, dispatched_before: f64) -> f64 {
    dispatched(server) - dispatched_before + server.queue_state(model).1 as f64
}

/// Inputs sent to embedding workers so far (`mlx_serve_batch_size_sum`).
fn dispatched(server: &Server) -> f64 {
    server.metric("mlx_serve_batch_size_sum", &[("endpoint", "embed")])
}

#[test]
fn sigterm_finishes_accepted_requests_then_exits_zero() {
    let server =
        Server::start(ServerOptions { models: vec![MINILM], config: Some(NO_WATCHDOG.into()), ..Default::default() });
    let (status, _) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": "warm up"}));
    assert_eq!(status, 200);
    let worker = server.worker_pids()[0];
    // Frozen, the worker cannot answer: the four requests below are certainly in flight or
    // queued when SIGTERM arrives.
    let frozen = Frozen::new(worker);
    let before = dispatched(&server);
    let url = server.url("/v1/embeddings");
    let mut handles = Vec::new();
    for c in 0..4 {
        let url = url.clone();
        handles.push(std::thread::spawn(move || {
            let r = ureq::post(&url).send_json(json!({"model": MINILM, "input": texts(20 + c)}));
            r.map(|r| (r.status(), r.into_json::<Value>().unwrap())).map_err(|e| e.to_string())
        }));
    }
    server.wait_for("all four requests accepted", Duration::from_secs(30), || {
        accepted(&server, MINILM, before) == (20 + 21 + 22 + 23) as f64
    });
    assert_eq!(server.queue_state(MINILM).0, "busy");
    signal(server.pid(), nix::sys::signal::Signal::SIGTERM);
    // The server is shutting down: /ready says 503 or the listener is already closed.
    server.wait_for("not ready", Duration::from_secs(10), || {
        !matches!(ureq::get(&server.url("/ready")).timeout(Duration::from_secs(5)).call(), Ok(r) if r.status() == 200)
    });
    // Nothing can have been answered yet: a request that ended was dropped by the server.
    if let Some(i) = handles.iter().position(|h| h.is_finished()) {
        let ended = handles.swap_remove(i).join().unwrap();
        panic!("request {i} ended while its worker was frozen, during the drain: {ended:?}");
    }
    drop(frozen);
    assert_eq!(server.wait_exit(), Some(0));
    for (c, h) in handles.into_iter().enumerate() {
        let (status, body) = h.join().unwrap().expect("accepted request finished");
        assert_eq!(status, 200);
        assert_eq!(body["data"].as_array().unwrap().len(), 20 + c);
    }
    assert!(wait_gone(worker as i32, Duration::from_secs(10)), "worker stopped with the server");
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
    // Seed extras: return_text with a decision threshold between two of the reference
    // scores (transformers' CrossEncoder), at the widest gap: the documents above it say
    // "yes", those below "no".
    let reference = rerank_reference("tiny-bert-rerank").unwrap();
    let raw: Value = serde_json::from_str(
        &std::fs::read_to_string(
            mlx_serve_tests::fixtures::repo_root().join("tests/fixtures/reference/tiny-bert-rerank.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let (case, raw_case) =
        reference.cases.iter().zip(raw["cases"].as_array().unwrap()).max_by_key(|(c, _)| c.scores.len()).unwrap();
    let mut sorted = case.scores.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let gap = sorted.windows(2).max_by(|a, b| (a[1] - a[0]).partial_cmp(&(b[1] - b[0])).unwrap()).unwrap();
    assert!(gap[1] - gap[0] > 1e-3, "the fixture's scores must differ: {sorted:?}");
    let threshold = ((gap[0] + gap[1]) / 2.0) as f64;
    let (status, extra) = server.post(
        "/v1/rerank",
        &json!({"model": "tiny-bert-rerank", "query": raw_case["query"], "documents": raw_case["documents"],
                "return_text": true, "decision_threshold": threshold}),
    );
    assert_eq!(status, 200, "{extra}");
    let results = extra["results"].as_array().unwrap();
    assert_eq!(results.len(), case.scores.len());
    for r in results {
        let want = if case.scores[r["index"].as_u64().unwrap() as usize] as f64 > threshold { "yes" } else { "no" };
        assert_eq!(r["text_output"], want, "threshold {threshold}, reference scores {:?}: {r}", case.scores);
    }
    assert!(results.iter().any(|r| r["text_output"] == "yes") && results.iter().any(|r| r["text_output"] == "no"));
    // TEI: texts + raw_scores → bare array with logits.
    let (status, tei) =
        server.post("/rerank", &json!({"query": "cat", "texts": docs, "raw_scores": true, "return_text": true}));
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
    // Strict priority (no aging): the abandoned request, sent at priority 10, stays queued
    // behind every input of the big one (round robin would send it in the next batch).
    let server = Arc::new(Server::start(ServerOptions {
        models: vec![MINILM],
        config: Some(format!("{NO_WATCHDOG}scheduling:\n  priority_aging_ms: 0\n")),
        ..Default::default()
    }));
    let (status, _) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": "warm"}));
    assert_eq!(status, 200);
    let before = tokens_total(&server, MINILM);
    let big: Vec<String> = (0..96).map(|i| format!("{i} {}", "long passage words ".repeat(40))).collect();
    let big_tokens = {
        let (_, tok) = server.post("/v1/tokenize", &json!({"model": MINILM, "input": big}));
        tok["usage"]["prompt_tokens"].as_f64().unwrap()
    };
    // A frozen worker holds the big request in flight (and in the queue) for as long as
    // the test needs.
    let frozen = Frozen::new(server.worker_pids()[0]);
    let sent_before = dispatched(&server);
    let busy = {
        let (server, big) = (server.clone(), big.clone());
        std::thread::spawn(move || server.post("/v1/embeddings", &json!({"model": MINILM, "input": big})).0)
    };
    server.wait_for("the big request accepted", Duration::from_secs(30), || {
        accepted(&server, MINILM, sent_before) == 96.0
    });
    // A client sends a request, which queues behind the big one, then goes away.
    let mut gone = std::net::TcpStream::connect(server.addr).unwrap();
    let body = json!({"model": MINILM, "input": "a request whose client goes away"}).to_string();
    let request = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Priority: 10\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    gone.write_all(request.as_bytes()).unwrap();
    server.wait_for("the abandoned request queued", Duration::from_secs(30), || {
        accepted(&server, MINILM, sent_before) == 97.0
    });
    drop(gone);
    // Its input leaves the queue while the worker is still frozen: nothing else could
    // take it out.
    server.wait_for("the abandoned input dropped from the queue", Duration::from_secs(30), || {
        accepted(&server, MINILM, sent_before) == 96.0
    });
    drop(frozen);
    assert_eq!(busy.join().unwrap(), 200);
    // A later request at priority 20 runs after anything of priority 10 still queued: once
    // it is answered, the abandoned input would have gone to the worker.
    let after =
        raw::post_json(server.port, "/v1/embeddings", &["X-Priority: 20"], &json!({"model": MINILM, "input": "after"}));
    assert_eq!(after.status, 200, "{after:?}");
    let after_tokens = after.json()["usage"]["prompt_tokens"].as_f64().unwrap();
    let computed = tokens_total(&server, MINILM) - before;
    assert_eq!(computed, big_tokens + after_tokens, "the abandoned input must not reach the worker");
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
fn ready_answers_503_while_shutting_down() {
    // One connection at most: a second one is closed at once while the first holds the
    // slot, which tells the test that the server has accepted the first.
    let server = Server::start(ServerOptions {
        models: vec![MINILM],
        config: Some("server:\n  max_connections: 1\n".into()),
        ..Default::default()
    });
    let mut first = raw::connect(server.port, Duration::from_secs(30));
    first.write_all(b"GET /ready HTTP/1.1\r\n").unwrap();
    let mut second = raw::connect(server.port, Duration::from_secs(30));
    assert!(raw::closed_by_server(&mut second), "the second connection was served: the first was not accepted");
    // Accepted is not yet read: a connection whose first bytes hyper has not read counts as
    // idle, and a graceful shutdown closes idle connections. Give its task time to read.
    std::thread::sleep(Duration::from_millis(500));
    // SIGTERM: the server stops accepting and finishes the requests on its connections;
    // the first one's request arrives now, during the drain.
    signal(server.pid(), nix::sys::signal::Signal::SIGTERM);
    server.wait_for("the shutdown in the log", Duration::from_secs(10), || {
        server.log_text().contains("SIGTERM: shutting down")
    });
    first.write_all(b"Host: 127.0.0.1\r\n\r\n").unwrap();
    let answer = raw::read_answer(&mut first).expect("an answer during the drain");
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.header("retry-after").as_deref(), Some("1"), "{answer:?}");
    assert_eq!(answer.json()["error"]["code"], "unavailable", "{answer:?}");
    assert_eq!(server.wait_exit(), Some(0));
}

#[test]
fn poison_input_fails_alone_after_two_crashes() {
    // The worker (the real one behind tests/bin/poison_worker.rs) dies by SIGABRT on any
    // batch holding token 7777, as an MLX abort on a bad input would kill it. Token 7777 is
    // an ordinary vocabulary id.
    let server = Arc::new(Server::start(ServerOptions {
        models: vec![MINILM],
        env: vec![
            ("MLX_SERVE_WORKER_BIN".into(), env!("CARGO_BIN_EXE_poison-worker").into()),
            ("POISON_WORKER_REAL".into(), binary("mlx-serve-worker").display().to_string()),
            ("POISON_WORKER_TOKEN".into(), "7777".into()),
        ],
        // No time bound on batches: the nine queued inputs must leave as one batch.
        config: Some(format!("batch:\n  max_wait_ms: 50\n{NO_WATCHDOG}scheduling:\n  max_batch_ms: 0\n")),
        ..Default::default()
    }));
    let (status, _) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": "warm up"}));
    assert_eq!(status, 200);
    // Premise: the poison goes to the worker in one batch with innocent inputs. With the
    // worker frozen, two one-input requests fill the pipeline (two batches in flight), so
    // the innocent inputs and the poison all wait in the queue and leave it as one batch.
    let wrapper = children(server.pid(), "poison-worker")[0];
    let frozen = Frozen::new(children(wrapper, "mlx-serve-worker")[0]);
    let sent_before = dispatched(&server);
    let post = |input: Value| {
        let server = server.clone();
        std::thread::spawn(move || server.post("/v1/embeddings", &json!({"model": MINILM, "input": input})))
    };
    let mut handles = vec![post(json!("first in flight")), post(json!("second in flight"))];
    server.wait_for("two batches in flight", Duration::from_secs(30), || {
        server.queue_state(MINILM).2 == 2 && dispatched(&server) - sent_before == 2.0
    });
    for c in 0..8 {
        handles.push(post(json!(format!("innocent request {c} {}", "words ".repeat(30)))));
    }
    let poison = post(json!([[101, 7777, 102]]));
    server.wait_for("innocents and poison queued", Duration::from_secs(30), || server.queue_state(MINILM).1 == 9);
    let (batches_of_9_to_16, crashes) = (
        || {
            server.metric("mlx_serve_batch_size_bucket", &[("endpoint", "embed"), ("le", "16")])
                - server.metric("mlx_serve_batch_size_bucket", &[("endpoint", "embed"), ("le", "8")])
        },
        || server.log_text().matches("worker died").count(),
    );
    let shared_before = batches_of_9_to_16();
    drop(frozen);
    for h in handles {
        let (status, resp) = h.join().unwrap();
        assert_eq!(status, 200, "an innocent request failed: {resp}");
    }
    let poison = poison.join().unwrap();
    assert_eq!(poison.0, 500, "{}", poison.1);
    let message = poison.1["error"]["message"].as_str().unwrap();
    assert!(message.contains("crashed twice"), "{message}");
    // The nine went to the worker together (one batch of 9) and that batch crashed it.
    assert_eq!(batches_of_9_to_16() - shared_before, 1.0, "the poison never shared a batch with the innocent inputs");
    server.wait_for("two crashes in the log", Duration::from_secs(10), || crashes() >= 2);
    // The model keeps serving.
    let (status, _) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": "still alive"}));
    assert_eq!(status, 200);
}
