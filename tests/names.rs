//! Model names as people type them: a bare name nothing local knows is looked
//! up with the Hub's model search, against the loopback hub (tests/common/fake_hub.rs),
//! which answers `GET /api/models` as the Hub does; real `mlx-serve` processes, real
//! workers, real model files (the tiny fixtures, served under made-up repo names).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mlx_serve_tests::fake_hub::{error_line, folder_files, FakeHub};
use mlx_serve_tests::fixtures::{cosine, model_dir};
use mlx_serve_tests::server::{Server, ServerOptions};
use serde_json::{json, Value};

fn fixture(name: &str) -> Vec<(String, Vec<u8>)> {
    folder_files(&model_dir(name))
}

/// A repo whose config.json names an architecture the worker does not run.
fn gpt2_files() -> Vec<(String, Vec<u8>)> {
    let mut files = fixture("tiny-bert-embed");
    for f in files.iter_mut().filter(|f| f.0 == "config.json") {
        f.1 = br#"{"model_type": "gpt2", "architectures": ["GPT2Model"]}"#.to_vec();
    }
    files
}

/// A repo with pickle weights only.
fn pickle_files() -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = fixture("tiny-bert-embed").into_iter().filter(|f| !f.0.ends_with(".safetensors")).collect();
    files.push(("pytorch_model.bin".into(), b"pickle".to_vec()));
    files
}

/// `tiny-embedder` on the hub: the servable repo most downloaded by far, a copy, repos
/// with more downloads that cannot be served, and one whose name only contains it.
fn hub_with_tiny_embedder() -> FakeHub {
    let hub = FakeHub::start();
    for (repo, files, downloads) in [
        ("popular/tiny-embedder", fixture("tiny-bert-embed"), 5000),
        ("copy/tiny-embedder", fixture("tiny-bert-embed"), 12),
        ("big/tiny-embedder", gpt2_files(), 9_000_000),
        ("pickled/tiny-embedder", pickle_files(), 80_000),
        ("popular/tiny-embedder-onnx", fixture("tiny-bert-embed"), 900_000),
    ] {
        hub.add_repo(repo, files);
        hub.set_downloads(repo, downloads);
    }
    hub
}

fn models(home: &Path) -> PathBuf {
    home.join("models")
}

fn metadata(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("mlx-serve.json")).unwrap()).unwrap()
}

/// Requests to `repo`'s files or file list.
fn touched(hub: &FakeHub, repo: &str) -> Vec<String> {
    hub.requests().into_iter().filter(|r| r.contains(&format!("/{repo}/"))).collect()
}

