//! A long batch yields to a short one (docs/worker.md, "Yielding batches"): a real
//! `mlx-serve-worker` running MLX is sent a long batch marked `Yielding` and, right behind
//! it, a short plain batch, over its socket as the supervisor sends them. The short one is
//! computed at the long one's next layer boundary, so its answer comes back first; both
//! answers are bitwise those of the same batches computed alone. Then the same through
//! the daemon: queries beside a late-chunked document.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use mlx_serve_protocol::{Pool, SupervisorMessage, TokenBatch, WorkerMessage};
use mlx_serve_tests::fixtures;
use mlx_serve_tests::server::{Server, ServerOptions};
use mlx_serve_tests::worker_process::Worker;
use serde_json::{json, Value};

/// Held by every test here, one at a time: they measure waits and orders that a
/// neighbouring test computing on the same cores would stretch.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Token ids of a sequence of `len` tokens: [CLS] words [SEP], the words varying with `seed`
/// (all inside MiniLM's vocabulary of 30,522).
fn sequence(len: usize, seed: u32) -> Vec<u32> {
    let mut ids = vec![101];
    ids.extend((1..len as u32 - 1).map(|k| 2000 + (k * 7919 + seed * 104_729) % 20_000));
    ids.push(102);
    ids
}

/// `windows` sequences of 256 tokens (the MiniLM fixture's window): a long document's
/// macro-windows (a second or more of forward pass on a 2-core CPU, tenths per layer).
fn long_batch(windows: u32) -> TokenBatch {
    let mut batch = TokenBatch::new();
    for w in 0..windows {
        batch.push(&sequence(256, w), &[]);
    }
    batch
}

/// Two short queries.
fn short_batch() -> TokenBatch {
    let mut batch = TokenBatch::new();
    batch.push(&sequence(9, 100), &[]);
    batch.push(&sequence(14, 101), &[]);
    batch
}

/// A late-chunked document's pools over `batch`: each window by itself, then chunks that
/// cross the windows' boundaries.
fn pools(batch: &TokenBatch) -> Vec<Pool> {
    let mut pools: Vec<Pool> = (0..batch.len() as u32).map(Pool::Sequence).collect();
    let total = batch.tokens.len() as u32;
    pools.extend((0..total / 300).map(|k| Pool::Rows(vec![(k * 300, (k + 1) * 300)])));
    pools
}

/// The id, the rows (as bits, to compare exactly) and the forward time of an answer.
fn rows(m: WorkerMessage) -> (u64, Vec<u32>, u64) {
    match m {
        WorkerMessage::Embeddings { id, data, forward_us, .. } => {
            (id, data.iter().map(|x| x.to_bits()).collect(), forward_us)
        }
        other => panic!("expected Embeddings, got {other:?}"),
    }
}

fn answer(w: &mut Worker, msg: SupervisorMessage) -> (u64, Vec<u32>, u64) {
    w.send(&msg).unwrap();
    rows(w.recv().unwrap())
}

/// Computes `long` and `short` alone, then sends `long` (yielding) and `short` (plain) back
/// to back: the short answer comes first, both bitwise what they were alone.
fn yields_to_the_short_one(w: &mut Worker, long: SupervisorMessage, short: SupervisorMessage, label: &str) {
    let (long_alone, short_alone) = (answer(w, long.clone()), answer(w, short.clone()));
    let start = Instant::now();
    w.send(&SupervisorMessage::Yielding(Box::new(long))).unwrap();
    w.send(&short).unwrap();
    let first = rows(w.recv().unwrap());
    let second = rows(w.recv().unwrap());
    let wall = start.elapsed().as_micros() as u64;
    println!(
        "{label}: answers {} then {}; forward {} µs (long) + {} µs (short), wall {wall} µs",
        first.0, second.0, second.2, first.2
    );
    assert_eq!((first.0, second.0), (short_alone.0, long_alone.0), "{label}: the short batch answers first");
    assert!(first.1 == short_alone.1, "{label}: the short rows are bitwise those computed alone");
    assert!(second.1 == long_alone.1, "{label}: the long rows are bitwise those computed alone");
    // The long batch's forward time leaves the short one's out: together they fit in the
    // wall time (counted twice, the short one's time would not).
    assert!(first.2 + second.2 <= wall, "{label}: the yielding batch's forward_us includes the nested batch");
}

