//! One model's runner: an actor task that owns the model's queue, its jobs and its worker.
//!
//! Everything arrives as an event — a message from a [`RunnerHandle`](super::RunnerHandle),
//! a worker event, a finished start, a timer — and after each one the runner pumps: it
//! starts a worker when work waits (`recovery.rs` decides when), and sends batches while
//! the dispatch policy says so (`batch/policy.rs`). Crashes are handled in
//! `Runner::on_worker_died` with `recovery.rs`'s verdict. The worker's life (start,
//! evict, restart, crash, shutdown) is in `actor/lifecycle.rs`.

mod lifecycle;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mlx_serve_protocol::{ErrorKind, ModelKind, SupervisorMessage, TokenBatch, WorkerMessage, WorkerStats};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::handle::{JobError, PoolRequest, RunnerError, RunnerHandle, RunnerMsg, RunnerStatus};
use super::jobs::{BatchOutput, Jobs};
use super::recovery;
use super::RunnerConfig;
use crate::batch::{decide, Decision, InFlight, Item, Queue};
use crate::metrics::metrics;
use crate::worker::{StartError, Started, WorkerEvent, WorkerLink, WorkerState};

/// A batch sent to the worker and not yet answered.
struct SentBatch {
    items: Vec<Item>,
    sent: Instant,
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
    /// By batch id, which is also the order they were sent.
    in_flight: BTreeMap<u64, SentBatch>,
    worker: Option<Box<dyn WorkerLink>>,
    events: Option<mpsc::UnboundedReceiver<WorkerEvent>>,
    /// Bumped on every start, so a start that finishes after it was superseded is dropped.
    generation: u64,
    starting: bool,
    start_failures: u32,
    restart_at: Option<Instant>,
    load_waiters: Vec<Waiter>,
    restart_waiters: Vec<Waiter>,
    restart_requested: bool,
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
    let max_queue = cfg.max_queue;
    let runner = Runner {
        name: name.clone(),
        dir,
        kind,
        cfg,
        queue: Queue::default(),
        jobs: Jobs::default(),
        next_batch: 0,
        in_flight: BTreeMap::new(),
        worker: None,
        events: None,
        generation: 0,
        starting: false,
        start_failures: 0,
        restart_at: None,
        load_waiters: Vec::new(),
        restart_waiters: Vec::new(),
        restart_requested: false,
        stats_waiters: HashMap::new(),
        queued: queued.clone(),
        status: status.clone(),
        pool,
        started_tx,
    };
    tokio::spawn(runner.run(rx, started_rx));
    RunnerHandle::new(name, kind, preload, tx, queued, max_queue, status)
}

