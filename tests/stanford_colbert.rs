//! Stanford-format ColBERT checkpoints (colbert-ai's layout, as colbert-ir/colbertv2.0 ships:
//! `HF_ColBERT`, `bert.*` + `linear.weight`, `artifact.metadata`) end to end: tiny random-weight
//! folders written as colbert-ai saves them (`tests/fixtures/make_stanford_colbert.py`) are
//! pulled from their folder by the real CLI, served by a real daemon and worker, and checked
//! against PyLate 1.6 loading the same folder: per text the same number of token vectors, each
//! with cosine ≥ 0.99999, and MaxSim rerank scores within 1e-4 in PyLate's order.
//! `tiny-bert-stanford` has non-default lengths and dim; `tiny-bert-stanford-attend` attends
//! to its [MASK] expansion and uses other markers than PyLate's Stanford defaults. Metadata
//! that PyLate does not compute, and weights it would not load, are refused at pull by name;
//! from a fake hub the repo's `artifact.metadata` is fetched and its `pytorch_model.bin` is not.

use std::path::Path;
use std::time::Duration;

use mlx_serve_tests::cli;
use mlx_serve_tests::fake_hub::{error_line, folder_files, FakeHub};
use mlx_serve_tests::fixtures::{copy_dir, model_dir};
use mlx_serve_tests::reference_checks::{assert_rerank, assert_token_vectors, reference_json, rows};
use mlx_serve_tests::server::{Server, ServerOptions};
use serde_json::{json, Value};

const MODELS: [&str; 2] = ["tiny-bert-stanford", "tiny-bert-stanford-attend"];
const TOL: f64 = 1e-4;

#[test]
fn stanford_checkpoints_pulled_from_their_folder_match_pylate_over_http() {
    let server = Server::start(ServerOptions::default());
    for model in MODELS {
        let r = reference_json(model);
        let src = model_dir(model);
        let out = server.cli(&["pull", src.to_str().unwrap(), "--name", model]);
        assert!(out.ok(), "{}", out.text());
        let stored = server.home.path().join("models").join(model);
        assert!(stored.join("artifact.metadata").is_file(), "pull keeps artifact.metadata");
        let shown: Value = serde_json::from_str(&server.cli(&["show", model, "--json"]).stdout).unwrap();
        assert_eq!(shown["pooling"], "colbert", "{shown}");
        assert_eq!(shown["architecture"], "HF_ColBERT", "{shown}");
        let dim = r["metadata"]["dim"].as_u64().unwrap();

        let mut worst = 1f64;
        for (side, is_query, key) in [("queries", true, "query_vectors"), ("documents", false, "document_vectors")] {
            let req = json!({"model": model, "input": r[side], "return_colbert_vecs": true, "is_query": is_query});
            let (status, body) = server.post("/v1/embeddings", &req);
            assert_eq!(status, 200, "{body}\nserver log:\n{}", server.log_text());
            for (i, want) in r[key].as_array().unwrap().iter().enumerate() {
                let got = rows(&body["data"][i]["colbert_embedding"]);
                let w = assert_token_vectors(&got, &rows(want), &format!("{model} {side}[{i}] /v1/embeddings"));
                worst = worst.min(w);
                assert_eq!(got[0].len() as u64, dim, "{model}: the projection's size");
            }
        }
        let mut largest = 0f64;
        for (q, ranked) in r["rerank"].as_array().unwrap().iter().enumerate() {
            let docs = (&r["queries"][q], &r["documents"]);
            let (_, diff) = assert_rerank(&server, model, docs, ranked, TOL, &format!("{model} query {q}"));
            largest = largest.max(diff);
        }
        eprintln!("{model}: worst token cosine {worst:.7}, largest rerank difference {largest:.2e}");
    }
    // Quantizing it is refused, naming why (its quality check measures pooled vectors).
    let line = error_line(&server.cli(&["quantize", MODELS[0], "--bits", "8"])).to_owned();
    assert!(line.contains("ColBERT") && line.contains("not supported"), "{line}");
    assert_eq!(server.stop(), Some(0));
}

/// `pull` of `tiny-bert-stanford` with `edit` applied to its folder: the error line.
fn pull_error(edit: impl FnOnce(&Path)) -> String {
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let folder = work.path().join("colbert");
    copy_dir(&model_dir("tiny-bert-stanford"), &folder);
    edit(&folder);
    let cmd = cli::command(home.path(), None, &["pull", folder.to_str().unwrap(), "--name", "colbert"]);
    let out = cli::run(cmd, Duration::from_secs(120));
    assert!(!home.path().join("models/colbert").exists(), "nothing may be installed");
    error_line(&out).to_owned()
}

