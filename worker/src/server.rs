//! The socket loop: one connection to the supervisor, one model.
//!
//! The supervisor listens; the worker connects, says Hello, loads, says Ready (or LoadFailed
//! and exits 2), then answers frames until Shutdown or end of stream (exit 0). A broken
//! stream (closed mid-frame, garbage, another protocol version) is reported on stderr and
//! ends the worker with exit code 3: a worker must never hang on a peer it cannot
//! understand. Bad batches get an `Error` answer and the worker keeps serving, except after
//! a GPU error (exit 4): on CUDA a failed launch leaves the process's context unusable, so
//! every later batch would fail too; the supervisor restarts a worker that exits.
//!
//! Frames are read and decoded on a separate thread, so the next batch (the supervisor keeps
//! one in flight ahead) is decoded while the current one computes. The channel is bounded:
//! the reader never runs more than a couple of frames ahead.
//!
//! A yielding batch (`SupervisorMessage::Yielding`) looks into that channel after each
//! transformer layer ([`Between`]): a batch waiting there is computed whole and answered
//! before the yielding one goes on, so a short query does not wait for a long document's
//! whole forward pass (docs/worker.md, "Yielding batches").

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use interprocess::local_socket::{prelude::*, GenericFilePath, Stream};
use mlx_serve_protocol::codec::{self, CodecError};
use mlx_serve_protocol::{ErrorKind, ModelKind, Pool, SupervisorMessage, TokenBatch, WorkerMessage, PROTOCOL_VERSION};

use crate::engine::{Engine, Options};
use crate::models::Checkpoint;

/// Exit code when the model cannot be loaded (after LoadFailed was sent).
pub const EXIT_LOAD_FAILED: i32 = 2;
/// Exit code when the supervisor's stream is broken.
pub const EXIT_BROKEN_STREAM: i32 = 3;
/// Exit code after a batch failed with a GPU error (answered first).
pub const EXIT_DEVICE_ERROR: i32 = 4;

/// An MLX error from the GPU runtime rather than from the batch: CUDA's API names
/// (`cudaGraphAddKernelNode(...) failed`, `cudaPeekAtLastError() failed`, "CUDA error") or
/// Metal's command-buffer failure ("[METAL] Command buffer execution failed").
fn is_device_error(message: &str) -> bool {
    message.to_ascii_lowercase().contains("cuda") || message.contains("[METAL]")
}

/// After this long without a batch, idle memory (MLX's buffer cache, the C heap's free
/// pages) is returned to the system (`memory.rs`). Stats requests do not count as work.
const IDLE_RELEASE: Duration = Duration::from_secs(2);

enum Incoming {
    Message(SupervisorMessage),
    Eof,
    Broken(CodecError),
}

