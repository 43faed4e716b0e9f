//! SPLADE sparse encoders end to end: tiny random-weight `BertForMaskedLM` and
//! `DistilBertForMaskedLM` saved as sentence-transformers `SparseEncoder`s
//! (`tests/fixtures/make_splade.py`), served by a real daemon and worker, against
//! `SparseEncoder.encode` on the same weights: the same token ids with weights within 1e-4.
//! The BERT fixture pools max with relu (naver/splade-v3), the DistilBERT one sums with
//! log1p_relu and keeps 24 dimensions (`max_active_dims`); a BERT with `tie_word_embeddings`
//! false decodes with its own matrix and bias. Also what is refused: a dense
//! vector from a sparse-only model (a 400 in each API's shape), and at pull every SPLADE
//! setting that is not computed, and quantizing.

use std::path::Path;
use std::time::Duration;

use mlx_serve_tests::cli::{self, Output};
use mlx_serve_tests::fake_hub::{error_line, FakeHub};
use mlx_serve_tests::fixtures::{copy_dir, model_dir, repo_root};
use mlx_serve_tests::reference_checks::{assert_sparse_close, reference_json};
use mlx_serve_tests::server::{run_client, Server, ServerOptions};
use serde_json::{json, Value};

const MODELS: [&str; 3] = ["tiny-bert-splade", "tiny-bert-splade-untied", "tiny-distilbert-splade"];

fn pairs_of_tei(item: &Value) -> Vec<(u32, f32)> {
    item.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            // TEI's `SparseValue`: exactly `index` and `value`.
            assert_eq!(p.as_object().unwrap().len(), 2, "{p}");
            (p["index"].as_u64().unwrap() as u32, p["value"].as_f64().unwrap() as f32)
        })
        .collect()
}

fn pairs_of_openai(sp: &Value) -> Vec<(u32, f32)> {
    let (idx, vals) = (sp["indices"].as_array().unwrap(), sp["values"].as_array().unwrap());
    assert_eq!(idx.len(), vals.len(), "{sp}");
    idx.iter().zip(vals).map(|(k, v)| (k.as_u64().unwrap() as u32, v.as_f64().unwrap() as f32)).collect()
}

