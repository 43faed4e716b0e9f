//! End-to-end tests of the HTTP API: the real `mlx-serve` binary on loopback, real workers
//! running MLX, real model files, reference outputs from sentence-transformers. Error
//! shapes and statuses are checked in-process (supervisor/src/daemon/tests/errors.rs).

use mlx_serve_tests::fixtures::{cosine, embed_reference, max_abs_diff, paired, rerank_reference};
use mlx_serve_tests::server::{Server, ServerOptions};
use serde_json::{json, Value};

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn embeddings(resp: &Value) -> Vec<Vec<f32>> {
    resp["data"].as_array().expect("data").iter().map(|d| floats(&d["embedding"])).collect()
}

#[test]
fn minilm_over_http_matches_sentence_transformers() {
    let server = Server::start(ServerOptions { models: vec!["all-MiniLM-L6-v2"], ..Default::default() });
    let reference = embed_reference("all-MiniLM-L6-v2").unwrap();
    for case in &reference.cases {
        // OpenAI's API refuses empty strings; so do we (checked in the error test).
        let keep: Vec<usize> = (0..case.texts.len()).filter(|&i| !case.texts[i].is_empty()).collect();
        let texts: Vec<&String> = keep.iter().map(|&i| &case.texts[i]).collect();
        if texts.is_empty() {
            continue;
        }
        let (status, resp) = server.post("/v1/embeddings", &json!({"model": "all-MiniLM-L6-v2", "input": texts}));
        assert_eq!(status, 200, "{resp}");
        let got = embeddings(&resp);
        assert_eq!(got.len(), texts.len());
        let wanted: Vec<&Vec<f32>> = keep.iter().map(|&i| &case.embeddings[i]).collect();
        for (i, (g, want)) in got.iter().zip(wanted).enumerate() {
            let cos = cosine(g, want);
            assert!(cos >= 0.9999, "case {} text {i}: cosine {cos}", case.name);
            assert!(max_abs_diff(g, want) <= 1e-4, "case {} text {i}", case.name);
        }
        // Tokenization equals the reference tokenizer's ids, truncation included.
        let (status, tok) = server.post("/v1/tokenize", &json!({"model": "all-MiniLM-L6-v2", "input": texts}));
        assert_eq!(status, 200, "{tok}");
        let wanted: Vec<&Vec<u32>> = keep.iter().map(|&i| &case.input_ids[i]).collect();
        for (i, want) in wanted.into_iter().enumerate() {
            let got: Vec<u32> =
                tok["data"][i]["token_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            assert_eq!(&got, want, "case {} text {i}", case.name);
        }
    }
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn token_ids_embed_like_their_text() {
    let server = Server::start(ServerOptions { models: vec!["all-MiniLM-L6-v2"], ..Default::default() });
    let text = "Token ids from /v1/tokenize are the complete model input.";
    let (_, tok) = server.post("/v1/tokenize", &json!({"model": "all-MiniLM-L6-v2", "input": text}));
    let ids = tok["data"][0]["token_ids"].clone();
    let (s1, by_text) = server.post("/v1/embeddings", &json!({"model": "all-MiniLM-L6-v2", "input": text}));
    let (s2, by_ids) = server.post("/v1/embeddings", &json!({"model": "all-MiniLM-L6-v2", "input": ids}));
    let (s3, by_lists) = server.post("/v1/embeddings", &json!({"model": "all-MiniLM-L6-v2", "input": [ids, ids]}));
    assert_eq!((s1, s2, s3), (200, 200, 200));
    let a = &embeddings(&by_text)[0];
    assert!(cosine(a, &embeddings(&by_ids)[0]) > 0.99999);
    assert!(cosine(a, &embeddings(&by_lists)[1]) > 0.99999);
    assert_eq!(by_text["usage"]["prompt_tokens"], by_ids["usage"]["prompt_tokens"]);
}

#[test]
fn rerankers_match_reference_scores_over_http() {
    let models = vec!["tiny-bert-rerank", "tiny-xlmr-rerank", "tiny-qwen3-rerank"];
    let server = Server::start(ServerOptions { models: models.clone(), ..Default::default() });
    for model in models {
        let reference = rerank_reference(model).unwrap();
        let raw: Value = serde_json::from_str(
            &std::fs::read_to_string(
                mlx_serve_tests::fixtures::repo_root().join(format!("tests/fixtures/reference/{model}.json")),
            )
            .unwrap(),
        )
        .unwrap();
        for (case, raw_case) in reference.cases.iter().zip(raw["cases"].as_array().unwrap()) {
            let query = raw_case["query"].clone();
            let documents = raw_case["documents"].clone();
            let mut body = json!({"model": model, "query": query, "documents": documents, "return_documents": false});
            if raw_case["instruction"].is_string() {
                body["instruction"] = raw_case["instruction"].clone();
            }
            // The supervisor's pair tokenization (templates, segment ids, truncation)
            // reproduces the reference tokenizer's ids exactly.
            // (/v1/tokenize refuses fields it does not know, such as rerank's `return_documents`.)
            let mut tok_body = body.clone();
            tok_body.as_object_mut().unwrap().remove("return_documents");
            let (status, tok) = server.post("/v1/tokenize", &tok_body);
            assert_eq!(status, 200, "{tok}");
            for (i, want) in case.pairs_input_ids.iter().enumerate() {
                assert_eq!(&tok["data"][i]["token_ids"], &json!(want), "{model} {} pair {i} ids", case.name);
                let types = case.pairs_token_type_ids.as_ref().map(|t| &t[i]).filter(|t| t.iter().any(|&x| x != 0));
                match types {
                    Some(t) => {
                        assert_eq!(&tok["data"][i]["token_type_ids"], &json!(t), "{model} {} pair {i} types", case.name)
                    }
                    None => assert!(tok["data"][i].get("token_type_ids").is_none()),
                }
            }
            let (status, resp) = server.post("/v1/rerank", &body);
            assert_eq!(status, 200, "{model} {}: {resp}", case.name);
            let results = resp["results"].as_array().unwrap();
            assert_eq!(results.len(), case.scores.len());
            let mut prev = f64::INFINITY;
            for r in results {
                let i = r["index"].as_u64().unwrap() as usize;
                let score = r["relevance_score"].as_f64().unwrap();
                assert!(score <= prev, "sorted by score");
                prev = score;
                assert!(
                    (score - case.scores[i] as f64).abs() <= 1e-4,
                    "{model} {} doc {i}: {score} vs {}",
                    case.name,
                    case.scores[i]
                );
                assert!(r.get("document").is_none());
            }
        }
    }
}

/// Token ids of `data[i]` in a `/v1/tokenize` answer.
fn ids_of(tok: &Value, i: usize) -> Vec<u32> {
    tok["data"][i]["token_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no ids in {tok}"))
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Every case of an embedding model's reference through `/v1/tokenize` and `/v1/embeddings`:
/// the supervisor's tokenizer (truncation, special tokens inside text, normalization) gives
/// the reference tokenizer's ids, and the vectors match sentence-transformers'.
fn check_model_over_http(server: &Server, model: &str) -> usize {
    let reference = embed_reference(model).unwrap();
    let mut texts_checked = 0;
    for case in &reference.cases {
        let (status, tok) = server.post("/v1/tokenize", &json!({"model": model, "input": case.texts}));
        assert_eq!(status, 200, "{model}/{}: {tok}", case.name);
        assert_eq!(tok["data"].as_array().unwrap().len(), case.texts.len());
        for (i, want) in case.input_ids.iter().enumerate() {
            assert_eq!(&ids_of(&tok, i), want, "{model}/{} text {i} {:?}", case.name, case.texts[i]);
        }
        let (status, resp) = server.post("/v1/embeddings", &json!({"model": model, "input": case.texts}));
        assert_eq!(status, 200, "{model}/{}: {resp}", case.name);
        let got = embeddings(&resp);
        for (i, (g, want)) in paired(&got, &case.embeddings, &format!("{model}/{}", case.name)).enumerate() {
            let (cos, diff) = (cosine(g, want), max_abs_diff(g, want));
            assert!(cos >= 0.99999 && diff <= 1e-4, "{model}/{} text {i}: cosine {cos}, max diff {diff}", case.name);
        }
        let tokens: usize = case.input_ids.iter().map(Vec::len).sum();
        assert_eq!(resp["usage"]["prompt_tokens"], tokens, "{model}/{}", case.name);
        texts_checked += case.texts.len();
    }
    texts_checked
}

#[test]
fn xlmr_and_qwen3_embedding_models_over_http_match_the_reference() {
    // bge-m3 (XLM-R, CLS pooling) and Qwen3-Embedding (last token, <|endoftext|> appended).
    let models = vec!["tiny-xlmr-embed", "tiny-qwen3-embed", "tiny-bert-embed"];
    let server = Server::start(ServerOptions { models: models.clone(), ..Default::default() });
    for model in models {
        let n = check_model_over_http(&server, model);
        eprintln!("{model}: {n} texts, ids and vectors as the reference");
    }
    // What the cases above must contain for the claims to mean something.
    let raw = mlx_serve_tests::reference_checks::reference_json;
    let case = |r: &Value, name: &str| -> Value {
        r["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no case {name}"))
            .clone()
    };
    // Truncation keeps the end-of-text token: the truncated passage ends in it, at the limit.
    let qwen3 = raw("tiny-qwen3-embed");
    let eot = qwen3["special_tokens"]["<|endoftext|>"].clone();
    let long = case(&qwen3, "beyond_limit_truncated");
    let ids = long["input_ids"][0].as_array().unwrap();
    assert_eq!((ids.len() as u64, ids.last().unwrap()), (qwen3["max_seq_length"].as_u64().unwrap(), &eot));
    let xlmr = raw("tiny-xlmr-embed");
    let ids = case(&xlmr, "beyond_limit_truncated")["input_ids"][0].as_array().unwrap().clone();
    assert_eq!(
        (ids.len() as u64, ids.last().unwrap()),
        (xlmr["max_seq_length"].as_u64().unwrap(), &xlmr["special_tokens"]["</s>"])
    );
    // Special tokens written inside the text are the special ids, not their characters.
    let special = case(&qwen3, "special_tokens_in_text");
    assert!(special["input_ids"][0].as_array().unwrap().contains(&qwen3["special_tokens"]["<|im_start|>"]));
    let special = case(&xlmr, "special_tokens_in_text");
    assert!(special["input_ids"][1].as_array().unwrap().contains(&xlmr["special_tokens"]["<mask>"]));
}

#[test]
fn qwen3_instruction_extension_builds_the_model_card_prompt() {
    // The reference formats queries as the Qwen3-Embedding model card does and records the
    // format; the server gets the bare query and the task as `instruction`.
    let model = "tiny-qwen3-embed";
    let server = Server::start(ServerOptions { models: vec![model], ..Default::default() });
    let path = mlx_serve_tests::fixtures::repo_root().join("tests/fixtures/reference/tiny-qwen3-embed.json");
    let raw: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let (format, task) = (raw["query_instruction_format"].as_str().unwrap(), raw["default_task"].as_str().unwrap());
    let reference = embed_reference(model).unwrap();
    let case = reference.cases.iter().find(|c| c.name == "instruction_query").unwrap();
    let mut checked = 0;
    for (i, text) in case.texts.iter().enumerate() {
        let Some(query) = text.split("\nQuery:").nth(1) else { continue };
        assert_eq!(&format.replace("{task}", task).replace("{query}", query), text, "the reference's own format");
        let (status, resp) =
            server.post("/v1/embeddings", &json!({"model": model, "input": query, "instruction": task}));
        assert_eq!(status, 200, "{resp}");
        let got = &embeddings(&resp)[0];
        let cos = cosine(got, &case.embeddings[i]);
        assert!(cos >= 0.99999, "query {query:?} with instruction: cosine {cos} to the model card prompt");
        assert_eq!(resp["usage"]["prompt_tokens"], case.input_ids[i].len());
        checked += 1;
    }
    assert_eq!(checked, 2, "the case has two instructed queries");
}

#[test]
fn nfc_and_nfd_input_tokenize_as_the_reference() {
    // Composed and decomposed forms of the same words: each model's own tokenizer decides
    // (BERT strips accents, Qwen3 composes to NFC, the XLM-R fixture has no normalizer, as
    // transformers 5 runs it without a SentencePiece charsmap); the server adds nothing.
    let models = vec!["tiny-bert-embed", "tiny-xlmr-embed", "tiny-qwen3-embed"];
    let server = Server::start(ServerOptions { models: models.clone(), ..Default::default() });
    for model in models {
        let reference = embed_reference(model).unwrap();
        let case = reference.cases.iter().find(|c| c.name == "nfc_nfd").expect("nfc_nfd case (make_fixtures.py)");
        assert_ne!(case.texts[0], case.texts[1], "two different strings");
        assert!(case.texts[1].chars().count() > case.texts[0].chars().count(), "the second is decomposed");
        for (i, text) in case.texts.iter().enumerate() {
            let (status, tok) = server.post("/v1/tokenize", &json!({"model": model, "input": text}));
            assert_eq!(status, 200, "{tok}");
            assert_eq!(ids_of(&tok, 0), case.input_ids[i], "{model} form {i}");
            let (status, resp) = server.post("/v1/embeddings", &json!({"model": model, "input": text}));
            assert_eq!(status, 200, "{resp}");
            assert!(cosine(&embeddings(&resp)[0], &case.embeddings[i]) >= 0.99999, "{model} form {i}");
        }
    }
}

/// A word that the model's tokenizer makes exactly one token of, also when repeated.
fn one_token_word(server: &Server, model: &str) -> &'static str {
    for word in ["the", "a", "word", "is", "x"] {
        let count = |n: usize| {
            let (status, tok) = server.post("/v1/tokenize", &json!({"model": model, "input": vec![word; n].join(" ")}));
            assert_eq!(status, 200, "{tok}");
            ids_of(&tok, 0).len()
        };
        if count(2) == count(1) + 1 && count(5) == count(1) + 4 {
            return word;
        }
    }
    panic!("no single-token word for {model}")
}

