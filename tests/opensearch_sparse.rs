//! opensearch's inference-free sparse encoders end to end: a tiny random-weight model built
//! as sentence-transformers 6.2 builds one — a `Router` whose query route is a
//! `SparseStaticEmbedding` (a weight per token id) and whose document route is an MLM
//! Transformer with `SpladePooling` (`tests/fixtures/make_opensearch_sparse.py`) — pulled from
//! its folder by the real CLI and served by a real daemon, against `encode_query` /
//! `encode_document` on the same weights: the same token ids, weights within 1e-5. Queries are
//! computed without a worker. Also what is refused: a dense vector, prompts and ids on the
//! query side, and at pull every Router shape that is not computed.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use mlx_serve_tests::cli::{self, Output};
use mlx_serve_tests::fake_hub::error_line;
use mlx_serve_tests::fixtures::{copy_dir, model_dir};
use mlx_serve_tests::reference_checks::{assert_sparse_close, reference_json};
use mlx_serve_tests::server::{Server, ServerOptions};
use serde_json::{json, Value};

const FIXTURE: &str = "tiny-bert-opensearch-sparse";
const MODEL: &str = "osparse";

fn reference() -> Value {
    reference_json(FIXTURE)
}

/// `mlx-serve ARGS` with `home`.
fn mlx_serve(home: &Path, args: &[&str]) -> Output {
    cli::run(cli::command(home, None, args), Duration::from_secs(180))
}

fn pairs_of_tei(item: &Value) -> Vec<(u32, f32)> {
    item.as_array()
        .unwrap()
        .iter()
        .map(|p| (p["index"].as_u64().unwrap() as u32, p["value"].as_f64().unwrap() as f32))
        .collect()
}

fn pairs_of_openai(sp: &Value) -> Vec<(u32, f32)> {
    let (idx, vals) = (sp["indices"].as_array().unwrap(), sp["values"].as_array().unwrap());
    idx.iter().zip(vals).map(|(k, v)| (k.as_u64().unwrap() as u32, v.as_f64().unwrap() as f32)).collect()
}

/// Checks every text of `case` on /embed_sparse and /v1/embeddings; `is_query` as sent.
fn check_case(server: &Server, case: &Value, is_query: Option<bool>) -> (usize, f32) {
    let name = case["name"].as_str().unwrap();
    let texts = &case["texts"];
    let n = texts.as_array().unwrap().len();
    let (mut active, mut worst) = (0, 0f32);
    let mut tei = json!({"model": MODEL, "inputs": texts});
    let mut openai = json!({"model": MODEL, "input": texts, "return_sparse": true});
    if let Some(q) = is_query {
        tei["is_query"] = json!(q);
        openai["is_query"] = json!(q);
    }
    let (status, body) = server.post("/embed_sparse", &tei);
    assert_eq!(status, 200, "{name} is_query {is_query:?}: {body}");
    assert_eq!(body.as_array().unwrap().len(), n);
    for i in 0..n {
        let got = pairs_of_tei(&body[i]);
        active += got.len();
        let what = format!("/embed_sparse {name}[{i}] is_query {is_query:?}");
        worst = worst.max(assert_sparse_close(&got, &case["sparse"][i], 1e-5, &what));
    }
    let (status, body) = server.post("/v1/embeddings", &openai);
    assert_eq!(status, 200, "{name} is_query {is_query:?}: {body}");
    for i in 0..n {
        assert_eq!(body["data"][i]["embedding"], json!([]), "{name}[{i}]: no dense vector");
        let got = pairs_of_openai(&body["data"][i]["sparse_embedding"]);
        let what = format!("/v1/embeddings {name}[{i}] is_query {is_query:?}");
        worst = worst.max(assert_sparse_close(&got, &case["sparse"][i], 1e-5, &what));
    }
    (active, worst)
}