#[test]
fn splade_weights_match_sparse_encoder_over_http() {
    let server = Server::start(ServerOptions { models: MODELS.to_vec(), ..Default::default() });
    for model in MODELS {
        let reference = reference_json(model);
        let (mut active, mut worst) = (0, 0f32);
        for case in reference["cases"].as_array().unwrap() {
            let name = format!("{model} {}", case["name"].as_str().unwrap());
            let texts = &case["texts"];
            let n = texts.as_array().unwrap().len();

            // TEI's /embed_sparse: per input a list of {index, value}.
            let (status, body) = server.post("/embed_sparse", &json!({"model": model, "inputs": texts}));
            assert_eq!(status, 200, "{name}: {body}");
            assert_eq!(body.as_array().unwrap().len(), n, "{name}");
            for i in 0..n {
                let got = pairs_of_tei(&body[i]);
                active += got.len();
                worst = worst.max(assert_sparse_close(
                    &got,
                    &case["sparse"][i],
                    1e-4,
                    &format!("/embed_sparse {name}[{i}]"),
                ));
            }

            // The OpenAI route's extension: indices + values; the dense vector is empty.
            let req = json!({"model": model, "input": texts, "return_sparse": true});
            let (status, body) = server.post("/v1/embeddings", &req);
            assert_eq!(status, 200, "{name}: {body}");
            for i in 0..n {
                let item = &body["data"][i];
                assert_eq!(item["embedding"], json!([]), "{name}[{i}]: a SPLADE model has no dense vector");
                let got = pairs_of_openai(&item["sparse_embedding"]);
                worst = worst.max(assert_sparse_close(
                    &got,
                    &case["sparse"][i],
                    1e-4,
                    &format!("/v1/embeddings {name}[{i}]"),
                ));
            }
        }
        assert!(active > 100, "{model}: the fixture must exercise many dimensions ({active})");
        eprintln!("{model}: {active} weights on the same token ids, largest difference {worst:.2e}");
        if let Some(k) = reference["max_active_dims"].as_u64() {
            let (_, body) = server.post("/embed_sparse", &json!({"model": model, "inputs": "hello world"}));
            assert_eq!(body[0].as_array().unwrap().len() as u64, k, "{model}: max_active_dims {k} kept");
        }
    }
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn a_dense_vector_from_a_splade_model_is_a_400_in_each_apis_shape() {
    let server = Server::start(ServerOptions { models: vec!["tiny-bert-splade"], ..Default::default() });
    let model = "tiny-bert-splade";
    // OpenAI: the error object names the parameter and what the model gives.
    for req in [
        json!({"model": model, "input": "hello"}),
        json!({"model": model, "input": "hello", "return_sparse": true, "return_colbert_vecs": true}),
    ] {
        let (status, body) = server.post("/v1/embeddings", &req);
        assert_eq!(status, 400, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("SPLADE") && message.contains("/embed_sparse"), "{body}");
        assert_eq!(body["error"]["code"], "unsupported_output", "{body}");
    }
    // TEI: /embed (dense) and /embed_all (token vectors).
    for path in ["/embed", "/embed_all"] {
        let (status, body) = server.post(path, &json!({"model": model, "inputs": "hello"}));
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error_type"], "Validation", "{path}: {body}");
        assert!(body["error"].as_str().unwrap().contains("SPLADE"), "{path}: {body}");
    }
    // Cohere and Ollama.
    let (status, body) = server.post(
        "/v2/embed",
        &json!({"model": model, "texts": ["hello"], "input_type": "search_query", "embedding_types": ["float"]}),
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = server.post("/api/embed", &json!({"model": model, "input": "hello"}));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("SPLADE"), "{body}");
    // Scoring by dense cosine needs a dense vector too: /v1/score's default (vLLM's cosine)
    // and a dense weight on /v1/rerank.
    for (path, req) in [
        ("/v1/score", json!({"model": model, "text_1": "hello", "text_2": "a"})),
        ("/v1/rerank", json!({"model": model, "query": "hello", "documents": ["a"], "weights": {"dense": 1}})),
    ] {
        let (status, body) = server.post(path, &req);
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], "unsupported_output", "{path}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("SPLADE"), "{path}: {body}");
    }
    // Reranking with it scores by the dot product of the sparse weights (SparseEncoder's
    // similarity), the same numbers /embed_sparse's vectors give.
    let (query, documents) = ("sparse lexical retrieval", ["lexical retrieval with sparse weights", "a cat on a mat"]);
    let (status, ranked) = server
        .post("/v1/rerank", &json!({"model": model, "query": query, "documents": documents, "return_scores": true}));
    assert_eq!(status, 200, "{ranked}\n{}", server.log_text());
    let (_, vectors) =
        server.post("/embed_sparse", &json!({"model": model, "inputs": [query, documents[0], documents[1]]}));
    let weights = |i: usize| pairs_of_tei(&vectors[i]).into_iter().collect::<std::collections::HashMap<u32, f32>>();
    let dot = |i: usize| -> f32 { weights(0).iter().filter_map(|(id, w)| weights(i).get(id).map(|v| w * v)).sum() };
    for hit in ranked["results"].as_array().unwrap() {
        let want = dot(hit["index"].as_u64().unwrap() as usize + 1);
        let got = hit["relevance_score"].as_f64().unwrap() as f32;
        assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "{hit} vs {want}");
        assert!(hit["scores"].get("dense").is_none_or(Value::is_null), "{hit}");
    }
    // Nothing internal leaks: no paths.
    assert!(!body.to_string().contains(server.home.path().to_str().unwrap()), "{body}");
    // TEI's /info says what TEI says of a SPLADE model: an embedding model pooled "splade".
    let (status, info) = server.get("/info");
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["model_type"]["embedding"]["pooling"], "splade", "{info}");
    // /v1/models: its dimension is the vocabulary's size.
    let (_, models) = server.get("/v1/models");
    let listed = models["data"].as_array().unwrap().iter().find(|m| m["id"] == model).unwrap().clone();
    assert_eq!(listed["dimensions"], 1000, "{listed}");
    assert_eq!(server.stop(), Some(0));
}

