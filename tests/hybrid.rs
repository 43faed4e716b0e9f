//! bge-m3's lexical (sparse) and multi-vector (ColBERT) heads end to end: `pull` converts
//! the heads shipped as `torch.save` files without running pickle code, and refuses a
//! hostile one; a real worker computes dense, sparse and ColBERT outputs in one forward
//! pass, checked against BGEM3FlagModel's arithmetic on the same weights. The fixture is
//! `tests/fixtures/make_bge_m3.py`'s. Also TEI's `/similarity`, on the embeddings of a
//! fixture with sentence-transformers references.

use std::path::Path;
use std::time::Duration;

use mlx_serve_protocol::{ErrorKind, SupervisorMessage, TokenBatch, TokenOutputs, WorkerMessage};
use mlx_serve_tests::cli::{self, Output};
use mlx_serve_tests::fake_hub::{error_line, folder_files, FakeHub};
use mlx_serve_tests::fixtures::{copy_dir, cosine, max_abs_diff, model_dir, read_safetensors, repo_root};
use mlx_serve_tests::server::{run_client, Server, ServerOptions};
use mlx_serve_tests::worker_process::Worker;
use serde_json::{json, Value};

const MARKER: &str = "pwned-by-pickle";

fn reference() -> Value {
    let path = repo_root().join("tests/fixtures/reference/tiny-bge-m3.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `mlx-serve ARGS` with its own home, the fake hub, and `cwd` as its working folder (where
/// a hostile pickle's `touch` would land).
fn mlx_serve(home: &Path, hub: &FakeHub, cwd: &Path, args: &[&str]) -> Output {
    let mut cmd = cli::command(home, Some(&hub.endpoint()), args);
    cmd.current_dir(cwd);
    cli::run(cmd, Duration::from_secs(180))
}

fn floats(dtype: &str, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        "F32" => bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        "F16" => bytes.chunks_exact(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(),
        other => panic!("unexpected dtype {other}"),
    }
}

/// IEEE half → float (every half is exact in float).
fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f32;
    sign * match exp {
        0 => frac * 2f32.powi(-24),
        31 => f32::INFINITY,
        e => (1.0 + frac / 1024.0) * 2f32.powi(e - 15),
    }
}

/// The converted heads of the installed model `name` hold exactly the tensors torch saved.
fn assert_heads_converted(home: &Path, name: &str) {
    let dir = home.join("models").join(name);
    let reference = reference();
    for stem in ["sparse_linear", "colbert_linear"] {
        assert!(!dir.join(format!("{stem}.pt")).exists(), "the pickle itself must not be stored");
        let tensors = read_safetensors(&dir.join("heads").join(format!("{stem}.safetensors"))).unwrap();
        let want = reference["heads"][stem].as_object().unwrap();
        assert_eq!(tensors.len(), want.len(), "{stem}");
        for (tname, dtype, shape, data) in tensors {
            let w = &want[&tname];
            assert_eq!(dtype, w["dtype"].as_str().unwrap(), "{stem}.{tname}");
            let wshape: Vec<u64> = w["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
            assert_eq!(shape, wshape, "{stem}.{tname}");
            let wvals: Vec<f32> = w["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            assert_eq!(floats(&dtype, &data), wvals, "{stem}.{tname}");
        }
    }
}

#[test]
fn pull_converts_bge_m3_heads_from_a_folder_and_from_the_hub() {
    let hub = FakeHub::start();
    let home = tempfile::tempdir().unwrap();
    let src = model_dir("tiny-bge-m3");
    let out = mlx_serve(home.path(), &hub, home.path(), &["pull", src.to_str().unwrap(), "--name", "m3-local"]);
    assert!(out.ok(), "{}", out.text());
    assert_heads_converted(home.path(), "m3-local");

    hub.add_repo("BAAI/tiny-bge-m3", folder_files(&src));
    let out = mlx_serve(home.path(), &hub, home.path(), &["pull", "BAAI/tiny-bge-m3", "--name", "m3-hub"]);
    assert!(out.ok(), "{}", out.text());
    assert_heads_converted(home.path(), "m3-hub");
}

#[test]
fn hostile_pt_files_are_refused_at_pull_and_nothing_runs() {
    let hostile = repo_root().join("tests/fixtures/hostile-pt");
    for (file, as_head, names) in
        [("os_system.pt", "sparse_linear.pt", "os.system"), ("numpy_global.pt", "colbert_linear.pt", "numpy")]
    {
        let hub = FakeHub::start();
        let home = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let folder = work.path().join("bge-m3");
        copy_dir(&model_dir("tiny-bge-m3"), &folder);
        std::fs::copy(hostile.join(file), folder.join(as_head)).unwrap();

        let out = mlx_serve(home.path(), &hub, work.path(), &["pull", folder.to_str().unwrap(), "--name", "m3"]);
        let line = error_line(&out);
        assert!(line.contains(as_head) && line.contains(names) && line.contains("without running"), "{line}");
        assert!(!home.path().join("models/m3").exists(), "{file}: nothing may be installed");

        hub.add_repo("acme/hostile-m3", folder_files(&folder));
        let out = mlx_serve(home.path(), &hub, work.path(), &["pull", "acme/hostile-m3"]);
        let line = error_line(&out);
        assert!(line.contains(as_head) && line.contains(names), "{line}");

        // Where `touch` would have written: the working folder, the home, the source folder.
        for dir in [work.path(), home.path(), folder.as_path()] {
            assert!(!dir.join(MARKER).exists(), "{file}: the pickle's command ran");
        }
        let listed = mlx_serve(home.path(), &hub, work.path(), &["list"]);
        assert!(!listed.stdout.contains("m3"), "{}", listed.text());
    }
}

/// tiny-bge-m3 pulled (its heads converted) into a fresh home; the home and the model folder.
fn pulled_bge_m3() -> (tempfile::TempDir, std::path::PathBuf) {
    let hub = FakeHub::start();
    let home = tempfile::tempdir().unwrap();
    let src = model_dir("tiny-bge-m3");
    let out = mlx_serve(home.path(), &hub, home.path(), &["pull", src.to_str().unwrap(), "--name", "m3"]);
    assert!(out.ok(), "{}", out.text());
    let dir = home.path().join("models/m3");
    (home, dir)
}

/// What the worker answers to EmbedTokens: rows, per-sequence sparse pairs and ColBERT rows.
type TokenAnswer = (Vec<Vec<f32>>, Vec<Vec<(u32, f32)>>, u32, Vec<Vec<f32>>);

fn embed_tokens(
    w: &mut Worker,
    id: u64,
    seqs: &[Vec<u32>],
    outputs: TokenOutputs,
) -> Result<TokenAnswer, (ErrorKind, String)> {
    let mut batch = TokenBatch::new();
    for s in seqs {
        batch.push(s, &[]);
    }
    w.send(&SupervisorMessage::EmbedTokens { id, batch, outputs }).unwrap();
    match w.recv().unwrap() {
        WorkerMessage::TokenEmbeddings { id: got, dim, data, sparse, colbert_dim, colbert, .. } => {
            assert_eq!(got, id);
            Ok((data.chunks(dim as usize).map(<[f32]>::to_vec).collect(), sparse, colbert_dim, colbert))
        }
        WorkerMessage::Error { id: got, kind, message } => {
            assert_eq!(got, id);
            Err((kind, message))
        }
        other => panic!("unexpected answer {other:?}"),
    }
}

/// Sparse weights equal within 1e-4 on the same token ids; an id only one side has must
/// weigh less than that on it (a weight at the relu's edge).
fn assert_sparse_close(got: &[(u32, f32)], want: &serde_json::Map<String, Value>, what: &str) {
    let want: std::collections::BTreeMap<u32, f32> =
        want.iter().map(|(k, v)| (k.parse().unwrap(), v.as_f64().unwrap() as f32)).collect();
    let got_map: std::collections::BTreeMap<u32, f32> = got.iter().copied().collect();
    assert!(got.windows(2).all(|p| p[0].0 < p[1].0), "{what}: ids ascending, each once: {got:?}");
    for id in want.keys().chain(got_map.keys()) {
        let (g, r) = (got_map.get(id).copied().unwrap_or(0.0), want.get(id).copied().unwrap_or(0.0));
        assert!((g - r).abs() <= 1e-4, "{what}: token {id}: {g} vs reference {r}");
    }
    assert!(want.is_empty() || !got.is_empty(), "{what}: the reference has weights, the answer none");
}

#[test]
fn one_forward_pass_gives_dense_sparse_and_colbert_like_bge_m3() {
    let (_home, dir) = pulled_bge_m3();
    let (mut w, info) = Worker::ready(&dir, &[]).unwrap();
    assert_eq!(info.token_outputs, TokenOutputs { sparse: true, colbert: true });
    let both = TokenOutputs { sparse: true, colbert: true };
    let reference = reference();
    let mut id = 10;
    let (mut worst_dense, mut worst_colbert, mut sparse_pairs) = (1.0f64, 1.0f64, 0usize);
    for case in reference["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let ids: Vec<Vec<u32>> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        // The whole case as one batch, then each sequence alone: the same answers.
        let mut runs: Vec<Vec<usize>> = vec![(0..ids.len()).collect()];
        runs.extend((0..ids.len()).map(|i| vec![i]));
        for rows in runs {
            id += 1;
            let seqs: Vec<Vec<u32>> = rows.iter().map(|&i| ids[i].clone()).collect();
            let (dense, sparse, colbert_dim, colbert) = embed_tokens(&mut w, id, &seqs, both).unwrap();
            assert_eq!((dense.len(), sparse.len(), colbert.len()), (rows.len(), rows.len(), rows.len()), "{name}");
            for (k, &i) in rows.iter().enumerate() {
                let what = format!("{name}[{i}]");
                let want_dense: Vec<f32> = serde_json::from_value(case["embeddings"][i].clone()).unwrap();
                let c = cosine(&dense[k], &want_dense);
                worst_dense = worst_dense.min(c);
                assert!(c >= 0.99999, "{what}: dense cosine {c}");
                assert!(max_abs_diff(&dense[k], &want_dense) <= 1e-4, "{what}: dense row");
                assert_sparse_close(&sparse[k], case["sparse"][i].as_object().unwrap(), &what);
                sparse_pairs += sparse[k].len();
                let want_colbert: Vec<Vec<f32>> = serde_json::from_value(case["colbert"][i].clone()).unwrap();
                assert_eq!(colbert_dim as usize, want_colbert[0].len(), "{what}");
                let got_rows: Vec<&[f32]> = colbert[k].chunks(colbert_dim as usize).collect();
                assert_eq!(got_rows.len(), ids[i].len() - 1, "{what}: one ColBERT row per token after CLS");
                assert_eq!(got_rows.len(), want_colbert.len(), "{what}");
                for (g, r) in got_rows.iter().zip(&want_colbert) {
                    let c = cosine(g, r);
                    worst_colbert = worst_colbert.min(c);
                    assert!(c >= 0.99999, "{what}: ColBERT cosine {c}");
                    // Normalized as the reference is (a cosine alone would not see it).
                    assert!(max_abs_diff(g, r) <= 1e-4, "{what}: ColBERT row differs by {}", max_abs_diff(g, r));
                }
            }
        }
    }
    assert!(sparse_pairs > 20, "the fixture must exercise the sparse head ({sparse_pairs} pairs)");
    eprintln!("tiny-bge-m3: worst dense cosine {worst_dense:.7}, worst ColBERT cosine {worst_colbert:.7}");

    // Only what is asked travels back.
    let ids: Vec<Vec<u32>> = serde_json::from_value(reference["cases"][1]["input_ids"].clone()).unwrap();
    let (dense, sparse, colbert_dim, colbert) =
        embed_tokens(&mut w, 900, &ids, TokenOutputs { sparse: true, colbert: false }).unwrap();
    assert_eq!((dense.len(), sparse.len(), colbert_dim, colbert.len()), (ids.len(), ids.len(), 0, 0));
    let (_, sparse, colbert_dim, colbert) =
        embed_tokens(&mut w, 901, &ids, TokenOutputs { sparse: false, colbert: true }).unwrap();
    assert_eq!((sparse.len(), colbert.len()), (0, ids.len()));
    assert!(colbert_dim > 0);
}

#[test]
fn a_model_without_the_heads_says_so() {
    let (mut w, info) = Worker::ready(&model_dir("tiny-xlmr-embed"), &[]).unwrap();
    assert_eq!(info.token_outputs, TokenOutputs::default());
    for (outputs, names) in [
        (TokenOutputs { sparse: true, colbert: false }, "sparse"),
        (TokenOutputs { sparse: false, colbert: true }, "ColBERT"),
    ] {
        let (kind, message) = embed_tokens(&mut w, 7, &[vec![0, 5, 2]], outputs).unwrap_err();
        assert_eq!(kind, ErrorKind::Unsupported);
        assert!(message.contains(names), "{message}");
    }
}

fn floats_of(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

#[test]
fn http_routes_give_sparse_and_token_vectors_in_each_apis_shape() {
    let server = Server::start(ServerOptions { models: vec!["tiny-xlmr-embed"], ..Default::default() });
    let src = model_dir("tiny-bge-m3");
    let out = server.cli(&["pull", src.to_str().unwrap(), "--name", "m3"]);
    assert!(out.ok(), "{}", out.text());
    let reference = reference();
    for case in reference["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let texts = &case["texts"];
        let n = texts.as_array().unwrap().len();
        let ids: Vec<Vec<u32>> = serde_json::from_value(case["input_ids"].clone()).unwrap();

        // TEI /embed_sparse: per input a list of {index, value}.
        let (status, body) = server.post("/embed_sparse", &json!({"model": "m3", "inputs": texts}));
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(body.as_array().unwrap().len(), n, "{name}");
        for i in 0..n {
            let pairs: Vec<(u32, f32)> = body[i]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    assert_eq!(p.as_object().unwrap().len(), 2, "{p}");
                    (p["index"].as_u64().unwrap() as u32, p["value"].as_f64().unwrap() as f32)
                })
                .collect();
            assert_sparse_close(&pairs, case["sparse"][i].as_object().unwrap(), &format!("/embed_sparse {name}[{i}]"));
        }

        // TEI /embed_all: per input, one vector per token after CLS.
        let (status, body) = server.post("/embed_all", &json!({"model": "m3", "inputs": texts}));
        assert_eq!(status, 200, "{name}: {body}");
        for i in 0..n {
            let rows = body[i].as_array().unwrap();
            assert_eq!(rows.len(), ids[i].len() - 1, "/embed_all {name}[{i}]");
            for (g, r) in rows.iter().zip(case["colbert"][i].as_array().unwrap()) {
                let c = cosine(&floats_of(g), &floats_of(r));
                assert!(c >= 0.99999, "/embed_all {name}[{i}]: cosine {c}");
            }
        }

        // OpenAI with the extension: dense, sparse and ColBERT from one request.
        let req = json!({"model": "m3", "input": texts, "return_sparse": true, "return_colbert_vecs": true});
        let (status, body) = server.post("/v1/embeddings", &req);
        assert_eq!(status, 200, "{name}: {body}");
        for i in 0..n {
            let item = &body["data"][i];
            let c = cosine(&floats_of(&item["embedding"]), &floats_of(&case["embeddings"][i]));
            assert!(c >= 0.99999, "/v1/embeddings {name}[{i}]: dense cosine {c}");
            let sp = &item["sparse_embedding"];
            let pairs: Vec<(u32, f32)> = sp["indices"]
                .as_array()
                .unwrap()
                .iter()
                .zip(sp["values"].as_array().unwrap())
                .map(|(k, v)| (k.as_u64().unwrap() as u32, v.as_f64().unwrap() as f32))
                .collect();
            assert_eq!(pairs.len(), sp["values"].as_array().unwrap().len());
            assert_sparse_close(&pairs, case["sparse"][i].as_object().unwrap(), &format!("/v1/embeddings {name}[{i}]"));
            let rows = item["colbert_embedding"].as_array().unwrap();
            assert_eq!(rows.len(), ids[i].len() - 1, "/v1/embeddings {name}[{i}]");
            for (g, r) in rows.iter().zip(case["colbert"][i].as_array().unwrap()) {
                assert!(cosine(&floats_of(g), &floats_of(r)) >= 0.99999, "/v1/embeddings {name}[{i}] ColBERT");
            }
        }
    }

    // Without the extension the OpenAI answer is unchanged.
    let (status, body) = server.post("/v1/embeddings", &json!({"model": "m3", "input": "hello world"}));
    assert_eq!(status, 200, "{body}");
    let item = body["data"][0].as_object().unwrap();
    assert!(!item.contains_key("sparse_embedding") && !item.contains_key("colbert_embedding"), "{body}");

    // A model without the heads: a 400 in each API's own shape, naming the head.
    let (status, body) = server.post("/embed_sparse", &json!({"model": "tiny-xlmr-embed", "inputs": "hello"}));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error_type"], "Validation", "{body}");
    assert!(body["error"].as_str().unwrap().contains("sparse_linear"), "{body}");
    let (status, body) = server.post("/embed_all", &json!({"model": "tiny-xlmr-embed", "inputs": "hello"}));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("colbert_linear"), "{body}");
    let req = json!({"model": "tiny-xlmr-embed", "input": "hello", "return_colbert_vecs": true});
    let (status, body) = server.post("/v1/embeddings", &req);
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("colbert_linear"), "{body}");
    assert_eq!(body["error"]["param"], "model", "{body}");
}