/// Connects to the supervisor at `socket`, serves `model`, returns the exit code.
pub fn run(socket: &Path, model: &Path, opts: &Options) -> Result<i32> {
    let name = socket.to_fs_name::<GenericFilePath>().with_context(|| format!("socket path {}", socket.display()))?;
    let stream = Arc::new(Stream::connect(name).with_context(|| format!("connecting to {}", socket.display()))?);
    let mut out = &*stream;
    let hello = WorkerMessage::Hello {
        protocol_version: PROTOCOL_VERSION,
        worker_version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
    };
    codec::write(&mut out, &hello).context("sending Hello")?;

    let loaded = catch_unwind(AssertUnwindSafe(|| Engine::load(model, opts)))
        .unwrap_or_else(|p| Err(anyhow::anyhow!("panic while loading: {}", panic_text(&p))));
    let engine = match loaded {
        Ok(e) => e,
        Err(e) => {
            let reason = format!("cannot load model {}: {e:#}", model.display());
            eprintln!("mlx-serve-worker: {reason}");
            let _ = codec::write(&mut out, &WorkerMessage::LoadFailed { reason });
            return Ok(EXIT_LOAD_FAILED);
        }
    };
    let info = engine.info().clone();
    eprintln!(
        "mlx-serve-worker: loaded {} ({} {}, {} → {} on {}) in {:.2}s",
        model.display(),
        info.architecture,
        info.kind.as_str(),
        info.stored_dtype,
        info.compute_dtype,
        info.device,
        info.load_seconds
    );
    codec::write(&mut out, &WorkerMessage::Ready(info)).context("sending Ready")?;

    let (tx, rx) = sync_channel::<Incoming>(2);
    let reader = Arc::clone(&stream);
    std::thread::Builder::new().name("frame-reader".into()).spawn(move || {
        let mut input = &*reader;
        loop {
            let item = match codec::read::<SupervisorMessage, _>(&mut input) {
                Ok(Some(m)) => Incoming::Message(m),
                Ok(None) => Incoming::Eof,
                Err(e) => Incoming::Broken(e),
            };
            let last = !matches!(item, Incoming::Message(ref m) if *m != SupervisorMessage::Shutdown);
            if tx.send(item).is_err() || last {
                return;
            }
        }
    })?;

    let between = Between {
        engine: &engine,
        rx: &rx,
        out: &stream,
        deferred: RefCell::new(None),
        lent: Cell::new(Duration::ZERO),
        resumed: Cell::new(Instant::now()),
        exit: Cell::new(None),
    };
    // The load itself leaves freed buffers behind: release them after the first quiet period.
    let mut last_batch = Instant::now();
    let mut idle_released = false;
    loop {
        let wait = if idle_released { IDLE_RELEASE } else { IDLE_RELEASE.saturating_sub(last_batch.elapsed()) };
        let deferred = between.deferred.take();
        let item = match deferred.map_or_else(|| rx.recv_timeout(wait), Ok) {
            Ok(item) => item,
            Err(RecvTimeoutError::Timeout) => {
                if !idle_released {
                    engine.release_idle_memory();
                    idle_released = true;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(0),
        };
        let is_batch = matches!(&item, Incoming::Message(m) if is_batch(m));
        let computing = Instant::now();
        between.begin();
        let mut reply = match item {
            Incoming::Eof => return Ok(0),
            Incoming::Broken(e) => {
                eprintln!("mlx-serve-worker: broken message stream from the supervisor ({e}); exiting");
                return Ok(EXIT_BROKEN_STREAM);
            }
            Incoming::Message(SupervisorMessage::Shutdown) => return Ok(0),
            Incoming::Message(SupervisorMessage::Stats { id }) => WorkerMessage::Stats { id, stats: engine.stats() },
            Incoming::Message(SupervisorMessage::Yielding(batch)) => compute(&engine, *batch, Some(&between)),
            Incoming::Message(batch) => compute(&engine, batch, None),
        };
        // The batches computed at its checkpoints are not its time (the supervisor's pace
        // learns from it).
        stamp_forward_time(&mut reply, computing.elapsed().saturating_sub(between.lent.get()));
        if let Err(e) = codec::write(&mut out, &reply) {
            eprintln!("mlx-serve-worker: cannot answer the supervisor ({e}); exiting");
            return Ok(EXIT_BROKEN_STREAM);
        }
        if let Some(code) = between.exit.get() {
            return Ok(code);
        }
        if let WorkerMessage::Error { kind: ErrorKind::Internal, message, .. } = &reply {
            if is_device_error(message) {
                eprintln!("mlx-serve-worker: GPU error ({message}); exiting so that a fresh process takes over");
                return Ok(EXIT_DEVICE_ERROR);
            }
        }
        if is_batch {
            // The quiet period counts from the end of the last batch.
            last_batch = Instant::now();
            idle_released = false;
        }
    }
}

/// A message that is a batch to compute (plain or yielding).
fn is_batch(m: &SupervisorMessage) -> bool {
    match m {
        SupervisorMessage::Embed { .. }
        | SupervisorMessage::Score { .. }
        | SupervisorMessage::Classify { .. }
        | SupervisorMessage::EmbedTokens { .. }
        | SupervisorMessage::EmbedPooled { .. } => true,
        SupervisorMessage::Yielding(inner) => is_batch(inner),
        SupervisorMessage::Stats { .. } | SupervisorMessage::Shutdown => false,
    }
}

/// Computes one batch message and gives its answer (an `Error` answer for a bad batch).
/// `checkpoint`: the batch yields at its layer boundaries.
fn compute(engine: &Engine, msg: SupervisorMessage, checkpoint: Option<&dyn Checkpoint>) -> WorkerMessage {
    match msg {
        SupervisorMessage::Embed { id, batch } => {
            let check = precheck(engine, ModelKind::Embedding, &batch);
            answer(id, check, || engine.embed(&batch, checkpoint).map(rows(id)))
        }
        SupervisorMessage::EmbedTokens { id, batch, outputs } => {
            let check = precheck(engine, ModelKind::Embedding, &batch).and_then(|()| {
                let has = engine.info().token_outputs;
                match (outputs.sparse && !has.sparse, outputs.colbert && !has.colbert) {
                    (true, _) => Err((ErrorKind::Unsupported, "this model has no sparse (lexical) head".into())),
                    (_, true) => Err((ErrorKind::Unsupported, "this model has no ColBERT (multi-vector) head".into())),
                    _ => Ok(()),
                }
            });
            answer(id, check, || engine.embed_tokens(id, &batch, outputs, checkpoint))
        }
        SupervisorMessage::EmbedPooled { id, batch, pools } => {
            let check = precheck(engine, ModelKind::Embedding, &batch)
                .and_then(|()| check_pools(&batch, &pools).map_err(|m| (ErrorKind::InvalidInput, m)));
            answer(id, check, || engine.embed_pooled(&batch, &pools, checkpoint).map(rows(id)))
        }
        SupervisorMessage::Classify { id, batch } => {
            let check = precheck(engine, ModelKind::Classifier, &batch);
            answer(id, check, || engine.classify(&batch, checkpoint).map(rows(id)))
        }
        SupervisorMessage::Score { id, batch } => {
            let check = precheck(engine, ModelKind::Reranker, &batch);
            answer(id, check, || {
                engine.score(&batch, checkpoint).map(|scores| WorkerMessage::Scores { id, scores, forward_us: 0 })
            })
        }
        SupervisorMessage::Yielding(inner) => compute(engine, *inner, checkpoint),
        // Only a `Yielding` wrapper brings these here: it wraps batches only.
        SupervisorMessage::Stats { id } => not_a_batch(id),
        SupervisorMessage::Shutdown => not_a_batch(0),
    }
}

/// The answer of batch `id` that is one row of `dim` floats per pool (embeddings, label
/// logits); the forward time is stamped on it afterwards.
fn rows(id: u64) -> impl FnOnce((u32, Vec<f32>)) -> WorkerMessage {
    move |(dim, data)| WorkerMessage::Embeddings { id, dim, data, forward_us: 0 }
}

fn not_a_batch(id: u64) -> WorkerMessage {
    WorkerMessage::Error { id, kind: ErrorKind::InvalidInput, message: "only a batch can yield".into() }
}

/// After a batch computed at a checkpoint, how long the checkpoint waits for the next one
/// (the supervisor sends it as it takes the answer), at most a tenth of the yielding
/// batch's last layer.
const NEXT_BATCH_GRACE: Duration = Duration::from_millis(5);

/// The checkpoint a yielding batch passes after each transformer layer: batches the
/// supervisor sent behind it and waiting in the frame channel are computed whole (never
/// yielding themselves: one level deep) and answered now, one after the other while they
/// keep coming, until they took as long as the yielding batch's own last layer: the
/// yielding batch keeps at least half of the worker, so it always finishes.
struct Between<'a> {
    engine: &'a Engine,
    rx: &'a Receiver<Incoming>,
    out: &'a Stream,
    /// A message read at a checkpoint that is not a batch (Shutdown, the end of the stream,
    /// a broken stream): the main loop takes it after the yielding batch is answered, and
    /// no checkpoint reads past it.
    deferred: RefCell<Option<Incoming>>,
    /// Time spent at the current yielding batch's checkpoints (on the batches computed
    /// there, and waiting for them).
    lent: Cell<Duration>,
    /// When the yielding batch began or last left a checkpoint.
    resumed: Cell<Instant>,
    /// The worker exits with this code once the yielding batch is answered (a batch in
    /// between met a GPU error, or the stream broke).
    exit: Cell<Option<i32>>,
}

impl Between<'_> {
    /// A yielding batch begins.
    fn begin(&self) {
        self.lent.set(Duration::ZERO);
        self.resumed.set(Instant::now());
    }

    /// Answers `item` read at a checkpoint; false when it is not for now (deferred).
    fn serve(&self, item: Incoming) -> bool {
        let started = Instant::now();
        let mut reply = match item {
            Incoming::Message(SupervisorMessage::Stats { id }) => {
                WorkerMessage::Stats { id, stats: self.engine.stats() }
            }
            Incoming::Message(m) if is_batch(&m) => compute(self.engine, m, None),
            other => {
                *self.deferred.borrow_mut() = Some(other);
                return false;
            }
        };
        stamp_forward_time(&mut reply, started.elapsed());
        if let Err(e) = codec::write(&mut &*self.out, &reply) {
            eprintln!("mlx-serve-worker: cannot answer the supervisor ({e}); exiting");
            self.exit.set(Some(EXIT_BROKEN_STREAM));
        } else if let WorkerMessage::Error { kind: ErrorKind::Internal, message, .. } = &reply {
            if is_device_error(message) {
                eprintln!("mlx-serve-worker: GPU error ({message}); exiting so that a fresh process takes over");
                self.exit.set(Some(EXIT_DEVICE_ERROR));
            }
        }
        true
    }
}

