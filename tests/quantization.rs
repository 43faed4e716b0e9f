//! `mlx-serve quantize` of a Qwen3-Reranker-shaped model: the head's yes/no rows stay exact,
//! everything else is quantized, and the copy serves through real workers with scores
//! close to the original's. (all-MiniLM-L6-v2's quantization: tests/models.rs,
//! tests/worker.rs.)
//!
//! The model is tests/fixtures/models/tiny-qwen3-rerank (tokenizer, config) widened to
//! hidden 64 / intermediate 128, so that its matrices hold whole groups of 64, with
//! deterministic random weights. Its quality is measured here, not read from what
//! `quantize` reports about itself: the original and both copies are served by a real
//! daemon, and the copies' scores over HTTP are compared with the original's on the
//! reference fixture's pairs (texts the quantizer's own check does not use).

use std::path::Path;
use std::time::Duration;

use mlx_serve_tests::cli::{self, Output};
use mlx_serve_tests::fixtures::{self, RawTensor};
use mlx_serve_tests::server::{link_model, Server, ServerOptions};
use mlx_serve_tests::worker_process::{TempDir, Worker};
use serde_json::{json, Value};

fn mlx_serve(home: &Path, args: &[&str]) -> Output {
    cli::run(cli::command(home, None, args), Duration::from_secs(300))
}

