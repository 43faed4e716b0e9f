//! Reading a fixture's recorded reference outputs (`tests/fixtures/reference/NAME.json`, made
//! by the generators beside the fixtures) and checking a server's token vectors and sparse
//! weights against them.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::fixtures::{cosine, repo_root};

/// The reference file of the fixture `name`.
pub fn reference_json(name: &str) -> Value {
    let path = repo_root().join(format!("tests/fixtures/reference/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A JSON list of vectors.
pub fn rows(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect()
}

/// The same number of token vectors as the reference's, each with cosine ≥ 0.99999; the
/// worst cosine.
pub fn assert_token_vectors(got: &[Vec<f32>], want: &[Vec<f32>], what: &str) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: token vectors");
    let mut worst = 1f64;
    for (t, (g, w)) in got.iter().zip(want).enumerate() {
        let c = cosine(g, w);
        assert!(c >= 0.99999, "{what} token {t}: cosine {c}");
        worst = worst.min(c);
    }
    worst
}

/// Sparse weights (token id → weight, ids ascending and each once) with the reference's
/// ids, each weight within `tolerance` of the reference's (`{"id": weight}`); the largest
/// difference.
pub fn assert_sparse_close(got: &[(u32, f32)], want: &Value, tolerance: f32, what: &str) -> f32 {
    let want: BTreeMap<u32, f32> =
        want.as_object().unwrap().iter().map(|(k, v)| (k.parse().unwrap(), v.as_f64().unwrap() as f32)).collect();
    assert!(got.windows(2).all(|p| p[0].0 < p[1].0), "{what}: ids ascending, each once: {got:?}");
    let ids: Vec<u32> = got.iter().map(|p| p.0).collect();
    assert_eq!(ids, want.keys().copied().collect::<Vec<_>>(), "{what}: the active token ids");
    let mut worst = 0f32;
    for (id, g) in got {
        let r = want[id];
        assert!((g - r).abs() <= tolerance, "{what}: token {id}: {g} vs reference {r}");
        worst = worst.max((g - r).abs());
    }
    worst
}
