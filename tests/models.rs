//! End-to-end tests of the model store: `mlx-serve pull/list/show/remove/quantize`, the
//! Ollama model API and auto-download, against a Hugging Face–compatible hub on loopback
//! (tests/common/fake_hub.rs) serving the real all-MiniLM-L6-v2 files.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mlx_serve_tests::cli::{self, Output};
use mlx_serve_tests::fake_hub::{folder_files, FakeHub};
use mlx_serve_tests::fixtures::{copy_dir, cosine, embed_reference, minilm_dir};
use mlx_serve_tests::server::{binary, run_client, Server, ServerOptions};
use serde_json::{json, Value};

/// The MiniLM files, read once.
fn minilm_files() -> &'static Vec<(String, Vec<u8>)> {
    static FILES: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    FILES.get_or_init(|| folder_files(&minilm_dir().unwrap()))
}

/// MiniLM as a hub repo, with files a pull must leave alone: pickle weights, ONNX, docs.
fn minilm_repo() -> Vec<(String, Vec<u8>)> {
    let mut files = minilm_files().clone();
    files.push(("pytorch_model.bin".into(), b"pickle bytes that must never be fetched".to_vec()));
    files.push(("onnx/model.onnx".into(), b"onnx".to_vec()));
    files.push(("openvino/openvino_model.xml".into(), b"<xml/>".to_vec()));
    files
}

/// Runs `mlx-serve ARGS` with its own home, the fake hub as HF_ENDPOINT and an HF cache
/// under the home; killed after 180 s.
fn mlx_serve(home: &Path, hub: &FakeHub, args: &[&str]) -> Output {
    cli::run(cli::command(home, Some(&hub.endpoint()), args), Duration::from_secs(180))
}

fn models_dir(home: &Path) -> PathBuf {
    home.join("models")
}

/// Entries of the store folder, hidden ones included (partial folders must not linger),
/// but not the install locks and the names found on the Hub (no model data).
fn store_entries(home: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(models_dir(home))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.retain(|n| n != ".locks" && n != ".names.json");
    v.sort();
    v
}

fn metadata(home: &Path, name: &str) -> Value {
    let text = std::fs::read_to_string(models_dir(home).join(name).join("mlx-serve.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn source_file(name: &str) -> &'static [u8] {
    &minilm_files().iter().find(|f| f.0 == name).unwrap().1
}

/// Requests for `file`'s bytes (its resolve URL or the CDN), beyond the 1-byte probes.
fn body_requests(hub: &FakeHub, sha_or_file: &str) -> Vec<String> {
    hub.requests().into_iter().filter(|r| r.contains(sha_or_file) && !r.ends_with("bytes=0-0")).collect()
}

fn sha256(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn pull_by_repo_alias_and_folder_then_list_show_remove() {
    let hub = FakeHub::start();
    let commit = hub.add_repo("sentence-transformers/all-MiniLM-L6-v2", minilm_repo());
    hub.add_repo("acme/mini-copy", minilm_repo());
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("config.yaml"), "models:\n  aliases:\n    tiny: acme/mini-copy\n").unwrap();

    // By repo id.
    let out = mlx_serve(home.path(), &hub, &["pull", "sentence-transformers/all-MiniLM-L6-v2"]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("installed all-MiniLM-L6-v2"), "{}", out.stdout);
    // Not a terminal: plain progress lines.
    assert!(out.stderr.contains("model.safetensors: 100%"), "{}", out.stderr);
    let dir = models_dir(home.path()).join("all-MiniLM-L6-v2");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "vocab.txt",
        "modules.json",
        "1_Pooling/config.json",
        "sentence_bert_config.json",
    ] {
        assert_eq!(std::fs::read(dir.join(f)).unwrap(), source_file(f), "{f}");
    }
    for f in ["pytorch_model.bin", "onnx", "openvino", "README.md", "data_config.json"] {
        assert!(!dir.join(f).exists(), "{f} should not be fetched");
    }
    assert!(
        hub.requests().iter().all(|r| !r.contains("pytorch_model.bin") && !r.contains("onnx")),
        "{:?}",
        hub.requests()
    );
    let meta = metadata(home.path(), "all-MiniLM-L6-v2");
    assert_eq!(meta["source_type"], "huggingface");
    assert_eq!(meta["repo"], "sentence-transformers/all-MiniLM-L6-v2");
    assert_eq!(meta["revision"], commit.as_str());
    assert_eq!(meta["type"], "embedding");
    assert_eq!(meta["architecture"], "BertModel");
    assert_eq!(meta["dtype"], "float32");
    assert_eq!(meta["original_size"], source_file("model.safetensors").len() as u64);
    assert!(meta["quantization"].is_null() && meta["quantized_size"].is_null());
    assert!(meta["created"].as_str().unwrap().ends_with('Z'));
    assert_eq!(store_entries(home.path()), vec!["all-MiniLM-L6-v2"], "no partial folders left");

    // Again: the revision is unchanged, nothing is downloaded.
    hub.clear_requests();
    let out = mlx_serve(home.path(), &hub, &["pull", "sentence-transformers/all-MiniLM-L6-v2"]);
    assert!(out.ok() && out.stdout.contains("up to date"), "{}\n{}", out.stdout, out.stderr);
    assert!(hub.requests().iter().all(|r| !r.contains("/resolve/") && !r.contains("/cdn/")), "{:?}", hub.requests());

    // By a user alias from config.yaml.
    let out = mlx_serve(home.path(), &hub, &["pull", "tiny"]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(metadata(home.path(), "mini-copy")["repo"], "acme/mini-copy");

    // From a folder, under another name.
    let folder = minilm_dir().unwrap();
    let out = mlx_serve(home.path(), &hub, &["pull", folder.to_str().unwrap(), "--name", "minilm-local"]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    let meta = metadata(home.path(), "minilm-local");
    assert_eq!(meta["source_type"], "folder");
    assert_eq!(meta["revision"], Value::Null);
    assert_eq!(
        std::fs::read(models_dir(home.path()).join("minilm-local/model.safetensors")).unwrap(),
        source_file("model.safetensors")
    );
    // The same name twice is refused, not overwritten.
    let out = mlx_serve(home.path(), &hub, &["pull", folder.to_str().unwrap(), "--name", "minilm-local"]);
    assert!(!out.ok() && out.stderr.contains("already installed"), "{}", out.stderr);

    // list, show, remove.
    let out = mlx_serve(home.path(), &hub, &["list"]);
    assert!(out.ok(), "{}", out.stderr);
    for name in ["all-MiniLM-L6-v2", "mini-copy", "minilm-local"] {
        let line =
            out.stdout.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name}:\n{}", out.stdout));
        assert!(line.contains("embedding") && line.contains("BertModel") && line.contains("MiB"), "{line}");
    }
    let out = mlx_serve(home.path(), &hub, &["list", "--json"]);
    let listed: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3);
    assert!(listed[0]["size"].as_u64().unwrap() > source_file("model.safetensors").len() as u64);
    let out = mlx_serve(home.path(), &hub, &["show", "tiny", "--json"]);
    let shown: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        (shown["name"].as_str(), shown["pooling"].as_str(), shown["max_tokens"].as_u64()),
        (Some("mini-copy"), Some("mean"), Some(256))
    );
    let out = mlx_serve(home.path(), &hub, &["list", "--aliases"]);
    assert!(out.stdout.contains("qwen-embedding") && out.stdout.contains("tiny "), "{}", out.stdout);
    let out = mlx_serve(home.path(), &hub, &["remove", "minilm-local"]);
    assert!(out.ok(), "{}", out.stderr);
    assert_eq!(store_entries(home.path()), vec!["all-MiniLM-L6-v2", "mini-copy"]);
    let out = mlx_serve(home.path(), &hub, &["remove", "minilm-local"]);
    assert!(!out.ok() && out.stderr.contains("not installed"), "{}", out.stderr);
}

