//! What API answers never contain (docs/security.md): the credentials of an `HF_ENDPOINT`
//! with a user and password, a network error's internals, or a path of the server's disk.
//! Real daemon over loopback; the mirror is a closed loopback port, so every Hub request
//! fails the way an unreachable mirror does.

use std::time::Duration;

use mlx_serve_tests::fixtures::model_dir;
use mlx_serve_tests::raw;
use mlx_serve_tests::server::{Server, ServerOptions};
use serde_json::json;

const USER: &str = "mirror-user";
const PASSWORD: &str = "s3cret-pw-4711";

#[test]
fn no_password_path_or_network_error_in_any_answer() {
    let server = Server::start(ServerOptions {
        models: vec!["tiny-bert-embed"],
        env: vec![("HF_ENDPOINT".into(), format!("http://{USER}:{PASSWORD}@127.0.0.1:9"))],
        ..Default::default()
    });
    // A model pulled from a folder: its metadata records the folder's path.
    let folder = model_dir("tiny-bert-rerank");
    let out = server.cli(&["pull", folder.to_str().unwrap(), "--name", "from-folder"]);
    assert!(out.ok(), "{out:?}");
    let home = server.home.path().to_str().unwrap().to_owned();
    let folder = folder.to_str().unwrap().to_owned();
    let check = |what: &str, status: u16, body: &str| {
        for secret in [PASSWORD, USER, home.as_str(), folder.as_str(), "Connection refused", "tcp connect error"] {
            assert!(!body.contains(secret), "{what} ({status}) carries {secret:?}: {body}");
        }
    };
    let mut answers = 0;
    // Twice: the second request gets the remembered failure.
    for _ in 0..2 {
        for (path, body) in [
            ("/v1/embeddings", json!({"model": "made-up-name", "input": "x"})),
            ("/api/embed", json!({"model": "made-up-name", "input": "x"})),
            ("/api/pull", json!({"model": "made-up-name", "stream": false})),
            ("/api/pull", json!({"model": "acme/made-up", "stream": false})),
            ("/v1/embeddings", json!({"model": "acme/made-up", "input": "x"})),
            ("/api/show", json!({"model": "from-folder"})),
        ] {
            let a = raw::post_json(server.port, path, &[], &body);
            assert!(a.status >= 200, "{path}: {a:?}");
            check(path, a.status, &a.body);
            answers += 1;
        }
        for path in ["/api/ps", "/v1/models", "/api/tags", "/v1/models/from-folder"] {
            let (status, text) = server.get_text(path);
            check(path, status, &text);
            answers += 1;
        }
    }
    // A pull streamed as NDJSON carries its failure in the stream.
    let (status, text) = match ureq::post(&server.url("/api/pull")).send_json(json!({"model": "acme/other"})) {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("/api/pull: {e}"),
    };
    assert!(text.contains("error"), "the stream ends with the failure: {text}");
    check("/api/pull (stream)", status, &text);
    assert!(answers >= 20);
    // The show answer is there and names the folder by its last part.
    let (status, shown) = server.post("/api/show", &json!({"model": "from-folder"}));
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["model_info"]["mlx_serve.metadata"]["source"], "tiny-bert-rerank", "{shown}");
    // The failures really reached the mirror: the log says so, without the password.
    server.wait_for("a failed Hub request in the log", Duration::from_secs(10), || {
        server.log_text().contains("127.0.0.1:9")
    });
    let log = server.log_text();
    assert!(!log.contains(PASSWORD), "the log carries the password:\n{log}");
}