#[test]
fn exactly_max_tokens_is_accepted_and_one_more_is_refused() {
    let (embed, rerank) = ("tiny-bert-embed", "tiny-bert-rerank");
    let server = Server::start(ServerOptions { models: vec![embed, rerank], ..Default::default() });
    let limit = |model: &str| -> usize {
        let (_, models) = server.get("/v1/models");
        let m = models["data"].as_array().unwrap().iter().find(|m| m["id"] == model).unwrap().clone();
        m["max_tokens"].as_u64().unwrap_or_else(|| panic!("no max_tokens in {m}")) as usize
    };

    // Embeddings: [CLS] + n words + [SEP].
    let (max, word) = (limit(embed), one_token_word(&server, embed));
    let text = |n: usize| vec![word; n].join(" ");
    let (status, tok) =
        server.post("/v1/tokenize", &json!({"model": embed, "input": text(max - 2), "truncate": false}));
    assert_eq!((status, ids_of(&tok, 0).len()), (200, max), "{tok}");
    let (status, resp) =
        server.post("/v1/embeddings", &json!({"model": embed, "input": text(max - 2), "truncate": false}));
    assert_eq!(status, 200, "exactly {max} tokens: {resp}");
    assert_eq!(resp["usage"]["prompt_tokens"], max);
    let (status, resp) =
        server.post("/v1/embeddings", &json!({"model": embed, "input": text(max - 1), "truncate": false}));
    assert_eq!(status, 400, "{} tokens: {resp}", max + 1);
    assert_eq!(resp["error"]["code"], "context_length_exceeded", "{resp}");
    assert!(resp["error"]["message"].as_str().unwrap().contains(&max.to_string()), "{resp}");
    // The same as token ids.
    let ids = ids_of(&tok, 0);
    let (status, resp) = server.post("/v1/embeddings", &json!({"model": embed, "input": [ids], "truncate": false}));
    assert_eq!(status, 200, "{resp}");
    let mut longer = ids.clone();
    longer.insert(1, ids[1]);
    let (status, resp) = server.post("/v1/embeddings", &json!({"model": embed, "input": [longer], "truncate": false}));
    assert_eq!((status, &resp["error"]["code"]), (400, &json!("context_length_exceeded")), "{resp}");
    // Truncation (the default) cuts the longer one to the limit.
    let (status, resp) = server.post("/v1/embeddings", &json!({"model": embed, "input": text(max - 1)}));
    assert_eq!((status, &resp["usage"]["prompt_tokens"]), (200, &json!(max)), "{resp}");

    // Rerank pairs: [CLS] query [SEP] document [SEP], the pair counted as a whole.
    let (max, word) = (limit(rerank), one_token_word(&server, rerank));
    let doc = |n: usize| vec![word; n].join(" ");
    let body = |n: usize| json!({"model": rerank, "query": word, "documents": [doc(n), word], "truncate": false});
    let (status, tok) = server.post("/v1/tokenize", &body(max - 4));
    assert_eq!((status, ids_of(&tok, 0).len()), (200, max), "{tok}");
    let (status, resp) = server.post("/v1/rerank", &body(max - 4));
    assert_eq!(status, 200, "a pair of exactly {max} tokens: {resp}");
    assert_eq!(resp["results"].as_array().unwrap().len(), 2);
    let (status, resp) = server.post("/v1/rerank", &body(max - 3));
    assert_eq!(status, 400, "a pair of {} tokens: {resp}", max + 1);
    assert_eq!(resp["error"]["code"], "context_length_exceeded", "{resp}");
    let (status, resp) = server.post("/v1/rerank", &json!({"model": rerank, "query": word, "documents": [doc(max)]}));
    assert_eq!(status, 200, "truncated by default: {resp}");
}

