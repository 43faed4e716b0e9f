//! The runner's interface: [`RunnerHandle`], what requests and the pool hold, the
//! messages it turns into, what a job answers, and what the runner tells the pool.
//!
//! Requests submit jobs (their tokenized inputs) and await a [`JobTicket`]; the pool and
//! the control socket send load / evict / restart. The queue bound is enforced here, in
//! the caller's task, so an overloaded model answers 429 without touching its runner. A
//! ticket dropped unanswered (the request timed out, its client went away) tells the
//! runner, which takes the job's inputs out of the queue at once, so they stop counting
//! toward the bound and never reach the worker.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use mlx_serve_protocol::{ModelInfo, ModelKind, TokenOutputs, WorkerStats};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::batch::LatePools;
use crate::metrics::metrics;
use crate::telemetry::JobTrace;
use crate::tokenize::Tokens;
use crate::worker::{StartError, WorkerState};

/// Per chunk of a late-chunked document, its token rows: half-open ranges counted across
/// the document's windows laid end to end.
pub type ChunkRows = Vec<Vec<(u32, u32)>>;

/// A finished job: one row per input, or one score per input.
#[derive(Debug, PartialEq)]
pub enum JobOutput {
    /// `n × dim` row-major.
    Rows {
        dim: usize,
        data: Vec<f32>,
    },
    Scores(Vec<f32>),
    /// Rows plus the per-token outputs the job asked for.
    Tokens(TokenRows),
}

/// Embedding rows with bge-m3's per-token outputs, per input in input order.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRows {
    /// `n × dim` row-major.
    pub dim: usize,
    pub data: Vec<f32>,
    /// Per input, (token id, weight) ascending by id; empty when not asked.
    pub sparse: Vec<Vec<(u32, f32)>>,
    pub colbert_dim: usize,
    /// Per input, `tokens - 1 × colbert_dim` row-major; empty when not asked.
    pub colbert: Vec<Vec<f32>>,
}

/// Why a job got no output. The API maps each to its status (`api/error.rs`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The worker refused the input (out-of-range ids, unsupported): the client's fault.
    #[error("{0}")]
    Invalid(String),
    /// The worker failed on the batch for its own reasons.
    #[error("model {model} failed: {message}")]
    WorkerFailed { model: String, message: String },
    /// The input was being computed during two worker deaths that implicate it (crashes,
    /// hangs): probably what kills the worker. `reason` is the last death's cause.
    #[error(
        "input {index} was being processed when the model worker crashed twice ({reason}); it was not retried again"
    )]
    Poisoned { index: u32, reason: String },
    /// The model cannot serve the job now: its worker was stopped by the operator, or died
    /// too many times while the job's inputs were in flight (`runner/recovery.rs`).
    #[error("model {model} is unavailable: {reason}")]
    Unavailable { model: String, reason: String },
    /// The worker cannot start; the reason is the worker's.
    #[error("model {model} failed to load: {reason}")]
    LoadFailed { model: String, reason: StartError },
    #[error("model {model} has {queued} inputs queued (limit {limit}); retry shortly")]
    Overloaded { model: String, queued: usize, limit: usize },
    #[error("server is shutting down")]
    ShuttingDown,
}

pub type JobResult = Result<JobOutput, JobError>;

/// Why load / evict / restart did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunnerError {
    #[error("model {0} has work queued or in flight (`ctl evict --force` stops it anyway, failing that work)")]
    Busy(String),
    #[error("model {0} is not loaded")]
    NotLoaded(String),
    #[error("model {model} failed to load: {reason}")]
    LoadFailed { model: String, reason: StartError },
    #[error("runner stopped")]
    Stopped,
}

