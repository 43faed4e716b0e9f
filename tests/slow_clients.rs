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
        let (status, body) = server.post("/v1/embeddings", &json!({"model": "tiny-bert-embed", "input": format!("hello {i}")}));
        assert_eq!(status, 200, "while 4 bodies stall: {body}");
    }
    // A body that does arrive in full is served beside them.
    let input = "word ".repeat(2_000_000); // 10 MB
    let (status, body) = server.post("/v1/embeddings", &json!({"model": "tiny-bert-embed", "input": input}));
    assert_eq!(status, 200, "a 10 MB body while 4 bodies stall: {body}");
    drop(stalled);
}
