//! Late-chunked documents through the runner (docs/long-documents.md) with the fake
//! worker, which answers `EmbedPooled` row by row (`worker/fake.rs`): a document is one
//! queue item whose macro-windows ride in one batch beside ordinary inputs, its job gets
//! one row per window then one per chunk, and it is retried whole after a crash and
//! dropped when its requester goes away, as every input is.

use mlx_serve_protocol::TokenOutputs;

use super::*;
use crate::runner::JobClass;

/// A document of two windows (first tokens 40 and 50, 6 and 4 tokens) with a chunk in
/// each window and one across them.
fn document() -> (Vec<Tokens>, Vec<Vec<(u32, u32)>>) {
    let mut w2 = input(50, 4);
    w2.ids[1] = 51;
    (vec![input(40, 6), w2], vec![vec![(1, 3)], vec![(5, 6), (7, 8)], vec![(7, 9)]])
}

/// The rows the fake answers for [`document`]: each window `[first, length]`, each chunk
/// `[its first row's token, its rows]`.
fn document_rows() -> Vec<f32> {
    vec![40.0, 6.0, 50.0, 4.0, 1.0, 2.0, 1.0, 2.0, 51.0, 2.0]
}

#[tokio::test(start_paused = true)]
async fn a_document_rides_in_one_batch_beside_ordinary_inputs() {
    let gate = Arc::new(Semaphore::new(0));
    let (h, fake) = runner("late", Script { gate: Some(gate.clone()), ..Default::default() });
    let busy = submit(&h, &[1]);
    settle().await;
    let doc = h.submit_late(vec![document()], JobClass::default()).expect("queued");
    let plain = submit(&h, &[7, 8]);
    settle().await;
    assert_eq!(h.queued(), 3, "a document is one queue item, its windows with it");
    gate.add_permits(3);
    let out = within(Duration::from_secs(1), doc).await.unwrap().unwrap();
    assert_eq!(out, JobOutput::Rows { dim: 2, data: document_rows() });
    assert_eq!(within(Duration::from_secs(1), plain).await.unwrap().unwrap(), rows(&[7, 8]));
    busy.await.unwrap().unwrap();
    // One batch: the two short inputs first (sorted by length), then both windows.
    assert_eq!(fake.batches(), [vec![1], vec![7, 8, 40, 50]]);
}

#[tokio::test(start_paused = true)]
async fn documents_of_one_request_keep_their_rows_apart() {
    let (h, _fake) = runner("late-two", Script::default());
    let one = (vec![input(60, 3)], vec![vec![(1, 2)]]);
    let out = h.submit_late(vec![document(), one], JobClass::default()).unwrap().await.unwrap().unwrap();
    let mut want = document_rows();
    want.extend([60.0, 3.0, 1.0, 1.0]);
    assert_eq!(out, JobOutput::Rows { dim: 2, data: want });
}

#[tokio::test(start_paused = true)]
async fn a_crash_retries_the_whole_document() {
    let (h, fake) = runner("late-crash", Script { crash_on_batch: Some(1), ..Default::default() });
    let doc = h.submit_late(vec![document()], JobClass::default()).unwrap();
    let out = within(Duration::from_secs(60), doc).await.unwrap().unwrap();
    assert_eq!(out, JobOutput::Rows { dim: 2, data: document_rows() });
    assert_eq!(fake.batches(), [vec![40, 50], vec![40, 50]], "sent whole again, alone as a suspect");
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_document_never_reaches_the_worker() {
    let gate = Arc::new(Semaphore::new(0));
    let (h, fake) = runner("late-cancel", Script { gate: Some(gate.clone()), ..Default::default() });
    let busy = submit(&h, &[1]);
    settle().await;
    drop(h.submit_late(vec![document()], JobClass::default()).unwrap());
    settle().await;
    assert_eq!(h.queued(), 0);
    gate.add_permits(1);
    busy.await.unwrap().unwrap();
    settle().await;
    assert_eq!(fake.batches(), [vec![1]]);
}

/// A batch is one message: per-token outputs and late-chunked documents go in separate
/// batches, both answered.
#[tokio::test(start_paused = true)]
async fn documents_do_not_share_a_batch_with_per_token_outputs() {
    let gate = Arc::new(Semaphore::new(0));
    let (h, fake) = runner("late-sparse", Script { gate: Some(gate.clone()), ..Default::default() });
    let busy = submit(&h, &[1]);
    settle().await;
    let sparse = TokenOutputs { sparse: true, colbert: false };
    let tokens = h.submit_as(vec![input(9, 3)], JobClass::default(), sparse).unwrap();
    let doc = h.submit_late(vec![document()], JobClass::default()).unwrap();
    settle().await;
    gate.add_permits(3);
    let out = within(Duration::from_secs(1), doc).await.unwrap().unwrap();
    assert_eq!(out, JobOutput::Rows { dim: 2, data: document_rows() });
    // The fake answers per-token batches as plain rows, which a sparse job refuses; what
    // matters here is which batches were cut.
    let _ = within(Duration::from_secs(1), tokens).await;
    busy.await.unwrap().unwrap();
    assert_eq!(fake.batches(), [vec![1], vec![9], vec![40, 50]]);
}
