//! PyLate ColBERT models end to end: tiny random-weight BERT encoders made into ColBERT
//! models by PyLate itself (`tests/fixtures/make_pylate.py`), served by a real daemon and
//! worker, against PyLate's own `encode(is_query=...)` and `rank.rerank` on the same
//! weights: per text the same number of token vectors, each with cosine ≥ 0.99999; rerank
//! and late-interaction scores within 1e-4, in the same order, also through the unmodified
//! `cohere` client. `tiny-bert-pylate` has PyLate's defaults (markers "[Q] "/"[D] ", [MASK]
//! expansion not attended to, the punctuation skiplist), `tiny-bert-pylate-noexp` no query
//! expansion, a Dense bias and a skiplist of its own, `tiny-modernbert-pylate`
//! GTE-ModernColBERT-v1's architecture (PyLate's defaults over a ModernBERT body). Also what is refused: a dense vector
//! from such a model, a request without `is_query`, and at pull what is not computed.

use std::time::Duration;

use mlx_serve_tests::cli;
use mlx_serve_tests::fake_hub::error_line;
use mlx_serve_tests::fixtures::{copy_dir, model_dir, repo_root};
use mlx_serve_tests::reference_checks::{assert_rerank, assert_token_vectors, reference_json, rows};
use mlx_serve_tests::server::{run_client, Server, ServerOptions};
use serde_json::{json, Value};

const MODELS: [&str; 3] = ["tiny-bert-pylate", "tiny-bert-pylate-noexp", "tiny-modernbert-pylate"];
const TOL: f64 = 1e-4;

/// `/v1/embeddings` token vectors of `texts`, as queries or documents.
fn openai_vectors(server: &Server, model: &str, texts: &Value, is_query: bool) -> Vec<Vec<Vec<f32>>> {
    let req = json!({"model": model, "input": texts, "return_colbert_vecs": true, "is_query": is_query});
    let (status, body) = server.post("/v1/embeddings", &req);
    assert_eq!(status, 200, "{body}\nserver log:\n{}", server.log_text());
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            assert_eq!(item["embedding"], json!([]), "a PyLate model has no dense vector: {item}");
            rows(&item["colbert_embedding"])
        })
        .collect()
}