#[test]
fn non_ascii_model_names_work_end_to_end() {
    let name = "modèle-日本語-ß";
    let server = Server::start(ServerOptions { models: vec!["tiny-bert-embed"], ..Default::default() });
    mlx_serve_tests::server::link_model(
        &mlx_serve_tests::fixtures::model_dir("tiny-bert-embed"),
        &server.home.path().join("models").join(name),
    );
    let (_, models) = server.get("/v1/models");
    assert!(models["data"].as_array().unwrap().iter().any(|m| m["id"] == name), "{models}");
    let reference = embed_reference("tiny-bert-embed").unwrap();
    let case = &reference.cases[0];
    let (status, resp) = server.post("/v1/embeddings", &json!({"model": name, "input": case.texts}));
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["model"], name);
    assert!(cosine(&embeddings(&resp)[0], &case.embeddings[0]) >= 0.99999);
    let (_, ps) = server.get("/api/ps");
    assert!(ps["models"].as_array().unwrap().iter().any(|m| m["name"] == name), "{ps}");
    assert!(server.worker_pid_of(name).is_some(), "a worker for {name}");
    let (_, metrics) = server.get_text("/metrics");
    assert!(metrics.contains(&format!("model=\"{name}\"")), "no label for {name}");
    assert_eq!(server.worker_row(name)["state"], "ready");
    // The same name typed in NFD is the same model and the same worker (names are compared
    // in Unicode NFC: macOS file names come back decomposed).
    let nfd: String = "mode\u{300}le-日本語-ß".into();
    assert_ne!(nfd, name);
    let pid = server.worker_pid_of(name);
    let (status, resp) = server.post("/v1/embeddings", &json!({"model": nfd, "input": "x"}));
    assert_eq!(status, 200, "{resp}");
    assert_eq!(server.worker_pid_of(name), pid, "one worker for both spellings");
}

