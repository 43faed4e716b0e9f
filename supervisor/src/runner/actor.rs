//! One model's runner: an actor task that owns the model's queue, its jobs and its worker.
//!
//! Everything arrives as an event — a message from a [`RunnerHandle`](super::RunnerHandle),
//! a worker event, a finished start, a timer — and after each one the runner checks its
//! deadlines (the watchdog on the batch being computed, a requested restart's grace) and
//! pumps: it starts a worker when work waits (`recovery.rs` decides when), and sends
//! batches while the dispatch policy says so (`batch/policy.rs`). Dispatch, answers and
//! the watchdog are in `actor/dispatch.rs`; the worker's life (start, evict, restart,
//! death, shutdown) in `actor/lifecycle.rs`.

mod dispatch;
mod lifecycle;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mlx_serve_protocol::{ErrorKind, ModelKind, SupervisorMessage, WorkerMessage, WorkerStats};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::cpu_gate::Seat;
use super::handle::{JobError, PoolRequest, RunnerError, RunnerHandle, RunnerMsg, RunnerStatus};
use super::jobs::{BatchOutput, Jobs};
use super::RunnerConfig;
use crate::batch::{Item, Limits, Pace, Queue};
use crate::telemetry::BatchTrace;
use crate::worker::{Cause, Death, StartError, Started, WorkerEvent, WorkerLink};

/// A batch sent to the worker and not yet answered.
struct SentBatch {
    items: Vec<Item>,
    sent: Instant,
    /// Its tokens: what the worker computes.
    tokens: usize,
    /// The traced requests in it, whose spans are recorded when it is answered.
    trace: BatchTrace,
    /// Sent as `Yielding`: the worker computes a batch sent behind it at its next layer
    /// boundary (`batch/policy.rs`).
    yielding: bool,
}

/// The runner's worker process, through its life.
enum Slot {
    /// None running or starting: never started, stopped, evicted, dead, or failed to start
    /// (`Runner::restart_at` then says when a start may be tried again).
    Empty,
    /// A start under way in its own task, which reports as `StartDone` with this number.
    Starting { generation: u64 },
    /// A worker that takes messages on `link` and reports on `events`.
    Running { link: Box<dyn WorkerLink>, events: mpsc::UnboundedReceiver<WorkerEvent> },
}

impl Slot {
    /// The running worker, if any.
    fn link(&self) -> Option<&dyn WorkerLink> {
        match self {
            Slot::Running { link, .. } => Some(link.as_ref()),
            _ => None,
        }
    }

    fn is_starting(&self) -> bool {
        matches!(self, Slot::Starting { .. })
    }

    fn is_empty(&self) -> bool {
        matches!(self, Slot::Empty)
    }

    /// Takes the running worker out, leaving the slot empty; a start under way stays.
    fn take(&mut self) -> Option<Box<dyn WorkerLink>> {
        match std::mem::replace(self, Slot::Empty) {
            Slot::Running { link, .. } => Some(link),
            other => {
                *self = other;
                None
            }
        }
    }
}

/// A worker start that finished (in its own task, so the runner keeps answering).
struct StartDone {
    generation: u64,
    result: Result<Started, StartError>,
    took: Duration,
}

type Waiter = oneshot::Sender<Result<(), RunnerError>>;

struct Runner {
    name: String,
    dir: PathBuf,
    kind: ModelKind,
    cfg: RunnerConfig,
    queue: Queue,
    jobs: Jobs,
    next_batch: u64,
    /// By batch id, which is also the order they were sent; the worker computes them in
    /// that order, so the first is the one being computed, except that a yielding first one
    /// lets the one behind it run at a layer boundary (its answer then comes first).
    in_flight: BTreeMap<u64, SentBatch>,
    /// When the first batch in flight began computing: when it was sent to an idle
    /// worker, or when the batch before it was answered; moved later by the time of a
    /// batch computed inside it, so that neither the pace nor the watchdog counts that.
    head_since: Instant,
    /// The worker's observed speed; kept across restarts (same model, same machine).
    pace: Pace,
    /// Batch bounds for the current worker's device (`RunnerConfig::limits` or `gpu_limits`).
    limits: Limits,
    slot: Slot,
    /// Whether the last worker computes on the CPU backend: its batches then wait while a
    /// heavy tokenization holds the CPU gate (`cpu_gate.rs`).
    on_cpu: bool,
    /// Counted at the CPU gate while a CPU worker's batch is in flight.
    seat: Seat,
    /// The gate's holders: a change wakes the loop to dispatch what the gate held.
    gate_holders: watch::Receiver<usize>,
    /// The last start's number: a start that finishes after it was superseded (the slot
    /// no longer waits for that number) is dropped.
    generation: u64,
    start_failures: u32,
    restart_at: Option<Instant>,
    load_waiters: Vec<Waiter>,
    restart_waiters: Vec<Waiter>,
    restart_requested: bool,
    /// A requested restart stops waiting for in-flight work at this time.
    restart_deadline: Option<Instant>,
    stats_waiters: HashMap<u64, oneshot::Sender<Option<WorkerStats>>>,
    queued: Arc<AtomicUsize>,
    status: Arc<Mutex<RunnerStatus>>,
    pool: mpsc::UnboundedSender<PoolRequest>,
    started_tx: mpsc::UnboundedSender<StartDone>,
}

