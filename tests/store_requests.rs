//! Requests and the model store: a refused request makes nothing, a
//! request racing a delete is a 404, and a download that failed is not started again by
//! every request. Real daemon, real workers, the loopback hub (tests/common/fake_hub.rs).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mlx_serve_tests::fake_hub::{folder_files, FakeHub};
use mlx_serve_tests::fixtures::{copy_dir, minilm_dir, model_dir};
use mlx_serve_tests::server::{Server, ServerOptions};
use serde_json::{json, Value};

/// The store's entries, hidden ones included, but not the install locks and remembered
/// names (they are not models and hold no model data).
fn store_entries(home: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(home.join("models"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.retain(|n| n != ".locks" && n != ".names.json");
    v.sort();
    v
}

#[test]
fn a_request_for_the_wrong_endpoint_downloads_and_quantizes_nothing() {
    let hub = FakeHub::start();
    hub.add_repo("acme/mini", folder_files(&minilm_dir().unwrap()));
    let hf_home = tempfile::tempdir().unwrap();
    let server = Server::start(ServerOptions {
        models: vec!["all-MiniLM-L6-v2"],
        env: hub.server_env(hf_home.path()),
        ..Default::default()
    });
    // The classification endpoint (TEI's error shape); an embedding model also ranks on
    // /v1/rerank, as a bi-encoder, so that is no wrong endpoint for it.
    let predict = |model: &str| server.post("/predict", &json!({"model": model, "inputs": "q"}));

    // A variant of an installed embedding model, asked of the wrong endpoint: refused
    // before the quantization (which took seconds and wrote a 53 MB variant).
    let (status, body) = predict("minilm-4bit");
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("it is an embedding model: use /v1/embeddings"), "{body}");
    assert_eq!(store_entries(server.home.path()), vec!["all-MiniLM-L6-v2"]);

    // A repo not installed: refused from its small files, before its weights.
    let (status, body) = predict("acme/mini");
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("embedding model"), "{body}");
    assert!(hub.requests().iter().all(|r| !r.starts_with("/cdn/")), "weights were fetched: {:?}", hub.requests());
    assert_eq!(store_entries(server.home.path()), vec!["all-MiniLM-L6-v2"]);
    // …and the refusal is the request's, not the model's: the right endpoint gets it.
    let (status, body) = server.post("/v1/embeddings", &json!({"model": "acme/mini", "input": "x"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn requests_racing_a_delete_get_200_or_404() {
    // Once the model is gone its bare name is searched for on the hub, which has no repo
    // of that name: a 404 too.
    let hub = FakeHub::start();
    let hf_home = tempfile::tempdir().unwrap();
    let server = Server::start(ServerOptions { env: hub.server_env(hf_home.path()), ..Default::default() });
    let store = server.home.path().join("models").join("tiny-bert-embed");
    let port = server.port;
    let mut statuses: Vec<(u16, String)> = Vec::new();
    for _round in 0..6 {
        copy_dir(&model_dir("tiny-bert-embed"), &store);
        let (status, _) = server.post("/v1/embeddings", &json!({"model": "tiny-bert-embed", "input": "warm"}));
        assert_eq!(status, 200);
        // Clients keep asking while the model is deleted under them; each stops once it has
        // seen the model gone.
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..8)
            .map(|i| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let (path, body) = if i % 2 == 0 {
                            ("/v1/embeddings", json!({"model": "tiny-bert-embed", "input": ["some words", "more"]}))
                        } else {
                            ("/v1/tokenize", json!({"model": "tiny-bert-embed", "input": "some words"}))
                        };
                        let r = ureq::post(&format!("http://127.0.0.1:{port}{path}"))
                            .timeout(Duration::from_secs(60))
                            .send_json(body);
                        let (status, text) = match r {
                            Ok(resp) => (resp.status(), String::new()),
                            Err(ureq::Error::Status(code, resp)) => (code, resp.into_string().unwrap_or_default()),
                            Err(e) => panic!("{e}"),
                        };
                        seen.push((status, text));
                        if status == 404 {
                            break;
                        }
                    }
                    seen
                })
            })
            .collect();
        // Let the clients get going: wait until the server has answered a few more.
        std::thread::sleep(Duration::from_millis(100)); // not synchronisation: only spreads the delete over the requests
        let resp = ureq::delete(&server.url("/api/delete")).send_json(json!({"model": "tiny-bert-embed"}));
        assert_eq!(resp.map(|r| r.status()).unwrap_or(0), 200);
        stop.store(true, Ordering::SeqCst);
        for c in clients {
            statuses.extend(c.join().unwrap());
        }
        assert!(!store.exists());
    }
    let bad: Vec<_> = statuses.iter().filter(|(s, _)| *s != 200 && *s != 404).collect();
    assert!(bad.is_empty(), "{} of {} requests were neither 200 nor 404: {bad:?}", bad.len(), statuses.len());
    assert!(statuses.iter().any(|(s, _)| *s == 404), "no request raced the delete");
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn a_failed_download_is_remembered_not_retried_by_every_request() {
    let hub = FakeHub::start();
    let hf_home = tempfile::tempdir().unwrap();
    let server = Server::start(ServerOptions {
        config: Some("models:\n  aliases:\n    gone: acme/gone\n".into()),
        env: hub.server_env(hf_home.path()),
        ..Default::default()
    });
    let info_requests = || hub.requests().iter().filter(|r| r.starts_with("/api/models/acme/gone/")).count();
    for i in 0..4 {
        let resp = ureq::post(&server.url("/v1/embeddings")).send_json(json!({"model": "gone", "input": "x"}));
        let Err(ureq::Error::Status(status, resp)) = resp else { panic!("expected an error") };
        assert_eq!(status, 404);
        let retry_after = resp.header("Retry-After").map(str::to_owned);
        let body: Value = resp.into_json().unwrap();
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains("acme/gone was not found"), "{msg}");
        if i > 0 {
            // Says when it is tried again, as text and as Retry-After.
            assert!(msg.contains("it is tried again on a request after"), "{msg}");
            let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
            assert!((1..=60).contains(&secs), "{secs}");
        }
    }
    assert_eq!(info_requests(), 1, "{:?}", hub.requests());
    let (_, ps) = server.get("/api/ps");
    assert_eq!(ps["downloads"][0]["state"], "failed", "{ps}");
    // An explicit pull tries at once.
    let (status, _) = server.post("/api/pull", &json!({"model": "gone", "stream": false}));
    assert_eq!(status, 404);
    assert_eq!(info_requests(), 2, "{:?}", hub.requests());
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn a_bare_name_the_hub_cannot_be_asked_about_is_a_404_that_says_why() {
    // The hub answers the search 503 every time (4 attempts, then given up): the request
    // names a model this server does not have, so a 404 that says the search failed, not
    // a 502, and the failure is remembered like a failed download.
    let hub = FakeHub::start();
    hub.fail_next("/api/models", 503, 100, None);
    let hf_home = tempfile::tempdir().unwrap();
    let server = Server::start(ServerOptions { env: hub.server_env(hf_home.path()), ..Default::default() });
    for i in 0..2 {
        let (status, body) = server.post("/v1/embeddings", &json!({"model": "unheard-of", "input": "x"}));
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"]["code"], "model_not_found", "{body}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("`unheard-of` does not exist here (not installed")
                && msg.contains("could not be searched")
                && msg.contains("HTTP 503"),
            "{msg}"
        );
        assert_eq!(msg.contains("it is tried again on a request after"), i > 0, "{msg}");
    }
    assert_eq!(
        hub.searches().len(),
        4,
        "four attempts for the first request, none for the second: {:?}",
        hub.searches()
    );
    assert_eq!(server.stop(), Some(0));
}