#[test]
fn queries_and_documents_match_sparse_encoder_over_http() {
    let server = Server::start(ServerOptions::default());
    let out = mlx_serve(server.home.path(), &["pull", model_dir(FIXTURE).to_str().unwrap(), "--name", MODEL]);
    assert!(out.ok(), "{}", out.text());
    let reference = reference();
    let case = |name: &str| reference["cases"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap().clone();
    let (queries, documents) = (case("queries"), case("documents"));

    // Queries: a lookup in the supervisor, no worker started for them.
    let (active, worst) = check_case(&server, &queries, Some(true));
    eprintln!("queries: {active} weights on the same token ids, largest difference {worst:.2e}");
    assert!(server.loaded_models().is_empty(), "queries need no worker: {:?}", server.loaded_models());

    // Documents: the worker's SPLADE head; without `is_query` the Router's default route,
    // document, as sentence-transformers' encode() takes.
    for is_query in [Some(false), None] {
        let (active, worst) = check_case(&server, &documents, is_query);
        eprintln!("documents (is_query {is_query:?}): {active} weights, largest difference {worst:.2e}");
    }
    assert_eq!(server.loaded_models(), vec![MODEL.to_owned()]);

    // Reranking scores by the dot product of the query's and each document's weights
    // (SparseEncoder's similarity "dot"), the query encoded as a query.
    let query = "cats cats cats and dogs";
    let docs = ["Paris is the capital and largest city of France, on the river Seine.", "cats cats cats and dogs"];
    let (status, ranked) =
        server.post("/v1/rerank", &json!({"model": MODEL, "query": query, "documents": docs, "return_scores": true}));
    assert_eq!(status, 200, "{ranked}");
    let weights = |i: usize| -> HashMap<u32, f32> {
        let c = if i == 0 { &queries } else { &documents };
        let k = if i == 0 { 1 } else { i - 1 };
        c["sparse"][k]
            .as_object()
            .unwrap()
            .iter()
            .map(|(id, w)| (id.parse().unwrap(), w.as_f64().unwrap() as f32))
            .collect()
    };
    assert_eq!(queries["texts"][1], query);
    for hit in ranked["results"].as_array().unwrap() {
        let j = hit["index"].as_u64().unwrap() as usize;
        let want: f32 = weights(0).iter().filter_map(|(id, w)| weights(j + 1).get(id).map(|v| w * v)).sum();
        let got = hit["relevance_score"].as_f64().unwrap() as f32;
        assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "{hit} vs {want}");
    }
    // /v1/score (with the sparse score's weight: its default is vLLM's dense cosine) reads
    // text_1 as queries, text_2 as documents: the same numbers.
    let req = json!({"model": MODEL, "text_1": query, "text_2": docs[1], "weights": {"sparse": 1}});
    let (status, scored) = server.post("/v1/score", &req);
    assert_eq!(status, 200, "{scored}");
    let want: f32 = weights(0).iter().filter_map(|(id, w)| weights(2).get(id).map(|v| w * v)).sum();
    let got = scored["data"][0]["score"].as_f64().unwrap() as f32;
    assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "{scored} vs {want}");

    // What the model does not give, or the query side does not take: a 400 naming it.
    for (path, req, needle) in [
        ("/v1/embeddings", json!({"model": MODEL, "input": "hello"}), "SPLADE"),
        (
            "/v1/embeddings",
            json!({"model": MODEL, "input": "hi", "return_sparse": true, "is_query": true, "prompt": "q: "}),
            "prompt",
        ),
        (
            "/v1/embeddings",
            json!({"model": MODEL, "input": [[5, 6]], "return_sparse": true, "is_query": true}),
            "token-id input",
        ),
        (
            "/v1/embeddings",
            json!({"model": MODEL, "input": "hi", "return_sparse": true, "is_query": "yes"}),
            "expected a boolean",
        ),
    ] {
        let (status, body) = server.post(path, &req);
        assert_eq!(status, 400, "{req}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{req}: {body}");
        assert!(!message.contains(server.home.path().to_str().unwrap()), "{body}");
    }
    // A text with no token on the query side: refused like "".
    let (status, body) = server.post("/embed_sparse", &json!({"model": MODEL, "inputs": "\u{200b}", "is_query": true}));
    assert_eq!(status, 400, "{body}");
    // A query longer than the query tokenizer's limit with truncate false.
    let long = queries["texts"][6].clone();
    let (status, body) =
        server.post("/embed_sparse", &json!({"model": MODEL, "inputs": long, "is_query": true, "truncate": false}));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("64 tokens"), "{body}");
    assert_eq!(server.stop(), Some(0));
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