/// Starts the runner task for the model `name` in `dir`; `pool` receives its requests.
pub fn spawn_runner(
    name: String,
    dir: PathBuf,
    kind: ModelKind,
    preload: bool,
    cfg: RunnerConfig,
    pool: mpsc::UnboundedSender<PoolRequest>,
) -> RunnerHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let status = Arc::new(Mutex::new(RunnerStatus::default()));
    let (started_tx, started_rx) = mpsc::unbounded_channel();
    let queue_bounds = (cfg.max_queue, cfg.default_priority);
    let gate = cfg.cpu_gate;
    let runner = Runner {
        name: name.clone(),
        dir,
        kind,
        // Until a worker says which device it computes on (read before `cfg` moves in).
        limits: cfg.limits,
        queue: Queue::new(cfg.aging),
        cfg,
        jobs: Jobs::default(),
        next_batch: 0,
        in_flight: BTreeMap::new(),
        head_since: Instant::now(),
        pace: Pace::default(),
        slot: Slot::Empty,
        on_cpu: false,
        seat: gate.seat(),
        gate_holders: gate.watch_holders(),
        generation: 0,
        start_failures: 0,
        restart_at: None,
        load_waiters: Vec::new(),
        restart_waiters: Vec::new(),
        restart_requested: false,
        restart_deadline: None,
        stats_waiters: HashMap::new(),
        queued: queued.clone(),
        status: status.clone(),
        pool,
        started_tx,
    };
    tokio::spawn(runner.run(rx, started_rx));
    RunnerHandle::new(name, kind, preload, tx, queued, queue_bounds, status)
}