#[test]
fn a_short_batch_overtakes_a_yielding_one_at_a_layer_boundary() {
    let _alone = alone();
    let (mut w, _) = Worker::ready(&fixtures::minilm_dir().unwrap(), &[]).unwrap();
    let long = long_batch(12);
    let plain = SupervisorMessage::Embed { id: 10, batch: long.clone() };
    yields_to_the_short_one(&mut w, plain, SupervisorMessage::Embed { id: 11, batch: short_batch() }, "Embed");
    // A late-chunked document (EmbedPooled) yields the same way.
    let pooled = SupervisorMessage::EmbedPooled { id: 20, pools: pools(&long), batch: long };
    yields_to_the_short_one(&mut w, pooled, SupervisorMessage::Embed { id: 21, batch: short_batch() }, "EmbedPooled");
}

/// Without anything waiting behind it, a yielding batch answers as a plain one does, and
/// a batch sent behind a finished one is not affected: answers in order.
#[test]
fn a_yielding_batch_alone_answers_as_a_plain_one() {
    let _alone = alone();
    let (mut w, _) = Worker::ready(&fixtures::minilm_dir().unwrap(), &[]).unwrap();
    let batch = long_batch(4);
    let plain = answer(&mut w, SupervisorMessage::Embed { id: 1, batch: batch.clone() });
    let wrapped = SupervisorMessage::Yielding(Box::new(SupervisorMessage::Embed { id: 2, batch }));
    let yielded = answer(&mut w, wrapped);
    assert_eq!(yielded.0, 2);
    assert!(yielded.1 == plain.1, "bitwise the same rows");
    // Stats and Shutdown read at a checkpoint wait for the yielding batch: Shutdown still
    // answers what was received first.
    w.send(&SupervisorMessage::Yielding(Box::new(SupervisorMessage::Embed { id: 3, batch: long_batch(8) }))).unwrap();
    w.send(&SupervisorMessage::Stats { id: 4 }).unwrap();
    w.send(&SupervisorMessage::Shutdown).unwrap();
    let mut ids = Vec::new();
    while let Ok(m) = w.recv() {
        ids.push(match m {
            WorkerMessage::Embeddings { id, .. } | WorkerMessage::Stats { id, .. } => id,
            other => panic!("unexpected {other:?}"),
        });
    }
    assert_eq!(ids, vec![4, 3], "Stats answered at a layer boundary, the batch before Shutdown");
    assert_eq!(w.wait_exit(Duration::from_secs(20)).and_then(|s| s.code()), Some(0));
}

/// On MLX's kernels (float16 on the CPU) too: the row slices and the checkpoints keep the
/// answers bitwise those of the batches computed alone.
#[test]
fn a_yielding_batch_in_float16_answers_bitwise_as_alone() {
    let _alone = alone();
    let (mut w, info) = Worker::ready(&fixtures::minilm_dir().unwrap(), &["--compute-dtype", "float16"]).unwrap();
    assert_eq!(info.compute_dtype, "float16");
    let long = long_batch(12);
    let plain = SupervisorMessage::Embed { id: 30, batch: long.clone() };
    yields_to_the_short_one(&mut w, plain, SupervisorMessage::Embed { id: 31, batch: short_batch() }, "float16");
}

