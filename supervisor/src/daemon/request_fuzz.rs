//! A fuzz target for request decoding and validation, as a property test (`proptest`; the
//! toolchain here is stable, so no `cargo fuzz`): random and mutated JSON bodies — and
//! bytes that are not JSON — on every route that reads a body, sent in-process through
//! the real router (`api::router`: every middleware, real store with copies of the tiny
//! fixture models, real tokenizers; the fake worker computes). Every answer must be:
//!
//! - never a 5xx: a bad body is the client's fault;
//! - an error in the route's own shape (Ollama's `{"error": "…"}` under `/api/`, OpenAI's
//!   `{"error": {"message", "type", …}}` elsewhere), or a JSON success;
//! - free of internals: no store path, no panic or backtrace text;
//! - and no panic anywhere (a panicking handler would surface as a 500 here).
//!
//! Bounded: it stops generating after `MLX_SERVE_FUZZ_SECONDS` (default 20) or its case
//! count, whichever comes first, so it runs in the normal suite. `/api/pull` gets only
//! bodies without a string model name: a valid one would start a real download.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request};
use axum::Router;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::api::AppState;
use crate::batch::Limits;
use crate::config::Config;
use crate::runner::{Pool, PoolConfig, RunnerConfig};
use crate::store::downloads::Downloads;
use crate::store::Store;
use crate::worker::fake::FakeLauncher;

/// A route with a body, a valid request for it, and whether string model names may be
/// sent (not to `/api/pull`).
struct Route {
    method: Method,
    path: &'static str,
    valid: Value,
    names_ok: bool,
}

fn routes() -> Vec<Route> {
    let post = |path, valid| Route { method: Method::POST, path, valid, names_ok: true };
    vec![
        post(
            "/v1/embeddings",
            json!({"model": "emb", "input": ["hello world", "hi"], "encoding_format": "float", "dimensions": 2}),
        ),
        post("/embeddings", json!({"model": "emb", "input": [[101, 7592, 102]], "truncate": false})),
        post(
            "/v1/rerank",
            json!({"model": "rr", "query": "q", "documents": ["a", {"text": "b"}], "top_n": 1, "return_documents": true}),
        ),
        post("/rerank", json!({"query": "q", "texts": ["a", "b"], "raw_scores": true, "return_text": true})),
        post(
            "/v2/rerank",
            json!({"model": "rr", "query": "q", "documents": ["a"], "decision_threshold": 0.5, "return_text": true}),
        ),
        post("/v1/tokenize", json!({"model": "emb", "input": ["hello", "world"], "truncate": true})),
        post("/tokenize", json!({"model": "rr", "query": "q", "documents": ["a", "b"]})),
        post("/api/embed", json!({"model": "emb", "input": ["hello"], "truncate": true, "dimensions": 2})),
        post("/api/embeddings", json!({"model": "emb", "prompt": "hello"})),
        post("/api/show", json!({"model": "emb"})),
        Route { method: Method::DELETE, path: "/api/delete", valid: json!({"model": "no-such-model"}), names_ok: true },
        Route { method: Method::POST, path: "/api/pull", valid: json!({"model": 7, "stream": false}), names_ok: false },
    ]
}

/// Any JSON value, a few levels deep, with the strings and numbers that break parsers.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(-1i64), Just(0i64), any::<i64>()].prop_map(Value::from),
        prop_oneof![Just(u64::MAX), any::<u64>()].prop_map(Value::from),
        prop_oneof![Just(1e308f64), Just(-0.0f64), Just(0.5f64), any::<f64>()].prop_map(|f| json!(f)),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((field_name(), inner), 0..5).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Strings: empty, whitespace, NUL and zero-width only, long, unicode, path tricks.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("\0".to_owned()),
        Just("\u{200b}\u{200b}".to_owned()),
        Just(" ".to_owned()),
        Just("../../etc/passwd".to_owned()),
        Just("emb".to_owned()),
        Just("rr".to_owned()),
        "\\PC{0,40}",
        "[a-z ]{0,20}".prop_map(|s| s.repeat(50)),
    ]
}

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "model",
            "input",
            "query",
            "documents",
            "texts",
            "prompt",
            "top_n",
            "truncate",
            "dimensions",
            "encoding_format",
            "instruction",
            "return_documents",
            "return_text",
            "raw_scores",
            "decision_threshold",
            "name",
            "stream",
            "options",
            "keep_alive",
            "user",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{1,12}",
    ]
}

/// A body for `route`: its valid request with fields dropped, replaced by anything or
/// added; any JSON at all; or bytes that are not JSON.
fn body(route: &Route) -> BoxedStrategy<Vec<u8>> {
    let valid = route.valid.clone();
    let names_ok = route.names_ok;
    let mutated = prop::collection::vec((field_name(), prop::option::of(any_json())), 0..4).prop_map(move |edits| {
        let mut v = valid.clone();
        let obj = v.as_object_mut().expect("templates are objects");
        for (key, value) in edits {
            match value {
                Some(x) => obj.insert(key, x),
                None => obj.remove(&key),
            };
        }
        if !names_ok {
            for key in ["model", "name"] {
                if obj.get(key).is_some_and(Value::is_string) {
                    obj.insert(key.to_owned(), json!(7));
                }
            }
        }
        serde_json::to_vec(&v).unwrap()
    });
    let names_ok = route.names_ok;
    let anything = any_json().prop_map(move |v| {
        let v = match v {
            Value::Object(mut o) if !names_ok => {
                o.remove("model");
                o.remove("name");
                Value::Object(o)
            }
            v => v,
        };
        serde_json::to_vec(&v).unwrap()
    });
    let raw = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        Just(b"{".to_vec()),
        Just(b"{\"model\": \"emb\", \"input\": [\"a\"".to_vec()),
        Just(b"[]".to_vec()),
        Just(b"\"\\ud800\"".to_vec()),
        Just(b"{\"input\": 1e999}".to_vec()),
        Just(format!("{}1{}", "[".repeat(200), "]".repeat(200)).into_bytes()),
    ];
    prop_oneof![6 => mutated, 3 => anything, 1 => raw].boxed()
}

