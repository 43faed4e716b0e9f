//! Bad input is refused alike on every route, in the route's own JSON shape: an empty
//! document as an empty embeddings input is (rerank, tokenize), and a malformed query
//! string on TEI's `/info` as TEI's JSON error rather than a text/plain one. Real daemon,
//! real workers.

use mlx_serve_tests::raw;
use mlx_serve_tests::server::{Server, ServerOptions};
use serde_json::json;

#[test]
fn empty_documents_and_bad_queries_are_refused_in_shape() {
    let server =
        Server::start(ServerOptions { models: vec!["tiny-bert-embed", "tiny-bert-rerank"], ..Default::default() });
    let (status, body) = server.post("/v1/embeddings", &json!({"model": "tiny-bert-embed", "input": ["a", ""]}));
    assert_eq!(status, 400, "{body}");
    for docs in [json!(["a doc", ""]), json!(["\u{200b}"])] {
        let (status, body) =
            server.post("/v1/rerank", &json!({"model": "tiny-bert-rerank", "query": "q", "documents": docs}));
        assert_eq!(status, 400, "rerank {docs}: {body}");
        assert_eq!(body["error"]["param"], "documents", "{body}");
        let (status, body) =
            server.post("/v1/tokenize", &json!({"model": "tiny-bert-rerank", "query": "q", "documents": docs}));
        assert_eq!(status, 400, "tokenize {docs}: {body}");
    }
    let (status, body) =
        server.post("/v1/rerank", &json!({"model": "tiny-bert-rerank", "query": "q", "documents": ["a", "b"]}));
    assert_eq!(status, 200, "{body}");

    let a = raw::request(server.port, "GET /info?model=tiny-bert-embed&model=tiny-bert-rerank HTTP/1.1", b"");
    assert_eq!(a.status, 400, "{a:?}");
    assert!(a.header("content-type").is_some_and(|t| t.starts_with("application/json")), "{a:?}");
    assert_eq!(a.json()["error_type"], "Validation", "TEI's shape: {a:?}");
    let a = raw::request(server.port, "GET /info?model=tiny-bert-embed HTTP/1.1", b"");
    assert_eq!(a.status, 200, "{a:?}");
}
