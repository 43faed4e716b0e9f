//! Packed batches and memory, through a real `mlx-serve-worker` process running MLX.
//!
//! - A text gives the same vector (or score) alone and inside a busy batch of sequences of
//!   mixed lengths, for every architecture fixture, on both kernel paths: host kernels
//!   (float32 on the CPU backend) and MLX ops (half precision: the GPU code path), and it
//!   still matches the transformers / sentence-transformers reference.
//! - After a real load, the worker's resident memory comes back to within 20% of its idle
//!   value (docs/worker.md, "Memory").

use std::time::{Duration, Instant};

use mlx_serve_protocol::{ModelKind, TokenBatch};
use mlx_serve_tests::fixtures::{self, cosine, max_abs_diff};
use mlx_serve_tests::worker_process::{rss_bytes, Worker};

/// Same bound as tests/worker.rs for float32: alone vs inside a batch.
const F32_INVARIANCE: f64 = 1e-5;

/// Deterministic filler ids in `lo..hi` (xorshift32).
fn filler(seed: u32, n: usize, lo: u32, hi: u32) -> Vec<u32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            lo + s % (hi - lo)
        })
        .collect()
}

/// `target` at position 11 of 24 sequences whose lengths run from 1 to `max_len` in a
/// scrambled order; returns the batch and the target's index.
fn busy_batch(target: &[u32], target_types: &[u8], vocab: u32, max_len: usize) -> (TokenBatch, usize) {
    let mut b = TokenBatch::new();
    let at = 11;
    for i in 0..24usize {
        if i == at {
            b.push(target, target_types);
            continue;
        }
        let n = 1 + (i * 7919) % max_len;
        b.push(&filler(i as u32 + 1, n, 5, vocab), &[]);
    }
    (b, at)
}

/// One text alone and inside a busy batch: embedding rows (or a one-element score row).
fn alone_and_busy(
    w: &mut Worker,
    kind: ModelKind,
    ids: &[u32],
    types: &[u8],
    vocab: u32,
    max_len: usize,
) -> (Vec<f32>, Vec<f32>) {
    let mut alone = TokenBatch::new();
    alone.push(ids, types);
    let (busy, at) = busy_batch(ids, types, vocab, max_len);
    match kind {
        ModelKind::Embedding => {
            let a = w.embed(alone).unwrap().remove(0);
            let b = w.embed(busy).unwrap().remove(at);
            (a, b)
        }
        ModelKind::Reranker => (vec![w.score(alone).unwrap()[0]], vec![w.score(busy).unwrap()[at]]),
        ModelKind::Classifier => unreachable!("the fixtures checked here are embedders and rerankers"),
    }
}

/// (ids, segment ids, reference output) of the longest input in a fixture's reference.
fn longest_case(name: &str) -> (ModelKind, Vec<u32>, Vec<u8>, Vec<f32>, usize) {
    if name.contains("rerank") {
        let r = fixtures::rerank_reference(name).unwrap();
        let (c, i) = r
            .cases
            .iter()
            .flat_map(|c| (0..c.pairs_input_ids.len()).map(move |i| (c, i)))
            .max_by_key(|(c, i)| c.pairs_input_ids[*i].len())
            .unwrap();
        let types = c.pairs_token_type_ids.as_ref().map(|t| t[i].clone()).unwrap_or_default();
        (ModelKind::Reranker, c.pairs_input_ids[i].clone(), types, vec![c.scores[i]], r.max_length as usize)
    } else {
        let r = fixtures::embed_reference(name).unwrap();
        let (c, i) = r
            .cases
            .iter()
            .flat_map(|c| (0..c.input_ids.len()).map(move |i| (c, i)))
            .max_by_key(|(c, i)| c.input_ids[*i].len())
            .unwrap();
        let types = c.token_type_ids.as_ref().map(|t| t[i].clone()).unwrap_or_default();
        (ModelKind::Embedding, c.input_ids[i].clone(), types, c.embeddings[i].clone(), r.max_seq_length as usize)
    }
}

const FIXTURES: [&str; 7] = [
    "tiny-bert-embed",
    "tiny-xlmr-embed",
    "tiny-qwen3-embed",
    "tiny-bert-rerank",
    "tiny-xlmr-rerank",
    "tiny-qwen3-rerank",
    "tiny-qwen2-mxbai-rerank",
];

#[test]
fn one_text_alone_and_in_a_busy_mixed_batch_agree_float32_host_kernels() {
    for name in FIXTURES {
        let (kind, ids, types, reference, max_len) = longest_case(name);
        let (mut w, info) = Worker::ready(&fixtures::model_dir(name), &[]).unwrap();
        // float32 (the harness pins it); on a CPU worker that is the host kernels' path, on
        // a GPU worker MLX's float32 kernels.
        assert_eq!(info.compute_dtype, "float32", "{name} on {}", info.device);
        let (alone, busy) = alone_and_busy(&mut w, kind, &ids, &types, info.vocab_size, max_len);
        let d = max_abs_diff(&alone, &busy);
        let r = max_abs_diff(&alone, &reference);
        eprintln!("{name} (f32, {} tokens): alone vs busy batch {d:.2e}, vs reference {r:.2e}", ids.len());
        assert!(d <= F32_INVARIANCE, "{name}: alone vs busy batch differ by {d}");
        assert!(r <= 1e-4, "{name}: alone vs reference differ by {r}");
        // The batch was packed: the worker computed its real tokens and nothing more.
        let stats = w.stats().unwrap();
        assert_eq!(stats.padded_tokens, stats.tokens, "{name}: {stats:?}");
    }
}