#[test]
fn a_bare_name_is_searched_pulled_remembered_repointed_and_forgotten() {
    let hub = hub_with_tiny_embedder();
    let home = tempfile::tempdir().unwrap();

    let out = hub.mlx_serve(home.path(), &["pull", "tiny-embedder"], &[]);
    assert!(out.ok(), "{}", out.text());
    assert!(
        out.stdout.contains(
            "`tiny-embedder` is popular/tiny-embedder (the most downloaded of 2 servable repos named tiny-embedder"
        ),
        "{}",
        out.text()
    );
    // The search as huggingface_hub sends it, once.
    let searches = hub.searches();
    assert_eq!(searches.len(), 1, "{searches:?}");
    for part in [
        "search=tiny-embedder",
        "sort=downloads",
        "limit=100",
        "expand=downloads",
        "expand=config",
        "expand=siblings",
        "expand=gated",
    ] {
        assert!(searches[0].split('&').any(|p| p == part), "{part} missing: {}", searches[0]);
    }
    // Only the chosen repo was read: the others were judged from the search results.
    for other in ["big/tiny-embedder", "pickled/tiny-embedder", "copy/tiny-embedder", "popular/tiny-embedder-onnx"] {
        assert!(touched(&hub, other).is_empty(), "{other}: {:?}", touched(&hub, other));
    }
    let dir = models(home.path()).join("tiny-embedder");
    assert_eq!(metadata(&dir)["repo"], "popular/tiny-embedder");

    // Remembered in the store, shown by list and show.
    let names: Value =
        serde_json::from_str(&std::fs::read_to_string(models(home.path()).join(".names.json")).unwrap()).unwrap();
    assert_eq!(names["names"]["tiny-embedder"]["repo"], "popular/tiny-embedder");
    assert_eq!(names["names"]["tiny-embedder"]["how"], "search");
    assert_eq!(names["names"]["tiny-embedder"]["downloads"], 5000);
    let out = hub.mlx_serve(home.path(), &["list"], &[]);
    let line = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("tiny-embedder ") && l.contains("popular/"))
        .unwrap_or_else(|| panic!("{}", out.text()));
    assert!(line.contains("by search") && line.contains("5000 downloads"), "{line}");
    let out = hub.mlx_serve(home.path(), &["show", "tiny-embedder", "--json"], &[]);
    let shown: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.text()));
    assert_eq!(shown["names"][0]["name"], "tiny-embedder");

    // The same name (in another case) means the same repo without a second search, even
    // when the download counts have moved since.
    hub.set_downloads("copy/tiny-embedder", 50_000_000);
    let out = hub.mlx_serve(home.path(), &["pull", "Tiny-Embedder"], &[]);
    assert!(out.ok() && out.stdout.contains("is up to date"), "{}", out.text());
    assert!(out.stdout.contains("`Tiny-Embedder` is popular/tiny-embedder (chosen by a Hub search"), "{}", out.text());
    assert_eq!(hub.searches().len(), 1);

    // Pulling another repo of that name by its id re-points the name.
    let out = hub.mlx_serve(home.path(), &["pull", "copy/tiny-embedder"], &[]);
    assert!(out.ok(), "{}", out.text());
    assert!(
        out.stdout.contains("`tiny-embedder` now means copy/tiny-embedder (it meant popular/tiny-embedder)"),
        "{}",
        out.text()
    );
    assert_eq!(metadata(&dir)["repo"], "copy/tiny-embedder");

    // Removing the model forgets the name.
    let out = hub.mlx_serve(home.path(), &["remove", "tiny-embedder"], &[]);
    assert!(out.ok() && out.stdout.contains("forgot that `tiny-embedder` means copy/tiny-embedder"), "{}", out.text());
    let names: Value =
        serde_json::from_str(&std::fs::read_to_string(models(home.path()).join(".names.json")).unwrap()).unwrap();
    assert_eq!(names["names"], json!({}));
}

#[test]
fn ambiguous_and_unknown_names_are_one_line_errors_that_say_what_to_do() {
    let hub = FakeHub::start();
    for (repo, downloads) in [("a/twin", 900), ("b/twin", 200)] {
        hub.add_repo(repo, fixture("tiny-bert-embed"));
        hub.set_downloads(repo, downloads);
    }
    hub.add_repo("a/twin-onnx", fixture("tiny-bert-embed"));
    let home = tempfile::tempdir().unwrap();

    // The CLI runs with RUST_BACKTRACE=1 (FakeHub::mlx_serve): still one line.
    let out = hub.mlx_serve(home.path(), &["pull", "twin"], &[]);
    assert!(!out.ok());
    error_line(&out);
    assert!(out.stderr.starts_with("error: `twin` is ambiguous: 2 repos"), "{}", out.text());
    assert!(
        out.stderr.contains("`mlx-serve pull a/twin` (900 downloads), `mlx-serve pull b/twin` (200 downloads)"),
        "{}",
        out.text()
    );
    let out = hub.mlx_serve(home.path(), &["pull", "twin-8bit"], &[]);
    assert!(out.stderr.contains("`mlx-serve pull a/twin-8bit` (900 downloads)"), "{}", out.text());

    let out = hub.mlx_serve(home.path(), &["pull", "no-such-model"], &[]);
    assert!(!out.ok());
    error_line(&out);
    assert!(out.stderr.contains("no model named `no-such-model`"), "{}", out.text());
    assert!(out.stderr.contains(&format!("GET {}/api/models?search=no-such-model", hub.endpoint())), "{}", out.text());
    // The pull line the error gives works.
    let out = hub.mlx_serve(home.path(), &["pull", "a/twin"], &[]);
    assert!(out.ok(), "{}", out.text());
    let listed =
        std::fs::read_dir(models(home.path())).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned());
    assert!(listed.filter(|n| !n.starts_with('.')).eq(["twin".to_string()]));

    // The server answers the same in the API's shape: 400 for an ambiguous name, 404 for
    // an unknown one, and does not search again for a name that just failed.
    let hf_home = tempfile::tempdir().unwrap();
    let server = Server::start(ServerOptions { env: hub.server_env(hf_home.path()), ..Default::default() });
    let (status, body) = server.post("/v1/embeddings", &json!({"model": "twin", "input": "x"}));
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        (body["error"]["code"].as_str(), body["error"]["param"].as_str()),
        (Some("model_ambiguous"), Some("model"))
    );
    assert!(body["error"]["message"].as_str().unwrap().contains("`mlx-serve pull b/twin`"), "{body}");
    let before = hub.searches().len();
    for i in 0..3 {
        let (status, body) = server.post("/v1/embeddings", &json!({"model": "no-such-model", "input": "x"}));
        assert_eq!(status, 404, "{body}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains("search=no-such-model"), "{msg}");
        if i > 0 {
            assert!(msg.contains("it is tried again on a request after"), "{msg}");
        }
    }
    assert_eq!(hub.searches().len(), before + 1, "one search for three requests: {:?}", hub.searches());
    assert_eq!(server.stop(), Some(0));
}