/// The models the store holds: copies of the fixtures (`/api/delete` may remove them).
fn store_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mlx-serve-request-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models");
    for (name, fixture) in [("emb", "tiny-bert-embed"), ("rr", "tiny-bert-rerank")] {
        copy_dir(&fixtures.join(fixture), &dir.join(name));
    }
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

struct App {
    rt: tokio::runtime::Runtime,
    router: Router,
    store: PathBuf,
}

fn app() -> &'static App {
    static APP: OnceLock<App> = OnceLock::new();
    APP.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let store = store_dir();
        let mut config = Config::default();
        config.models.directory = Some(store.clone());
        config.models.auto_download = false;
        config.limits.max_documents_per_rerank = 4;
        config.limits.max_inputs_per_request = 8;
        let router = rt.block_on(async {
            let runner_cfg = RunnerConfig {
                limits: Limits { max_batch_size: 8, max_batch_tokens: 4096 },
                gpu_limits: Limits { max_batch_size: 8, max_batch_tokens: 4096 },
                max_wait: Duration::from_millis(1),
                aging: Duration::from_secs(1),
                max_batch_time: Duration::ZERO,
                bulk_max_batch_time: Duration::ZERO,
                default_priority: 0,
                max_queue: 64,
                stop_grace: Duration::from_secs(1),
                hung_after: Duration::ZERO, // no watchdog: the fake worker answers at once
                launcher: Arc::new(FakeLauncher::default()),
                cpu_gate: crate::runner::cpu_gate::CpuGate::global(),
            };
            let s = Store::new(store.clone());
            let pool = Pool::new(
                s.clone(),
                PoolConfig {
                    cache: config.cache.clone(),
                    preload: Vec::new(),
                    vector_cache_bytes: 0,
                    vector_disk: None,
                },
                runner_cfg,
            );
            let state =
                AppState::new(pool, Arc::new(Downloads::new(s)), Arc::new(config), Arc::new(AtomicBool::new(true)));
            crate::api::router(state)
        });
        App { rt, router, store }
    })
}

/// Sends one request and checks the answer against the properties in the header.
fn check(route: &Route, body: Vec<u8>) -> Result<(), TestCaseError> {
    let app = app();
    let req = Request::builder()
        .method(route.method.clone())
        .uri(route.path)
        .header("content-type", "application/json")
        .body(Body::from(body.clone()))
        .unwrap();
    let (status, bytes) = app.rt.block_on(async {
        let resp = app.router.clone().oneshot(req).await.expect("the router never fails");
        let status = resp.status();
        (status, axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap())
    });
    let shown = || {
        format!(
            "{} {} {:?} → {status} {:?}",
            route.method,
            route.path,
            String::from_utf8_lossy(&body),
            String::from_utf8_lossy(&bytes)
        )
    };
    prop_assert!(!status.is_server_error(), "a 5xx: {}", shown());
    if route.path == "/api/pull" && status.is_success() {
        return Ok(()); // an NDJSON stream
    }
    if route.path == "/api/delete" && status == axum::http::StatusCode::OK {
        // Ollama answers a delete with an empty 200; the fuzzer found an installed name.
        prop_assert!(bytes.is_empty(), "a delete's 200 has no body: {}", shown());
        return Ok(());
    }
    let v: Value =
        serde_json::from_slice(&bytes).map_err(|e| TestCaseError::fail(format!("not JSON ({e}): {}", shown())))?;
    if status.is_client_error() {
        let message = if route.path.starts_with("/api/") {
            v["error"].as_str()
        } else {
            prop_assert!(v["error"]["type"].is_string(), "OpenAI error shape: {}", shown());
            v["error"]["message"].as_str()
        };
        let message = message.ok_or_else(|| TestCaseError::fail(format!("no error message: {}", shown())))?;
        let store = app.store.to_string_lossy();
        prop_assert!(!message.contains(store.as_ref()), "a path in the message: {}", shown());
        for internal in ["panicked", "backtrace", "RUST_BACKTRACE", ".rs:"] {
            prop_assert!(!message.contains(internal), "internals in the message: {}", shown());
        }
    }
    Ok(())
}

#[test]
fn no_body_gets_a_5xx_a_wrong_shape_or_a_panic() {
    let seconds = std::env::var("MLX_SERVE_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20u64);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let routes = Arc::new(routes());
    let mut runner =
        TestRunner::new(ProptestConfig { cases: 20_000, failure_persistence: None, ..ProptestConfig::default() });
    let cases = std::sync::atomic::AtomicUsize::new(0);
    let strategy = (0..routes.len()).prop_flat_map({
        let routes = routes.clone();
        move |i| (Just(i), body(&routes[i]))
    });
    let result = runner.run(&strategy, |(i, body)| {
        // Past the deadline the remaining cases pass at once; shrinking a failure found
        // earlier still runs its checks.
        if Instant::now() > deadline {
            return Ok(());
        }
        cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        check(&routes[i], body)
    });
    let _ = std::fs::remove_dir_all(&app().store);
    if let Err(e) = result {
        panic!("{e}");
    }
    let n = cases.into_inner();
    eprintln!("request fuzz: {n} bodies in {seconds} s at most");
    assert!(n >= 100, "only {n} bodies were tried");
}