impl Checkpoint for Between<'_> {
    fn reached(&self) -> Result<()> {
        let arrived = Instant::now();
        // What the batches in between may take here: the yielding batch's own last layer.
        let share = arrived.saturating_duration_since(self.resumed.get());
        let grace = NEXT_BATCH_GRACE.min(share / 10);
        let mut served = false;
        while self.exit.get().is_none() && self.deferred.borrow().is_none() && arrived.elapsed() < share.max(grace) {
            let item = if served { self.rx.recv_timeout(grace).ok() } else { self.rx.try_recv().ok() };
            let Some(item) = item else { break };
            served = self.serve(item);
        }
        self.lent.set(self.lent.get() + arrived.elapsed());
        self.resumed.set(Instant::now());
        match self.exit.get() {
            Some(_) => anyhow::bail!("the worker is exiting (a batch computed during this one failed)"),
            None => Ok(()),
        }
    }
}

/// The pools of an `EmbedPooled` batch are within it: at least one, sequences that exist,
/// row ranges non-empty, ascending, not overlapping and inside the batch's tokens.
fn check_pools(batch: &TokenBatch, pools: &[Pool]) -> Result<(), String> {
    if pools.is_empty() {
        return Err("no pools in an EmbedPooled batch".into());
    }
    for (k, p) in pools.iter().enumerate() {
        match p {
            Pool::Sequence(i) if (*i as usize) < batch.len() => {}
            Pool::Sequence(i) => return Err(format!("pool {k}: sequence {i} is not in the batch")),
            Pool::Rows(ranges) => {
                let mut prev = 0;
                if ranges.is_empty() {
                    return Err(format!("pool {k} has no rows"));
                }
                for &(s, e) in ranges {
                    if s >= e || s < prev || e as usize > batch.tokens.len() {
                        return Err(format!("pool {k}: rows {s}..{e} are empty, out of order or outside the batch"));
                    }
                    prev = e;
                }
            }
        }
    }
    Ok(())
}