/// Waits until the server has a worker (a preloaded model is up).
fn wait_for_worker(server: &Server, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while server.worker_pids().is_empty() {
        assert!(Instant::now() < deadline, "no worker started:\n{}", server.log_text());
        std::thread::sleep(Duration::from_millis(50)); // polling interval of a condition wait (bounded by its deadline)
    }
}

fn embedding(body: &Value, i: usize) -> Vec<f32> {
    body["data"][i]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

#[test]
fn preload_and_requests_by_bare_name_download_the_right_repo_and_quantize() {
    let hub = hub_with_tiny_embedder();
    hub.add_repo("judges/tiny-judge", fixture("tiny-bert-rerank"));
    hub.set_downloads("judges/tiny-judge", 40);
    hub.add_repo("xlm/tiny-xlm", fixture("tiny-xlmr-embed"));
    hub.set_downloads("xlm/tiny-xlm", 7);
    let hf_home = tempfile::tempdir().unwrap();
    let server = Server::start(ServerOptions {
        config: Some("models:\n  preload:\n    - tiny-embedder\n".into()),
        env: hub.server_env(hf_home.path()),
        ..Default::default()
    });
    wait_for_worker(&server, 120);
    let store = models(server.home.path());
    assert_eq!(metadata(&store.join("tiny-embedder"))["repo"], "popular/tiny-embedder");
    let (status, body) = server.post("/v1/embeddings", &json!({"model": "tiny-embedder", "input": ["hello world"]}));
    assert_eq!(status, 200, "{body}");
    let f32_row = embedding(&body, 0);

    // A reranker by bare name on the rerank endpoint.
    let (status, body) =
        server.post("/v1/rerank", &json!({"model": "tiny-judge", "query": "q", "documents": ["a", "b"]}));
    assert_eq!(status, 200, "{body}\n{}", server.log_text());
    assert_eq!(metadata(&store.join("tiny-judge"))["repo"], "judges/tiny-judge");

    // `-8bit` of a searched name whose base is not installed: the base is downloaded into
    // the Hugging Face cache, quantized, and only the variant lands in the store.
    let (status, body) = server.post("/v1/embeddings", &json!({"model": "tiny-xlm-8bit", "input": ["hello world"]}));
    assert_eq!(status, 200, "{body}\n{}", server.log_text());
    let meta = metadata(&store.join("tiny-xlm-8bit"));
    assert_eq!((meta["repo"].as_str(), meta["quantization"].as_str()), (Some("xlm/tiny-xlm"), Some("8bit")));
    assert!(!store.join("tiny-xlm").exists());

    // `-4bit` of the installed, searched one: made from its folder, no second download.
    hub.clear_requests();
    let (status, body) =
        server.post("/v1/embeddings", &json!({"model": "tiny-embedder-4bit", "input": ["hello world"]}));
    assert_eq!(status, 200, "{body}\n{}", server.log_text());
    assert!(touched(&hub, "popular/tiny-embedder").is_empty(), "{:?}", hub.requests());
    assert_eq!(metadata(&store.join("tiny-embedder-4bit"))["quantization"], "4bit");
    let cos = cosine(&embedding(&body, 0), &f32_row);
    assert!(cos > 0.9, "4-bit row against float32: cosine {cos}");
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn a_gated_repo_says_how_to_set_hf_token_and_the_token_is_sent() {
    let hub = FakeHub::start();
    hub.add_repo("guarded/gated-embedder", fixture("tiny-bert-embed"));
    hub.set_downloads("guarded/gated-embedder", 100);
    hub.gate("guarded/gated-embedder", "hf_granted");
    let home = tempfile::tempdir().unwrap();
    let page = format!("{}/guarded/gated-embedder", hub.endpoint());

    let out = hub.mlx_serve(home.path(), &["pull", "gated-embedder"], &[]);
    assert!(!out.ok());
    error_line(&out);
    for part in [
        "HTTP 401",
        "set HF_TOKEN to a read token from",
        "/settings/tokens",
        &format!("accept its conditions at {page}"),
    ] {
        assert!(out.stderr.contains(part), "{part}: {}", out.text());
    }
    let out = hub.mlx_serve(home.path(), &["pull", "guarded/gated-embedder"], &[("HF_TOKEN", "hf_not_granted")]);
    assert!(!out.ok());
    assert!(
        out.stderr.contains("HTTP 403") && out.stderr.contains(&format!("accept its conditions at {page}")),
        "{}",
        out.text()
    );
    assert!(std::fs::read_dir(models(home.path()))
        .unwrap()
        .flatten()
        .all(|e| e.file_name().to_string_lossy().starts_with('.')));

    hub.clear_requests();
    let out = hub.mlx_serve(home.path(), &["pull", "guarded/gated-embedder"], &[("HF_TOKEN", "hf_granted")]);
    assert!(out.ok(), "{}", out.text());
    // Every request to the hub itself carried the token (the CDN is another origin).
    let to_hub: Vec<_> = hub.log().into_iter().filter(|l| !l.path.starts_with("/cdn/")).collect();
    assert!(to_hub.len() >= 3 && to_hub.iter().all(|l| l.token.as_deref() == Some("hf_granted")), "{to_hub:?}");

    // The server says the same in a request's error (its own HF_TOKEN is the problem).
    let hf_home = tempfile::tempdir().unwrap();
    let server = Server::start(ServerOptions { env: hub.server_env(hf_home.path()), ..Default::default() });
    let (status, body) = server.post("/v1/embeddings", &json!({"model": "gated-embedder", "input": "x"}));
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "hub_access_denied");
    assert!(body["error"]["message"].as_str().unwrap().contains("set HF_TOKEN"), "{body}");
    assert_eq!(server.stop(), Some(0));
}

/// A full config as users write one (`~` paths, several sections), verbatim but for the host and ports.
const USER_CONFIG: &str = r#"# ~/.mlx-serve/config.yaml
server:
  host: "127.0.0.1"
  port: 0

models:
  directory: ~/.mlx-serve/models
  preload:
    - Qwen3-Embedding-0.6B
  auto_download: true

cache:
  max_embedding_models: 3
  max_reranker_models: 2
  ttl_seconds: 1800

batch:
  max_batch_size: 32
  max_wait_ms: 50

metrics:
  enabled: true
  port: 0

logging:
  level: INFO
  format: json  # text | json
"#;

#[test]
fn the_plan_example_config_preloads_qwen3_embedding_and_serves_its_4bit_variant() {
    // The hub serves the tiny Qwen3 embedding fixture as Qwen/Qwen3-Embedding-0.6B, beside
    // a copy and a GGUF repo, as the real Hub has them.
    let hub = FakeHub::start();
    for (repo, downloads) in [("Qwen/Qwen3-Embedding-0.6B", 3_000_000), ("someone/Qwen3-Embedding-0.6B", 40)] {
        hub.add_repo(repo, fixture("tiny-qwen3-embed"));
        hub.set_downloads(repo, downloads);
    }
    hub.add_repo("Qwen/Qwen3-Embedding-0.6B-GGUF", vec![("model-Q8_0.gguf".into(), b"gguf".to_vec())]);
    let user_home = tempfile::tempdir().unwrap();
    let hf_home = tempfile::tempdir().unwrap();
    let mut env = hub.server_env(hf_home.path());
    env.push(("HOME".into(), user_home.path().display().to_string()));
    let server = Server::start(ServerOptions { config: Some(USER_CONFIG.into()), env, ..Default::default() });
    wait_for_worker(&server, 120);
    // `~` is the user's home.
    let store = user_home.path().join(".mlx-serve/models");
    assert_eq!(metadata(&store.join("Qwen3-Embedding-0.6B"))["repo"], "Qwen/Qwen3-Embedding-0.6B");
    assert!(
        server.log_text().lines().any(|l| l.starts_with('{') && l.contains("listening on")),
        "JSON logs:\n{}",
        server.log_text()
    );

    // A request as an OpenAI-style client sends it, verbatim.
    let (status, body) =
        server.post("/v1/embeddings", &json!({"model": "Qwen3-Embedding-0.6B-4bit", "input": ["hello world"]}));
    assert_eq!(status, 200, "{body}\n{}", server.log_text());
    assert_eq!(body["model"], "Qwen3-Embedding-0.6B-4bit");
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 48);
    let meta = metadata(&store.join("Qwen3-Embedding-0.6B-4bit"));
    assert_eq!(
        (meta["quantization"].as_str(), meta["repo"].as_str()),
        (Some("4bit"), Some("Qwen/Qwen3-Embedding-0.6B"))
    );
    let (_, base) = server.post("/v1/embeddings", &json!({"model": "Qwen3-Embedding-0.6B", "input": ["hello world"]}));
    let cos = cosine(&embedding(&body, 0), &embedding(&base, 0));
    assert!(cos > 0.9, "4-bit row against the preloaded model: cosine {cos}");
    assert_eq!(server.stop(), Some(0));
}