/// What `ctl workers`, `/api/ps` and the pool read about a runner.
#[derive(Debug, Clone)]
pub struct RunnerStatus {
    pub state: WorkerState,
    pub pid: Option<u32>,
    pub started_at: Option<Instant>,
    pub started_wall: Option<SystemTime>,
    pub restarts: u32,
    pub batches: u64,
    /// Batches sent to the worker and not yet answered.
    pub in_flight: usize,
    pub last_used: Instant,
    pub info: Option<ModelInfo>,
    pub last_error: Option<String>,
    pub worker_stats: Option<WorkerStats>,
}

impl Default for RunnerStatus {
    fn default() -> RunnerStatus {
        RunnerStatus {
            state: WorkerState::Stopped,
            pid: None,
            started_at: None,
            started_wall: None,
            restarts: 0,
            batches: 0,
            in_flight: 0,
            last_used: Instant::now(),
            info: None,
            last_error: None,
            worker_stats: None,
        }
    }
}

/// Where a job's inputs stand in the queue (`batch/order.rs`): its priority (lower runs
/// first) and who sent it (clients take turns).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobClass {
    pub priority: i32,
    /// A digest of the client's API key; 0 for clients without one.
    pub client: u64,
}

/// What the runner's inbox carries.
pub enum RunnerMsg {
    Job {
        job: u64,
        seqs: Vec<Tokens>,
        /// Empty, or per input a late-chunked document's pools and further windows
        /// (`seqs` then holds each document's first window).
        late: Vec<LatePools>,
        class: JobClass,
        outputs: TokenOutputs,
        reply: oneshot::Sender<JobResult>,
        /// The request's trace, when traced (`telemetry/`).
        trace: Option<JobTrace>,
    },
    /// The job's ticket was dropped unanswered: forget it and its queued inputs.
    Cancel(u64),
    /// Start the worker now (preload, `ctl load`); answers when ready or failed.
    Load(oneshot::Sender<Result<(), RunnerError>>),
    /// Stop the worker if nothing is queued or in flight; with `force`, stop it anyway and
    /// answer that work as unavailable.
    Evict {
        force: bool,
        reply: oneshot::Sender<Result<(), RunnerError>>,
    },
    /// Stop and start the worker (waits a grace period for in-flight work).
    Restart(oneshot::Sender<Result<(), RunnerError>>),
    Stats(oneshot::Sender<Option<WorkerStats>>),
    Shutdown(oneshot::Sender<()>),
}

/// Requests from runners to the pool.
pub enum PoolRequest {
    /// A worker of `kind` is about to start: evict others to respect the per-type limit.
    MakeRoom { kind: ModelKind, name: String, reply: oneshot::Sender<()> },
}

/// How long `/metrics` and the memory sweep wait for a worker's own figures before they
/// take the last ones it gave ([`RunnerHandle::stats_within`]).
pub const STATS_WAIT: Duration = Duration::from_millis(200);

/// How everyone else talks to a model's runner. Cheap to clone.
#[derive(Clone)]
pub struct RunnerHandle {
    pub name: String,
    pub kind: ModelKind,
    /// Preloaded models stay through TTL sweeps and are evicted last. Set at creation
    /// when `models.preload` names the store folder, or later by the preload task (which
    /// may only know the model's alias until its download finished).
    preloaded: Arc<AtomicBool>,
    tx: mpsc::UnboundedSender<RunnerMsg>,
    /// Job ids, given out here so a ticket knows its own.
    next_job: Arc<AtomicU64>,
    /// Inputs queued and not yet sent (shared with the runner, which decrements it).
    queued: Arc<AtomicUsize>,
    max_queue: usize,
    /// Bulk work (a priority worse than this) may fill only [`bulk_queue_limit`] of the
    /// queue, so a query always finds room beside a bulk ingest that fills it.
    default_priority: i32,
    /// Written by the runner after every event; read here as snapshots ([`RunnerHandle::status`]).
    pub(super) status: Arc<Mutex<RunnerStatus>>,
}