/// The grain is finer than a layer (docs/worker.md, "Yielding batches"): a short batch sent
/// at a random moment while a long one computes waits for the next checkpoint, a row slice
/// (~100 ms of compute) or one group of attention tasks away, not for the end of the
/// layer. With one checkpoint per layer the median wait is half a layer.
#[test]
fn a_short_batch_waits_for_a_slice_not_a_layer() {
    let _alone = alone();
    const LAYERS: u64 = 6; // all-MiniLM-L6-v2
    let (mut w, _) = Worker::ready(&fixtures::minilm_dir().unwrap(), &[]).unwrap();
    // Long enough that a layer is several slices (>= 400 ms) on the machine at hand.
    let (mut windows, mut layer_us) = (12, 0);
    while windows <= 96 {
        let alone = answer(&mut w, SupervisorMessage::Embed { id: 1, batch: long_batch(windows) });
        layer_us = alone.2 / LAYERS;
        if layer_us >= 400_000 {
            break;
        }
        windows *= 2;
    }
    if layer_us < 400_000 {
        println!("skipped: a layer of {windows} windows takes {layer_us} µs here, no longer than a few slices");
        return;
    }
    let waits = short_waits(&mut w, long_batch(windows), short_batch);
    let (median, count) = (waits[waits.len() / 2], waits.len());
    println!("{windows} windows, a layer {layer_us} µs: {count} short batches waited median {median} µs, {waits:?}");
    assert!(count >= 2 * LAYERS as usize, "{count} short batches beside {LAYERS} layers");
    assert!(median < layer_us / 3, "median wait {median} µs against a layer of {layer_us} µs: the grain is a layer");
}

/// Inside one long sequence too (issue 27: an 8k-token window must not stall the batcher):
/// tiny-modernbert-long's first layer attends globally, so one 8,192-token sequence's
/// forward pass is mostly that layer's attention, one piece of work per sequence before it
/// was cut into groups of (query tile, head) tasks with a checkpoint before each. A short
/// batch sent at a random moment waits for a group, not for the rest of that attention.
#[test]
fn a_short_batch_waits_for_a_piece_of_one_long_sequences_attention() {
    let _alone = alone();
    let (mut w, info) = Worker::ready(&fixtures::model_dir("tiny-modernbert-long"), &[]).unwrap();
    assert_eq!(info.max_tokens, 8192);
    // Ids inside the fixture's vocabulary of 1,000: [CLS]=2 ... [SEP]=3.
    let ids = |len: usize, seed: usize| -> Vec<u32> {
        let mut ids = vec![2];
        ids.extend((1..len - 1).map(|k| 5 + ((k * 7919 + seed * 104_729) % 990) as u32));
        ids.push(3);
        ids
    };
    let mut long = TokenBatch::new();
    long.push(&ids(8192, 1), &[]);
    let short = || {
        let mut batch = TokenBatch::new();
        batch.push(&ids(9, 2), &[]);
        batch
    };
    let (_, _, alone_us) = answer(&mut w, SupervisorMessage::Embed { id: 1, batch: long.clone() });
    let waits = short_waits(&mut w, long, short);
    let (median, count) = (waits[waits.len() / 2], waits.len());
    println!(
        "one 8,192-token sequence, {alone_us} µs alone: {count} short batches waited median {median} µs, {waits:?}"
    );
    assert!(count >= 4, "{count} short batches beside the long one");
    assert!(median < alone_us / 4, "median wait {median} µs against {alone_us} µs alone: the attention is one piece");
}

/// Sends `long` as a yielding batch, then a `short()` batch at pseudo-random moments until
/// the long one is answered; returns how long each short batch that came in before that
/// waited for its answer (µs, sorted).
fn short_waits(w: &mut Worker, long: TokenBatch, short: impl Fn() -> TokenBatch) -> Vec<u64> {
    w.send(&SupervisorMessage::Yielding(Box::new(SupervisorMessage::Embed { id: 2, batch: long }))).unwrap();
    let (mut waits, mut long_done, mut id) = (Vec::new(), false, 100);
    while !long_done {
        // Pseudo-random moments, longer than the checkpoint's wait for a next batch (5 ms).
        std::thread::sleep(Duration::from_millis(20 + (id * 37 % 41)));
        id += 1;
        let sent = Instant::now();
        w.send(&SupervisorMessage::Embed { id, batch: short() }).unwrap();
        loop {
            let (got, _, _) = rows(w.recv().unwrap());
            if got == 2 {
                long_done = true;
            } else {
                assert_eq!(got, id);
                // The batches that came in after the long one finished did not wait for it.
                if !long_done {
                    waits.push(sent.elapsed().as_micros() as u64);
                }
                break;
            }
        }
    }
    waits.sort_unstable();
    if waits.is_empty() {
        waits.push(0);
    }
    waits
}