/// The cosine of two reference vectors.
fn reference_cosine(a: &Value, b: &Value) -> f64 {
    cosine(&floats_of(a), &floats_of(b))
}

#[test]
fn similarity_answers_the_cosine_of_each_sentence_to_the_source() {
    let server = Server::start(ServerOptions { models: vec!["tiny-xlmr-embed"], ..Default::default() });
    let path = repo_root().join("tests/fixtures/reference/tiny-xlmr-embed.json");
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let case = reference["cases"].as_array().unwrap().iter().find(|c| c["name"] == "batch_padded").unwrap();
    let texts = case["texts"].as_array().unwrap();
    let body = json!({"inputs": {"source_sentence": texts[0], "sentences": texts[1..]}});
    // TEI's route, and TEI's root route (what InferenceClient.sentence_similarity posts).
    for path in ["/similarity", "/"] {
        let (status, got) = server.post(path, &body);
        assert_eq!(status, 200, "{path}: {got}");
        let got = floats_of(&got);
        assert_eq!(got.len(), texts.len() - 1, "{path}");
        for (j, g) in got.iter().enumerate() {
            let want = reference_cosine(&case["embeddings"][0], &case["embeddings"][j + 1]);
            assert!((*g as f64 - want).abs() <= 1e-4, "{path}: sentence {j}: {g} vs reference {want}");
        }
    }
    let (status, got) = server.post("/similarity", &json!({"inputs": {"source_sentence": "a", "sentences": []}}));
    assert_eq!(status, 400, "{got}");
    assert_eq!(got["error_type"], "Validation", "{got}");
    let (status, got) = server.post("/similarity", &json!({"inputs": {"source_sentence": "a", "sentence": ["b"]}}));
    assert_eq!(status, 400, "{got}");
}

/// qdrant-client's local mode, unmodified: bge-m3's dense and sparse vectors from the server
/// stored beside the reference's, and fused (RRF) searches finding the same texts in the same
/// order (tests/clients/qdrant_hybrid.py).
#[test]
fn hybrid_search_in_qdrant_finds_what_the_reference_vectors_find() {
    let server = Server::start(ServerOptions::default());
    let src = model_dir("tiny-bge-m3");
    let out = server.cli(&["pull", src.to_str().unwrap(), "--name", "m3"]);
    assert!(out.ok(), "{}", out.text());
    let reference = repo_root().join("tests/fixtures/reference/tiny-bge-m3.json");
    let out = run_client("qdrant_hybrid.py", &server, &[reference.to_str().unwrap(), "m3"]);
    assert!(out.contains("recall@3 1.00") && out.contains("OK"), "{out}");
    assert_eq!(server.stop(), Some(0));
}
