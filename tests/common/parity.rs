//! Parity of a fixture model against its reference (tests/fixtures/reference, made by an
//! independent implementation): a real `mlx-serve-worker` process computes every case, and
//! each sequence alone must give what it gives inside a batch.

use mlx_serve_protocol::ModelKind;

use crate::fixtures::{self, batch, cosine, max_abs_diff, paired};
use crate::worker_process::Worker;

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
    assert_eq!(info.pooling, reference.pooling.replace("lasttoken", "last_token"));
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
