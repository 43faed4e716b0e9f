//! The daemon run in-process: [`run_with`] on a loopback listener with a fake worker
//! (`worker/fake.rs`), a real HTTP exchange, the control socket and the PID file, then a
//! graceful shutdown. The end-to-end suites run the real binaries and workers; this shows
//! the wiring is testable without them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::run_with;
use crate::config::Config;
use crate::control::{self, Request};
use crate::paths;
use crate::worker::fake::FakeLauncher;

/// A private home with the tiny BERT fixture installed as `tiny`. This is the only unit
/// test that sets `MLX_SERVE_HOME`; no other unit test reads it.
fn home() -> PathBuf {
    let home = std::env::temp_dir().join(format!("mlx-serve-daemon-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(home.join("models")).unwrap();
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/tiny-bert-embed");
    std::os::unix::fs::symlink(fixture.canonicalize().unwrap(), home.join("models/tiny")).unwrap();
    std::env::set_var("MLX_SERVE_HOME", &home);
    home
}

/// One HTTP/1.1 exchange; returns the status code and the body.
async fn post(port: u16, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_runs_in_process_with_a_fake_worker() {
    let home = home();
    let mut config = Config::default();
    config.models.directory = Some(home.join("models"));
    config.models.auto_download = false;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let fake = FakeLauncher::default();
    let daemon = tokio::spawn(run_with(
        config,
        listener,
        async {
            let _ = stopped.await;
        },
        Arc::new(fake.clone()),
    ));

    // The PID file is written once the daemon serves; poll for it (a bounded wait, not a
    // synchronisation: the requests below retry nothing).
    let pid_file = paths::pid_file_path(port);
    for _ in 0..100 {
        if pid_file.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap().trim(), std::process::id().to_string());

    let (status, body) = post(port, "/v1/embeddings", r#"{"model": "tiny", "input": ["hello world", "hi"]}"#).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    // The fake answers [first token, length] per input: [CLS] first, and lengths that add
    // up to the usage the API reports.
    let rows: Vec<Vec<f64>> =
        v["data"].as_array().unwrap().iter().map(|d| serde_json::from_value(d["embedding"].clone()).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.len() == 2 && r[0] == rows[0][0]), "{rows:?}");
    assert_eq!(rows[0][1] + rows[1][1], v["usage"]["prompt_tokens"].as_f64().unwrap());
    assert_eq!(fake.starts(), 1);

    let (status, body) = post(port, "/v1/embeddings", r#"{"model": "nope", "input": "x"}"#).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("model_not_found"), "{body}");

    let workers =
        tokio::task::spawn_blocking(move || control::request(port, &Request::Workers, Duration::from_secs(5)))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(workers[0]["model"], "tiny");
    assert_eq!(workers[0]["state"], "ready");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), daemon).await.unwrap().unwrap().unwrap();
    assert!(!pid_file.exists(), "the PID file goes with the daemon");
    assert!(!paths::control_socket_path(port).exists(), "and so does the control socket");
    let _ = std::fs::remove_dir_all(&home);
}