/// The same text precomposed (NFC, what keyboards type) and decomposed (NFD, how macOS's
/// older file systems stored names): `임베딩-café`.
const NAME_NFC: &str = "\u{C784}\u{BCA0}\u{B529}-caf\u{E9}";
const NAME_NFD: &str = "\u{110B}\u{1175}\u{11B7}\u{1107}\u{1166}\u{1103}\u{1175}\u{11BC}-cafe\u{301}";

#[test]
fn a_non_ascii_model_name_is_one_model_typed_nfc_or_nfd() {
    assert_ne!(NAME_NFC.as_bytes(), NAME_NFD.as_bytes());
    // A model folder named in NFD (copied from a Mac, say), on a file system that keeps
    // names as bytes (Linux): asked for in either form, it is one model with one worker.
    let hub = FakeHub::start();
    let hf_home = tempfile::tempdir().unwrap();
    let server = Server::start(ServerOptions { env: hub.server_env(hf_home.path()), ..Default::default() });
    let store = models(server.home.path());
    let out = hub.mlx_serve(
        server.home.path(),
        &["pull", &model_dir("tiny-bert-embed").display().to_string(), "--name", NAME_NFD],
        &[],
    );
    assert!(out.ok(), "{}", out.text());
    assert!(store.join(NAME_NFD).join("config.json").is_file());

    let mut rows = Vec::new();
    for name in [NAME_NFC, NAME_NFD] {
        let (status, body) = server.post("/v1/embeddings", &json!({"model": name, "input": ["hello world"]}));
        assert_eq!(status, 200, "{name}: {body}\n{}", server.log_text());
        rows.push(embedding(&body, 0));
    }
    assert_eq!(rows[0], rows[1]);
    assert_eq!(server.worker_pids().len(), 1, "one model, one worker");
    let (_, tags) = server.get("/api/tags");
    let names: Vec<&str> = tags["models"].as_array().unwrap().iter().filter_map(|m| m["name"].as_str()).collect();
    assert_eq!(names, vec![NAME_NFD], "{tags}");
    // The CLI finds it by either form too.
    let out = hub.mlx_serve(server.home.path(), &["show", NAME_NFC, "--json"], &[]);
    assert!(out.ok(), "{}", out.text());
    let shown: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.text()));
    assert_eq!(shown["name"], NAME_NFD, "{shown}");

    // Deleted by the other form: gone, and then a 404 in the API's shape.
    let resp = ureq::delete(&server.url("/api/delete")).send_json(json!({"model": NAME_NFC}));
    assert_eq!(resp.map(|r| r.status()).unwrap_or_else(|e| panic!("{e}")), 200);
    assert!(!store.join(NAME_NFD).exists());
    let (status, body) = server.post("/v1/embeddings", &json!({"model": NAME_NFC, "input": "x"}));
    assert_eq!(status, 404, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains(NAME_NFC), "{body}");
    assert_eq!(server.stop(), Some(0));
}
