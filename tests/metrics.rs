//! `/metrics` end to end: real traffic against a real daemon with real workers, the text
//! parsed by an independent parser (Python's `prometheus_client`, tests/clients/
//! parse_metrics.py), and a real Prometheus server scraping it and answering PromQL.

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::time::{Duration, Instant};

use mlx_serve_tests::cli::{candidate_port, retry_on_port_clash};
use mlx_serve_tests::fixtures::{copy_dir, repo_root};
use mlx_serve_tests::prometheus::{self, Prometheus};
use mlx_serve_tests::raw;
use mlx_serve_tests::server::{run_client, signal, Server, ServerOptions};
use mlx_serve_tests::tools::missing_tool;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// The exposition, as the independent parser reads it.

struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

struct Scrape {
    /// Family name (counters without `_total`, as prometheus_client names them) → type.
    families: HashMap<String, String>,
    samples: Vec<Sample>,
}

impl Scrape {
    fn matching<'a>(&'a self, name: &'a str, labels: &'a [(&str, &str)]) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// Sum of the samples named `name` whose labels include `labels` (0 when none).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.matching(name, labels).next().is_some()
    }

    fn type_of(&self, family: &str) -> &str {
        self.families.get(family).map(String::as_str).unwrap_or("<missing>")
    }

    fn label_values(&self, label: &str) -> Vec<&str> {
        self.samples.iter().filter_map(|s| s.labels.get(label).map(String::as_str)).collect()
    }

    fn dump(&self) -> String {
        self.samples
            .iter()
            .filter(|s| !s.name.ends_with("_bucket"))
            .map(|s| format!("{}{:?} {}", s.name, s.labels, s.value))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Fetches `target` (a path on the server, or a full URL) and parses it with Python's
/// prometheus_client.
fn scrape(server: &Server, target: &str) -> Scrape {
    let out = run_client("parse_metrics.py", server, &[target]);
    let v: Value = serde_json::from_str(out.trim()).expect("parser output is JSON");
    assert!(
        v["content_type"].as_str().unwrap_or("").starts_with("text/plain; version=0.0.4"),
        "exposition content type: {}",
        v["content_type"]
    );
    let families =
        v["families"].as_object().unwrap().iter().map(|(k, t)| (k.clone(), t.as_str().unwrap().to_owned())).collect();
    let samples = v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| Sample {
            name: s["name"].as_str().unwrap().to_owned(),
            labels: s["labels"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect(),
            value: s["value"].as_f64().unwrap_or_else(|| s["value"].as_str().unwrap().parse().unwrap()),
        })
        .collect();
    Scrape { families, samples }
}

// ---------------------------------------------------------------------------------------
// Traffic helpers that know exactly how many body bytes they sent.

/// POSTs `body` with a Content-Length; returns status, JSON answer and bytes sent.
fn post_sized(server: &Server, path: &str, body: &Value) -> (u16, Value, usize) {
    let bytes = serde_json::to_vec(body).unwrap();
    let r = ureq::post(&server.url(path))
        .set("Content-Type", "application/json")
        .timeout(Duration::from_secs(120))
        .send_bytes(&bytes);
    let (status, v) = answer(r);
    (status, v, bytes.len())
}

/// POSTs `body` with chunked transfer encoding (no Content-Length).
fn post_chunked(server: &Server, path: &str, body: &Value) -> (u16, Value, usize) {
    let bytes = serde_json::to_vec(body).unwrap();
    let len = bytes.len();
    let r = ureq::post(&server.url(path))
        .set("Content-Type", "application/json")
        .timeout(Duration::from_secs(120))
        .send(Cursor::new(bytes));
    let (status, v) = answer(r);
    (status, v, len)
}

fn answer(r: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    match r {
        Ok(resp) => (resp.status(), resp.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, resp)) => (code, resp.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("request failed: {e}"),
    }
}

/// The worker process serving `model` (its command line names the model folder).
fn worker_pid_of(server: &Server, model: &str) -> Option<u32> {
    server.worker_pid_of(model)
}

const BERT: &str = "tiny-bert-embed";
const XLMR: &str = "tiny-xlmr-embed";
const RERANK: &str = "tiny-bert-rerank";

#[test]
fn metrics_move_with_real_traffic() {
    // One embedding model at a time, so using the second one evicts the first (LRU).
    let server = Server::start(ServerOptions {
        models: vec![BERT, XLMR, RERANK],
        config: Some("cache:\n  max_embedding_models: 1\n".into()),
        ..Default::default()
    });
    let before = scrape(&server, "/metrics");
    // Known label sets start at zero instead of appearing with the first event.
    for name in ["mlx_serve_cache_hits_total", "mlx_serve_cache_misses_total", "mlx_serve_cache_evictions_total"] {
        for kind in ["embedding", "reranker"] {
            assert!(before.has(name, &[("type", kind)]), "{name}{{type={kind}}} missing before traffic");
        }
    }
    assert_eq!(before.value("mlx_serve_models_loaded", &[]), 0.0);

    let embed = "/v1/embeddings";
    let mut embed_bytes = 0usize;
    let mut bert_tokens = 0.0;

    // 1. First use of BERT: a cache miss that starts its worker.
    let (st, resp, n) = post_sized(&server, embed, &json!({"model": BERT, "input": "hello metrics"}));
    assert_eq!(st, 200, "{resp}");
    embed_bytes += n;
    bert_tokens += resp["usage"]["prompt_tokens"].as_f64().unwrap();
    // 2. BERT again, three inputs of different lengths in one request: a hit, one batch
    //    of three, and padding.
    let three =
        json!({"model": BERT, "input": ["a", "a somewhat longer input", "the longest input of these three by far"]});
    let (st, resp, n) = post_sized(&server, embed, &three);
    assert_eq!(st, 200, "{resp}");
    embed_bytes += n;
    bert_tokens += resp["usage"]["prompt_tokens"].as_f64().unwrap();
    // 3. A 400 (no input), a 404 for an unknown model on a real route, a 404 for no route.
    let (st, _, n) = post_sized(&server, embed, &json!({"model": BERT}));
    assert_eq!(st, 400);
    embed_bytes += n;
    let (st, _, n) = post_sized(&server, embed, &json!({"model": "no-such-model-xyz", "input": "x"}));
    assert_eq!(st, 404);
    embed_bytes += n;
    let (st, _) = server.get("/no/such/path/42");
    assert_eq!(st, 404);
    // 4. XLM-R: a miss that evicts BERT (max_embedding_models: 1).
    let (st, resp, n) = post_sized(&server, embed, &json!({"model": XLMR, "input": "bonjour"}));
    assert_eq!(st, 200, "{resp}");
    embed_bytes += n;
    // 5. XLM-R again with a chunked body: a hit, and a size counted from the body itself.
    let (st, resp, n) = post_chunked(&server, embed, &json!({"model": XLMR, "input": ["chunked", "body"]}));
    assert_eq!(st, 200, "{resp}");
    embed_bytes += n;
    // 6. A reranker: miss, then hit; three documents each time.
    let rerank =
        json!({"model": RERANK, "query": "what is mlx", "documents": ["an array framework", "a cat", "apple silicon"]});
    for _ in 0..2 {
        let (st, resp, _) = post_sized(&server, "/v1/rerank", &rerank);
        assert_eq!(st, 200, "{resp}");
    }

    let after = scrape(&server, "/metrics");
    let d = |name: &str, labels: &[(&str, &str)]| after.value(name, labels) - before.value(name, labels);
    let ctx = after.dump();

    // Types, as the independent parser reads them.
    for (family, kind) in [
        ("mlx_serve_requests", "counter"),
        ("mlx_serve_request_duration_seconds", "histogram"),
        ("mlx_serve_request_size_bytes", "histogram"),
        ("mlx_serve_model_load_seconds", "histogram"),
        ("mlx_serve_model_inference_seconds", "histogram"),
        ("mlx_serve_worker_forward_seconds", "histogram"),
        ("mlx_serve_models_loaded", "gauge"),
        ("mlx_serve_cache_hits", "counter"),
        ("mlx_serve_cache_misses", "counter"),
        ("mlx_serve_cache_evictions", "counter"),
        ("mlx_serve_memory_usage_bytes", "gauge"),
        ("mlx_serve_batch_size", "histogram"),
        ("mlx_serve_queue_depth", "gauge"),
        ("mlx_serve_tokens", "counter"),
        ("mlx_serve_padded_tokens", "counter"),
        ("mlx_serve_worker_state", "gauge"),
        ("mlx_serve_uptime_seconds", "gauge"),
    ] {
        assert_eq!(after.type_of(family), kind, "type of {family}");
    }

    // Requests by route template and status.
    let req = "mlx_serve_requests_total";
    assert_eq!(d(req, &[("endpoint", embed), ("status", "200")]), 4.0, "{ctx}");
    assert_eq!(d(req, &[("endpoint", embed), ("status", "400")]), 1.0, "{ctx}");
    assert_eq!(d(req, &[("endpoint", embed), ("status", "404")]), 1.0, "{ctx}");
    assert_eq!(d(req, &[("endpoint", "unmatched"), ("status", "404")]), 1.0, "{ctx}");
    assert_eq!(d(req, &[("endpoint", "/v1/rerank"), ("status", "200")]), 2.0, "{ctx}");
    // Bounded labels: no raw path, no user-supplied model name anywhere.
    let endpoints = after.label_values("endpoint");
    assert!(endpoints.iter().all(|e| !e.contains("no/such")), "raw path in a label: {endpoints:?}");
    assert!(after.samples.iter().all(|s| s.labels.values().all(|v| !v.contains("no-such-model"))), "{ctx}");
    let models: Vec<&str> = after.label_values("model").into_iter().filter(|m| !m.is_empty()).collect();
    assert!(models.iter().all(|m| [BERT, XLMR, RERANK].contains(m)), "model labels {models:?}");

    // Duration histogram: one observation per request, buckets cumulative up to +Inf.
    let dur = "mlx_serve_request_duration_seconds";
    assert_eq!(d(&format!("{dur}_count"), &[("endpoint", embed)]), 6.0, "{ctx}");
    assert_eq!(
        after.value(&format!("{dur}_bucket"), &[("endpoint", embed), ("le", "+Inf")]),
        after.value(&format!("{dur}_count"), &[("endpoint", embed)])
    );
    let mut buckets: Vec<(f64, f64)> = after
        .matching(&format!("{dur}_bucket"), &[("endpoint", embed)])
        .map(|s| (s.labels["le"].parse::<f64>().unwrap(), s.value))
        .collect();
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "buckets not cumulative: {buckets:?}");
    assert!(d(&format!("{dur}_sum"), &[("endpoint", embed)]) > 0.0);

    // Request sizes: exactly the bytes sent, chunked body included.
    let size = "mlx_serve_request_size_bytes";
    assert_eq!(d(&format!("{size}_count"), &[("endpoint", embed)]), 6.0);
    assert_eq!(d(&format!("{size}_sum"), &[("endpoint", embed)]), embed_bytes as f64, "{ctx}");

    // Cache: BERT miss + hit, XLM-R miss + hit, reranker miss + hit; BERT evicted for XLM-R.
    assert_eq!(d("mlx_serve_cache_misses_total", &[("type", "embedding")]), 2.0, "{ctx}");
    assert_eq!(d("mlx_serve_cache_hits_total", &[("type", "embedding")]), 2.0, "{ctx}");
    assert_eq!(d("mlx_serve_cache_misses_total", &[("type", "reranker")]), 1.0, "{ctx}");
    assert_eq!(d("mlx_serve_cache_hits_total", &[("type", "reranker")]), 1.0, "{ctx}");
    assert_eq!(d("mlx_serve_cache_evictions_total", &[("type", "embedding")]), 1.0, "{ctx}");
    assert_eq!(d("mlx_serve_cache_evictions_total", &[("type", "reranker")]), 0.0, "{ctx}");
    assert_eq!(after.value("mlx_serve_models_loaded", &[("type", "embedding")]), 1.0, "{ctx}");
    assert_eq!(after.value("mlx_serve_models_loaded", &[("type", "reranker")]), 1.0, "{ctx}");
    assert_eq!(after.value("mlx_serve_worker_state", &[("model", XLMR), ("state", "ready")]), 1.0, "{ctx}");
    assert_eq!(after.value("mlx_serve_worker_state", &[("model", BERT), ("state", "stopped")]), 1.0, "{ctx}");

    // Batches: every sequence goes through exactly one batch; the three-input request was
    // one batch of three (the bucket le=4 minus le=2).
    let bs = "mlx_serve_batch_size";
    assert_eq!(d(&format!("{bs}_sum"), &[("endpoint", "embed")]), 1.0 + 3.0 + 1.0 + 2.0, "{ctx}");
    assert_eq!(d(&format!("{bs}_sum"), &[("endpoint", "rerank")]), 6.0, "{ctx}");
    let three_batch = after.value(&format!("{bs}_bucket"), &[("endpoint", "embed"), ("le", "4")])
        - after.value(&format!("{bs}_bucket"), &[("endpoint", "embed"), ("le", "2")]);
    assert!(three_batch >= 1.0, "no batch of 3 observed: {ctx}");
    let batches = d(&format!("{bs}_count"), &[("endpoint", "embed")]);
    let inference = d("mlx_serve_model_inference_seconds_count", &[("model", BERT)])
        + d("mlx_serve_model_inference_seconds_count", &[("model", XLMR)]);
    assert_eq!(inference, batches, "one inference observation per batch");
    // The worker's own forward time: one per batch, inside the time from send to answer.
    let per_model = |name: &str| d(name, &[("model", BERT)]) + d(name, &[("model", XLMR)]);
    assert_eq!(per_model("mlx_serve_worker_forward_seconds_count"), batches, "{ctx}");
    let forward = per_model("mlx_serve_worker_forward_seconds_sum");
    let in_worker = per_model("mlx_serve_model_inference_seconds_sum");
    assert!(forward > 0.0 && forward <= in_worker, "forward {forward} s, send to answer {in_worker} s: {ctx}");
    assert_eq!(d("mlx_serve_model_load_seconds_count", &[("model", BERT)]), 1.0);
    assert_eq!(d("mlx_serve_model_load_seconds_count", &[("model", XLMR)]), 1.0);

    // Tokens: the real count is what the API reported as usage. The worker packs batches
    // (no padding), so the tokens it computed are the real ones, even for the batch of
    // three inputs of different lengths.
    let tokens = d("mlx_serve_tokens_total", &[("model", BERT)]);
    let padded = d("mlx_serve_padded_tokens_total", &[("model", BERT)]);
    assert_eq!(tokens, bert_tokens, "{ctx}");
    assert_eq!(padded, tokens, "a packed worker computes no padding: {ctx}");

    // Nothing left queued; memory of the supervisor and of each live worker (RSS and MLX).
    for s in after.matching("mlx_serve_queue_depth", &[]) {
        assert_eq!(s.value, 0.0, "queue depth {:?}", s.labels);
    }
    let mem = "mlx_serve_memory_usage_bytes";
    assert!(after.value(mem, &[("component", "supervisor")]) > 1e6, "{ctx}");
    for model in [XLMR, RERANK] {
        assert!(after.value(mem, &[("component", "worker"), ("model", model)]) > 1e6, "{model}: {ctx}");
        assert!(after.value(mem, &[("component", "mlx_active"), ("model", model)]) > 0.0, "{model}: {ctx}");
    }
    assert_eq!(after.value(mem, &[("component", "worker"), ("model", BERT)]), 0.0, "evicted worker: {ctx}");
    assert!(after.value("mlx_serve_uptime_seconds", &[]) > 0.0);

    // A worker killed with SIGKILL is restarted, and the counter says so.
    let pid = worker_pid_of(&server, XLMR).expect("XLM-R worker running");
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(30);
    let restarted = loop {
        let (st, resp, _) = post_sized(&server, embed, &json!({"model": XLMR, "input": "after the crash"}));
        assert_eq!(st, 200, "request after the worker crash: {resp}\n{}", server.log_text());
        let now = scrape(&server, "/metrics");
        if now.value("mlx_serve_worker_restarts_total", &[("model", XLMR)]) >= 1.0 || Instant::now() > deadline {
            break now;
        }
        std::thread::sleep(Duration::from_millis(200)); // polling interval of a condition wait (bounded by its deadline)
    };
    assert_eq!(restarted.value("mlx_serve_worker_restarts_total", &[("model", XLMR)]), 1.0, "{}", restarted.dump());
    assert_eq!(restarted.value("mlx_serve_worker_restarts_total", &[("model", RERANK)]), 0.0);
    assert_eq!(restarted.value("mlx_serve_model_load_seconds_count", &[("model", XLMR)]), 2.0);
    assert_ne!(worker_pid_of(&server, XLMR), Some(pid), "a new worker process");

    assert_eq!(server.stop(), Some(0));
}