async fn next_event(events: &mut Option<mpsc::UnboundedReceiver<WorkerEvent>>) -> WorkerEvent {
    match events {
        Some(rx) => rx.recv().await.unwrap_or(WorkerEvent::Died("worker event stream ended".into())),
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl Runner {
    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<RunnerMsg>, mut started: mpsc::UnboundedReceiver<StartDone>) {
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
                ev = next_event(&mut self.events) => self.on_worker_event(ev).await,
                Some(done) = started.recv() => self.on_started(done),
                _ = sleep_until_opt(wake), if wake.is_some() => {}
            }
            self.pump();
            self.publish_status();
        }
    }

    fn in_flight(&self) -> InFlight {
        let suspect = self.in_flight.values().any(|b| b.items.iter().any(|i| i.crashes > 0));
        InFlight { batches: self.in_flight.len(), suspect }
    }

    fn dispatch_decision(&self, now: Instant) -> Decision {
        decide(&self.queue, self.in_flight(), now, self.cfg.limits, self.cfg.max_wait)
    }

    /// The next time the loop must wake without an event: a pipelined batch's max_wait
    /// deadline, or a restart back-off.
    fn next_wake(&self) -> Option<Instant> {
        let deadline = match self.worker.is_some().then(|| self.dispatch_decision(Instant::now())) {
            Some(Decision::Wait(t)) => t,
            _ => None,
        };
        match (self.restart_at, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    async fn on_message(&mut self, msg: RunnerMsg) {
        match msg {
            RunnerMsg::Job { seqs, reply } => {
                for item in self.jobs.add(seqs, reply, Instant::now()) {
                    self.queue.push(item);
                }
            }
            RunnerMsg::Load(reply) => {
                if self.worker.is_some() {
                    let _ = reply.send(Ok(()));
                } else {
                    // An explicit load tries now, whatever the back-off says.
                    self.load_waiters.push(reply);
                    self.restart_at = None;
                    self.start_failures = 0;
                }
            }
            RunnerMsg::Evict(reply) => {
                let _ = reply.send(self.evict().await);
            }
            RunnerMsg::Restart(reply) => {
                if self.worker.is_none() && !self.starting {
                    self.load_waiters.push(reply);
                } else {
                    self.restart_requested = true;
                    self.restart_waiters.push(reply);
                    self.restart_if_requested().await;
                }
            }
            RunnerMsg::Stats(reply) => match &self.worker {
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
            WorkerEvent::Message(WorkerMessage::Embeddings { id, dim, data }) => {
                self.complete_batch(id, BatchOutput::Rows { dim: dim as usize, data: &data })
            }
            WorkerEvent::Message(WorkerMessage::Scores { id, scores }) => {
                self.complete_batch(id, BatchOutput::Scores(&scores))
            }
            WorkerEvent::Message(WorkerMessage::Stats { id, stats }) => {
                self.status.lock().unwrap().worker_stats = Some(stats.clone());
                if let Some(w) = self.stats_waiters.remove(&id) {
                    let _ = w.send(Some(stats));
                }
            }
            WorkerEvent::Message(WorkerMessage::Error { id, kind, message }) => {
                if let Some(batch) = self.in_flight.remove(&id) {
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
            WorkerEvent::Died(reason) => self.on_worker_died(reason).await,
        }
        self.restart_if_requested().await;
    }

    fn complete_batch(&mut self, id: u64, output: BatchOutput<'_>) {
        let Some(batch) = self.in_flight.remove(&id) else { return };
        metrics().model_inference_seconds.with_label_values(&[&self.name]).observe(batch.sent.elapsed().as_secs_f64());
        self.start_failures = 0;
        self.jobs.scatter(&self.name, self.kind, &batch.items, output);
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

    /// Starts a worker when work waits, dispatches batches while the policy says so.
    fn pump(&mut self) {
        let now = Instant::now();
        if self.worker.is_none() {
            if !self.starting {
                let wanted = !self.queue.is_empty() || !self.load_waiters.is_empty();
                let crashed = self.status.lock().unwrap().state == WorkerState::Restarting;
                if recovery::should_start(wanted, crashed, self.restart_at, now) {
                    self.restart_at = None;
                    self.start_worker();
                }
            }
            return;
        }
        while self.dispatch_decision(now) == Decision::Send && self.dispatch() {}
    }

    /// Sends one batch; false when nothing was sent.
    fn dispatch(&mut self) -> bool {
        // Drop inputs whose requester went away (client disconnect, timeout).
        self.jobs.drop_abandoned();
        let jobs = &self.jobs;
        let dropped = self.queue.retain(|i| jobs.contains(i.job));
        self.queued.fetch_sub(dropped, Ordering::SeqCst);
        let items = self.queue.plan(self.cfg.limits);
        if items.is_empty() {
            return false;
        }
        self.queued.fetch_sub(items.len(), Ordering::SeqCst);
        let mut batch = TokenBatch::new();
        let mut real = 0u64;
        for item in &items {
            batch.push(&item.tokens.ids, &item.tokens.type_ids);
            real += item.len() as u64;
        }
        let padded = (batch.max_len() * items.len()) as u64;
        let id = self.next_batch;
        self.next_batch += 1;
        let (msg, endpoint) = match self.kind {
            ModelKind::Embedding => (SupervisorMessage::Embed { id, batch }, "embed"),
            ModelKind::Reranker => (SupervisorMessage::Score { id, batch }, "rerank"),
        };
        let m = metrics();
        m.batch_size.with_label_values(&[endpoint]).observe(items.len() as f64);
        m.tokens_total.with_label_values(&[&self.name]).inc_by(real);
        m.padded_tokens_total.with_label_values(&[&self.name]).inc_by(padded);
        self.status.lock().unwrap().batches += 1;
        let sent = self.worker.as_ref().map(|w| w.send(&msg));
        self.in_flight.insert(id, SentBatch { items, sent: Instant::now() });
        // A failed send means the worker is gone; its Died event requeues the batch.
        matches!(sent, Some(Ok(())))
    }
}
