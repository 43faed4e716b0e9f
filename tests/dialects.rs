//! End-to-end tests of the API dialects: the model's own prompts, `/v1/tokenize`'s shape,
//! TEI / Cohere / OpenAI `models.retrieve` / LangChain through their real, unmodified
//! Python packages, token-id refusal, unknown fields, trailing slashes, and the OpenAPI
//! document checked by an independent validator. The real `mlx-serve` on loopback, real
//! workers running MLX, vectors compared with sentence-transformers'. The dialects'
//! request rules that need no worker (a request without `model`, TEI's refused options,
//! `truncate: false` on every route) are checked in-process
//! (supervisor/src/daemon/tests/dialects.rs).

use std::path::Path;

use mlx_serve_tests::fixtures::{embed_reference, max_abs_diff, model_dir, repo_root};
use mlx_serve_tests::server::{python_command, run_client, Server, ServerOptions};
use serde_json::{json, Value};

const QWEN: &str = "tiny-qwen3-embed";

fn rows(resp: &Value) -> Vec<Vec<f32>> {
    resp["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data: {resp}"))
        .iter()
        .map(|d| d["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect()
}

fn bare_rows(resp: &Value) -> Vec<Vec<f32>> {
    resp.as_array()
        .unwrap_or_else(|| panic!("not an array: {resp}"))
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect()
}

fn assert_rows(got: &[Vec<f32>], want: &[Vec<f32>], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = max_abs_diff(g, w);
        assert!(d <= 1e-4, "{what} row {i}: max |diff| {d}");
    }
}

fn reference(name: &str) -> String {
    repo_root().join(format!("tests/fixtures/reference/{name}.json")).display().to_string()
}

#[test]
fn qwen3_prompt_name_equals_sentence_transformers() {
    let server = Server::start(ServerOptions { models: vec![QWEN], ..Default::default() });
    let reference = embed_reference(QWEN).unwrap();
    assert_eq!(reference.prompt_cases.len(), 2, "fixture has the query and document prompt cases");
    let query = &reference.prompt_cases[0];
    assert_eq!(query.prompt_name, "query");
    for case in &reference.prompt_cases {
        // prompt_name on the OpenAI route, the TEI route and the Ollama route.
        let body = json!({"model": QWEN, "input": case.texts, "prompt_name": case.prompt_name});
        let (status, resp) = server.post("/v1/embeddings", &body);
        assert_eq!(status, 200, "{resp}");
        assert_rows(&rows(&resp), &case.embeddings, &format!("{} /v1/embeddings", case.name));
        let (status, resp) = server.post("/embed", &json!({"inputs": case.texts, "prompt_name": case.prompt_name}));
        assert_eq!(status, 200, "{resp}");
        assert_rows(&bare_rows(&resp), &case.embeddings, &format!("{} /embed", case.name));
        let (status, resp) =
            server.post("/api/embed", &json!({"model": QWEN, "input": case.texts, "prompt_name": case.prompt_name}));
        assert_eq!(status, 200, "{resp}");
        let got: Vec<Vec<f32>> = serde_json::from_value(resp["embeddings"].clone()).unwrap();
        assert_rows(&got, &case.embeddings, &format!("{} /api/embed", case.name));
        // /v1/tokenize applies the same prompt: the reference tokenizer's ids of prompt + text.
        let (status, tok) =
            server.post("/v1/tokenize", &json!({"model": QWEN, "input": case.texts, "prompt_name": case.prompt_name}));
        assert_eq!(status, 200, "{tok}");
        for (i, want) in case.input_ids.iter().enumerate() {
            assert_eq!(tok["data"][i]["token_ids"], json!(want), "{} ids {i}", case.name);
            assert_eq!(tok["data"][i]["tokens"], json!(want.len()), "`tokens` is the count");
        }
    }
    // A raw prompt equal to the named one gives the same vectors; it wins over prompt_name.
    let body = json!({"model": QWEN, "input": query.texts, "prompt": query.prompt, "prompt_name": "document"});
    let (status, resp) = server.post("/v1/embeddings", &body);
    assert_eq!(status, 200, "{resp}");
    assert_rows(&rows(&resp), &query.embeddings, "raw prompt");
    // Without a prompt, the vectors differ (the fixture has no default prompt).
    let (_, plain) = server.post("/v1/embeddings", &json!({"model": QWEN, "input": query.texts}));
    assert!(max_abs_diff(&rows(&plain)[0], &query.embeddings[0]) > 1e-3);

    // An unknown prompt name is a 400 listing the model's names; so is a misspelt field.
    let (status, resp) = server.post("/v1/embeddings", &json!({"model": QWEN, "input": "x", "prompt_name": "passage"}));
    assert_eq!(status, 400, "{resp}");
    assert_eq!(resp["error"]["param"], "prompt_name");
    let msg = resp["error"]["message"].as_str().unwrap();
    assert!(msg.contains("`passage`") && msg.contains("document, query"), "{msg}");
    let (status, resp) = server.post("/v1/embeddings", &json!({"model": QWEN, "input": "x", "prompt_nam": "query"}));
    assert_eq!(status, 400, "{resp}");
    assert!(resp["error"]["message"].as_str().unwrap().contains("unknown field `prompt_nam`"), "{resp}");
    // A prompt with token-id input is refused (ids are the complete input).
    let (status, _) = server.post("/v1/embeddings", &json!({"model": QWEN, "input": [[1, 2]], "prompt_name": "query"}));
    assert_eq!(status, 400);
    // The model lists its prompts.
    let (_, model) = server.get(&format!("/v1/models/{QWEN}"));
    assert_eq!(model["prompts"], json!(["document", "query"]), "{model}");
    assert_eq!(server.stop(), Some(0));
}