/// Deterministic normal(0, std) values (xorshift + Box-Muller), as little-endian f32 bytes.
fn normal_f32_bytes(n: usize, std: f32, seed: &mut u64) -> Vec<u8> {
    let mut uniform = || {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        ((*seed >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .flat_map(|_| {
            let (u, v) = (uniform(), uniform());
            let z = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
            ((z as f32) * std).to_le_bytes()
        })
        .collect()
}

/// tiny-qwen3-rerank widened to hidden 64 (4 heads of 16), intermediate 128, in `dir`.
fn wide_qwen3_reranker(dir: &Path) {
    let src = fixtures::model_dir("tiny-qwen3-rerank");
    std::fs::create_dir_all(dir).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    assert_eq!((config["hidden_size"].as_u64(), config["intermediate_size"].as_u64()), (Some(48), Some(96)));
    config["hidden_size"] = 64.into();
    config["intermediate_size"] = 128.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let widen = |d: u64| match d {
        48 => 64,
        96 => 128,
        d => d,
    };
    // transformers initializes Qwen3 weights normal(0, initializer_range).
    let std = config["initializer_range"].as_f64().unwrap() as f32;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let tensors: Vec<RawTensor> = fixtures::read_safetensors(&src.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(name, dtype, shape, _)| {
            assert_eq!(dtype, "F32", "{name}");
            let shape: Vec<u64> = shape.into_iter().map(widen).collect();
            let n = shape.iter().product::<u64>() as usize;
            let data =
                if shape.len() == 1 { 1f32.to_le_bytes().repeat(n) } else { normal_f32_bytes(n, std, &mut seed) };
            (name, dtype, shape, data)
        })
        .collect();
    fixtures::write_safetensors(&dir.join("model.safetensors"), &tensors).unwrap();
}

#[test]
fn qwen3_reranker_quantizes_with_exact_yes_no_rows() {
    let tmp = TempDir::new("qrerank").unwrap();
    let home = tmp.path().join("home");
    let src = tmp.path().join("qwen3-rerank-64");
    wide_qwen3_reranker(&src);
    let out = mlx_serve(&home, &["pull", src.to_str().unwrap(), "--name", "rr"]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    let models = home.join("models");
    let mut report = String::new();
    for bits in [8, 4] {
        let out = mlx_serve(&home, &["quantize", "rr", "--bits", &bits.to_string()]);
        assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
        let name = format!("rr-{bits}bit");
        let meta: Value =
            serde_json::from_str(&std::fs::read_to_string(models.join(&name).join("mlx-serve.json")).unwrap()).unwrap();
        let d = &meta["quantization_details"];
        // The tied embedding table is quantized; its yes/no rows are kept exact beside it.
        let quantized: Vec<&str> = d["quantized"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["tensors"].as_array().unwrap())
            .filter_map(Value::as_str)
            .collect();
        assert!(
            quantized.contains(&"model.embed_tokens.weight")
                && quantized.contains(&"model.layers.1.mlp.down_proj.weight"),
            "{d}"
        );
        let kept = d["kept"].as_array().unwrap();
        assert!(kept.iter().any(|k| k["tensors"].as_array().unwrap().contains(&"lm_head.yes_no.weight".into())), "{d}");
        let tensors = fixtures::read_safetensors(&models.join(&name).join("model.safetensors")).unwrap();
        let rows = tensors.iter().find(|t| t.0 == "lm_head.yes_no.weight").expect("yes/no rows stored");
        assert_eq!((rows.1.as_str(), rows.2.clone()), ("F32", vec![2, 64]));
        // What quantize measured about itself is reported, not trusted.
        assert!(out.stdout.contains("score difference mean"), "{}", out.stdout);
        report.push_str(&format!("\n{bits}-bit: {}", out.stdout.lines().find(|l| l.starts_with("quality:")).unwrap()));

        // The copy serves: a real worker scores pairs, kept quantized (a GPU's path) or not.
        let pair = fixtures::rerank_reference("tiny-qwen3-rerank").unwrap().cases[0].pairs_input_ids.clone();
        let mut scores = Vec::new();
        for extra in [&[][..], &["--keep-quantized"][..]] {
            let (mut w, info) = Worker::ready(&models.join(&name), extra).unwrap();
            assert_eq!(info.stored_dtype, format!("q{bits}"));
            scores.push(w.score(fixtures::batch(&pair, None)).unwrap());
        }
        let diff = scores[0].iter().zip(&scores[1]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-4, "kept quantized vs dequantized: {diff}");
    }

    // The original and both copies served by one daemon: every copy's scores against the
    // original's, on the fixture's queries and documents.
    let server = Server::start(ServerOptions {
        config: Some("cache:\n  max_reranker_models: 3\n".into()),
        ..Default::default()
    });
    for name in ["rr", "rr-8bit", "rr-4bit"] {
        link_model(&models.join(name), &server.home.path().join("models").join(name));
    }
    let cases = rerank_cases();
    let scores = |model: &str| -> Vec<f64> {
        cases
            .iter()
            .flat_map(|(query, documents)| {
                let body = json!({"model": model, "query": query, "documents": documents, "top_n": documents.len()});
                let (status, v) = server.post("/v1/rerank", &body);
                assert_eq!(status, 200, "{model}: {v}");
                let mut rows: Vec<(u64, f64)> = v["results"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| (r["index"].as_u64().unwrap(), r["relevance_score"].as_f64().unwrap()))
                    .collect();
                rows.sort_by_key(|r| r.0);
                assert_eq!(rows.len(), documents.len(), "{model}: {v}");
                rows.into_iter().map(|r| r.1)
            })
            .collect()
    };
    let original = scores("rr");
    let (lo, hi) = original.iter().fold((1f64, 0f64), |(lo, hi), s| (lo.min(*s), hi.max(*s)));
    // The premise: the original's scores differ from pair to pair (a copy that answers
    // one constant would otherwise look close).
    assert!(hi - lo > 1e-3, "the original scores every pair alike: {original:?}");
    report.push_str(&format!("\nserved: the original's scores of {} pairs from {lo:.4} to {hi:.4}", original.len()));
    // Qwen3-Reranker 8-bit scores within 1e-2 of the original (docs/quantization.md).
    for (bits, max_diff, min_r) in [(8, 1e-2, 0.99), (4, 5e-2, 0.9)] {
        let copy = scores(&format!("rr-{bits}bit"));
        assert_eq!(copy.len(), original.len());
        let diffs: Vec<f64> = copy.iter().zip(&original).map(|(a, b)| (a - b).abs()).collect();
        let max = diffs.iter().copied().fold(0f64, f64::max);
        let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
        let r = pearson(&copy, &original);
        report.push_str(&format!("; {bits}-bit: score difference mean {mean:.5}, max {max:.5}, correlation {r:.4}"));
        assert!(max <= max_diff, "{bits}-bit: largest score difference {max} (mean {mean}) over HTTP");
        assert!(max > 0.0, "{bits}-bit: the copy scores exactly like the original: is it quantized?");
        // The random model's scores lie close together: the copy must also order the pairs
        // as the original does, which a copy near the middle of that range would not.
        assert!(r >= min_r, "{bits}-bit: scores correlate {r} with the original's");
    }
    println!("Qwen3-Reranker shape (hidden 64, random weights):{report}");
}

/// Pearson's correlation of two equally long series.
fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (ma, mb) = (mean(a), mean(b));
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let var = |v: &[f64], m: f64| v.iter().map(|x| (x - m).powi(2)).sum::<f64>();
    cov / (var(a, ma) * var(b, mb)).sqrt().max(1e-300)
}

/// (query, documents) of the tiny-qwen3-rerank reference fixture.
fn rerank_cases() -> Vec<(String, Vec<String>)> {
    let path = fixtures::repo_root().join("tests/fixtures/reference/tiny-qwen3-rerank.json");
    let raw: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    raw["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let docs = c["documents"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_owned()).collect();
            (c["query"].as_str().unwrap().to_owned(), docs)
        })
        .collect()
}
