//! Late chunking in the worker (docs/long-documents.md): a real `mlx-serve-worker` running
//! MLX, sent `EmbedPooled` over its socket as the supervisor sends it, against
//! transformers hidden states of the whole document pooled per chunk span, then the
//! model's own sentence-transformers Dense / Normalize modules
//! (tests/fixtures/make_late_chunking.py → tests/fixtures/reference/late_chunking.json).

use mlx_serve_protocol::{ErrorKind, Pool, SupervisorMessage, TokenBatch, WorkerMessage};
use mlx_serve_tests::fixtures::{self, cosine};
use mlx_serve_tests::worker_process::Worker;
use serde_json::Value;

/// The bar for late chunking against its reference.
const MIN_COSINE: f64 = 0.99999;

fn reference() -> Value {
    let path = fixtures::repo_root().join("tests/fixtures/reference/late_chunking.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn pools(v: &Value) -> Vec<Pool> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| match (p.get("sequence"), p.get("rows")) {
            (Some(i), _) => Pool::Sequence(i.as_u64().unwrap() as u32),
            (_, Some(r)) => Pool::Rows(
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|se| (se[0].as_u64().unwrap() as u32, se[1].as_u64().unwrap() as u32))
                    .collect(),
            ),
            _ => panic!("bad pool {p}"),
        })
        .collect()
}

fn pooled(w: &mut Worker, batch: TokenBatch, pools: Vec<Pool>) -> WorkerMessage {
    w.send(&SupervisorMessage::EmbedPooled { id: 7, batch, pools }).unwrap();
    w.recv().unwrap()
}

fn model_path(name: &str) -> std::path::PathBuf {
    if name == "all-MiniLM-L6-v2" {
        fixtures::minilm_dir().unwrap()
    } else {
        fixtures::model_dir(name)
    }
}

/// Every model and case of the reference: one row per pool, each within `MIN_COSINE` of the
/// reference (MiniLM: mean; CLS and last-token models: mean of the span; max, position-
/// weighted mean, √length as the model pools; a CLS + Dense(tanh) + Normalize pipeline).
#[test]
fn span_rows_match_transformers_over_the_whole_document() {
    let reference = reference();
    for (name, model) in reference.as_object().unwrap() {
        let (mut w, info) = Worker::ready(&model_path(name), &[]).unwrap();
        for case in model["cases"].as_array().unwrap() {
            let mut batch = TokenBatch::new();
            for seq in case["sequences"].as_array().unwrap() {
                batch.push(&ids(seq), &[]);
            }
            let label = format!("{name} ({}), {}", model["pooling"], case["name"]);
            let want: Vec<Vec<f32>> = serde_json::from_value(case["embeddings"].clone()).unwrap();
            let WorkerMessage::Embeddings { dim, data, .. } = pooled(&mut w, batch, pools(&case["pools"])) else {
                panic!("{label}: no rows");
            };
            assert_eq!(dim, info.output_dim, "{label}");
            let got: Vec<&[f32]> = data.chunks(dim as usize).collect();
            assert_eq!(got.len(), want.len(), "{label}: one row per pool");
            for (k, (g, r)) in got.iter().zip(&want).enumerate() {
                let c = cosine(g, r);
                println!("{label}, row {k}: 1 - cosine {:.2e}", 1.0 - c);
                assert!(c >= MIN_COSINE, "{label}, row {k}: cosine {c}");
                let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                assert!((norm(g) - norm(r)).abs() < 1e-4, "{label}, row {k}: norms {} vs {}", norm(g), norm(r));
            }
        }
    }
}

/// Pools that do not fit the batch are refused as invalid input, and the worker goes on.
#[test]
fn bad_pools_are_refused_and_the_worker_goes_on() {
    let (mut w, _) = Worker::ready(&fixtures::model_dir("tiny-bert-embed"), &[]).unwrap();
    let batch = || {
        let mut b = TokenBatch::new();
        b.push(&[2, 100, 101, 102, 3], &[]);
        b
    };
    for (pools, why) in [
        (vec![], "no pools"),
        (vec![Pool::Sequence(1)], "sequence 1 is not in the batch"),
        (vec![Pool::Rows(vec![(3, 2)])], "out of order"),
        (vec![Pool::Rows(vec![(1, 3), (2, 4)])], "out of order"),
        (vec![Pool::Rows(vec![(4, 6)])], "outside the batch"),
        (vec![Pool::Rows(vec![])], "has no rows"),
    ] {
        match pooled(&mut w, batch(), pools.clone()) {
            WorkerMessage::Error { kind: ErrorKind::InvalidInput, message, .. } => {
                assert!(message.contains(why), "{pools:?}: {message}")
            }
            other => panic!("{pools:?}: {other:?}"),
        }
    }
    let ok = pooled(&mut w, batch(), vec![Pool::Rows(vec![(1, 4)]), Pool::Sequence(0)]);
    assert!(matches!(ok, WorkerMessage::Embeddings { ref data, .. } if data.len() == 2 * 32), "{ok:?}");
}