#[test]
fn pylate_token_vectors_and_maxsim_rerank_match_pylate_over_http() {
    let server = Server::start(ServerOptions { models: MODELS.to_vec(), ..Default::default() });
    for model in MODELS {
        let r = reference_json(model);
        let mut worst = 1f64;
        for (side, is_query, key) in [("queries", true, "query_vectors"), ("documents", false, "document_vectors")] {
            let texts = &r[side];
            let got = openai_vectors(&server, model, texts, is_query);
            for (i, want) in r[key].as_array().unwrap().iter().enumerate() {
                worst = worst.min(assert_token_vectors(
                    &got[i],
                    &rows(want),
                    &format!("{model} {side}[{i}] /v1/embeddings"),
                ));
            }
            // TEI's /embed_all: per input its token vectors.
            let (status, body) =
                server.post("/embed_all", &json!({"model": model, "inputs": texts, "is_query": is_query}));
            assert_eq!(status, 200, "{body}");
            for (i, want) in r[key].as_array().unwrap().iter().enumerate() {
                assert_token_vectors(&rows(&body[i]), &rows(want), &format!("{model} {side}[{i}] /embed_all"));
            }
        }
        // /v1/rerank: PyLate's rank.rerank order and colbert_scores.
        let mut largest = 0f64;
        for (q, ranked) in r["rerank"].as_array().unwrap().iter().enumerate() {
            let docs = (&r["queries"][q], &r["documents"]);
            let (want, diff) = assert_rerank(&server, model, docs, ranked, TOL, &format!("{model} query {q}"));
            largest = largest.max(diff);
            // vLLM's /v1/score: text_1 the query, text_2 the documents, in their order.
            let req = json!({"model": model, "text_1": r["queries"][q], "text_2": r["documents"]});
            let (status, body) = server.post("/v1/score", &req);
            assert_eq!(status, 200, "{body}");
            for (j, d) in body["data"].as_array().unwrap().iter().enumerate() {
                let w = want.iter().find(|p| p.0 == j as u64).unwrap().1;
                assert!((d["score"].as_f64().unwrap() - w).abs() <= TOL, "{model} /v1/score {q},{j}: {d} vs {w}");
            }
        }
        eprintln!("{model}: worst token cosine {worst:.7}, largest rerank difference {largest:.2e}");
    }
    // The unmodified cohere client.
    let path = repo_root().join("tests/fixtures/reference/tiny-bert-pylate.json");
    let out = run_client("cohere_colbert_rerank.py", &server, &[path.to_str().unwrap(), "tiny-bert-pylate"]);
    assert!(out.contains("OK"), "{out}");
    eprint!("{out}");
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn a_dense_vector_or_a_request_without_is_query_is_a_400_naming_it() {
    let server =
        Server::start(ServerOptions { models: vec!["tiny-bert-pylate", "tiny-bert-embed"], ..Default::default() });
    let m = "tiny-bert-pylate";
    let refused = |path: &str, req: Value, param: &str, says: &str| {
        let (status, body) = server.post(path, &req);
        assert_eq!(status, 400, "{req}: {body}");
        let text = body.to_string();
        assert!(text.contains(says), "{req}: {text}");
        if path.starts_with("/v1/") {
            assert_eq!(body["error"]["param"], param, "{req}: {body}");
        }
    };
    refused("/v1/embeddings", json!({"model": m, "input": "hello"}), "model", "a dense embedding");
    let (_, body) = server.post("/v1/embeddings", &json!({"model": m, "input": "hello", "is_query": true}));
    assert_eq!(body["error"]["code"], "unsupported_output", "{body}");
    refused("/v1/embeddings", json!({"model": m, "input": "hi", "return_colbert_vecs": true}), "is_query", "is_query");
    refused(
        "/v1/embeddings",
        json!({"model": m, "input": "hi", "return_sparse": true, "return_colbert_vecs": true, "is_query": true}),
        "model",
        "sparse",
    );
    refused(
        "/v1/embeddings",
        json!({"model": m, "input": [[2, 5, 3]], "return_colbert_vecs": true, "is_query": false}),
        "input",
        "token-id input",
    );
    refused("/embed_all", json!({"model": m, "inputs": "hi"}), "is_query", "is_query");
    refused("/embed", json!({"model": m, "inputs": "hi"}), "model", "PyLate ColBERT");
    refused(
        "/v1/embeddings",
        json!({"model": "tiny-bert-embed", "input": "hi", "is_query": true}),
        "is_query",
        "applies to PyLate",
    );
    assert_eq!(server.stop(), Some(0));
}

/// `pull` of a PyLate fixture with `edit` applied to its folder: the error line.
fn pull_error_of(fixture: &str, edit: impl FnOnce(&std::path::Path)) -> String {
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let folder = work.path().join("colbert");
    copy_dir(&model_dir(fixture), &folder);
    edit(&folder);
    let cmd = cli::command(home.path(), None, &["pull", folder.to_str().unwrap(), "--name", "colbert"]);
    let out = cli::run(cmd, Duration::from_secs(120));
    assert!(!home.path().join("models/colbert").exists(), "nothing may be installed");
    error_line(&out).to_owned()
}

fn pull_error(edit: impl FnOnce(&std::path::Path)) -> String {
    pull_error_of("tiny-bert-pylate", edit)
}

fn edit_json(path: &std::path::Path, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

#[test]
fn pylate_settings_that_are_not_computed_are_refused_at_pull_naming_them() {
    let st = "config_sentence_transformers.json";
    for (needle, edit) in [
        (
            "\"query\"",
            Box::new(|d: &std::path::Path| edit_json(&d.join(st), |v| v["prompts"]["query"] = json!("search: ")))
                as Box<dyn FnOnce(&std::path::Path)>,
        ),
        ("\"pool_factor\"", Box::new(|d: &std::path::Path| edit_json(&d.join(st), |v| v["pool_factor"] = json!(2)))),
        (
            "similarity_fn_name",
            Box::new(|d: &std::path::Path| edit_json(&d.join(st), |v| v["similarity_fn_name"] = json!("cosine"))),
        ),
        (
            "query_prefix",
            Box::new(|d: &std::path::Path| edit_json(&d.join(st), |v| v["query_prefix"] = json!("[QUERY] "))),
        ),
        (
            "use_residual",
            Box::new(|d: &std::path::Path| {
                edit_json(&d.join("1_Dense/config.json"), |v| v["use_residual"] = json!(true))
            }),
        ),
        (
            "Normalize",
            Box::new(|d: &std::path::Path| {
                edit_json(&d.join("modules.json"), |v| {
                    v.as_array_mut().unwrap().push(json!({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}))
                })
            }),
        ),
    ] {
        let line = pull_error(edit);
        assert!(line.contains(needle) && line.contains("PyLate"), "should name {needle}: {line}");
    }

    // ModernBERT: query expansion beyond its local window's reach (radius 17 + 3 text tokens).
    let st_file = |q: u64| move |d: &std::path::Path| edit_json(&d.join(st), |v| v["query_length"] = json!(q));
    let line = pull_error_of("tiny-modernbert-pylate", st_file(21));
    assert!(line.contains("query_length 21") && line.contains("local_attention 34"), "{line}");

    // The unchanged fixture pulls and says what it is; quantizing it is refused, naming why.
    let home = tempfile::tempdir().unwrap();
    let src = model_dir("tiny-bert-pylate");
    let run = |args: &[&str]| cli::run(cli::command(home.path(), None, args), Duration::from_secs(180));
    let out = run(&["pull", src.to_str().unwrap(), "--name", "c"]);
    assert!(out.ok(), "{}", out.text());
    let out = run(&["show", "c", "--json"]);
    let shown: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(shown["pooling"], "colbert", "{shown}");
    let out = run(&["quantize", "c", "--bits", "8"]);
    let line = error_line(&out);
    assert!(line.contains("PyLate ColBERT") && line.contains("not supported"), "{line}");
}

/// PyLate's pooled vectors: [`assert_vectors`], and each vector's length within 1e-5 of
/// PyLate's (cluster means are not renormalized; cosine alone would not see it); the worst
/// cosine and the largest length difference.
fn assert_pooled(got: &[Vec<f32>], want: &[Vec<f32>], what: &str) -> (f64, f64) {
    let worst = assert_token_vectors(got, want, what);
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let mut most = 0f64;
    for (t, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (norm(g) - norm(w)).abs();
        assert!(d <= 1e-5, "{what} vector {t}: length {} vs PyLate's {}", norm(g), norm(w));
        most = most.max(d);
    }
    (worst, most)
}

/// PyLate's `encode(documents, is_query=False, pool_factor=k, protected_tokens=p)`
/// (`tests/fixtures/make_pylate_pool.py`) against the server's `pool_factor` over raw HTTP
/// (no official client sends it): per document the same number of pooled vectors, in the
/// same order, each with cosine ≥ 0.99999 and the same length, on `/v1/embeddings` and TEI's
/// `/embed_all`.
#[test]
fn pool_factor_pools_document_vectors_as_pylate_does() {
    let server = Server::start(ServerOptions { models: MODELS.to_vec(), ..Default::default() });
    let r = reference_json("pylate-pool");
    let docs = &r["documents"];
    for model in MODELS {
        let per = &r["pooled"][model];
        let (mut worst, mut most) = (1f64, 0f64);
        for case in per["cases"].as_array().unwrap() {
            let (k, p) = (&case["pool_factor"], &case["protected_tokens"]);
            let mut req = json!({"model": model, "input": docs, "return_colbert_vecs": true, "is_query": false,
                                 "pool_factor": k});
            if p != 1 {
                req["protected_tokens"] = p.clone(); // else PyLate's default, 1, unsent
            }
            let (status, body) = server.post("/v1/embeddings", &req);
            assert_eq!(status, 200, "{body}\nserver log:\n{}", server.log_text());
            let mut tei = json!({"model": model, "inputs": docs, "is_query": false, "pool_factor": k});
            tei["protected_tokens"] = p.clone();
            let (status, all) = server.post("/embed_all", &tei);
            assert_eq!(status, 200, "{all}");
            for (i, want) in case["vectors"].as_array().unwrap().iter().enumerate() {
                let what = format!("{model} pool_factor {k} protected_tokens {p} document {i}");
                let got = rows(&body["data"][i]["colbert_embedding"]);
                let (w, d) = assert_pooled(&got, &rows(want), &format!("{what} /v1/embeddings"));
                (worst, most) = (worst.min(w), most.max(d));
                assert_pooled(&rows(&all[i]), &rows(want), &format!("{what} /embed_all"));
            }
        }
        let unpooled: Vec<u64> =
            per["unpooled_counts"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).collect();
        eprintln!("{model}: unpooled vectors {unpooled:?}, worst pooled cosine {worst:.7}, largest length difference {most:.1e}");
    }
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn pool_factor_is_refused_for_queries_other_models_and_bad_values() {
    let models = vec!["tiny-bert-pylate", "tiny-bert-embed", "tiny-bge-m3"];
    let server = Server::start(ServerOptions { models, ..Default::default() });
    let doc = |model: &str, extra: Value| {
        let mut req = json!({"model": model, "input": ["a short document"], "return_colbert_vecs": true});
        if model == "tiny-bert-pylate" {
            req["is_query"] = json!(false);
        }
        req.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        req
    };
    let refused = |path: &str, req: Value, param: &str, says: &str| {
        let (status, body) = server.post(path, &req);
        assert_eq!(status, 400, "{req}: {body}");
        let text = body.to_string();
        assert!(text.contains(says) && !text.contains("/src/"), "{req}: {text}");
        if path.starts_with("/v1/") {
            assert_eq!(body["error"]["param"], param, "{req}: {body}");
        }
    };
    let m = "tiny-bert-pylate";
    for bad in [json!(0), json!(-2), json!(2.5), json!("2"), json!(1e30), json!(25)] {
        refused("/v1/embeddings", doc(m, json!({"pool_factor": bad})), "pool_factor", "pool_factor");
    }
    refused(
        "/v1/embeddings",
        doc(m, json!({"pool_factor": 2, "protected_tokens": -1})),
        "protected_tokens",
        "protected_tokens",
    );
    let query = json!({"model": m, "input": "q", "return_colbert_vecs": true, "is_query": true, "pool_factor": 2});
    refused("/v1/embeddings", query, "pool_factor", "does not pool queries");
    refused(
        "/embed_all",
        json!({"model": m, "inputs": "q", "is_query": true, "pool_factor": 2}),
        "",
        "does not pool queries",
    );
    refused("/embed_all", json!({"model": m, "inputs": "d", "is_query": false, "pool_factor": 0}), "", "pool_factor");
    for other in ["tiny-bge-m3", "tiny-bert-embed"] {
        refused("/v1/embeddings", doc(other, json!({"pool_factor": 2})), "pool_factor", "PyLate ColBERT models");
        refused("/embed_all", json!({"model": other, "inputs": "d", "pool_factor": 2}), "", "PyLate ColBERT models");
    }
    refused("/v1/embeddings", doc("tiny-bge-m3", json!({"protected_tokens": 1})), "protected_tokens", "PyLate");
    // pool_factor 1 (the default) and queries without it still answer.
    let (status, body) = server.post("/v1/embeddings", &doc(m, json!({"pool_factor": 1})));
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.stop(), Some(0));
}
