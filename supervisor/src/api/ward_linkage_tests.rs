//! Against scipy's own answers, recorded by tests/fixtures/make_pylate_pool.py
//! (`reference/pylate-pool.json`, "linkage"): random unit vectors' cosine distances, one
//! fixture document's, and points with exact ties (equal distances and merge heights).

use std::path::Path;

use serde_json::Value;

use super::*;

fn cases() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/reference/pylate-pool.json");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    r["linkage"].as_array().unwrap().clone()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn ward_linkage_matches_scipy_merge_for_merge() {
    for case in cases() {
        let what = case["what"].as_str().unwrap();
        let n = case["n"].as_u64().unwrap() as usize;
        let z = ward_linkage(&floats(&case["condensed"]), n).unwrap();
        let want: Vec<Vec<f64>> = case["Z"].as_array().unwrap().iter().map(floats).collect();
        assert_eq!(z.len(), want.len(), "{what}");
        for (k, (m, w)) in z.iter().zip(&want).enumerate() {
            assert_eq!((m.a, m.b, m.size), (w[0] as usize, w[1] as usize, w[3] as usize), "{what} merge {k}");
            assert!(
                (m.height - w[2]).abs() <= 1e-12 * w[2].abs().max(1.0),
                "{what} merge {k}: {} vs {}",
                m.height,
                w[2]
            );
        }
    }
}

#[test]
fn maxclust_labels_match_scipy_fcluster() {
    for case in cases() {
        let what = case["what"].as_str().unwrap();
        let n = case["n"].as_u64().unwrap() as usize;
        let z = ward_linkage(&floats(&case["condensed"]), n).unwrap();
        for cut in case["fcluster_maxclust"].as_array().unwrap() {
            let t = cut["t"].as_u64().unwrap() as usize;
            let want: Vec<usize> =
                cut["labels"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
            assert_eq!(fcluster_maxclust(&z, n, t), want, "{what} t={t}");
        }
    }
}

#[test]
fn a_distance_that_is_not_finite_is_refused() {
    assert!(ward_linkage(&[0.5, f64::NAN, 0.2], 3).is_none());
}
