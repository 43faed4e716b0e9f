//! Who runs first, through the real daemon with a real MiniLM worker: a one-word request
//! behind a 500k-token request, interactive queries behind a bulk ingest marked by
//! priority, and the `priority` field and `X-Priority` header on the routes.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use mlx_serve_tests::server::{Server, ServerOptions};
use serde_json::{json, Value};

const MINILM: &str = "all-MiniLM-L6-v2";

/// The two timing tests run one at a time even under `--test-threads=2`: each measures a
/// server's latency on a 2-core box, and the other's worker computing beside it would be
/// measured too.
static TIMING: Mutex<()> = Mutex::new(());

fn timing_slot() -> std::sync::MutexGuard<'static, ()> {
    TIMING.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A passage of over 256 MiniLM tokens (the model keeps 256: `max_seq_length`).
fn long_passage(i: usize) -> String {
    format!("passage {i}: {}", "the quick brown fox jumps over the lazy dog near the river bank ".repeat(30))
}

fn post_with(server: &Server, path: &str, body: &Value, headers: &[(&str, &str)]) -> (u16, Value) {
    post_to(&server.url(path), body, headers)
}

fn post_to(url: &str, body: &Value, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = ureq::post(url).timeout(Duration::from_secs(600));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    match req.send_json(body) {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
        Err(e) => (0, Value::String(e.to_string())),
    }
}

fn queued(server: &Server) -> f64 {
    server.metric("mlx_serve_queue_depth", &[("model", MINILM)])
}

/// One legal request of 2,048 inputs × 256 tokens (524,288 tokens, under
/// `limits.max_tokens_per_request`) used to make a one-word request behind it wait for all
/// of it (89–95 s at 205k tokens). Requests now take turns and a batch is bounded
/// to about `scheduling.max_batch_ms` of the worker's time, so the one-word request waits
/// about two batches.
#[test]
fn a_one_word_request_behind_a_500k_token_request_answers_within_2_s() {
    let _slot = timing_slot();
    let server = Server::start(ServerOptions { models: vec![MINILM], ..Default::default() });
    assert_eq!(server.post("/v1/embeddings", &json!({"model": MINILM, "input": "warm up"})).0, 200);
    let texts: Vec<String> = (0..2048).map(long_passage).collect();
    // The premise: over 500k tokens after truncation.
    let (status, tok) = server.post("/v1/tokenize", &json!({"model": MINILM, "input": texts}));
    assert_eq!(status, 200, "{tok}");
    let total: u64 = tok["data"].as_array().unwrap().iter().map(|d| d["tokens"].as_u64().unwrap()).sum();
    assert!(total >= 500_000, "{total} tokens");

    // The thread holds the URL, not the server: it is left running at the end, and a
    // server it held would never be dropped, so never stopped (the suite left it behind).
    let big = {
        let url = server.url("/v1/embeddings");
        thread::spawn(move || post_to(&url, &json!({"model": MINILM, "input": texts}), &[]))
    };
    server.wait_for("the huge request to be queued", Duration::from_secs(60), || queued(&server) > 1000.0);

    let mut worst = Duration::ZERO;
    for word in ["hello", "world", "query", "again", "last"] {
        let t = Instant::now();
        let (status, body) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": word}));
        let took = t.elapsed();
        assert_eq!(status, 200, "{body}");
        worst = worst.max(took);
    }
    let still_queued = queued(&server);
    eprintln!("one-word requests behind {total} tokens: worst {worst:?}; {still_queued} inputs still queued");
    assert!(still_queued > 100.0, "the huge request was still being served (premise)");
    assert!(worst < Duration::from_secs(2), "a one-word request waited {worst:?} behind the huge one");
    drop(big); // detached: dropping the server below ends its request
}

/// A bulk ingest marked `X-Priority: 10` (64 requests of one long passage each) is
/// queued; a query at priority 0 then goes ahead of the bulk work still queued instead of
/// waiting its turn behind all 64 requests.
#[test]
fn interactive_work_overtakes_queued_bulk_work() {
    let _slot = timing_slot();
    let server = Arc::new(Server::start(ServerOptions { models: vec![MINILM], ..Default::default() }));
    // Warm up, and let the batcher learn the worker's pace.
    for i in 0..4 {
        let body = json!({"model": MINILM, "input": [long_passage(i), long_passage(i + 1)]});
        assert_eq!(server.post("/v1/embeddings", &body).0, 200);
    }
    let done: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let bulk: Vec<_> = (0..64)
        .map(|i| {
            let (server, done) = (server.clone(), done.clone());
            thread::spawn(move || {
                let body = json!({"model": MINILM, "input": [long_passage(1000 + i)]});
                let (status, resp) = post_with(&server, "/v1/embeddings", &body, &[("X-Priority", "10")]);
                assert_eq!(status, 200, "{resp}");
                done.lock().unwrap().push(Instant::now());
            })
        })
        .collect();
    server.wait_for("bulk work to queue", Duration::from_secs(60), || {
        server.metric("mlx_serve_queue_depth_by_priority", &[("model", MINILM), ("priority", "10")]) >= 32.0
    });
    let t = Instant::now();
    let (status, resp) =
        post_with(&server, "/v1/embeddings", &json!({"model": MINILM, "input": "a query", "priority": 0}), &[]);
    let took = t.elapsed();
    let answered = Instant::now();
    assert_eq!(status, 200, "{resp}");
    for b in bulk {
        b.join().unwrap();
    }
    let after = done.lock().unwrap().iter().filter(|&&d| d > answered).count();
    let waited = server.metric("mlx_serve_queue_wait_seconds_sum", &[("model", MINILM), ("priority", "0")]);
    eprintln!("query answered in {took:?} (queue wait {waited:.3} s); {after} of 64 bulk requests finished after it");
    assert!(after >= 24, "the query waited behind the bulk work: only {after} of 64 bulk requests finished after it");
    // Per-priority wait times were recorded for both classes.
    for p in ["0", "10"] {
        let n = server.metric("mlx_serve_queue_wait_seconds_count", &[("model", MINILM), ("priority", p)]);
        assert!(n >= 1.0, "no queue wait recorded for priority {p}");
    }
}

