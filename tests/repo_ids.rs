//! What a request naming a repo id (`owner/name`) gets: only a model pulled from that very
//! repo — never another owner's model or a local folder that shares the last part — and,
//! for a repo that does not exist, nothing left on disk. Real daemon, real workers, the
//! loopback hub (tests/common/fake_hub.rs).

use std::path::Path;

use mlx_serve_tests::fake_hub::{folder_files, FakeHub};
use mlx_serve_tests::fixtures::model_dir;
use mlx_serve_tests::server::{Server, ServerOptions};
use serde_json::json;

#[test]
fn a_repo_id_is_served_only_by_its_own_repos_model() {
    let hub = FakeHub::start();
    hub.add_repo("evil/minilm2", folder_files(&model_dir("tiny-bert-embed")));
    let hf_home = tempfile::tempdir().unwrap();
    let server = Server::start(ServerOptions {
        models: vec!["tiny-bert-rerank"],
        env: hub.server_env(hf_home.path()),
        ..Default::default()
    });
    let out = hub.mlx_serve(server.home.path(), &["pull", "evil/minilm2"], &[]);
    assert!(out.ok(), "{out:?}");
    let embed = |model: &str| server.post("/v1/embeddings", &json!({"model": model, "input": "x"}));
    // The model pulled from evil/minilm2 answers to its own id and its store name…
    assert_eq!(embed("evil/minilm2").0, 200);
    assert_eq!(embed("minilm2").0, 200);
    // …but not to another owner's id with the same last part.
    let (status, body) = embed("BAAI/minilm2");
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "model_name_taken", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("pulled from evil/minilm2"), "{body}");
    // Nor does a local folder answer to `owner/<its name>`, on any route.
    let rerank =
        server.post("/v1/rerank", &json!({"model": "attacker/tiny-bert-rerank", "query": "q", "documents": ["d"]}));
    assert_eq!(rerank.0, 409, "{}", rerank.1);
    assert_eq!(server.get("/v1/models/attacker/tiny-bert-rerank").0, 409);
    let (status, _) = server.post("/api/show", &json!({"model": "attacker/tiny-bert-rerank"}));
    assert_eq!(status, 409);
    let rerank = server.post("/v1/rerank", &json!({"model": "tiny-bert-rerank", "query": "q", "documents": ["d"]}));
    assert_eq!(rerank.0, 200, "{}", rerank.1);
}

fn lock_files(home: &Path) -> usize {
    std::fs::read_dir(home.join("models/.locks")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn requests_for_made_up_repo_ids_leave_no_files() {
    let hub = FakeHub::start();
    let hf_home = tempfile::tempdir().unwrap();
    let server = Server::start(ServerOptions {
        models: vec!["tiny-bert-embed"],
        env: hub.server_env(hf_home.path()),
        ..Default::default()
    });
    let port = server.port;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..50 {
                    let model = format!("made-up-{t}/model-{i}");
                    let a = mlx_serve_tests::raw::post_json(
                        port,
                        "/v1/embeddings",
                        &[],
                        &json!({"model": model, "input": "x"}),
                    );
                    assert_eq!(a.status, 404, "{model}: {a:?}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(lock_files(server.home.path()), 0, "lock files left by 200 requests for repos that do not exist");
    // A real pull leaves none either once it is done.
    hub.add_repo("acme/real", folder_files(&model_dir("tiny-bert-embed")));
    assert_eq!(server.post("/v1/embeddings", &json!({"model": "acme/real", "input": "x"})).0, 200);
    assert_eq!(lock_files(server.home.path()), 0);
}
