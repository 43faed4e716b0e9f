//! Parity of a fixture model against its reference (tests/fixtures/reference, made by an
//! independent implementation): a real `mlx-serve-worker` process computes every case, and
//! each sequence alone must give what it gives inside a batch. The same cases in half
//! precision (the MLX-ops path a GPU runs) and from an 8-bit quantized copy.

use mlx_serve_protocol::ModelKind;

use crate::fixtures::{self, batch, cosine, max_abs_diff, paired};
use crate::worker_process::{worker_bin, TempDir, Worker};

/// The bar for float32 embeddings: cosine to the reference and largest difference.
pub const EMBED_MIN_COSINE: f64 = 0.99999;
pub const EMBED_MAX_DIFF: f64 = 1e-4;
pub const SCORE_MAX_DIFF: f64 = 1e-4;
/// The same sequence alone and inside a batch with others (tests/packed.rs: busy mixed batches).
pub const BATCH_INVARIANCE: f64 = 1e-5;

pub fn check_embedding_model(name: &str) {
    let reference = fixtures::embed_reference(name).unwrap();
    let (mut w, info) = Worker::ready(&fixtures::model_dir(name), &[]).unwrap();
    assert_eq!(info.kind, ModelKind::Embedding);
    assert_eq!(info.pooling.as_str(), reference.pooling.replace("lasttoken", "last_token"));
    assert_eq!(info.max_tokens, reference.max_seq_length);
    let mut worst = (1.0f64, 0.0f64);
    for case in &reference.cases {
        let rows = w.embed(batch(&case.input_ids, case.token_type_ids.as_ref())).unwrap();
        for (i, (got, want)) in paired(&rows, &case.embeddings, &format!("{name}/{}", case.name)).enumerate() {
            let (c, d) = (cosine(got, want), max_abs_diff(got, want));
            worst = (worst.0.min(c), worst.1.max(d));
            assert!(
                c >= EMBED_MIN_COSINE && d <= EMBED_MAX_DIFF,
                "{name}/{}[{i}] (len {}): cosine {c}, max diff {d}",
                case.name,
                case.input_ids[i].len()
            );
        }
        // Padding must not change a row: each sequence alone gives the same vector.
        if case.input_ids.len() > 1 {
            for (i, ids) in case.input_ids.iter().enumerate() {
                let tt = case.token_type_ids.as_ref().map(|t| vec![t[i].clone()]);
                let alone = w.embed(batch(std::slice::from_ref(ids), tt.as_ref())).unwrap();
                let d = max_abs_diff(&alone[0], &rows[i]);
                assert!(d <= BATCH_INVARIANCE, "{name}/{}[{i}]: alone vs batch differ by {d}", case.name);
            }
        }
    }
    eprintln!("{name}: {} cases, min cosine {:.7}, max abs diff {:.2e}", reference.cases.len(), worst.0, worst.1);
}

pub fn check_reranker(name: &str) {
    let reference = fixtures::rerank_reference(name).unwrap();
    let (mut w, info) = Worker::ready(&fixtures::model_dir(name), &[]).unwrap();
    assert_eq!(info.kind, ModelKind::Reranker);
    let mut worst = 0.0f64;
    let mut at_limit = false;
    for case in &reference.cases {
        at_limit |= case.pairs_input_ids.iter().any(|p| p.len() as u32 == reference.max_length);
        let scores = w.score(batch(&case.pairs_input_ids, case.pairs_token_type_ids.as_ref())).unwrap();
        let d = max_abs_diff(&scores, &case.scores);
        worst = worst.max(d);
        assert!(d <= SCORE_MAX_DIFF, "{name}/{}: scores {scores:?} vs {:?} (diff {d})", case.name, case.scores);
        for (i, ids) in case.pairs_input_ids.iter().enumerate() {
            let tt = case.pairs_token_type_ids.as_ref().map(|t| vec![t[i].clone()]);
            let alone = w.score(batch(std::slice::from_ref(ids), tt.as_ref())).unwrap();
            let d = (alone[0] as f64 - scores[i] as f64).abs();
            assert!(d <= BATCH_INVARIANCE, "{name}/{}[{i}]: alone vs batch differ by {d}", case.name);
        }
    }
    assert!(at_limit, "{name}: the reference should include a pair at the length limit");
    eprintln!("{name}: {} cases, max score diff {worst:.2e}", reference.cases.len());
}

/// How much worse than torch's own half-precision forward ours may be (tests/worker.rs,
/// `HALF_PRECISION_FACTOR`, says why 4×), and the floors for errors at float32's noise.
pub const HALF_PRECISION_FACTOR: f64 = 4.0;
pub const HALF_EMBED_ERROR_FLOOR: f64 = 3e-5;
pub const HALF_SCORE_ERROR_FLOOR: f64 = 1e-3;

/// torch's error computing fixture `name` in `dtype` (weights cast from float32), as its
/// generator recorded it in the reference's `half_precision` field: embeddings `1 - min
/// cosine`, rerankers the largest score difference.
fn torch_half_precision_error(name: &str, dtype: &str) -> f64 {
    let path = fixtures::repo_root().join("tests/fixtures/reference").join(format!("{name}.json"));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let m = &v["half_precision"][dtype];
    m["min_cosine"]
        .as_f64()
        .map(|c| 1.0 - c)
        .or_else(|| m["max_score_diff"].as_f64())
        .unwrap_or_else(|| panic!("{name}: no half_precision.{dtype} in its reference"))
}

