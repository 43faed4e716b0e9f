//! The daemon's wiring in-process: a real HTTP exchange through the fake worker, the
//! control socket and the PID file in the daemon's own home, and both gone after a
//! graceful shutdown.

use std::time::Duration;

use serde_json::json;

use super::harness::Daemon;
use crate::control::{self, Request};

#[test]
fn the_daemon_runs_in_process_with_a_fake_worker() {
    let daemon = Daemon::start(&["tiny-bert-embed"], "");
    let (port, paths) = (daemon.port, daemon.paths.clone());
    let pid_file = paths.pid_file(port);
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap().trim(), std::process::id().to_string());

    let (status, v) =
        daemon.post("/v1/embeddings", &json!({"model": "tiny-bert-embed", "input": ["hello world", "hi"]}));
    assert_eq!(status, 200, "{v}");
    // The fake answers [first token, length] per input: [CLS] first, and lengths that add
    // up to the usage the API reports.
    let rows: Vec<Vec<f64>> =
        v["data"].as_array().unwrap().iter().map(|d| serde_json::from_value(d["embedding"].clone()).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.len() == 2 && r[0] == rows[0][0]), "{rows:?}");
    assert_eq!(rows[0][1] + rows[1][1], v["usage"]["prompt_tokens"].as_f64().unwrap());
    assert_eq!(daemon.fake.starts(), 1);

    let (status, v) = daemon.post("/v1/embeddings", &json!({"model": "nope", "input": "x"}));
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["error"]["code"], "model_not_found", "{v}");

    let workers = control::request(&paths, port, &Request::Workers, Duration::from_secs(5)).unwrap();
    assert_eq!(workers[0]["model"], "tiny-bert-embed");
    assert_eq!(workers[0]["state"], "ready");
    let status = control::request(&paths, port, &Request::Status, Duration::from_secs(5)).unwrap();
    assert_eq!(status["home"], json!(paths.home()), "the home it was given, not the environment's");

    drop(daemon);
    assert!(!pid_file.exists(), "the PID file goes with the daemon");
    assert!(!paths.control_socket(port).exists(), "and so does the control socket");
}