fn edit_json(path: &Path, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

fn metadata(key: &'static str, value: Value) -> Box<dyn FnOnce(&Path)> {
    Box::new(move |d: &Path| edit_json(&d.join("artifact.metadata"), |v| v[key] = value))
}

/// A safetensors file holding one F32 tensor `name` of `n` zeros (huggingface/safetensors
/// README, "Format").
fn write_tensor(path: &Path, name: &str, n: usize) {
    let header = format!(r#"{{"{name}":{{"dtype":"F32","shape":[{n}],"data_offsets":[0,{}]}}}}"#, n * 4);
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(std::iter::repeat_n(0u8, n * 4));
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn stanford_metadata_and_weights_that_are_not_computed_are_refused_at_pull_naming_them() {
    for (needles, edit) in [
        (&["similarity", "\"l2\""][..], metadata("similarity", json!("l2"))),
        (&["mask_punctuation", "false"], metadata("mask_punctuation", json!(false))),
        (&["interaction", "flipr"], metadata("interaction", json!("flipr"))),
        (&["reranker", "true"], metadata("reranker", json!(true))),
        (&["\"colbert_v3_setting\""], metadata("colbert_v3_setting", json!(1))),
        (&["dim 32", "24 rows"], metadata("dim", json!(32))),
        (&["query_maxlen"], metadata("query_maxlen", json!(2))),
        (&["length 80", "64 positions"], metadata("doc_maxlen", json!(80))),
        (
            &["artifact.metadata"],
            Box::new(|d: &Path| std::fs::remove_file(d.join("artifact.metadata")).unwrap()) as Box<dyn FnOnce(&Path)>,
        ),
        (&["linear.bias"], Box::new(|d: &Path| write_tensor(&d.join("linear_bias.safetensors"), "linear.bias", 24))),
        (
            &["model_type", "xlm-roberta"],
            Box::new(|d: &Path| edit_json(&d.join("config.json"), |v| v["model_type"] = json!("xlm-roberta"))),
        ),
        (
            &["only pickle weights", "pytorch_model.bin"],
            Box::new(|d: &Path| {
                std::fs::rename(d.join("model.safetensors"), d.join("pytorch_model.bin")).unwrap();
            }),
        ),
    ] {
        let line = pull_error(edit);
        eprintln!("{line}");
        for n in needles {
            assert!(line.contains(n), "should name {n}: {line}");
        }
        assert!(!line.contains("/src/") && !line.contains("panicked"), "{line}");
    }
}

/// `mlx-serve pull colbert-ir/colbertv2.0` from a fake hub serving the tiny fixture under that
/// id, beside a `pytorch_model.bin` as the real repo has: the pull fetches artifact.metadata and
/// the safetensors, not the pickle, and installs a ColBERT model.
#[test]
fn a_stanford_repo_is_pulled_from_the_hub_with_its_metadata_and_without_its_pickle() {
    let hub = FakeHub::start();
    let mut files = folder_files(&model_dir("tiny-bert-stanford"));
    files.push(("pytorch_model.bin".into(), b"not fetched".to_vec()));
    hub.add_repo("colbert-ir/colbertv2.0", files);
    let home = tempfile::tempdir().unwrap();
    let out = hub.mlx_serve(home.path(), &["pull", "colbert-ir/colbertv2.0", "--name", "colbertv2"], &[]);
    assert!(out.ok(), "{}", out.text());
    let stored = home.path().join("models/colbertv2");
    assert!(stored.join("artifact.metadata").is_file(), "artifact.metadata is fetched");
    assert!(!stored.join("pytorch_model.bin").exists(), "the pickle is not fetched");
    let asked = hub.requests();
    assert!(asked.iter().any(|r| r.contains("artifact.metadata")), "{asked:?}");
    assert!(!asked.iter().any(|r| r.contains("pytorch_model.bin")), "{asked:?}");
    let out = hub.mlx_serve(home.path(), &["show", "colbertv2", "--json"], &[]);
    let shown: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!((shown["pooling"].as_str(), shown["architecture"].as_str()), (Some("colbert"), Some("HF_ColBERT")));
}
