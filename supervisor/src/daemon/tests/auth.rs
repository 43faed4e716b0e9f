//! The optional API key (docs/security.md): every route but the health checks needs it,
//! refused in the route family's error shape with `WWW-Authenticate`, before the body is
//! read; `/metrics` may stay open. Moved here from tests/access.rs, which keeps what
//! needs the official clients, the CLI and the log.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::json;

use super::harness::Daemon;

const KEY: &str = "test-key-0123456789";

#[test]
fn the_api_key_guards_every_route_but_health() {
    let daemon = Daemon::start(&["tiny-bert-embed"], &format!("server:\n  api_key: {KEY}\n"));
    let get = |path: &str, auth: Option<&str>| {
        let head = match auth {
            Some(a) => format!("GET {path} HTTP/1.1\r\nAuthorization: {a}"),
            None => format!("GET {path} HTTP/1.1"),
        };
        daemon.request(&head, b"")
    };
    for open in ["/health", "/ready"] {
        assert_eq!(get(open, None).status, 200, "{open} needs no key");
    }
    let bearer = format!("Bearer {KEY}");
    for path in ["/v1/models", "/api/tags", "/metrics", "/nothing-here"] {
        let a = get(path, None);
        assert_eq!(a.status, 401, "{path}: {a:?}");
        assert_eq!(a.header("www-authenticate").as_deref(), Some("Bearer"), "{path}");
        if path.starts_with("/api/") {
            assert!(a.json()["error"].is_string(), "Ollama shape on {path}: {a:?}");
        } else {
            assert_eq!(a.json()["error"]["code"], "invalid_api_key", "OpenAI shape on {path}: {a:?}");
        }
        assert_eq!(get(path, Some("Bearer not-the-key")).status, 401, "{path}");
        assert_eq!(get(path, Some(&format!("Basic {KEY}"))).status, 401, "{path}");
        let expected = if path == "/nothing-here" { 404 } else { 200 };
        assert_eq!(get(path, Some(&bearer)).status, expected, "{path} with the key");
    }
    // A refused request costs no body reading: a 401 comes back before the body is sent.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\n").unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head[9..12], b"401", "{}", String::from_utf8_lossy(&head));
    let (status, v) = daemon.post_with(
        "/v1/embeddings",
        &[&format!("Authorization: {bearer}")],
        &json!({"model": "tiny-bert-embed", "input": "x"}),
    );
    assert_eq!(status, 200, "{v}");
}

#[test]
fn metrics_may_stay_open() {
    let daemon = Daemon::start(
        &["tiny-bert-embed"],
        &format!("server:\n  api_key: {KEY}\nmetrics:\n  require_api_key: false\n"),
    );
    assert_eq!(daemon.request("GET /metrics HTTP/1.1", b"").status, 200);
    assert_eq!(daemon.request("GET /v1/models HTTP/1.1", b"").status, 401);
}