/// How much of `batch.max_queue_size` bulk work may fill: all but an eighth, which stays
/// for work at the default priority or better. Without it, 256 bulk clients sending 64
/// passages each kept a 4,096-input queue full, and a query arriving between two of their
/// requests got a 429 (the H100 run of bench/priority_under_bulk.py, 2026-12-06).
pub fn bulk_queue_limit(max_queue: usize) -> usize {
    (max_queue - max_queue / 8).max(1)
}

impl RunnerHandle {
    pub(super) fn new(
        name: String,
        kind: ModelKind,
        preloaded: bool,
        tx: mpsc::UnboundedSender<RunnerMsg>,
        queued: Arc<AtomicUsize>,
        (max_queue, default_priority): (usize, i32),
        status: Arc<Mutex<RunnerStatus>>,
    ) -> RunnerHandle {
        let next_job = Arc::default();
        let preloaded = Arc::new(preloaded.into());
        RunnerHandle { name, kind, preloaded, tx, next_job, queued, max_queue, default_priority, status }
    }

    /// Queues a job; refuses with `Overloaded` past the queue bound (a job larger than
    /// the bound is still taken when nothing else waits). Bulk jobs meet the bound an
    /// eighth earlier ([`bulk_queue_limit`]).
    pub fn submit(&self, seqs: Vec<Tokens>) -> Result<JobTicket, JobError> {
        self.submit_as(seqs, JobClass::default(), TokenOutputs::default())
    }

    /// [`RunnerHandle::submit`] at a priority and for a client, asking an embedding model
    /// for per-token outputs too.
    pub fn submit_as(&self, seqs: Vec<Tokens>, class: JobClass, outputs: TokenOutputs) -> Result<JobTicket, JobError> {
        self.submit_job(seqs, Vec::new(), class, outputs)
    }

    /// Queues late-chunked documents (docs/long-documents.md), each one queue item (its
    /// macro-windows travel in one batch): `docs` are each document's windows with its
    /// special tokens, and per chunk its token rows counted across those windows. The
    /// answer holds, per document in order, one row per window (the model's own pooling
    /// of it) and then one per chunk.
    pub fn submit_late(&self, docs: Vec<(Vec<Tokens>, ChunkRows)>, class: JobClass) -> Result<JobTicket, JobError> {
        let mut seqs = Vec::with_capacity(docs.len());
        let mut late = Vec::with_capacity(docs.len());
        for (windows, chunks) in docs {
            let mut windows = windows.into_iter();
            seqs.push(windows.next().unwrap_or_default());
            late.push(LatePools { more: windows.collect(), chunks });
        }
        self.submit_job(seqs, late, class, TokenOutputs::default())
    }

    fn submit_job(
        &self,
        seqs: Vec<Tokens>,
        late: Vec<LatePools>,
        class: JobClass,
        outputs: TokenOutputs,
    ) -> Result<JobTicket, JobError> {
        let n = seqs.len();
        let limit =
            if class.priority > self.default_priority { bulk_queue_limit(self.max_queue) } else { self.max_queue };
        let before = self.queued.fetch_add(n, Ordering::SeqCst);
        if before + n > limit && before > 0 {
            self.queued.fetch_sub(n, Ordering::SeqCst);
            return Err(JobError::Overloaded { model: self.name.clone(), queued: before, limit });
        }
        let hit = matches!(self.state(), WorkerState::Ready | WorkerState::Busy);
        let counter = if hit { &metrics().cache_hits_total } else { &metrics().cache_misses_total };
        counter.with_label_values(&[self.kind.as_str()]).inc();
        let (reply, rx) = oneshot::channel();
        self.status.lock().unwrap().last_used = Instant::now();
        let job = self.next_job.fetch_add(1, Ordering::Relaxed);
        // Called inside the request's span: its batch spans go into the request's trace.
        let trace = crate::telemetry::current_context();
        if self.tx.send(RunnerMsg::Job { job, seqs, late, class, outputs, reply, trace }).is_err() {
            self.queued.fetch_sub(n, Ordering::SeqCst);
            return Err(JobError::ShuttingDown);
        }
        Ok(JobTicket { rx, job, runner: self.tx.clone(), answered: false })
    }