#[test]
fn listens_on_ipv6_loopback() {
    let server = Server::start(ServerOptions {
        models: vec!["tiny-bert-embed"],
        args: vec!["--host".into(), "::1".into()],
        ..Default::default()
    });
    assert_eq!(server.addr.ip(), std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), "listening on {}", server.addr);
    assert!(server.url("/").starts_with("http://[::1]:"));
    let (status, resp) = server.post("/v1/embeddings", &json!({"model": "tiny-bert-embed", "input": "over IPv6"}));
    assert_eq!(status, 200, "{resp}");
    // Only there: the IPv4 loopback on the same port is not this server. Another test's
    // server may have that port on IPv4 (the OS handed it out there too), so what answers,
    // if anything, must not know this server's model, installed under a name of its own.
    let own = format!("ipv6-only-{}", std::process::id());
    mlx_serve_tests::server::link_model(
        &mlx_serve_tests::fixtures::model_dir("tiny-bert-embed"),
        &server.home.path().join("models").join(&own),
    );
    let (_, listed) = server.get("/v1/models");
    assert!(listed["data"].as_array().unwrap().iter().any(|m| m["id"] == own.as_str()), "{listed}");
    let v4 = ureq::get(&format!("http://127.0.0.1:{}/v1/models", server.port))
        .timeout(std::time::Duration::from_secs(5))
        .call()
        .map(|r| r.into_string().unwrap_or_default());
    assert!(!v4.as_ref().is_ok_and(|text| text.contains(&own)), "also answering on IPv4: {v4:?}");
    // The CLI finds it and prints a bracketed URL.
    let status = server.cli(&["status"]);
    assert!(status.stdout.contains(&format!("http://[::1]:{}", server.port)), "{}", status.text());
    assert_eq!(server.stop(), Some(0));
}