/// The request fits this model: right kind of model, valid batch.
fn precheck(engine: &Engine, wants: ModelKind, batch: &TokenBatch) -> Result<(), (ErrorKind, String)> {
    if engine.kind() != wants {
        let msg = format!(
            "this worker serves a {} model; it cannot answer a {} request",
            engine.kind().as_str(),
            wants.as_str()
        );
        return Err((ErrorKind::Unsupported, msg));
    }
    engine.validate(batch).map_err(|m| (ErrorKind::InvalidInput, m))
}

/// Runs `compute` for a checked batch, turning failures (and panics) into Error answers.
fn answer(
    id: u64,
    check: Result<(), (ErrorKind, String)>,
    compute: impl FnOnce() -> Result<WorkerMessage>,
) -> WorkerMessage {
    if let Err((kind, message)) = check {
        return WorkerMessage::Error { id, kind, message };
    }
    match catch_unwind(AssertUnwindSafe(compute)) {
        Ok(Ok(msg)) => msg,
        Ok(Err(e)) => WorkerMessage::Error { id, kind: ErrorKind::Internal, message: format!("{e:#}") },
        Err(p) => WorkerMessage::Error {
            id,
            kind: ErrorKind::Internal,
            message: format!("worker panicked: {}", panic_text(&p)),
        },
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
}

/// Puts the time the batch took on its answer (the supervisor's `worker.forward` span,
/// docs/tracing.md); other messages carry none.
fn stamp_forward_time(reply: &mut WorkerMessage, took: std::time::Duration) {
    if let WorkerMessage::Embeddings { forward_us, .. }
    | WorkerMessage::Scores { forward_us, .. }
    | WorkerMessage::TokenEmbeddings { forward_us, .. } = reply
    {
        // At least 1 µs: a computed batch took some time, and 0 reads as "not measured".
        *forward_us = (took.as_micros() as u64).max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_errors_are_told_from_batch_errors() {
        assert!(is_device_error("cudaGraphAddKernelNode(&node, graph_, NULL, 0, &params) failed: invalid argument"));
        assert!(is_device_error("cudaPeekAtLastError() failed: invalid argument"));
        assert!(is_device_error("[METAL] Command buffer execution failed: Caused GPU Timeout Error"));
        assert!(!is_device_error("sequence 0 has 600 tokens; this model accepts at most 512"));
        assert!(!is_device_error("[reshape] Cannot reshape array of size 6 into shape (4)."));
    }
}