    pub fn is_preloaded(&self) -> bool {
        self.preloaded.load(Ordering::SeqCst)
    }

    pub fn mark_preloaded(&self) {
        self.preloaded.store(true, Ordering::SeqCst);
    }

    /// Inputs waiting in the queue.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    pub fn state(&self) -> WorkerState {
        self.status.lock().unwrap().state
    }

    /// The worker's state and figures as of the runner's last event.
    pub fn status(&self) -> RunnerStatus {
        self.status.lock().unwrap().clone()
    }

    /// When a request last came for this model.
    pub fn last_used(&self) -> Instant {
        self.status.lock().unwrap().last_used
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> RunnerMsg) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).ok()?;
        rx.await.ok()
    }

    pub async fn load(&self) -> Result<(), RunnerError> {
        self.ask(RunnerMsg::Load).await.unwrap_or(Err(RunnerError::Stopped))
    }

    /// Stops the worker to free its memory; refused while it has work.
    pub async fn evict(&self) -> Result<(), RunnerError> {
        self.ask(|reply| RunnerMsg::Evict { force: false, reply }).await.unwrap_or(Err(RunnerError::Stopped))
    }

    /// Stops the worker even with work queued or in flight (a hung worker, say); that work
    /// is answered as unavailable.
    pub async fn force_evict(&self) -> Result<(), RunnerError> {
        self.ask(|reply| RunnerMsg::Evict { force: true, reply }).await.unwrap_or(Err(RunnerError::Stopped))
    }

    pub async fn restart(&self) -> Result<(), RunnerError> {
        self.ask(RunnerMsg::Restart).await.unwrap_or(Err(RunnerError::Stopped))
    }

    /// The worker's memory figures, when it answers.
    pub async fn stats(&self) -> Option<WorkerStats> {
        self.ask(RunnerMsg::Stats).await.flatten()
    }

    /// The worker's memory figures as of now if it answers within `wait`, else the last ones
    /// it gave: it answers between forwards, and one forward of a long document takes
    /// seconds, which must neither hold up `/metrics` nor make a busy worker's memory read
    /// as zero to the memory sweep. None while no worker runs.
    pub async fn stats_within(&self, wait: Duration) -> Option<WorkerStats> {
        if !self.is_loaded() {
            return None;
        }
        match tokio::time::timeout(wait, self.stats()).await {
            Ok(Some(fresh)) => Some(fresh),
            _ => {
                let last = self.status.lock().unwrap().worker_stats.clone();
                last.filter(|_| self.is_loaded())
            }
        }
    }

    /// Finishes what is in flight, answers the rest as unavailable, stops the worker.
    pub async fn shutdown(&self) {
        let _ = self.ask(RunnerMsg::Shutdown).await;
    }

    /// True while a worker process exists or is starting.
    pub fn is_loaded(&self) -> bool {
        self.state().is_loaded()
    }

    /// Nothing queued and nothing in flight.
    pub fn is_idle(&self) -> bool {
        self.queued() == 0 && self.status.lock().unwrap().in_flight == 0
    }
}

/// A submitted job's answer, to be awaited. Dropping it unanswered cancels the job: the
/// runner takes its inputs out of the queue (they stop counting toward the queue bound) and
/// ignores rows computed for it.
pub struct JobTicket {
    rx: oneshot::Receiver<JobResult>,
    job: u64,
    runner: mpsc::UnboundedSender<RunnerMsg>,
    answered: bool,
}

impl Future for JobTicket {
    /// `Err` when the runner stopped without answering.
    type Output = Result<JobResult, oneshot::error::RecvError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let polled = Pin::new(&mut self.rx).poll(cx);
        if polled.is_ready() {
            self.answered = true;
        }
        polled
    }
}

impl Drop for JobTicket {
    fn drop(&mut self) {
        if !self.answered {
            let _ = self.runner.send(RunnerMsg::Cancel(self.job));
        }
    }
}
