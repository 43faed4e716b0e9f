//! Real browsers behave (docs/security.md): a headless Chromium (Debian's `chromium`),
//! driven by Playwright (`playwright-core`, pinned in tests/browser/package-lock.json,
//! installed by scripts/setup), loads pages from another origin and from a rebinding name
//! that try to pull, embed and delete through `fetch` (tests/browser/attack.mjs). The
//! model survives, nothing is downloaded, and the browser reads nothing. Real daemon,
//! real workers, the loopback hub.

use std::process::Command;

use mlx_serve_tests::fake_hub::{folder_files, FakeHub};
use mlx_serve_tests::fixtures::{model_dir, repo_root};
use mlx_serve_tests::server::{Server, ServerOptions};
use mlx_serve_tests::tools::missing_tool;
use serde_json::{json, Value};

const MODEL: &str = "tiny-bert-embed";
const REPO: &str = "acme/planted";

#[test]
fn pages_from_other_origins_and_rebinding_names_cannot_drive_the_server() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let script = repo_root().join("tests/browser/attack.mjs");
    let playwright = repo_root().join("tests/browser/node_modules/playwright-core");
    if !std::path::Path::new(&chromium).exists()
        || !playwright.exists()
        || Command::new("node").arg("--version").output().is_err()
    {
        missing_tool("chromium", "Debian's chromium and nodejs, and `npm ci` in tests/browser (scripts/setup)");
        return;
    }
    let hub = FakeHub::start();
    hub.add_repo(REPO, folder_files(&model_dir("tiny-bert-rerank")));
    let hf_home = tempfile::tempdir().unwrap();
    let server =
        Server::start(ServerOptions { models: vec![MODEL], env: hub.server_env(hf_home.path()), ..Default::default() });
    let out = Command::new("node")
        .arg(&script)
        .args([&server.port.to_string(), MODEL, REPO])
        .env("CHROMIUM", &chromium)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "attack.mjs failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or(Value::Null);
    eprintln!("what the pages saw: {seen}");
    // The rebinding page is same-origin for the browser: it reads statuses. All refused.
    for r in seen["rebind"].as_array().expect("rebind results") {
        assert_eq!(r["status"], 403, "the rebinding page's {}: {r}", r["what"]);
    }
    // The cross-origin page reads nothing: opaque answers or network errors.
    for r in seen["cross"].as_array().expect("cross-origin results") {
        assert!(r["status"] == 0 || r["error"].is_string(), "the cross-origin page read {}: {r}", r["what"]);
    }
    // The server refused each request that reached it (the request log).
    let log = server.log_text();
    let refused = log.lines().filter(|l| l.contains("status=403")).count();
    assert!(refused >= 5, "expected the requests refused with 403, found {refused}:\n{log}");
    // The model survives and answers; nothing was pulled.
    assert!(server.home.path().join("models").join(MODEL).exists(), "{MODEL} was deleted");
    let (status, body) = server.post("/v1/embeddings", &json!({"model": MODEL, "input": "still here"}));
    assert_eq!(status, 200, "{body}");
    assert!(hub.requests().iter().all(|r| !r.contains("planted")), "the page started a pull: {:?}", hub.requests());
    assert!(!server.home.path().join("models/planted").exists());
}