#[test]
fn priority_is_taken_on_its_routes_and_checked() {
    let server = Server::start(ServerOptions { models: vec![MINILM, "tiny-bert-rerank"], ..Default::default() });
    let embed = |body: Value, headers: &[(&str, &str)]| post_with(&server, "/v1/embeddings", &body, headers);
    // OpenAI with vLLM's extension: was a 400 "unknown field".
    let (status, body) = embed(json!({"model": MINILM, "input": "x", "priority": 5}), &[]);
    assert_eq!(status, 200, "{body}");
    let (status, body) = embed(json!({"model": MINILM, "input": "x", "priority": 5000}), &[]);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "priority", "{body}");
    let (status, body) = embed(json!({"model": MINILM, "input": "x", "priority": "high"}), &[]);
    assert_eq!(status, 400, "{body}");
    // The header on any route, refused in the route's own error shape.
    assert_eq!(embed(json!({"model": MINILM, "input": "x"}), &[("X-Priority", "-3")]).0, 200);
    let (status, body) = embed(json!({"model": MINILM, "input": "x"}), &[("X-Priority", "soon")]);
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("X-Priority"), "{body}");
    let (status, body) =
        post_with(&server, "/api/embed", &json!({"model": MINILM, "input": "x"}), &[("X-Priority", "soon")]);
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("X-Priority"), "Ollama's shape: {body}");
    // Cohere embed and rerank.
    let (status, body) = post_with(
        &server,
        "/v2/embed",
        &json!({"model": MINILM, "texts": ["x"], "input_type": "search_query", "embedding_types": ["float"], "priority": 3}),
        &[],
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = post_with(
        &server,
        "/v1/rerank",
        &json!({"model": "tiny-bert-rerank", "query": "q", "documents": ["d"], "priority": -1}),
        &[],
    );
    assert_eq!(status, 200, "{body}");
    let (status, _) = post_with(
        &server,
        "/v1/rerank",
        &json!({"model": "tiny-bert-rerank", "query": "q", "documents": ["d"], "priority": 99999}),
        &[],
    );
    assert_eq!(status, 400);
}

/// Bulk work may fill the queue only up to an eighth below `batch.max_queue_size`: the same
/// request that is refused (429) as bulk is taken at the default priority, so a query always
/// finds room beside an ingest that keeps the queue full.
#[test]
fn bulk_work_leaves_room_in_the_queue_for_queries() {
    const BERT: &str = "tiny-bert-embed";
    let server = Arc::new(Server::start(ServerOptions {
        models: vec![BERT],
        // 16 inputs in all, 14 for bulk work; no watchdog, the worker is frozen below.
        config: Some("batch:\n  max_batch_size: 1\n  max_queue_size: 16\nlimits:\n  hung_worker_seconds: 0\n".into()),
        ..Default::default()
    }));
    assert_eq!(server.post("/v1/embeddings", &json!({"model": BERT, "input": "warm up"})).0, 200);
    let frozen = mlx_serve_tests::process::Frozen::new(server.worker_pids()[0]);
    let send = |n: usize, priority: &'static str| {
        let server = server.clone();
        thread::spawn(move || {
            let input: Vec<String> = (0..n).map(|i| format!("{priority} {i}")).collect();
            post_with(&server, "/v1/embeddings", &json!({"model": BERT, "input": input}), &[("X-Priority", priority)]).0
        })
    };
    // A bulk request that the frozen worker leaves in the queue. Bulk work that yields
    // has one batch in flight, none sent ahead (docs/scheduling.md).
    let first = send(12, "10");
    server.wait_for("bulk inputs queued", Duration::from_secs(30), || {
        let (_, queued, in_flight) = server.queue_state(BERT);
        queued + in_flight == 12 && in_flight == 1
    });
    let queued = server.queue_state(BERT).1 as usize;
    // One input more than bulk work may add, within the whole queue.
    let n = 14 - queued + 1;
    assert!(queued + n <= 16, "{queued} queued");
    // Refused at once; taken, it would wait for the frozen worker past the timeout.
    let refused = ureq::post(&server.url("/v1/embeddings"))
        .timeout(Duration::from_secs(10))
        .set("X-Priority", "10")
        .send_json(json!({"model": BERT, "input": vec!["bulk"; n]}));
    assert!(matches!(refused, Err(ureq::Error::Status(429, _))), "bulk past its share of the queue: {refused:?}");
    let query = send(n, "0");
    // Taken; and a query may be sent ahead of the batch computing, as bulk work may not.
    server.wait_for("the query taken, one of its inputs sent ahead", Duration::from_secs(30), || {
        let (_, now_queued, in_flight) = server.queue_state(BERT);
        now_queued as usize + in_flight as usize == 12 + n && in_flight == 2
    });
    drop(frozen);
    assert_eq!(query.join().unwrap(), 200);
    assert_eq!(first.join().unwrap(), 200);
}