async fn next_event(slot: &mut Slot) -> WorkerEvent {
    match slot {
        Slot::Running { events, .. } => events
            .recv()
            .await
            .unwrap_or_else(|| WorkerEvent::Died(Death::new(Cause::Unknown, "worker event stream ended"))),
        _ => std::future::pending().await,
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl Runner {
    async fn run(
        mut self,
        mut inbox: mpsc::UnboundedReceiver<RunnerMsg>,
        mut started: mpsc::UnboundedReceiver<StartDone>,
    ) {
        loop {
            let wake = self.next_wake();
            tokio::select! {
                msg = inbox.recv() => match msg {
                    Some(RunnerMsg::Shutdown(done)) => {
                        self.shutdown().await;
                        let _ = done.send(());
                        return;
                    }
                    Some(msg) => self.on_message(msg).await,
                    None => { self.shutdown().await; return; }
                },
                ev = next_event(&mut self.slot) => self.on_worker_event(ev).await,
                Some(done) = started.recv() => self.on_started(done),
                _ = sleep_until_opt(wake), if wake.is_some() => {}
                _ = self.gate_holders.changed(), if self.on_cpu => {}
            }
            self.check_deadlines().await;
            self.pump();
            self.seat.set_computing(self.on_cpu && !self.in_flight.is_empty());
            self.publish_status();
        }
    }

    /// The next time the loop must wake without an event: the next batch's cut, the
    /// watchdog, a restart's grace, or a restart back-off.
    fn next_wake(&self) -> Option<Instant> {
        [self.restart_at, self.dispatch_deadline(), self.hang_deadline(), self.restart_deadline]
            .into_iter()
            .flatten()
            .min()
    }

    async fn on_message(&mut self, msg: RunnerMsg) {
        match msg {
            RunnerMsg::Job { job, seqs, late, class, outputs, reply, trace } => {
                for item in self.jobs.add(job, seqs, late, class, outputs, reply, Instant::now()) {
                    self.queue.push(item);
                }
                if let Some(cx) = trace {
                    self.jobs.trace(job, cx);
                }
            }
            RunnerMsg::Cancel(job) => self.cancel(job),
            RunnerMsg::Load(reply) => {
                if self.slot.link().is_some() {
                    let _ = reply.send(Ok(()));
                } else {
                    // An explicit load tries now, whatever the back-off says.
                    self.load_waiters.push(reply);
                    self.restart_at = None;
                    self.start_failures = 0;
                }
            }
            RunnerMsg::Evict { force, reply } => {
                let _ = reply.send(self.evict(force).await);
            }
            RunnerMsg::Restart(reply) => {
                if self.slot.is_empty() {
                    self.load_waiters.push(reply);
                } else {
                    self.restart_requested = true;
                    self.restart_deadline.get_or_insert(Instant::now() + self.cfg.stop_grace);
                    self.restart_waiters.push(reply);
                    self.restart_if_requested().await;
                }
            }
            RunnerMsg::Stats(reply) => match self.slot.link() {
                Some(w) => {
                    // Stats ids count down from the top so they never meet batch ids.
                    let id = u64::MAX - self.next_batch;
                    self.next_batch += 1;
                    if w.send(&SupervisorMessage::Stats { id }).is_ok() {
                        self.stats_waiters.insert(id, reply);
                    } else {
                        let _ = reply.send(None);
                    }
                }
                None => {
                    let _ = reply.send(None);
                }
            },
            RunnerMsg::Shutdown(_) => unreachable!("handled in run"),
        }
    }

    async fn on_worker_event(&mut self, ev: WorkerEvent) {
        match ev {
            WorkerEvent::Message(WorkerMessage::Embeddings { id, dim, data, forward_us }) => {
                self.complete_batch(id, Some((BatchOutput::Rows { dim: dim as usize, data: &data }, forward_us)));
            }
            WorkerEvent::Message(WorkerMessage::TokenEmbeddings {
                id,
                dim,
                data,
                sparse,
                colbert_dim,
                colbert,
                forward_us,
            }) => {
                let output = BatchOutput::Tokens {
                    dim: dim as usize,
                    data: &data,
                    sparse: &sparse,
                    colbert_dim: colbert_dim as usize,
                    colbert: &colbert,
                };
                self.complete_batch(id, Some((output, forward_us)));
            }
            WorkerEvent::Message(WorkerMessage::Scores { id, scores, forward_us }) => {
                self.complete_batch(id, Some((BatchOutput::Scores(&scores), forward_us)));
            }
            WorkerEvent::Message(WorkerMessage::Stats { id, stats }) => {
                self.status.lock().unwrap().worker_stats = Some(stats.clone());
                if let Some(w) = self.stats_waiters.remove(&id) {
                    let _ = w.send(Some(stats));
                }
            }
            WorkerEvent::Message(WorkerMessage::Error { id, kind, message }) => {
                if let Some(batch) = self.complete_batch(id, None) {
                    let err = match kind {
                        ErrorKind::InvalidInput | ErrorKind::Unsupported => JobError::Invalid(message),
                        ErrorKind::Internal => JobError::WorkerFailed { model: self.name.clone(), message },
                    };
                    for item in batch.items {
                        self.fail_job(item.job, err.clone());
                    }
                }
            }
            WorkerEvent::Message(other) => {
                tracing::warn!(model = %self.name, "unexpected worker message {other:?}");
            }
            WorkerEvent::Died(death) => self.lose_worker(death).await,
        }
    }

    /// Answers `job` with `err` and drops its inputs still in the queue.
    fn fail_job(&mut self, job: u64, err: JobError) {
        self.jobs.fail(job, err);
        let removed = self.queue.retain(|i| i.job != job);
        self.queued.fetch_sub(removed, Ordering::SeqCst);
    }

    /// Fails every job with nothing in flight (a failed start, shutdown).
    fn fail_all_queued(&mut self, err: JobError) {
        for job in self.jobs.ids() {
            let in_flight = self.in_flight.values().any(|b| b.items.iter().any(|i| i.job == job));
            if !in_flight {
                self.fail_job(job, err.clone());
            }
        }
    }

    /// Forgets a job whose ticket was dropped (timeout, disconnect): its queued inputs
    /// leave the queue now and stop counting toward its bound.
    fn cancel(&mut self, job: u64) {
        if self.jobs.forget(job) {
            let removed = self.queue.retain(|i| i.job != job);
            self.queued.fetch_sub(removed, Ordering::SeqCst);
        }
    }
}