/// `mlx-serve ARGS` with its own home and the fake hub.
fn mlx_serve(home: &Path, hub: &FakeHub, args: &[&str]) -> Output {
    cli::run(cli::command(home, Some(&hub.endpoint()), args), Duration::from_secs(180))
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

#[test]
fn what_is_not_computed_is_refused_at_pull_by_name() {
    let hub = FakeHub::start();
    let work = tempfile::tempdir().unwrap();
    type Edit = fn(&Path);
    let cases: [(&str, Edit, &str); 7] = [
        (
            "activation",
            |d| edit_json(&d.join("1_SpladePooling/config.json"), |c| c["activation_function"] = json!("gelu")),
            "activation_function",
        ),
        (
            "strategy",
            |d| edit_json(&d.join("1_SpladePooling/config.json"), |c| c["pooling_strategy"] = json!("mean")),
            "pooling_strategy",
        ),
        (
            "dimension",
            |d| edit_json(&d.join("1_SpladePooling/config.json"), |c| c["word_embedding_dimension"] = json!(30522)),
            "embedding_dimension",
        ),
        (
            "not-mlm",
            |d| edit_json(&d.join("config.json"), |c| c["architectures"] = json!(["BertModel"])),
            "ForMaskedLM",
        ),
        (
            // A family whose masked-language-model head is not computed here.
            "xlm-roberta",
            |d| {
                edit_json(&d.join("config.json"), |c| {
                    c["model_type"] = json!("xlm-roberta");
                    c["architectures"] = json!(["XLMRobertaForMaskedLM"]);
                })
            },
            "xlm_roberta family is not implemented",
        ),
        (
            "router",
            |d| {
                edit_json(&d.join("modules.json"), |m| {
                    m[0]["type"] = json!("sentence_transformers.models.Router");
                })
            },
            "Router",
        ),
        (
            "static",
            |d| {
                edit_json(&d.join("modules.json"), |m| {
                    m[1]["type"] = json!("sentence_transformers.sparse_encoder.models.SparseStaticEmbedding");
                })
            },
            "SparseStaticEmbedding",
        ),
    ];
    for (name, edit, needle) in cases {
        let home = tempfile::tempdir().unwrap();
        let folder = work.path().join(name);
        copy_dir(&model_dir("tiny-bert-splade"), &folder);
        edit(&folder);
        let out = mlx_serve(home.path(), &hub, &["pull", folder.to_str().unwrap(), "--name", "s"]);
        let line = error_line(&out);
        assert!(line.contains(needle), "{name}: {line}");
        assert!(!home.path().join("models/s").exists(), "{name}: nothing may be installed");
    }

    // The unchanged fixture pulls, and says what it is.
    let home = tempfile::tempdir().unwrap();
    let src = model_dir("tiny-distilbert-splade");
    let out = mlx_serve(home.path(), &hub, &["pull", src.to_str().unwrap(), "--name", "s"]);
    assert!(out.ok(), "{}", out.text());
    let out = mlx_serve(home.path(), &hub, &["show", "s", "--json"]);
    assert!(out.ok(), "{}", out.text());
    let shown: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(shown["pooling"], "splade", "{shown}");
    // No quantization plan covers the MLM head: quantizing is refused, naming why.
    for args in
        [vec!["quantize", "s", "--bits", "8"], vec!["pull", src.to_str().unwrap(), "--name", "q", "--quantize", "8bit"]]
    {
        let out = mlx_serve(home.path(), &hub, &args);
        let line = error_line(&out);
        assert!(line.contains("SPLADE") && line.contains("not supported"), "{args:?}: {line}");
    }
}

/// qdrant-client's local mode, unmodified: SPLADE vectors from `/embed_sparse` stored beside
/// the reference's, and each sparse search finding the same texts in the same order
/// (tests/clients/qdrant_splade.py).
#[test]
fn sparse_search_in_qdrant_finds_what_the_reference_vectors_find() {
    let server = Server::start(ServerOptions { models: vec!["tiny-bert-splade"], ..Default::default() });
    let reference = repo_root().join("tests/fixtures/reference/tiny-bert-splade.json");
    let out = run_client("qdrant_splade.py", &server, &[reference.to_str().unwrap(), "tiny-bert-splade"]);
    assert!(out.contains("recall@3 1.00") && out.contains("OK"), "{out}");
    assert_eq!(server.stop(), Some(0));
}
