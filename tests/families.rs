//! Every architecture family against an independent implementation on the same weights:
//! a tiny random-weight fixture per family and head (tests/fixtures/models, made by the
//! generator scripts in tests/fixtures/), computed by a real `mlx-serve-worker` and
//! compared with transformers / sentence-transformers (tests/fixtures/reference).
//! BERT, XLM-R and Qwen3 are in tests/worker.rs; a family added by
//! docs/adding-an-architecture.md adds its cases here.

use mlx_serve_tests::fake_hub::{error_line, folder_files, FakeHub};
use mlx_serve_tests::fixtures::{self, cosine};
use mlx_serve_tests::parity::{check_embedding_model, check_half_precision, check_quantized, check_reranker};
use mlx_serve_tests::server::{Server, ServerOptions};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// nomic_bert: nomic-embed-text v1 / v1.5, snowflake-arctic-embed-m-long
// (tests/fixtures/make_nomic_bert.py). The embedder is in the Hub's custom-code layout
// (config `n_embd`, fused `Wqkv`), the reranker in transformers' (`q_proj`, ...).
// ---------------------------------------------------------------------------------------

#[test]
fn nomic_bert_embedding_matches_sentence_transformers() {
    check_embedding_model("tiny-nomic_bert-embed");
}

#[test]
fn nomic_bert_cross_encoder_matches() {
    check_reranker("tiny-nomic_bert-rerank");
}

#[test]
fn nomic_bert_in_float16_runs_the_mlx_path() {
    check_half_precision("tiny-nomic_bert-embed", "float16");
    check_half_precision("tiny-nomic_bert-rerank", "float16");
}

#[test]
fn nomic_bert_quantized_to_8_bits_stays_close() {
    // Measured on x86 / MLX CPU: min cosine 0.99939, max score diff 1.5e-2 (the random
    // reranker's logits move by ~0.06). Bounds at about twice the loss; a wrong scale or
    // group layout moves cosines below 0.9 and scores by tenths.
    check_quantized("tiny-nomic_bert-embed", 0.998, 0.0);
    check_quantized("tiny-nomic_bert-rerank", 1.0, 0.03);
}

/// A fixture's files with config.json and sentence_bert_config.json edited.
fn edited_files(name: &str, config: impl Fn(&mut Value), max_seq_length: Option<u32>) -> Vec<(String, Vec<u8>)> {
    let mut files = folder_files(&fixtures::model_dir(name));
    for (path, data) in &mut files {
        let mut v: Value = match path.as_str() {
            "config.json" | "sentence_bert_config.json" => serde_json::from_slice(data).unwrap(),
            _ => continue,
        };
        if path == "config.json" {
            config(&mut v);
        } else if let Some(n) = max_seq_length {
            v["max_seq_length"] = n.into();
        }
        *data = serde_json::to_vec_pretty(&v).unwrap();
    }
    files
}

#[test]
fn nomic_bert_pulled_from_the_hub_serves_or_is_refused_by_field() {
    let hub = FakeHub::start();
    let name = "tiny-nomic_bert-embed";
    hub.add_repo("nomic-ai/tiny-nomic-embed", folder_files(&fixtures::model_dir(name)));
    // nomic-embed-text-v2-moe's mixture-of-experts keys, and the dynamic-NTK RoPE that
    // nomic's model cards enable for 8192 tokens.
    hub.add_repo(
        "nomic-ai/tiny-nomic-moe",
        edited_files(
            name,
            |c| {
                c["moe_every_n_layers"] = 2.into();
                c["num_experts"] = 8.into();
            },
            None,
        ),
    );
    hub.add_repo("acme/tiny-nomic-ntk", edited_files(name, |c| c["rotary_scaling_factor"] = 2.0.into(), Some(8192)));
    let hf_home = tempfile::tempdir().unwrap();
    let server = Server::start(ServerOptions { env: hub.server_env(hf_home.path()), ..Default::default() });
    let home = server.home.path();

    let out = hub.mlx_serve(home, &["pull", "nomic-ai/tiny-nomic-embed"], &[]);
    assert!(out.ok(), "{}", out.text());
    // Texts the server tokenizes itself, within the model's limit, over HTTP.
    let reference = fixtures::embed_reference(name).unwrap();
    let mut served = 0;
    for case in reference.cases.iter().filter(|c| c.input_ids.iter().all(|ids| ids.len() < 256)) {
        let (status, resp) = server.post("/v1/embeddings", &json!({"model": "tiny-nomic-embed", "input": case.texts}));
        assert_eq!(status, 200, "{resp}\n{}", server.log_text());
        for (i, want) in case.embeddings.iter().enumerate() {
            let got: Vec<f32> =
                resp["data"][i]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            let c = cosine(&got, want);
            assert!(c >= 0.99999, "{}[{i}]: cosine {c} over HTTP", case.name);
            served += 1;
        }
    }
    assert!(served >= 10, "{served}");

    for (repo, field) in
        [("nomic-ai/tiny-nomic-moe", "moe_every_n_layers"), ("acme/tiny-nomic-ntk", "rotary_scaling_factor")]
    {
        let out = hub.mlx_serve(home, &["pull", repo], &[]);
        let line = error_line(&out);
        assert!(line.contains(field), "{repo}: {line}");
        // Refused from its JSON files, before any weight was downloaded.
        let weights = format!("{repo}/resolve/main/model.safetensors");
        let fetched: Vec<String> =
            hub.requests().into_iter().filter(|r| r.contains(&weights) && !r.ends_with("bytes=0-0")).collect();
        assert!(fetched.is_empty(), "{repo}: {fetched:?}");
    }
}