#[test]
fn one_text_alone_and_in_a_busy_mixed_batch_agree_on_the_mlx_kernel_path() {
    // Half precision runs MLX ops only (bucketed attention, MLX norms and activations):
    // the code path of a GPU worker. Rounding differs between shapes in half precision,
    // so the bound is looser than float32's; garbage (a pad key leaking into attention, a
    // wrong row) is off by orders of magnitude more.
    for name in FIXTURES {
        let (kind, ids, types, reference, max_len) = longest_case(name);
        let (mut w, info) = Worker::ready(&fixtures::model_dir(name), &["--compute-dtype", "float16"]).unwrap();
        assert_eq!(info.compute_dtype, "float16");
        let (alone, busy) = alone_and_busy(&mut w, kind, &ids, &types, info.vocab_size, max_len);
        let d = max_abs_diff(&alone, &busy);
        let r = max_abs_diff(&alone, &reference);
        eprintln!("{name} (f16, {} tokens): alone vs busy batch {d:.2e}, vs reference {r:.2e}", ids.len());
        match kind {
            ModelKind::Embedding => {
                assert!(cosine(&alone, &busy) >= 0.9999 && d <= 5e-3, "{name}: alone vs busy batch differ by {d}");
                assert!(
                    cosine(&alone, &reference) >= 0.999,
                    "{name}: cosine to the reference {}",
                    cosine(&alone, &reference)
                );
            }
            ModelKind::Reranker => {
                assert!(d <= 5e-3, "{name}: alone vs busy batch scores differ by {d}");
                assert!(r <= 2e-2, "{name}: score vs reference differs by {r}");
            }
            ModelKind::Classifier => unreachable!("the fixtures checked here are embedders and rerankers"),
        }
    }
}

/// Mixed-length batches of `n` sequences of up to `max_len` tokens, in a scrambled order.
fn load_batches(vocab: u32, max_len: usize, batches: usize, n: usize) -> Vec<TokenBatch> {
    (0..batches)
        .map(|b| {
            let mut batch = TokenBatch::new();
            for i in 0..n {
                let len = 8 + ((b * 131 + i * 7919) % (max_len - 7));
                let mut ids = vec![101];
                ids.extend(filler((b * n + i) as u32 + 7, len - 2, 1000, vocab));
                ids.push(102);
                batch.push(&ids, &[]);
            }
            batch
        })
        .collect()
}

/// Polls the worker's RSS until `done(rss)` or `timeout`; returns the last value. Asks the
/// worker for its stats on every poll, as the supervisor does on each `/metrics` scrape:
/// those requests must not keep an idle worker from giving its memory back.
fn wait_rss(w: &mut Worker, timeout: Duration, done: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        w.stats().unwrap();
        let rss = rss_bytes(w.pid()).unwrap();
        if done(rss) || Instant::now() > deadline {
            return rss;
        }
        std::thread::sleep(Duration::from_millis(200)); // polling interval of a condition wait (bounded by its deadline)
    }
}

#[test]
fn worker_rss_returns_to_idle_after_load() {
    let dir = fixtures::minilm_dir().unwrap();
    let (mut w, info) = Worker::ready(&dir, &[]).unwrap();
    let pid = w.pid();
    // Idle: the worker releases memory 2 s after its last batch (here: the load's warm-up)
    // and does nothing else until a message comes, so 3 s after Ready its RSS is its idle
    // RSS. (Sleeping is the point here: the test measures what an idle worker holds.)
    std::thread::sleep(Duration::from_secs(3));
    let idle = rss_bytes(pid).unwrap();

    // Load: 12 batches of 32 mixed-length sequences up to the model's limit.
    let mut peak = idle;
    for batch in load_batches(info.vocab_size, info.max_tokens as usize, 12, 32) {
        let rows = w.embed(batch).unwrap();
        assert_eq!(rows.len(), 32);
        peak = peak.max(rss_bytes(pid).unwrap());
    }
    let stats = w.stats().unwrap();
    // After: within 20% of idle once the idle release ran (2 s after the last batch, with
    // stats requests still coming).
    let bound = idle + idle / 5;
    let after = wait_rss(&mut w, Duration::from_secs(15), |r| r <= bound);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "worker RSS: idle {:.0} MiB, peak under load {:.0} MiB, after {:.0} MiB (MLX peak {:.0} MiB, cache {:.0} MiB at the end of the load)",
        mib(idle),
        mib(peak),
        mib(after),
        mib(stats.mlx_peak_bytes),
        mib(stats.mlx_cache_bytes)
    );
    assert!(peak > idle + (16 << 20), "the load should have used memory (idle {idle}, peak {peak})");
    assert!(after <= bound, "worker RSS {:.0} MiB after the load, idle was {:.0} MiB", mib(after), mib(idle));
}
