//! What the daemon does on the signals it gets (docs/running.md): SIGHUP leaves it serving,
//! with a log line; SIGTERM drains, but only until `server.shutdown_timeout_seconds`, so a
//! client that never reads its answer or never finishes its body cannot keep the daemon
//! alive. Real daemon, real workers, raw sockets.

use std::io::Write;
use std::time::{Duration, Instant};

use mlx_serve_tests::raw;
use mlx_serve_tests::server::{signal, Server, ServerOptions};
use nix::sys::signal::Signal;
use serde_json::json;

#[test]
fn sighup_leaves_the_daemon_serving() {
    let server = Server::start(ServerOptions { models: vec!["tiny-bert-embed"], ..Default::default() });
    let embed = |text: &str| server.post("/v1/embeddings", &json!({"model": "tiny-bert-embed", "input": text}));
    assert_eq!(embed("before").0, 200);
    // Requests in flight while the signal lands.
    let port = server.port;
    let inflight: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let input: Vec<String> = (0..64).map(|j| format!("request {i} input {j}")).collect();
                raw::post_json(port, "/v1/embeddings", &[], &json!({"model": "tiny-bert-embed", "input": input})).status
            })
        })
        .collect();
    signal(server.pid(), Signal::SIGHUP);
    signal(server.pid(), Signal::SIGHUP);
    for t in inflight {
        assert_eq!(t.join().unwrap(), 200, "a request in flight during SIGHUP");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(embed("after").0, 200, "serving after SIGHUP:\n{}", server.log_text());
    assert_eq!(server.get("/health").0, 200);
    server.wait_for("the SIGHUP log line", Duration::from_secs(10), || server.log_text().contains("SIGHUP"));
    // It still stops cleanly, removing its PID file.
    let pid_file = server.home.path().join(format!("run/mlx-serve-{port}.pid"));
    assert!(pid_file.exists(), "{}", pid_file.display());
    let home = server.home.path().to_owned();
    assert_eq!(server.stop(), Some(0));
    assert!(!home.join(format!("run/mlx-serve-{port}.pid")).exists());
}

#[test]
fn sigterm_exits_within_the_drain_deadline_with_clients_that_never_finish() {
    const DRAIN: u64 = 3;
    let server = Server::start(ServerOptions {
        models: vec!["all-MiniLM-L6-v2"],
        config: Some(format!("server:\n  shutdown_timeout_seconds: {DRAIN}\n")),
        ..Default::default()
    });
    // A reader that never reads: an answer of ~15 MB (2048 vectors of 384 floats as JSON)
    // that no socket buffer holds.
    let input: Vec<String> = (0..2048).map(|i| format!("text {i}")).collect();
    let body = serde_json::to_vec(&json!({"model": "all-MiniLM-L6-v2", "input": input})).unwrap();
    let mut reader = raw::connect(server.port, Duration::from_secs(600));
    let head = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    reader.write_all(head.as_bytes()).unwrap();
    reader.write_all(&body).unwrap();
    // A body that never ends.
    let mut sender = raw::connect(server.port, Duration::from_secs(600));
    sender
        .write_all(b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .unwrap();
    // The big answer is being written (the worker is done) before the signal.
    server.wait_for("the unread answer to be computed", Duration::from_secs(120), || {
        server.log_text().contains("endpoint=/v1/embeddings")
    });
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    signal(server.pid(), Signal::SIGTERM);
    let log = server.log.clone();
    let code = server.wait_exit();
    let took = t.elapsed();
    // The deadline, the workers' stop (5 s at most) and a loaded 2-core box's slack.
    assert!(
        took < Duration::from_secs(DRAIN + 12),
        "exited {took:?} after SIGTERM (drain deadline {DRAIN} s):\n{}",
        log.lock().unwrap().join("\n")
    );
    assert_eq!(code, Some(0));
    assert!(log.lock().unwrap().iter().any(|l| l.contains("closing them")), "the log says what was closed");
    drop((reader, sender));
}