/// A copy of the fixture whose config_sentence_transformers.json sets a default prompt.
fn with_default_prompt(dir: &Path, name: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let src = model_dir(QWEN);
    for entry in std::fs::read_dir(&src).unwrap() {
        let p = entry.unwrap().path();
        let to = dir.join(p.file_name().unwrap());
        if p.is_dir() {
            std::fs::create_dir_all(&to).unwrap();
            for f in std::fs::read_dir(&p).unwrap() {
                let f = f.unwrap().path();
                std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
            }
        } else {
            std::fs::copy(&p, &to).unwrap();
        }
    }
    let cfg_path = dir.join("config_sentence_transformers.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["default_prompt_name"] = json!(name);
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
}

#[test]
fn default_prompt_name_applies_like_sentence_transformers() {
    let server = Server::start(ServerOptions::default());
    with_default_prompt(&server.home.path().join("models/qwen-default-query"), "query");
    let reference = embed_reference(QWEN).unwrap();
    let query = &reference.prompt_cases[0];
    let model = "qwen-default-query";
    // No prompt named: the default applies (sentence-transformers' encode() does the same;
    // the fixture script checks that `default_prompt_name` gives the `prompt_name` vectors).
    let (status, resp) = server.post("/v1/embeddings", &json!({"model": model, "input": query.texts}));
    assert_eq!(status, 200, "{resp}");
    assert_rows(&rows(&resp), &query.embeddings, "default prompt");
    let (_, resp) = server.post("/api/embeddings", &json!({"model": model, "prompt": query.texts[0]}));
    let legacy: Vec<f32> = serde_json::from_value(resp["embedding"].clone()).unwrap();
    assert_rows(&[legacy], &query.embeddings[..1], "default prompt, Ollama legacy");
    // Another named prompt replaces it (the empty `document` prompt: plain text).
    let doc = &reference.prompt_cases[1];
    let (_, resp) =
        server.post("/v1/embeddings", &json!({"model": model, "input": doc.texts, "prompt_name": "document"}));
    assert_rows(&rows(&resp), &doc.embeddings, "document overrides the default");
    // Tokenize → ids → embed gives the same vector: ids carry the prompt already.
    let (_, tok) = server.post("/v1/tokenize", &json!({"model": model, "input": query.texts[0]}));
    assert_eq!(tok["data"][0]["token_ids"], json!(query.input_ids[0]));
    let (status, resp) =
        server.post("/v1/embeddings", &json!({"model": model, "input": [tok["data"][0]["token_ids"]]}));
    assert_eq!(status, 200, "{resp}");
    assert_rows(&rows(&resp), &query.embeddings[..1], "ids from /v1/tokenize");
    let (_, info) = server.get(&format!("/info?model={model}"));
    assert_eq!(info["default_prompt_name"], "query", "{info}");
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn tokenize_has_its_documented_shape() {
    let server = Server::start(ServerOptions { models: vec!["all-MiniLM-L6-v2"], ..Default::default() });
    let (status, resp) =
        server.post("/v1/tokenize", &json!({"model": "all-MiniLM-L6-v2", "input": ["Hello world", "How are you?"]}));
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["model"], "all-MiniLM-L6-v2");
    for (i, item) in resp["data"].as_array().unwrap().iter().enumerate() {
        let ids = item["token_ids"].as_array().unwrap();
        assert_eq!(item["index"], i);
        assert_eq!(item["tokens"], ids.len(), "`tokens` is the count: {item}");
        assert!(item.get("token_strings").is_none());
    }
    // [CLS] hello world [SEP]
    assert_eq!(resp["data"][0]["token_ids"], json!([101, 7592, 2088, 102]));
    let (_, resp) = server.post(
        "/v1/tokenize",
        &json!({"model": "all-MiniLM-L6-v2", "input": "Hello world", "return_token_strings": true}),
    );
    assert_eq!(resp["data"][0]["token_strings"], json!(["[CLS]", "hello", "world", "[SEP]"]));
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn tei_routes_serve_huggingface_hub_inference_client() {
    let server = Server::start(ServerOptions { models: vec![QWEN], ..Default::default() });
    let out = run_client("hf_client.py", &server, &[&reference(QWEN)]);
    assert!(out.contains("feature_extraction") && out.contains("sentence_similarity OK"), "{out}");
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn cohere_client_embeds_float_binary_and_reranks() {
    let server = Server::start(ServerOptions { models: vec![QWEN, "tiny-bert-rerank"], ..Default::default() });
    let out = run_client("cohere_client.py", &server, &[&reference(QWEN), &reference("tiny-bert-rerank")]);
    assert!(out.contains("v2 embed"), "{out}");
    // Jina / Cohere rerank responses carry Cohere's id and meta.
    let (status, resp) =
        server.post("/v1/rerank", &json!({"model": "tiny-bert-rerank", "query": "q", "documents": ["a"]}));
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["id"].as_str().unwrap().len(), 36);
    assert_eq!(resp["meta"]["api_version"]["version"], "1");
    assert!(resp["meta"]["billed_units"]["input_tokens"].as_u64().unwrap() > 0);
    // An unknown embedding type is refused in Cohere's error shape.
    let (status, resp) = server.post(
        "/v2/embed",
        &json!({"model": QWEN, "texts": ["x"], "input_type": "search_query", "embedding_types": ["int4"]}),
    );
    assert_eq!(status, 400, "{resp}");
    assert!(resp["message"].as_str().unwrap().contains("int4"));
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn langchain_default_meets_token_id_refusal_and_openai_retrieves_models() {
    let server = Server::start(ServerOptions {
        models: vec!["all-MiniLM-L6-v2"],
        config: Some("limits:\n  accept_token_ids: false\n".into()),
        ..Default::default()
    });
    let out = run_client("langchain_client.py", &server, &[&reference("all-MiniLM-L6-v2")]);
    assert!(out.contains("check_embedding_ctx_length=False"), "{out}");
    let (status, resp) = server.post("/v1/embeddings", &json!({"model": "all-MiniLM-L6-v2", "input": [101, 102]}));
    assert_eq!(status, 400);
    assert_eq!(resp["error"]["code"], "token_ids_refused");
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn trailing_slashes_and_ids_with_slashes_route() {
    let server = Server::start(ServerOptions { models: vec!["all-MiniLM-L6-v2"], ..Default::default() });
    let body = json!({"model": "all-MiniLM-L6-v2", "input": "hello"});
    let (plain_status, plain) = server.post("/v1/embeddings", &body);
    let (slash_status, slash) = server.post("/v1/embeddings/", &body);
    assert_eq!((plain_status, slash_status), (200, 200), "{slash}");
    assert_eq!(rows(&plain), rows(&slash));
    assert_eq!(server.get("/v1/models/").0, 200);
    assert_eq!(server.get("/health/").0, 200);
    // An id with a slash reaches the route; a local folder does not answer to a repo id
    // (tests/repo_ids.rs), and the refusal says so.
    let (status, m) = server.get("/v1/models/sentence-transformers/all-MiniLM-L6-v2");
    assert_eq!(status, 409, "{m}");
    assert_eq!(m["error"]["code"], "model_name_taken");
    let (status, m) = server.get("/v1/models/BAAI/bge-m3");
    assert_eq!(status, 404, "{m}");
    assert_eq!(m["error"]["code"], "model_not_found");
    // Out-of-vocabulary ids (tiktoken's, say) name the LangChain flag too.
    let (status, resp) = server.post("/v1/embeddings", &json!({"model": "all-MiniLM-L6-v2", "input": [[100000, 5]]}));
    assert_eq!(status, 400);
    assert!(resp["error"]["message"].as_str().unwrap().contains("check_embedding_ctx_length=False"), "{resp}");
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn openapi_document_validates_and_lists_every_readme_route() {
    let server = Server::start(ServerOptions { models: vec!["all-MiniLM-L6-v2"], ..Default::default() });
    let readme = repo_root().join("README.md").display().to_string();
    let out = run_client("openapi_check.py", &server, &[&readme]);
    assert!(out.contains("README routes present"), "{out}");
    let (status, html) = server.get_text("/docs");
    assert_eq!(status, 200);
    assert!(html.contains("<title>mlx-serve API</title>"));
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn client_scripts_check_without_bare_asserts() {
    // `python -O` (PYTHONOPTIMIZE) removes `assert` statements: a script checking with them
    // would pass on any answer. Python's own parser finds them, wherever they hide.
    let finder = "import ast, glob, os, sys\n\
        for p in sorted(glob.glob(os.path.join(sys.argv[1], '*.py'))):\n\
        \x20   for n in ast.walk(ast.parse(open(p, encoding='utf-8').read())):\n\
        \x20       if isinstance(n, ast.Assert):\n\
        \x20           print(f'{os.path.basename(p)}:{n.lineno}')\n";
    let out = python_command().args(["-c", finder]).arg(repo_root().join("tests/clients")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let found = String::from_utf8_lossy(&out.stdout);
    assert!(found.is_empty(), "bare `assert` in client scripts (use check() from check.py):\n{found}");
}

#[test]
fn cohere_output_dimension_keeps_the_first_dimensions_renormalized() {
    const BERT: &str = "tiny-bert-embed";
    let server = Server::start(ServerOptions { models: vec![BERT], ..Default::default() });
    let case = &embed_reference(BERT).unwrap().cases[0];
    let full = case.embeddings[0].len();
    let n = full / 2;
    // sentence-transformers' truncate_dim on a normalized model: the first n values,
    // normalized again (computed here from the reference vectors).
    let want: Vec<Vec<f32>> = case
        .embeddings
        .iter()
        .map(|v| {
            let head = &v[..n];
            let norm = head.iter().map(|x| x * x).sum::<f32>().sqrt();
            head.iter().map(|x| x / norm).collect()
        })
        .collect();
    let body = json!({"model": BERT, "texts": case.texts, "embedding_types": ["float"], "output_dimension": n});
    let (status, resp) = server.post("/v2/embed", &body);
    assert_eq!(status, 200, "{resp}");
    let got: Vec<Vec<f32>> = serde_json::from_value(resp["embeddings"]["float"].clone()).unwrap();
    assert_rows(&got, &want, "/v2/embed output_dimension");
    let (status, resp) = server.post("/v1/embed", &json!({"model": BERT, "texts": case.texts, "output_dimension": n}));
    assert_eq!(status, 200, "{resp}");
    let got: Vec<Vec<f32>> = serde_json::from_value(resp["embeddings"].clone()).unwrap();
    assert_rows(&got, &want, "/v1/embed output_dimension");
    // More dimensions than the model has, or none: Cohere's error shape.
    for bad in [full + 1, 0] {
        let (status, resp) = server.post("/v2/embed", &json!({"model": BERT, "texts": ["x"], "output_dimension": bad}));
        assert_eq!(status, 400, "output_dimension {bad}: {resp}");
        assert!(
            resp["id"].is_string() && resp["message"].as_str().is_some_and(|m| m.contains("output_dimension")),
            "{resp}"
        );
    }
}