#[test]
fn show_says_whether_dimensions_are_matryoshka_trained() {
    let hub = FakeHub::start();
    hub.add_repo("acme/mrl", minilm_repo());
    hub.set_tags("acme/mrl", &["sentence-transformers", "loss:MatryoshkaLoss"]);
    hub.add_repo("acme/plain", minilm_repo());
    hub.set_tags("acme/plain", &["sentence-transformers", "loss:MultipleNegativesRankingLoss"]);
    // A folder whose model card (sentence-transformers' own format) names the loss and sizes.
    let folder = tempfile::tempdir().unwrap();
    for (name, data) in minilm_files() {
        let path = folder.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
    let card =
        "#### MatryoshkaLoss\n```json\n{\n    \"matryoshka_dims\": [\n        384,\n        128\n    ]\n}\n```\n";
    std::fs::write(folder.path().join("README.md"), card).unwrap();
    let home = tempfile::tempdir().unwrap();
    for (source, name) in
        [("acme/mrl", "acme-mrl"), ("acme/plain", "acme-plain"), (folder.path().to_str().unwrap(), "local")]
    {
        let out = mlx_serve(home.path(), &hub, &["pull", source, "--name", name]);
        assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    }
    let dimensions = |name: &str| {
        let out = mlx_serve(home.path(), &hub, &["show", name, "--json"]);
        let shown: Value = serde_json::from_str(&out.stdout).unwrap();
        shown["dimensions"].as_str().unwrap_or_default().to_owned()
    };
    assert_eq!(dimensions("acme-mrl"), "Matryoshka-trained (declared by the Hub tag `loss:MatryoshkaLoss`)");
    assert!(dimensions("acme-plain").starts_with("not declared Matryoshka-trained"), "{}", dimensions("acme-plain"));
    assert_eq!(
        dimensions("local"),
        "Matryoshka-trained at 384, 128 (declared by the model card (README.md): MatryoshkaLoss)"
    );
    assert_eq!(metadata(home.path(), "local")["matryoshka"]["dims"], json!([384, 128]));
    assert!(metadata(home.path(), "acme-plain").get("matryoshka").is_none());
}

#[test]
fn pulls_that_must_fail_leave_nothing_behind() {
    let hub = FakeHub::start();
    let minilm = minilm_files();
    let small: Vec<(String, Vec<u8>)> = minilm.iter().filter(|f| f.0 != "model.safetensors").cloned().collect();
    let mut pickled = small.clone();
    pickled.push(("pytorch_model.bin".into(), b"not really pickle".to_vec()));
    hub.add_repo("acme/pickled", pickled);
    let mut gpt2 =
        vec![("config.json".to_string(), br#"{"model_type": "gpt2", "architectures": ["GPT2Model"]}"#.to_vec())];
    gpt2.push(("model.safetensors".into(), source_file("model.safetensors").to_vec()));
    hub.add_repo("acme/gpt2-like", gpt2);
    let home = tempfile::tempdir().unwrap();

    let out = mlx_serve(home.path(), &hub, &["pull", "acme/does-not-exist"]);
    assert!(!out.ok());
    assert!(
        out.stderr.contains("acme/does-not-exist was not found") && out.stderr.contains("HTTP 401"),
        "{}",
        out.stderr
    );

    let out = mlx_serve(home.path(), &hub, &["pull", "acme/pickled"]);
    assert!(!out.ok());
    assert!(
        out.stderr.contains("only pickle weights (pytorch_model.bin)") && out.stderr.contains("safetensors only"),
        "{}",
        out.stderr
    );
    assert!(hub.requests().iter().all(|r| !r.contains("pytorch_model.bin")), "pickle was fetched");

    // An architecture the worker cannot run is refused before its weights are downloaded.
    let out = mlx_serve(home.path(), &hub, &["pull", "acme/gpt2-like"]);
    assert!(!out.ok());
    assert!(out.stderr.contains("unsupported architecture"), "{}", out.stderr);
    assert!(body_requests(&hub, "gpt2-like/resolve/main/model.safetensors").is_empty(), "{:?}", hub.requests());

    for bad in ["../evil", "a/b", ".."] {
        let out = mlx_serve(home.path(), &hub, &["pull", "acme/pickled", "--name", bad]);
        assert!(!out.ok() && out.stderr.contains("invalid model name"), "{bad}: {}", out.stderr);
    }
    // A bare name the hub does not know either (tests/names.rs has the search itself).
    let out = mlx_serve(home.path(), &hub, &["pull", "nonsense-name"]);
    assert!(!out.ok() && out.stderr.contains("no model named `nonsense-name`"), "{}", out.stderr);
    let out = mlx_serve(home.path(), &hub, &["pull", "./no/such/folder"]);
    assert!(!out.ok() && out.stderr.contains("No such file"), "{}", out.stderr);

    let entries = store_entries(home.path());
    assert!(entries.is_empty(), "store should be empty: {entries:?}");
}

/// A repo's files: (path, bytes).
type RepoFiles = Vec<(String, Vec<u8>)>;

/// A repo with tiny-bert-embed's files (weights, tokenizer, sentence-transformers files)
/// and `config.json` replaced, `files` added.
fn repo_with(config: Value, files: &[(&str, Value)]) -> RepoFiles {
    let mut repo = folder_files(&mlx_serve_tests::fixtures::model_dir("tiny-bert-embed"));
    repo.retain(|(name, _)| name != "config.json" && !files.iter().any(|(f, _)| f == name));
    repo.push(("config.json".into(), config.to_string().into_bytes()));
    repo.extend(files.iter().map(|(f, v)| (f.to_string(), v.to_string().into_bytes())));
    repo
}

/// Configs the worker would not compute exactly are refused at pull, naming the field,
/// before any weight is downloaded — never loaded to answer with another function's
/// vectors. The configs carry the fields of the Hub repos named (their config.json, sizes
/// shrunk to the fixture's), the ones that decide.
#[test]
fn configs_the_worker_does_not_compute_are_refused_at_pull_naming_the_field() {
    let hub = FakeHub::start();
    let bert = |extra: Value| {
        let mut c = json!({"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 32,
            "num_attention_heads": 4, "num_hidden_layers": 2, "intermediate_size": 64, "vocab_size": 1000,
            "max_position_embeddings": 128, "type_vocab_size": 2});
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        c
    };
    let pooling = |mode: Value| ("1_Pooling/config.json", json!({"pooling_mode": mode, "include_prompt": true}));
    let cases: Vec<(&str, RepoFiles, &str)> = vec![
        // jinaai/jina-embeddings-v2-base-en: BERT with ALiBi, GeGLU, custom code.
        (
            "jinaai/jina-embeddings-v2-base-en",
            repo_with(
                bert(json!({"architectures": ["JinaBertForMaskedLM"], "position_embedding_type": "alibi",
                    "feed_forward_type": "geglu", "auto_map": {
                        "AutoConfig": "jinaai/jina-bert-implementation--configuration_bert.JinaBertConfig",
                        "AutoModel": "jinaai/jina-bert-implementation--modeling_bert.JinaBertModel"}})),
                &[],
            ),
            "jina-bert-implementation--modeling_bert.JinaBertModel",
        ),
        // The same without auto_map (a converted copy): the position scheme is named.
        (
            "acme/jina-v2-converted",
            repo_with(bert(json!({"position_embedding_type": "alibi"})), &[]),
            "position_embedding_type \"alibi\"",
        ),
        // jinaai/jina-embeddings-v3: XLM-R with rotary positions and task LoRA adapters.
        (
            "jinaai/jina-embeddings-v3",
            repo_with(
                bert(json!({"model_type": "xlm-roberta", "architectures": ["XLMRobertaModel"],
                    "position_embedding_type": "rotary", "lora_adaptations": ["retrieval.query", "retrieval.passage"],
                    "max_position_embeddings": 8194, "pad_token_id": 1})),
                &[],
            ),
            "position_embedding_type \"rotary\"",
        ),
        // A Qwen3 with sliding-window attention switched on.
        (
            "acme/qwen3-sliding",
            repo_with(
                json!({"model_type": "qwen3", "architectures": ["Qwen3Model"], "hidden_size": 32,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 64,
                    "num_hidden_layers": 2, "vocab_size": 1000, "use_sliding_window": true, "sliding_window": 64}),
                &[pooling(json!("lasttoken"))],
            ),
            "use_sliding_window",
        ),
        // A Qwen3 with YaRN RoPE scaling.
        (
            "acme/qwen3-yarn",
            repo_with(
                json!({"model_type": "qwen3", "architectures": ["Qwen3Model"], "hidden_size": 32,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 64,
                    "num_hidden_layers": 2, "vocab_size": 1000, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}),
                &[pooling(json!("lasttoken"))],
            ),
            "yarn",
        ),
        // Two pooling modes at once (concatenated by sentence-transformers).
        ("acme/two-poolings", repo_with(bert(json!({})), &[pooling(json!(["cls", "max"]))]), "several modes"),
        // A module sentence-transformers would run and we would not.
        (
            "acme/layernorm-module",
            repo_with(
                bert(json!({})),
                &[(
                    "modules.json",
                    json!([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                        {"idx": 2, "name": "2", "path": "2_LayerNorm", "type": "sentence_transformers.models.LayerNorm"}]),
                )],
            ),
            "sentence_transformers.models.LayerNorm",
        ),
    ];
    for (repo, files, _) in &cases {
        hub.add_repo(repo, files.clone());
    }
    let home = tempfile::tempdir().unwrap();
    for (repo, _, needle) in &cases {
        let out = mlx_serve(home.path(), &hub, &["pull", repo]);
        assert!(!out.ok(), "{repo} must be refused");
        assert!(out.stderr.contains(needle), "{repo}: the refusal should name {needle}: {}", out.stderr);
        let name = repo.split('/').nth(1).unwrap();
        assert!(
            body_requests(&hub, &format!("{name}/resolve/main/model.safetensors")).is_empty(),
            "{repo}: weights fetched"
        );
    }
    assert!(store_entries(home.path()).is_empty(), "{:?}", store_entries(home.path()));
}

#[test]
fn dropped_connection_leaves_no_half_model_and_the_rerun_resumes() {
    let hub = FakeHub::start();
    hub.add_repo("acme/minilm", minilm_repo());
    let weights = source_file("model.safetensors");
    let sha = sha256(weights);
    // hf-hub fetches 10 MB chunks one after another; cut the third.
    hub.drop_connection_once("model.safetensors", 25_000_000);
    let home = tempfile::tempdir().unwrap();

    let out = mlx_serve(home.path(), &hub, &["pull", "acme/minilm"]);
    assert!(!out.ok(), "the pull should fail:\n{}", out.stdout);
    assert!(out.stderr.contains("downloading model.safetensors") && out.stderr.contains("failed"), "{}", out.stderr);
    assert!(store_entries(home.path()).is_empty(), "half model left: {:?}", store_entries(home.path()));
    let first_run = body_requests(&hub, &sha);
    assert!(first_run.iter().any(|r| r.ends_with("bytes=0-9999999")), "{first_run:?}");

    // What a pull killed with SIGKILL leaves (its process is gone) is cleaned up by the next.
    let stale = models_dir(home.path()).join(".partial-minilm-4194303");
    std::fs::create_dir_all(stale.join("1_Pooling")).unwrap();
    hub.clear_requests();
    let out = mlx_serve(home.path(), &hub, &["pull", "acme/minilm"]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(std::fs::read(models_dir(home.path()).join("minilm/model.safetensors")).unwrap(), weights);
    assert_eq!(store_entries(home.path()), vec!["minilm"]);
    // The rerun resumed from the last complete chunk instead of starting over.
    let second_run = body_requests(&hub, &sha);
    assert!(second_run.iter().all(|r| !r.ends_with("bytes=0-9999999")), "restarted from 0: {second_run:?}");
    assert!(second_run.iter().any(|r| r.ends_with("bytes=20000000-29999999")), "{second_run:?}");
}

#[test]
fn interrupted_pull_leaves_nothing() {
    let hub = FakeHub::start();
    hub.add_repo("acme/minilm", minilm_repo());
    hub.slow_down(Some(Duration::from_millis(50)));
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(binary("mlx-serve"))
        .args(["pull", "acme/minilm"])
        .env("MLX_SERVE_HOME", home.path())
        .env("HF_ENDPOINT", hub.endpoint())
        .env("HF_HOME", home.path().join("hf"))
        .env_remove("MLX_SERVE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the weights are arriving, then Ctrl-C.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !hub.requests().iter().any(|r| r.starts_with("/cdn/") && !r.ends_with("bytes=0-0")) {
        assert!(Instant::now() < deadline, "the download never started");
        std::thread::sleep(Duration::from_millis(20)); // polling interval of a condition wait (bounded by its deadline)
    }
    assert!(store_entries(home.path()).iter().any(|e| e.starts_with(".partial-minilm-")));
    mlx_serve_tests::server::signal(child.id(), nix::sys::signal::Signal::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "pull did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(20)); // polling interval of a condition wait (bounded by its deadline)
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("interrupted; nothing was installed"), "{stderr}");
    assert!(store_entries(home.path()).is_empty(), "{:?}", store_entries(home.path()));
}

fn embed(server: &Server, model: &str, texts: &[&str]) -> Vec<Vec<f32>> {
    let (status, resp) = server.post("/v1/embeddings", &json!({"model": model, "input": texts}));
    assert_eq!(status, 200, "{model}: {resp}\n{}", server.log_text());
    resp["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect()
}

#[test]
fn quantized_models_pull_list_and_serve() {
    let hub = FakeHub::start();
    hub.add_repo("sentence-transformers/all-MiniLM-L6-v2", minilm_repo());
    let hf_home = tempfile::tempdir().unwrap();
    let server = Server::start(ServerOptions {
        env: vec![("HF_ENDPOINT".into(), hub.endpoint()), ("HF_HOME".into(), hf_home.path().display().to_string())],
        ..Default::default()
    });
    let home = server.home.path();

    // pull --quantize installs only the quantized variant.
    let out = mlx_serve(home, &hub, &["pull", "minilm", "--quantize", "8bit"]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(store_entries(home), vec!["all-MiniLM-L6-v2-8bit"]);
    let out = mlx_serve(home, &hub, &["pull", "minilm"]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    let out = mlx_serve(home, &hub, &["quantize", "minilm", "--bits", "4"]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("installed all-MiniLM-L6-v2-4bit"), "{}", out.stdout);
    // The quality check runs at quantize time and is printed.
    let printed = out.stdout.lines().find(|l| l.starts_with("quality:")).unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(
        printed.contains("recall@10") && printed.contains("nDCG@10") && printed.contains("20 queries x 60 documents"),
        "{printed}"
    );
    println!("mlx-serve quantize minilm --bits 4:\n{}", out.stdout.trim());
    let out = mlx_serve(home, &hub, &["quantize", "minilm", "--bits", "4"]);
    assert!(!out.ok() && out.stderr.contains("already exists"), "{}", out.stderr);
    assert_eq!(store_entries(home), vec!["all-MiniLM-L6-v2", "all-MiniLM-L6-v2-4bit", "all-MiniLM-L6-v2-8bit"]);

    let f32_size = source_file("model.safetensors").len() as u64;
    let mut sizes = vec![("f32", f32_size)];
    for (name, bits) in [("all-MiniLM-L6-v2-8bit", 8), ("all-MiniLM-L6-v2-4bit", 4)] {
        let meta = metadata(home, name);
        // The variant's metadata (name, "quantization": "4bit", original_size, quantized_size).
        assert_eq!(meta["name"], name);
        assert_eq!(meta["quantization"], format!("{bits}bit"), "{name}");
        assert_eq!(meta["original_size"], f32_size, "{name}");
        assert_eq!(meta["repo"], "sentence-transformers/all-MiniLM-L6-v2", "{name}");
        assert_eq!(meta["type"], "embedding");
        let q = meta["quantized_size"].as_u64().unwrap();
        let on_disk = std::fs::metadata(models_dir(home).join(name).join("model.safetensors")).unwrap().len();
        assert_eq!(q, on_disk, "{name}");
        sizes.push((if bits == 8 { "8-bit" } else { "4-bit" }, q));
        // Exactly what was quantized, and what was kept and why.
        let d = &meta["quantization_details"];
        assert_eq!(
            (d["method"].as_str(), d["bits"].as_u64(), d["group_size"].as_u64()),
            (Some("mlx-affine"), Some(bits), Some(64)),
            "{d}"
        );
        let quantized: Vec<&str> = d["quantized"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["tensors"].as_array().unwrap())
            .filter_map(Value::as_str)
            .collect();
        assert!(
            quantized.contains(&"embeddings.word_embeddings.weight")
                && quantized.contains(&"encoder.layer.0.attention.self.query.weight"),
            "{d}"
        );
        let kept = d["kept"].as_array().unwrap();
        assert!(kept.iter().all(|k| !k["why"].as_str().unwrap().is_empty()), "{d}");
        assert!(
            kept.iter()
                .any(|k| k["tensors"].as_array().unwrap().contains(&json!("embeddings.token_type_embeddings.weight"))),
            "{d}"
        );
        // The quality measured at quantize time (docs/quantization.md's bars), against the f32 model.
        let quality = &meta["quality"];
        let (mean, recall, ndcg) = (
            quality["mean_cosine"].as_f64().unwrap(),
            quality["recall_at_10"].as_f64().unwrap(),
            quality["ndcg_at_10"].as_f64().unwrap(),
        );
        println!("{name}: quality at quantize time {quality}");
        assert_eq!((quality["queries"].as_u64(), quality["documents"].as_u64()), (Some(20), Some(60)), "{quality}");
        if bits == 8 {
            assert!(mean >= 0.999 && recall >= 0.95, "{quality}");
        } else {
            assert!(mean >= 0.98 && recall >= 0.95 && ndcg >= 0.95, "{quality}");
        }
    }
    // MiniLM 8-bit at most 30% of f32; 4-bit smaller still (docs/quantization.md).
    assert!(sizes[1].1 * 10 <= f32_size * 3 && sizes[2].1 < sizes[1].1, "{sizes:?}");
    let out = mlx_serve(home, &hub, &["show", "all-MiniLM-L6-v2-4bit"]);
    assert!(out.ok(), "{}", out.stderr);
    for want in [
        "quantization:",
        "4bit (mixed recipe), group size 64",
        "8-bit: 37 matrices",
        "4-bit: 2 matrices",
        "quality: cosine to the original",
    ] {
        assert!(out.stdout.contains(want), "{want:?} not in:\n{}", out.stdout);
    }
    let out = mlx_serve(home, &hub, &["list"]);
    let line = out.stdout.lines().find(|l| l.starts_with("all-MiniLM-L6-v2-4bit")).unwrap();
    assert!(line.contains("4-bit/64"), "{line}");

    // All three serve; compare with f32 and with sentence-transformers.
    let reference = embed_reference("all-MiniLM-L6-v2").unwrap();
    let mut texts: Vec<&str> = Vec::new();
    let mut st_vectors: Vec<&Vec<f32>> = Vec::new();
    for case in &reference.cases {
        for (t, e) in case.texts.iter().zip(&case.embeddings) {
            if !t.is_empty() {
                texts.push(t);
                st_vectors.push(e);
            }
        }
    }
    let f32_rows = embed(&server, "all-MiniLM-L6-v2", &texts);
    let mean =
        |a: &[Vec<f32>], b: &[&Vec<f32>]| a.iter().zip(b).map(|(x, y)| cosine(x, y)).sum::<f64>() / a.len() as f64;
    let f32_refs: Vec<&Vec<f32>> = f32_rows.iter().collect();
    let mut report =
        format!("f32: {} bytes, cosine to sentence-transformers {:.6}", f32_size, mean(&f32_rows, &st_vectors));
    for (label, model, min_cos) in [("8-bit", "all-MiniLM-L6-v2-8bit", 0.999), ("4-bit", "minilm-4bit", 0.98)] {
        let rows = embed(&server, model, &texts);
        let to_f32 = mean(&rows, &f32_refs);
        let worst = rows.iter().zip(&f32_rows).map(|(a, b)| cosine(a, b)).fold(1.0f64, f64::min);
        let size = sizes.iter().find(|s| s.0 == label).unwrap().1;
        report.push_str(&format!(
            "\n{label}: {size} bytes ({:.1}% of f32), mean cosine to f32 {to_f32:.6} (worst {worst:.6}) over {} texts",
            100.0 * size as f64 / f32_size as f64,
            texts.len()
        ));
        assert!(to_f32 >= min_cos, "{label}: mean cosine {to_f32}");
    }
    println!("quantization of all-MiniLM-L6-v2 (group size 64):\n{report}");
    assert_eq!(server.stop(), Some(0));
}

/// Polls `/api/ps` until `pred` holds for its `downloads`; returns every snapshot seen.
fn watch_downloads(server: &Server, secs: u64, mut pred: impl FnMut(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut seen = Vec::new();
    loop {
        let (status, ps) = server.get("/api/ps");
        assert_eq!(status, 200);
        let d = ps["downloads"].clone();
        let done = pred(&d);
        seen.push(d);
        if done {
            return seen;
        }
        assert!(Instant::now() < deadline, "downloads did not settle: {seen:?}");
        std::thread::sleep(Duration::from_millis(50)); // polling interval of a condition wait (bounded by its deadline)
    }
}

#[test]
fn auto_download_on_request_waits_and_is_shared() {
    let hub = FakeHub::start();
    hub.add_repo("acme/mini", minilm_repo());
    hub.slow_down(Some(Duration::from_millis(5)));
    let hf_home = tempfile::tempdir().unwrap();
    let server = Server::start(ServerOptions {
        config: Some("models:\n  aliases:\n    mini: acme/mini\n".into()),
        env: vec![("HF_ENDPOINT".into(), hub.endpoint()), ("HF_HOME".into(), hf_home.path().display().to_string())],
        ..Default::default()
    });
    // Three concurrent requests for a missing model: one download, three answers.
    let port = server.port;
    let threads: Vec<_> = ["acme/mini", "mini", "acme/mini"]
        .into_iter()
        .map(|model| {
            std::thread::spawn(move || {
                let r = ureq::post(&format!("http://127.0.0.1:{port}/v1/embeddings"))
                    .timeout(Duration::from_secs(120))
                    .send_json(json!({"model": model, "input": "downloaded on first use"}));
                match r {
                    Ok(resp) => (resp.status(), resp.into_json::<Value>().unwrap()),
                    Err(ureq::Error::Status(code, resp)) => (code, resp.into_json::<Value>().unwrap_or(Value::Null)),
                    Err(e) => panic!("{e}"),
                }
            })
        })
        .collect();
    let answers: Vec<(u16, Value)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}\n{}", server.log_text());
        assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 384);
    }
    let info_requests = hub.requests().iter().filter(|r| r.starts_with("/api/models/acme/mini/")).count();
    assert_eq!(info_requests, 1, "one shared download: {:?}", hub.requests());
    let sha = sha256(source_file("model.safetensors"));
    let chunks = body_requests(&hub, &sha);
    let first = chunks.iter().filter(|r| r.ends_with("bytes=0-9999999")).count();
    assert_eq!(first, 1, "{chunks:?}");
    assert_eq!(metadata(server.home.path(), "mini")["repo"], "acme/mini");

    // A quantized variant of an alias downloads (from the HF cache) and quantizes on request.
    hub.slow_down(None);
    let (status, resp) = server.post("/v1/embeddings", &json!({"model": "mini-8bit", "input": "quantized on request"}));
    assert_eq!(status, 200, "{resp}\n{}", server.log_text());
    assert_eq!(metadata(server.home.path(), "mini-8bit")["quantization"], "8bit");

    // A repo the hub does not have: 404 with the hub's answer, nothing left behind.
    let (status, resp) = server.post("/v1/embeddings", &json!({"model": "acme/nothing", "input": "x"}));
    assert_eq!(status, 404, "{resp}");
    assert!(resp["error"]["message"].as_str().unwrap().contains("was not found"), "{resp}");
    // A bad name never reaches the filesystem.
    let (status, resp) = server.post("/v1/embeddings", &json!({"model": "../../etc", "input": "x"}));
    assert_eq!(status, 400, "{resp}");
    assert_eq!(resp["error"]["code"], "invalid_model_name");
    assert_eq!(store_entries(server.home.path()), vec!["mini", "mini-8bit"]);
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn auto_download_without_waiting_answers_503_then_serves() {
    let hub = FakeHub::start();
    hub.add_repo("acme/mini", minilm_repo());
    // ~90 MiB at 1 MiB per 20 ms: about 2 s, long enough to watch.
    hub.slow_down(Some(Duration::from_millis(20)));
    let hf_home = tempfile::tempdir().unwrap();
    let server = Server::start(ServerOptions {
        config: Some("models:\n  auto_download_on_request: false\n".into()),
        env: vec![("HF_ENDPOINT".into(), hub.endpoint()), ("HF_HOME".into(), hf_home.path().display().to_string())],
        ..Default::default()
    });
    let resp = ureq::post(&server.url("/v1/embeddings")).send_json(json!({"model": "acme/mini", "input": "x"}));
    let Err(ureq::Error::Status(503, resp)) = resp else { panic!("expected 503") };
    assert_eq!(resp.header("Retry-After"), Some("10"));
    let body: Value = resp.into_json().unwrap();
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("download from acme/mini started"), "{msg}");
    assert_eq!(body["error"]["code"], "model_downloading");

    // Progress is visible while it runs (in /api/ps and /v1/models), then the model serves.
    let seen = watch_downloads(&server, 60, |d| d.as_array().unwrap().is_empty());
    let running: Vec<&Value> = seen.iter().filter_map(|d| d.as_array().unwrap().first()).collect();
    assert!(running.iter().any(|d| d["state"] == "downloading" && d["completed"].as_u64().unwrap() > 0), "{seen:?}");
    assert!(running.iter().all(|d| d["model"] == "mini" && d["source"] == "acme/mini"), "{seen:?}");
    let (_, models) = server.get("/v1/models");
    assert!(models["data"].as_array().unwrap().iter().any(|m| m["id"] == "mini"), "{models}");
    assert_eq!(models["downloads"], json!([]));
    let (status, resp) = server.post("/v1/embeddings", &json!({"model": "acme/mini", "input": "x"}));
    assert_eq!(status, 200, "{resp}");
    assert_eq!(server.stop(), Some(0));
}

/// `POST /api/pull` and its NDJSON lines.
fn api_pull(server: &Server, body: Value) -> (u16, Vec<Value>) {
    match ureq::post(&server.url("/api/pull")).timeout(Duration::from_secs(120)).send_json(body) {
        Ok(resp) => {
            let status = resp.status();
            assert_eq!(resp.header("Content-Type"), Some("application/x-ndjson"));
            let text = resp.into_string().unwrap();
            (status, text.lines().map(|l| serde_json::from_str(l).unwrap()).collect())
        }
        Err(ureq::Error::Status(code, resp)) => (code, vec![resp.into_json().unwrap_or(Value::Null)]),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn ollama_model_api_pull_tags_show_ps_delete() {
    let hub = FakeHub::start();
    hub.add_repo("acme/mini", minilm_repo());
    let hf_home = tempfile::tempdir().unwrap();
    let server = Server::start(ServerOptions {
        env: vec![("HF_ENDPOINT".into(), hub.endpoint()), ("HF_HOME".into(), hf_home.path().display().to_string())],
        ..Default::default()
    });
    let (status, lines) = api_pull(&server, json!({"model": "acme/mini"}));
    assert_eq!(status, 200);
    assert_eq!(lines.first().unwrap(), &json!({"status": "pulling manifest"}), "{lines:?}");
    assert_eq!(lines.last().unwrap(), &json!({"status": "success"}), "{lines:?}");
    let weights = lines.iter().filter(|l| l["digest"] == "model.safetensors").collect::<Vec<_>>();
    let size = source_file("model.safetensors").len() as u64;
    assert!(weights.iter().all(|l| l["total"] == size && l["status"] == "pulling model.safetensors"), "{weights:?}");
    assert_eq!(weights.last().unwrap()["completed"], size);
    let statuses: Vec<&str> = lines.iter().filter_map(|l| l["status"].as_str()).collect();
    let at = |s: &str| statuses.iter().position(|x| *x == s).unwrap_or_else(|| panic!("{s} missing: {statuses:?}"));
    assert!(
        at("pulling manifest") < at("pulling config.json") && at("verifying sha256 digest") < at("writing manifest")
    );

    // stream=false: one object.
    let (status, resp) = server.post("/api/pull", &json!({"model": "acme/mini", "stream": false}));
    assert_eq!((status, resp), (200, json!({"status": "success"})));
    // Errors before the stream starts use Ollama's shape and status.
    let (status, lines) = api_pull(&server, json!({"model": "../../etc"}));
    assert_eq!(status, 400, "{lines:?}");
    assert!(lines[0]["error"].as_str().unwrap().contains("invalid model name"));
    let (status, lines) = api_pull(&server, json!({"model": "no-such-alias"}));
    assert_eq!(status, 404, "{lines:?}");
    // A missing repo fails inside the stream, as an error line.
    let (_, lines) = api_pull(&server, json!({"model": "acme/absent"}));
    assert!(lines.last().unwrap()["error"].as_str().unwrap().contains("acme/absent was not found"), "{lines:?}");

    let (_, tags) = server.get("/api/tags");
    let m = tags["models"].as_array().unwrap().iter().find(|m| m["name"] == "mini").expect("mini in tags").clone();
    assert!(m["size"].as_u64().unwrap() > size);
    assert_eq!(m["details"]["family"], "bert");
    assert_eq!(m["details"]["quantization_level"], "F32");
    let (status, show) = server.post("/api/show", &json!({"model": "acme/mini"}));
    assert_eq!(status, 200, "{show}");
    assert_eq!(show["model_info"]["mlx_serve.metadata"]["repo"], "acme/mini");
    assert_eq!(show["model_info"]["general.architecture"], "BertModel");
    let dimensions = show["model_info"]["mlx_serve.dimensions"].as_str().unwrap();
    assert!(dimensions.starts_with("not declared Matryoshka-trained"), "{dimensions}");

    // Loaded, visible in /api/ps; delete stops its worker first.
    let (status, _) = server.post("/api/embed", &json!({"model": "mini", "input": "load me"}));
    assert_eq!(status, 200);
    let (_, ps) = server.get("/api/ps");
    assert_eq!(ps["models"][0]["name"], "mini", "{ps}");
    assert_eq!(server.worker_pids().len(), 1);
    let resp = ureq::delete(&server.url("/api/delete")).send_json(json!({"model": "mini"}));
    assert_eq!(resp.map(|r| r.status()).unwrap_or(0), 200);
    assert!(server.worker_pids().is_empty(), "worker still running after delete");
    let (_, ps) = server.get("/api/ps");
    assert_eq!(ps["models"], json!([]));
    assert!(store_entries(server.home.path()).is_empty(), "{:?}", store_entries(server.home.path()));
    let (status, _) = server.post("/api/show", &json!({"model": "mini"}));
    assert_eq!(status, 404);

    // The official ollama client does the same round trip.
    let out = run_client("ollama_models.py", &server, &["acme/mini", "acme/absent"]);
    assert!(out.contains("OK"), "{out}");
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn preload_downloads_a_missing_alias_then_loads_it() {
    let hub = FakeHub::start();
    hub.add_repo("acme/mini", minilm_repo());
    let hf_home = tempfile::tempdir().unwrap();
    let server = Server::start(ServerOptions {
        config: Some("models:\n  aliases:\n    mini: acme/mini\n".into()),
        env: vec![("HF_ENDPOINT".into(), hub.endpoint()), ("HF_HOME".into(), hf_home.path().display().to_string())],
        args: vec!["--preload".into(), "mini".into()],
        ..Default::default()
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.worker_pids().is_empty() {
        assert!(Instant::now() < deadline, "preload did not start a worker:\n{}", server.log_text());
        std::thread::sleep(Duration::from_millis(50)); // polling interval of a condition wait (bounded by its deadline)
    }
    assert_eq!(store_entries(server.home.path()), vec!["mini"]);
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn cli_remove_stops_the_running_servers_worker_first() {
    let server = Server::start(ServerOptions::default());
    let store = server.home.path().join("models").join("tiny-bert-embed");
    copy_dir(&mlx_serve_tests::fixtures::model_dir("tiny-bert-embed"), &store);
    let (status, _) = server.post("/v1/embeddings", &json!({"model": "tiny-bert-embed", "input": "hello"}));
    assert_eq!(status, 200);
    let worker = server.worker_pids()[0];
    let out = Command::new(binary("mlx-serve"))
        .args(["remove", "tiny-bert-embed"])
        .env("MLX_SERVE_HOME", server.home.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!store.exists());
    assert!(!mlx_serve_tests::process::alive(worker), "the worker was stopped before its files went away");
    assert!(server.worker_pids().is_empty());
    let (status, _) = server.post("/v1/embeddings", &json!({"model": "tiny-bert-embed", "input": "hello"}));
    assert_eq!(status, 404);
}

#[test]
fn pull_takes_a_revision_and_unknown_repos_fail_as_the_hub_answers() {
    let hub = FakeHub::start();
    let fixture = |name: &str| folder_files(&mlx_serve_tests::fixtures::model_dir(name));
    let main = hub.add_repo("acme/evolving", fixture("tiny-bert-embed"));
    let v2 = hub.add_revision("acme/evolving", "v2", fixture("tiny-xlmr-embed"));
    let home = tempfile::tempdir().unwrap();

    // A branch by name: its files and its commit, fetched at that revision.
    let out = mlx_serve(home.path(), &hub, &["pull", "acme/evolving", "--revision", "v2", "--name", "by-branch"]);
    assert!(out.ok(), "{}", out.text());
    let meta = metadata(home.path(), "by-branch");
    assert_eq!(
        (meta["revision"].as_str(), meta["architecture"].as_str()),
        (Some(v2.as_str()), Some("XLMRobertaModel"))
    );
    let config = std::fs::read(models_dir(home.path()).join("by-branch/config.json")).unwrap();
    assert_eq!(
        config,
        std::fs::read(mlx_serve_tests::fixtures::model_dir("tiny-xlmr-embed").join("config.json")).unwrap()
    );
    assert!(hub.requests().iter().any(|r| r.starts_with("/acme/evolving/resolve/v2/")), "{:?}", hub.requests());
    assert!(hub.requests().iter().all(|r| !r.contains("/resolve/main/")), "{:?}", hub.requests());
    // A commit, and the default (main).
    let out = mlx_serve(home.path(), &hub, &["pull", "acme/evolving", "--revision", &v2, "--name", "by-commit"]);
    assert!(out.ok(), "{}", out.text());
    assert_eq!(metadata(home.path(), "by-commit")["revision"], v2.as_str());
    let out = mlx_serve(home.path(), &hub, &["pull", "acme/evolving"]);
    assert!(out.ok(), "{}", out.text());
    let meta = metadata(home.path(), "evolving");
    assert_eq!((meta["revision"].as_str(), meta["architecture"].as_str()), (Some(main.as_str()), Some("BertModel")));
    // A revision the repo does not have: said so, nothing installed.
    let out = mlx_serve(home.path(), &hub, &["pull", "acme/evolving", "--revision", "nope", "--name", "none"]);
    let line = mlx_serve_tests::fake_hub::error_line(&out);
    assert!(line.contains("acme/evolving has no revision \"nope\"") && line.contains("HTTP 404"), "{}", out.text());

    // An unknown repo: without a token the Hub answers 401 (it will not say whether a
    // private repo exists), with one 404; both mean "not found", not "needs a token".
    let out = mlx_serve(home.path(), &hub, &["pull", "acme/nowhere"]);
    let line = mlx_serve_tests::fake_hub::error_line(&out);
    assert!(line.contains("acme/nowhere was not found") && line.contains("HTTP 401"), "{}", out.text());
    let out = hub.mlx_serve(home.path(), &["pull", "acme/nowhere"], &[("HF_TOKEN", "hf_some_token")]);
    let line = mlx_serve_tests::fake_hub::error_line(&out);
    assert!(line.contains("acme/nowhere was not found") && line.contains("HTTP 404"), "{}", out.text());
    assert_eq!(store_entries(home.path()), vec!["by-branch", "by-commit", "evolving"]);
}

#[test]
fn pull_type_overrides_what_config_json_suggests() {
    let hub = FakeHub::start();
    let server = Server::start(ServerOptions::default());
    let home = server.home.path();
    let qwen = mlx_serve_tests::fixtures::model_dir("tiny-qwen3-rerank");
    let qwen = qwen.to_str().unwrap();
    // A Qwen3 causal LM without sentence-transformers modules reads as a reranker…
    let out = mlx_serve(home, &hub, &["pull", qwen, "--name", "as-detected"]);
    assert!(out.ok(), "{}", out.text());
    assert_eq!(metadata(home, "as-detected")["type"], "reranker");
    // …and is an embedding model (last-token pooling) when told so.
    let out = mlx_serve(home, &hub, &["pull", qwen, "--name", "as-embedder", "--type", "embedding"]);
    assert!(out.ok(), "{}", out.text());
    assert_eq!(metadata(home, "as-embedder")["type"], "embedding");
    let out = mlx_serve(home, &hub, &["show", "as-embedder", "--json"]);
    let shown: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.text()));
    assert_eq!((shown["type"].as_str(), shown["pooling"].as_str()), (Some("embedding"), Some("last_token")), "{shown}");
    let (status, v) = server.post("/v1/embeddings", &json!({"model": "as-embedder", "input": "hello"}));
    assert_eq!(status, 200, "{v}");
    // On /v1/rerank the embedding model is a bi-encoder (its scores are dense cosines, and
    // `return_scores` says so); the reranker a cross-encoder, which has no such parts.
    let body = |model: &str| json!({"model": model, "query": "q", "documents": ["d"], "return_scores": true});
    let (status, v) = server.post("/v1/rerank", &body("as-embedder"));
    assert_eq!(status, 200, "{v}");
    assert!(v["results"][0]["scores"]["dense"].is_number(), "an embedding model ranks by its cosine: {v}");
    let (status, v) = server.post("/v1/rerank", &body("as-detected"));
    assert_eq!((status, v["error"]["param"].as_str()), (400, Some("return_scores")), "{v}");
    let (status, v) = server.post("/v1/rerank", &json!({"model": "as-detected", "query": "q", "documents": ["d"]}));
    assert_eq!(status, 200, "{v}");
    // A type the model cannot be: refused, nothing installed.
    let bert = mlx_serve_tests::fixtures::model_dir("tiny-bert-embed");
    let out = mlx_serve(home, &hub, &["pull", bert.to_str().unwrap(), "--name", "no-head", "--type", "reranker"]);
    assert!(!out.ok() && out.stderr.contains("no sequence-classification head"), "{}", out.text());
    assert_eq!(store_entries(home), vec!["as-detected", "as-embedder"]);
}

#[test]
fn quantize_flags_reach_the_copy() {
    let hub = FakeHub::start();
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let minilm = minilm_dir().unwrap();
    let out = mlx_serve(home, &hub, &["pull", minilm.to_str().unwrap(), "--name", "mini"]);
    assert!(out.ok(), "{}", out.text());
    // The group size and the recipe as given, not the defaults (64, mixed at 4 bits).
    let out = mlx_serve(home, &hub, &["quantize", "mini", "--bits", "4", "--group-size", "32", "--recipe", "uniform"]);
    assert!(out.ok(), "{}", out.text());
    let check = |name: &str, bits: u64, group_size: u64, recipe: &str| {
        let d = &metadata(home, name)["quantization_details"];
        assert_eq!(
            (d["bits"].as_u64(), d["group_size"].as_u64(), d["recipe"].as_str()),
            (Some(bits), Some(group_size), Some(recipe)),
            "{name}: {d}"
        );
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(models_dir(home).join(name).join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["quantization"]["group_size"], group_size, "{name}: {}", config["quantization"]);
        // Every quantized matrix at the bits asked for (a mixed recipe puts linear layers at 8).
        let groups = d["quantized"].as_array().unwrap();
        assert!(!groups.is_empty(), "{name}: {d}");
        for group in groups {
            assert_eq!(
                (group["bits"].as_u64(), group["group_size"].as_u64()),
                (Some(bits), Some(group_size)),
                "{name}: {group}"
            );
        }
    };
    check("mini-4bit", 4, 32, "uniform");
    // pull --quantize with a group size.
    let out = mlx_serve(
        home,
        &hub,
        &["pull", minilm.to_str().unwrap(), "--name", "p", "--quantize", "8bit", "--group-size", "128"],
    );
    assert!(out.ok(), "{}", out.text());
    check("p-8bit", 8, 128, "uniform");
    // Values the worker does not offer are refused by the CLI, and nothing is made.
    for args in [&["quantize", "mini", "--bits", "3"][..], &["quantize", "mini", "--bits", "8", "--group-size", "48"]] {
        let out = mlx_serve(home, &hub, args);
        assert!(!out.ok() && out.stderr.contains("invalid value"), "{args:?}: {}", out.text());
    }
    assert_eq!(store_entries(home), vec!["mini", "mini-4bit", "p-8bit"]);
}