/// The runner marks a late-chunked document's batch as yielding and sends queries that
/// arrive while it computes right behind it: over HTTP, through the real daemon, queries
/// sent while the document computes are answered before it, each as it is alone, and the
/// document's vectors are exactly those it gets alone.
#[test]
fn queries_beside_a_late_chunked_document_answer_first_and_right() {
    let _alone = alone();
    const MINILM: &str = "all-MiniLM-L6-v2";
    // No embedding cache: the second round must be computed again.
    let config = "embedding_cache:\n  memory_mb: 0\n".to_string();
    let server = Server::start(ServerOptions { models: vec![MINILM], config: Some(config), ..Default::default() });
    let doc = document(40, 150);
    let doc_request = json!({"model": MINILM, "input": [doc], "late_chunking": {"separator": "\n\n"}});
    let queries = ["how do rivers form", "the old mill by the bridge", "what is late chunking", "cheap flights"];
    let query = |q: &str| json!({"model": MINILM, "input": q});
    let (status, doc_alone) = server.post("/v1/embeddings", &doc_request);
    assert_eq!(status, 200, "{doc_alone}");
    let windows = doc_alone["data"][0]["chunks"].as_u64().unwrap_or(1);
    assert!(windows >= 8, "the document spans {windows} macro-windows: long enough to see it yield");
    let alone: Vec<Value> = queries.iter().map(|q| server.post("/v1/embeddings", &query(q)).1).collect();

    let (doc_together, doc_done, answered) = std::thread::scope(|s| {
        let document = s.spawn(|| {
            let (status, body) = server.post("/v1/embeddings", &doc_request);
            assert_eq!(status, 200, "{body}");
            (body, Instant::now())
        });
        // Long enough for the document to be computing (it takes seconds), not to finish.
        std::thread::sleep(Duration::from_millis(500));
        let asked: Vec<_> = queries
            .iter()
            .map(|q| {
                let body = query(q);
                let server = &server;
                s.spawn(move || {
                    let (status, body) = server.post("/v1/embeddings", &body);
                    assert_eq!(status, 200, "{body}");
                    (body, Instant::now())
                })
            })
            .collect();
        let answered: Vec<(Value, Instant)> = asked.into_iter().map(|t| t.join().unwrap()).collect();
        let (body, done) = document.join().unwrap();
        (body, done, answered)
    });
    assert_eq!(doc_together["data"], doc_alone["data"], "the document's vectors are those it gets alone");
    for (k, ((body, done), want)) in answered.iter().zip(&alone).enumerate() {
        let c = fixtures::cosine(&floats(&body["data"][0]["embedding"]), &floats(&want["data"][0]["embedding"]));
        println!("query {k}: 1 - cosine {:.1e}, answered {:?} before the document", 1.0 - c, doc_done - *done);
        assert!(c >= 0.99999, "query {k}: cosine {c} against its answer alone");
        assert!(*done < doc_done, "query {k} waited for the whole document");
    }
}

/// A document of `paragraphs` paragraphs of `words` words, separated by blank lines.
fn document(paragraphs: usize, words: usize) -> String {
    const WORDS: [&str; 16] = [
        "river", "mill", "stone", "bridge", "market", "winter", "harvest", "lantern", "valley", "letter", "garden",
        "engine", "story", "window", "forest", "music",
    ];
    (0..paragraphs)
        .map(|p| (0..words).map(|w| WORDS[(p * 31 + w * 7 + w / 3) % WORDS.len()]).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap_or_else(|| panic!("not a vector: {v}")).iter().map(|x| x.as_f64().unwrap() as f32).collect()
}
