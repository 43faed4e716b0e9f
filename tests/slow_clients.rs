//! Clients that send slowly cannot take the server from others: a body is charged to the
//! in-flight memory budget as it arrives, not by the size it declares, so four clients
//! that declare 16 MiB bodies (the whole 64 MiB budget) and then stall hold what they
//! sent, and everyone else is served. Real daemon over loopback, raw sockets.

use std::io::Write;
use std::time::Duration;

use mlx_serve_tests::raw;
use mlx_serve_tests::server::{Server, ServerOptions};
use serde_json::json;

#[test]
fn bodies_that_declare_much_and_send_little_hold_little() {
    let server = Server::start(ServerOptions { models: vec!["tiny-bert-embed"], ..Default::default() });
    let declared = 16 << 20; // limits.max_request_bytes; 4 of them are the whole budget
    let stalled: Vec<_> = (0..4)
        .map(|_| {
            let mut s = raw::connect(server.port, Duration::from_secs(120));
            let head = format!(
                "POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
            );
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(&[b' '; 1024]).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..5 {
        let (status, body) =
            server.post("/v1/embeddings", &json!({"model": "tiny-bert-embed", "input": format!("hello {i}")}));
        assert_eq!(status, 200, "while 4 bodies stall: {body}");
    }
    // A body that does arrive in full is served beside them.
    let input = "word ".repeat(2_000_000); // 10 MB
    let (status, body) = server.post("/v1/embeddings", &json!({"model": "tiny-bert-embed", "input": input}));
    assert_eq!(status, 200, "a 10 MB body while 4 bodies stall: {body}");
    drop(stalled);
}

#[test]
fn idle_sockets_cannot_lock_out_health_checks_or_busy_clients() {
    // The daemon starts with macOS launchd's soft limit of 256 open files, below
    // server.max_connections (512): it raises its own limit (daemon/open_files.rs), else
    // accepting fails past ~250 sockets and /health with it. This process needs 2,000.
    raw::raise_open_files_limit();
    let server = Server::start(ServerOptions {
        models: vec!["tiny-bert-embed"],
        open_files_soft_limit: Some(256),
        ..Default::default()
    });
    // A client in the middle of a request: busy, so never the one closed.
    let mut busy = raw::connect(server.port, Duration::from_secs(120));
    let body = serde_json::to_vec(&json!({"model": "tiny-bert-embed", "input": "still mine"})).unwrap();
    let head = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    busy.write_all(head.as_bytes()).unwrap();
    busy.write_all(&body[..5]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // 2,000 sockets opened and never used: four times server.max_connections (512).
    let idle: Vec<_> = (0..2000).map(|_| raw::connect(server.port, Duration::from_secs(5))).collect();
    // A connection idle for a second may be closed for a new one (one just accepted gets
    // that long to send its request).
    std::thread::sleep(Duration::from_millis(1500));
    let started = std::time::Instant::now();
    for _ in 0..3 {
        let a = raw::request(server.port, "GET /health HTTP/1.1", b"");
        assert_eq!(a.status, 200, "{a:?}");
    }
    let (status, _) = server.post("/v1/embeddings", &json!({"model": "tiny-bert-embed", "input": "a new client"}));
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(10), "health checks took {:?}", started.elapsed());
    busy.write_all(&body[5..]).unwrap();
    let a = raw::read_answer(&mut busy).expect("the busy client's answer");
    assert_eq!(a.status, 200, "{a:?}");
    drop(idle);
}

#[test]
fn a_client_that_never_reads_its_answer_is_disconnected() {
    let server = Server::start(ServerOptions {
        models: vec!["all-MiniLM-L6-v2"],
        config: Some("server:\n  write_timeout_seconds: 2\n".into()),
        ..Default::default()
    });
    // ~15 MB of answer (2048 vectors of 384 floats as JSON): more than socket buffers hold.
    let input: Vec<String> = (0..2048).map(|i| format!("text {i}")).collect();
    let body = serde_json::to_vec(&json!({"model": "all-MiniLM-L6-v2", "input": input})).unwrap();
    let mut s = raw::connect(server.port, Duration::from_secs(30));
    let head = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body).unwrap();
    server.wait_for("the answer to be computed", Duration::from_secs(120), || {
        server.log_text().contains("endpoint=/v1/embeddings")
    });
    // The client reads nothing for 3 write timeouts; then what it finds is the part the
    // socket buffers held, and the end of the connection.
    std::thread::sleep(Duration::from_secs(6));
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let ended = loop {
        match std::io::Read::read(&mut s, &mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break false,
            Err(_) => break true,
        }
    };
    let text = String::from_utf8_lossy(&got);
    let length: usize = text
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    assert!(ended, "the connection stayed open ({} bytes read)", got.len());
    assert!(got.len() < length, "the whole answer ({length} bytes) arrived: the client was not cut off");
    // Others are served.
    assert_eq!(server.post("/v1/embeddings", &json!({"model": "all-MiniLM-L6-v2", "input": "next"})).0, 200);
}

#[cfg(target_os = "linux")]
#[test]
fn unread_answers_are_freed_while_their_clients_stay() {
    let server = Server::start(ServerOptions {
        models: vec!["all-MiniLM-L6-v2"],
        // The embedding cache off: it would keep the 16,384 vectors (24 MiB) by design.
        config: Some("server:\n  write_timeout_seconds: 3\nembedding_cache:\n  memory_mb: 0\n".into()),
        ..Default::default()
    });
    assert_eq!(server.post("/api/embed", &json!({"model": "all-MiniLM-L6-v2", "input": "warm"})).0, 200);
    std::thread::sleep(Duration::from_secs(1));
    let baseline = raw::proc_kib(server.pid(), "VmRSS");
    // Eight clients ask for ~15 MB answers each and never read them (nor close).
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let input: Vec<String> = (0..2048).map(|i| format!("client {c} text {i}")).collect();
            let body = serde_json::to_vec(&json!({"model": "all-MiniLM-L6-v2", "input": input})).unwrap();
            let mut s = raw::connect(server.port, Duration::from_secs(30));
            let head = format!(
                "POST /api/embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(&body).unwrap();
            s
        })
        .collect();
    server.wait_for("the eight answers", Duration::from_secs(300), || {
        server.log_text().matches("endpoint=/api/embed").count() >= 9
    });
    let answered = raw::proc_kib(server.pid(), "VmRSS");
    // Three write timeouts later, with every client still connected.
    std::thread::sleep(Duration::from_secs(9));
    let after = raw::proc_kib(server.pid(), "VmRSS");
    eprintln!(
        "supervisor RSS: {} MiB before, {} MiB answered, {} MiB after",
        baseline >> 10,
        answered >> 10,
        after >> 10
    );
    assert!(
        after <= baseline + (20 << 10),
        "supervisor RSS {} MiB, baseline {} MiB: unread answers still held",
        after >> 10,
        baseline >> 10
    );
    drop(clients);
}