#[test]
fn metrics_disabled_means_404() {
    let server = Server::start(ServerOptions {
        models: vec![BERT],
        config: Some("metrics:\n  enabled: false\n".into()),
        ..Default::default()
    });
    let (st, body) = server.get_text("/metrics");
    assert_eq!(st, 404, "{body}");
    assert!(!body.contains("mlx_serve_"), "{body}");
    // The rest of the server is unaffected.
    let (st, _) = server.post("/v1/embeddings", &json!({"model": BERT, "input": "still serving"}));
    assert_eq!(st, 200);
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn metrics_port_serves_a_second_listener() {
    // The server does not report the metrics listener's address, so the test names the
    // port: a candidate from the OS, and another one if something takes it first.
    let (server, port) = retry_on_port_clash(|| {
        let port = candidate_port();
        let opts = ServerOptions {
            models: vec![BERT],
            config: Some(format!("metrics:\n  port: {port}\n")),
            ..Default::default()
        };
        Server::try_start(opts).map(|s| (s, port))
    });
    let (st, _) = server.post("/v1/embeddings", &json!({"model": BERT, "input": "counted once"}));
    assert_eq!(st, 200);
    let second = scrape(&server, &format!("http://127.0.0.1:{port}/metrics"));
    let main = scrape(&server, "/metrics");
    let ok = [("endpoint", "/v1/embeddings"), ("status", "200")];
    // The same registry on both listeners.
    assert_eq!(second.value("mlx_serve_requests_total", &ok), 1.0, "{}", second.dump());
    assert_eq!(main.value("mlx_serve_requests_total", &ok), 1.0);
    assert_eq!(second.value("mlx_serve_models_loaded", &[("type", "embedding")]), 1.0);
    // The second listener only serves /metrics.
    let r = ureq::get(&format!("http://127.0.0.1:{port}/v1/models")).call();
    assert!(matches!(r, Err(ureq::Error::Status(404, _))), "{r:?}");
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn the_metrics_port_asks_for_the_api_key_unless_told_not_to() {
    const KEY: &str = "metrics-key-0123";
    for require in [true, false] {
        let (server, port) = retry_on_port_clash(|| {
            let port = candidate_port();
            let config = format!("server:\n  api_key: {KEY}\nmetrics:\n  port: {port}\n  require_api_key: {require}\n");
            let opts = ServerOptions { models: vec![BERT], config: Some(config), ..Default::default() };
            Server::try_start(opts).map(|s| (s, port))
        });
        let without = raw::request(port, "GET /metrics HTTP/1.1", b"");
        let with = raw::request(port, &format!("GET /metrics HTTP/1.1\r\nAuthorization: Bearer {KEY}"), b"");
        let wrong = raw::request(port, "GET /metrics HTTP/1.1\r\nAuthorization: Bearer not-the-key", b"");
        assert_eq!(with.status, 200, "{with:?}");
        assert!(with.body.contains("mlx_serve_"), "{with:?}");
        if require {
            for a in [&without, &wrong] {
                assert_eq!(a.status, 401, "require_api_key: {a:?}");
                assert_eq!(a.json()["error"]["code"], "invalid_api_key", "{a:?}");
                assert!(!a.body.contains("mlx_serve_"), "{a:?}");
            }
        } else {
            assert_eq!(without.status, 200, "require_api_key false: {without:?}");
        }
        // The main port asks for the key either way on other routes.
        assert_eq!(raw::request(server.port, "GET /v1/models HTTP/1.1", b"").status, 401);
        assert_eq!(server.stop(), Some(0));
    }
}

#[test]
fn deleted_model_leaves_no_series() {
    let server = Server::start(ServerOptions { models: vec![XLMR], ..Default::default() });
    let copy = "bert-copy";
    copy_dir(&mlx_serve_tests::server::model_source(BERT), &server.home.path().join("models").join(copy));
    for model in [copy, XLMR] {
        let (st, resp) = server.post("/v1/embeddings", &json!({"model": model, "input": "labelled"}));
        assert_eq!(st, 200, "{resp}");
    }
    let before = scrape(&server, "/metrics");
    assert!(before.has("mlx_serve_tokens_total", &[("model", copy)]), "{}", before.dump());
    let r = ureq::delete(&server.url("/api/delete")).send_json(json!({"model": copy}));
    assert!(r.is_ok(), "delete: {r:?}");
    let after = scrape(&server, "/metrics");
    let left: Vec<String> = after
        .samples
        .iter()
        .filter(|s| s.labels.get("model").map(String::as_str) == Some(copy))
        .map(|s| format!("{}{:?}", s.name, s.labels))
        .collect();
    assert!(left.is_empty(), "series of a deleted model: {left:?}");
    // The other model's series stay.
    assert!(after.has("mlx_serve_tokens_total", &[("model", XLMR)]));
    assert_eq!(server.stop(), Some(0));
}

// ---------------------------------------------------------------------------------------
// A real Prometheus server.

/// The PromQL examples in docs/metrics.md (```promql blocks, one query per line).
fn documented_queries() -> Vec<String> {
    let doc = std::fs::read_to_string(repo_root().join("docs/metrics.md")).expect("docs/metrics.md");
    let mut out = Vec::new();
    let mut inside = false;
    for line in doc.lines() {
        match line.trim() {
            "```promql" => inside = true,
            "```" => inside = false,
            q if inside && !q.is_empty() && !q.starts_with('#') => out.push(q.to_owned()),
            _ => {}
        }
    }
    out
}

#[test]
fn prometheus_scrapes_and_answers_promql() {
    // scripts/setup installs it (Debian package prometheus, Homebrew formula prometheus).
    let Some(binary) = prometheus::binary() else {
        return missing_tool("prometheus", "Debian's or Homebrew's package prometheus, or PROMETHEUS_BIN");
    };
    let server = Server::start(ServerOptions { models: vec![BERT], ..Default::default() });
    let prom = Prometheus::start(&binary, server.port, "mlx-serve", &[]);

    let counter = r#"mlx_serve_requests_total{job="mlx-serve",endpoint="/v1/embeddings",status="200"}"#;
    let p50 = r#"histogram_quantile(0.5, sum by (le) (rate(mlx_serve_request_duration_seconds_bucket{job="mlx-serve",endpoint="/v1/embeddings"}[5s])))"#;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (count, median) = loop {
        // Keep traffic flowing so rate() has increases to work with.
        for i in 0..3 {
            let (st, _) = server.post("/v1/embeddings", &json!({"model": BERT, "input": format!("sample {i}")}));
            assert_eq!(st, 200);
        }
        let first = |v: &Value| -> Option<f64> { v["data"]["result"][0]["value"][1].as_str()?.parse().ok() };
        let c = first(&prom.query(counter));
        let q = first(&prom.query(p50)).filter(|q| q.is_finite());
        if let (Some(c), Some(q)) = (c, q) {
            break (c, q);
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not report the counter and p50 within 60 s.\ncounter: {}\np50: {}\ntargets: {}\nlog:\n{}",
            prom.query(counter),
            prom.query(p50),
            ureq::get(&format!("http://127.0.0.1:{}/api/v1/targets", prom.port))
                .call()
                .map(|r| r.into_string().unwrap_or_default())
                .unwrap_or_default(),
            prom.log()
        );
        std::thread::sleep(Duration::from_millis(500)); // polling interval of a condition wait (bounded by its deadline)
    };
    eprintln!("Prometheus: requests_total {count}, p50 request duration {:.2} ms", median * 1e3);
    assert!(count >= 1.0, "requests counter {count}");
    assert!(median > 0.0 && median < 10.0, "p50 request duration {median} s");
    let up = prom.query(r#"up{job="mlx-serve"}"#);
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");

    // Every PromQL example in docs/metrics.md is valid PromQL over our series.
    let queries = documented_queries();
    assert!(queries.len() >= 4, "docs/metrics.md lists PromQL examples");
    for q in queries {
        let r = prom.query(&q);
        assert_eq!(r["status"], "success", "documented query {q}: {r}");
    }
    drop(prom);
    assert_eq!(server.stop(), Some(0));
}
