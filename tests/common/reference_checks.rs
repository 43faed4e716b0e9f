//! Reading a fixture's recorded reference outputs (`tests/fixtures/reference/NAME.json`, made
//! by the generators beside the fixtures) and checking a server's token vectors and sparse
//! weights and its rerank answers against them.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::fixtures::{cosine, repo_root};
use crate::server::Server;

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

/// `/v1/rerank` of `query` over `documents` against the reference's ranking (`ranked`:
/// `[{index, score}]`, best first): the same order, every score within `tolerance`. The
/// reference's (index, score) pairs and the largest difference.
pub fn assert_rerank(
    server: &Server,
    model: &str,
    (query, documents): (&Value, &Value),
    ranked: &Value,
    tolerance: f64,
    what: &str,
) -> (Vec<(u64, f64)>, f64) {
    let req = json!({"model": model, "query": query, "documents": documents});
    let (status, body) = server.post("/v1/rerank", &req);
    assert_eq!(status, 200, "{body}");
    let got: Vec<(u64, f64)> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["index"].as_u64().unwrap(), x["relevance_score"].as_f64().unwrap()))
        .collect();
    let want: Vec<(u64, f64)> = ranked
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["index"].as_u64().unwrap(), x["score"].as_f64().unwrap()))
        .collect();
    let order = |v: &[(u64, f64)]| v.iter().map(|p| p.0).collect::<Vec<_>>();
    assert_eq!(order(&got), order(&want), "{what}: {body}");
    let mut largest = 0f64;
    for ((_, g), (i, w)) in got.iter().zip(&want) {
        assert!((g - w).abs() <= tolerance, "{what} document {i}: {g} vs reference {w}");
        largest = largest.max((g - w).abs());
    }
    (want, largest)
}