#[test]
fn router_shapes_not_computed_are_refused_at_pull_by_name() {
    let work = tempfile::tempdir().unwrap();
    type Edit = fn(&Path);
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "extra-route",
            |d| edit_json(&d.join("router_config.json"), |c| c["structure"]["image"] = json!([])),
            "route \"image\"",
        ),
        (
            "two-query-modules",
            |d| {
                edit_json(&d.join("router_config.json"), |c| {
                    c["structure"]["query"].as_array_mut().unwrap().push(json!("document_1_SpladePooling"))
                })
            },
            "the query route has 2 modules",
        ),
        (
            "query-transformer",
            |d| {
                edit_json(&d.join("router_config.json"), |c| {
                    c["types"]["query_0_SparseStaticEmbedding"] =
                        json!("sentence_transformers.base.modules.transformer.Transformer")
                })
            },
            "query module Transformer",
        ),
        (
            "custom-code",
            |d| {
                edit_json(&d.join("router_config.json"), |c| {
                    c["types"]["document_1_SpladePooling"] = json!("my_module.SpladePooling")
                })
            },
            "custom code",
        ),
        (
            // What Router.save writes by default: the document Transformer in its own folder.
            "transformer-subfolder",
            |d| {
                edit_json(&d.join("router_config.json"), |c| {
                    let t = c["types"].as_object_mut().unwrap().remove("").unwrap();
                    c["types"]["document_0_Transformer"] = t;
                    c["structure"]["document"][0] = json!("document_0_Transformer");
                })
            },
            "subfolder \"document_0_Transformer\"",
        ),
        (
            "route-mappings",
            |d| {
                edit_json(&d.join("router_config.json"), |c| {
                    c["parameters"]["route_mappings"] = json!({"(None, 'text')": "document"})
                })
            },
            "route_mappings",
        ),
        ("unknown-key", |d| edit_json(&d.join("router_config.json"), |c| c["extra"] = json!(1)), "key \"extra\""),
        (
            "no-default",
            |d| edit_json(&d.join("router_config.json"), |c| c["parameters"]["default_route"] = Value::Null),
            "default_route",
        ),
        (
            "escape",
            |d| {
                edit_json(&d.join("router_config.json"), |c| {
                    let q = c["types"].as_object_mut().unwrap().remove("query_0_SparseStaticEmbedding").unwrap();
                    c["types"]["../../query"] = q;
                    c["structure"]["query"][0] = json!("../../query");
                })
            },
            "\"../../query\") is not supported",
        ),
        (
            "not-json",
            |d| std::fs::write(d.join("router_config.json"), "{\"types\": ").unwrap(),
            "router_config.json is not valid JSON",
        ),
        ("not-object", |d| std::fs::write(d.join("router_config.json"), "[1, 2]").unwrap(), "is not a JSON object"),
        (
            "idf-json",
            |d| edit_json(&d.join("query_0_SparseStaticEmbedding/config.json"), |c| c["path"] = json!("idf.json")),
            "`path`",
        ),
        (
            "prompt",
            |d| edit_json(&d.join("config_sentence_transformers.json"), |c| c["prompts"]["query"] = json!("query: ")),
            "prompt \"query\"",
        ),
        (
            "no-query-weights",
            |d| std::fs::remove_file(d.join("query_0_SparseStaticEmbedding/model.safetensors")).unwrap(),
            "query_0_SparseStaticEmbedding/model.safetensors: missing",
        ),
        (
            "max-active-dims",
            |d| edit_json(&d.join("config_sentence_transformers.json"), |c| c["max_active_dims"] = json!(8)),
            "max_active_dims",
        ),
    ];
    for (name, edit, needle) in cases {
        let home = tempfile::tempdir().unwrap();
        let folder = work.path().join(name);
        copy_dir(&model_dir(FIXTURE), &folder);
        edit(&folder);
        let out = mlx_serve(home.path(), &["pull", folder.to_str().unwrap(), "--name", "s"]);
        let line = error_line(&out);
        eprintln!("{name}: {line}");
        assert!(line.contains(needle), "{name}: {line}");
        assert!(!home.path().join("models/s").exists(), "{name}: nothing may be installed");
    }
}