/// The lowest cosine between `w`'s embeddings of every case of fixture `name`'s reference
/// and the reference vectors.
pub fn min_cosine_to_reference(w: &mut Worker, name: &str) -> f64 {
    let reference = fixtures::embed_reference(name).unwrap();
    let mut min_cos = 1.0f64;
    for case in &reference.cases {
        let rows = w.embed(batch(&case.input_ids, case.token_type_ids.as_ref())).unwrap();
        for (got, want) in paired(&rows, &case.embeddings, &format!("{name}/{}", case.name)) {
            min_cos = min_cos.min(cosine(got, want));
        }
    }
    min_cos
}

/// Fixture `name` computed with `--compute-dtype dtype`, which bypasses the float32 host
/// kernels: every step on MLX's own ops, as on a GPU. Its error to the float32 reference is
/// bounded by a small multiple of torch's in the same dtype on the same weights.
pub fn check_half_precision(name: &str, dtype: &str) {
    let (mut w, info) = Worker::ready(&fixtures::model_dir(name), &["--compute-dtype", dtype]).unwrap();
    assert_eq!(info.compute_dtype, dtype);
    let torch = torch_half_precision_error(name, dtype);
    if info.kind == ModelKind::Embedding {
        let min_cos = min_cosine_to_reference(&mut w, name);
        let bound = (HALF_PRECISION_FACTOR * torch).max(HALF_EMBED_ERROR_FLOOR);
        eprintln!("{name} in {dtype}: 1 - min cosine {:.2e} (torch {torch:.2e}, bound {bound:.2e})", 1.0 - min_cos);
        assert!(1.0 - min_cos <= bound, "{name} in {dtype}: min cosine {min_cos}, torch's error {torch:.2e}");
    } else {
        let reference = fixtures::rerank_reference(name).unwrap();
        let mut worst = 0.0f64;
        for case in &reference.cases {
            let scores = w.score(batch(&case.pairs_input_ids, case.pairs_token_type_ids.as_ref())).unwrap();
            worst = worst.max(max_abs_diff(&scores, &case.scores));
        }
        let bound = (HALF_PRECISION_FACTOR * torch).max(HALF_SCORE_ERROR_FLOOR);
        eprintln!("{name} in {dtype}: max score diff {worst:.2e} (torch {torch:.2e}, bound {bound:.2e})");
        assert!(worst <= bound, "{name} in {dtype}: max score diff {worst}, torch's error {torch:.2e}");
    }
}

/// `mlx-serve-worker quantize --bits 8` of fixture `name`, then the copy served (dequantized
/// at load on the CPU, and kept packed with `--keep-quantized`, the GPU's form): every
/// reference case within `min_cosine` (embeddings) or `max_score_diff` (rerankers) of the
/// float32 reference, in both forms.
pub fn check_quantized(name: &str, min_cosine: f64, max_score_diff: f64) {
    check_quantized_to(name, 8, min_cosine, max_score_diff);
}

/// `check_quantized` at `bits` (4: the default mixed recipe). Returns (min cosine, max score
/// difference) to the float32 reference.
pub fn check_quantized_to(name: &str, bits: u32, min_cosine: f64, max_score_diff: f64) -> (f64, f64) {
    let tmp = TempDir::new("family-quant").unwrap();
    let dst = tmp.path().join(format!("{name}-{bits}bit"));
    let out = std::process::Command::new(worker_bin())
        .args(["quantize", "--bits", &bits.to_string(), "--src"])
        .arg(fixtures::model_dir(name))
        .arg("--dst")
        .arg(&dst)
        .output()
        .unwrap();
    assert!(out.status.success(), "{name}: quantize failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let quantized: usize =
        report["details"]["quantized"].as_array().unwrap().iter().map(|g| g["tensors"].as_array().unwrap().len()).sum();
    assert!(quantized > 0, "{name}: nothing was quantized: {report}");
    let mut worst_cos = 1.0f64;
    let mut worst_diff = 0.0f64;
    for extra in [&[][..], &["--keep-quantized"][..]] {
        let (mut w, info) = Worker::ready(&dst, extra).unwrap();
        assert_eq!(info.stored_dtype, format!("q{bits}"));
        if info.kind == ModelKind::Embedding {
            for case in &fixtures::embed_reference(name).unwrap().cases {
                let rows = w.embed(batch(&case.input_ids, case.token_type_ids.as_ref())).unwrap();
                for (got, want) in paired(&rows, &case.embeddings, &format!("{name}/{}", case.name)) {
                    worst_cos = worst_cos.min(cosine(got, want));
                }
            }
        } else {
            for case in &fixtures::rerank_reference(name).unwrap().cases {
                let scores = w.score(batch(&case.pairs_input_ids, case.pairs_token_type_ids.as_ref())).unwrap();
                worst_diff = worst_diff.max(max_abs_diff(&scores, &case.scores));
            }
        }
    }
    eprintln!(
        "{name} at {bits} bits ({quantized} tensors quantized): min cosine {worst_cos:.6}, max score diff \
         {worst_diff:.2e} to the float32 reference"
    );
    assert!(worst_cos >= min_cosine, "{name} at {bits} bits: min cosine {worst_cos}");
    assert!(worst_diff <= max_score_diff, "{name} at {bits} bits: max score diff {worst_diff}");
    (worst_cos, worst_diff)
}
