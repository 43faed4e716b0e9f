//! One model's runner: an actor task that owns the model's queue and its worker process.
//!
//! Everyone else talks to it through [`RunnerHandle`]: requests submit jobs (their
//! tokenized inputs) and await a oneshot answer; the pool sends load/evict/restart.
//!
//! Dispatch policy (DESIGN §2.4): work-conserving and pipelined. An idle worker gets what
//! is queued at once. While it computes, at most one more batch is sent ahead, and only
//! when a full batch is waiting or the oldest item has waited `max_wait_ms`; otherwise the
//! queue keeps filling and is cut when the worker answers. A worker crash puts its
//! in-flight items back at the head of the queue; an item that was in flight during two
//! crashes fails alone with a 500 (it is probably what kills the worker).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use mlx_serve_protocol::{ErrorKind, ModelInfo, ModelKind, SupervisorMessage, TokenBatch, WorkerMessage, WorkerStats};
use tokio::sync::{mpsc, oneshot};

use crate::batcher::{Item, Limits, Queue};
use crate::metrics::metrics;
use crate::tokenize::Tokens;
use crate::worker::{WorkerEvent, WorkerOptions, WorkerProcess};

/// Batches sent to a worker and not yet answered: one computing, one waiting.
const PIPELINE_DEPTH: usize = 2;
/// Cap on the exponent of the start back-off.
const MAX_START_FAILURES: u32 = 6;

#[derive(Debug)]
pub enum JobOutput {
    /// `n × dim` row-major.
    Rows { dim: usize, data: Vec<f32> },
    Scores(Vec<f32>),
}

#[derive(Debug, Clone)]
pub enum JobError {
    Invalid(String),
    Internal(String),
    Unavailable(String),
    Overloaded(String),
}

pub type JobResult = Result<JobOutput, JobError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// No process (never started, or evicted).
    Stopped,
    Starting,
    Ready,
    Busy,
    /// Crashed; waiting out the back-off before the restart.
    Restarting,
    /// Stopping (evict or shutdown).
    Draining,
    /// The last start failed; the next request tries again.
    Failed,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Stopped => "stopped",
            WorkerState::Starting => "starting",
            WorkerState::Ready => "ready",
            WorkerState::Busy => "busy",
            WorkerState::Restarting => "restarting",
            WorkerState::Draining => "draining",
            WorkerState::Failed => "failed",
        }
    }
    pub const ALL: [WorkerState; 7] = [
        WorkerState::Stopped,
        WorkerState::Starting,
        WorkerState::Ready,
        WorkerState::Busy,
        WorkerState::Restarting,
        WorkerState::Draining,
        WorkerState::Failed,
    ];
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
    pub in_flight: usize,
    pub last_used: Instant,
    pub info: Option<ModelInfo>,
    pub last_error: Option<String>,
    pub worker_stats: Option<WorkerStats>,
}

pub enum RunnerMsg {
    Job { seqs: Vec<Tokens>, reply: oneshot::Sender<JobResult> },
    /// Start the worker now (preload, `ctl load`); answers when ready or failed.
    Load(oneshot::Sender<Result<(), String>>),
    /// Stop the worker if nothing is queued or in flight.
    Evict(oneshot::Sender<Result<(), String>>),
    /// Stop and start the worker (waits for in-flight work).
    Restart(oneshot::Sender<Result<(), String>>),
    Stats(oneshot::Sender<Option<WorkerStats>>),
    Shutdown(oneshot::Sender<()>),
}

/// Requests from runners to the pool.
pub enum PoolRequest {
    /// A worker of `kind` is about to start: evict others to respect the per-type limit.
    MakeRoom { kind: ModelKind, name: String, reply: oneshot::Sender<()> },
}

#[derive(Clone)]
pub struct RunnerHandle {
    pub name: String,
    pub kind: ModelKind,
    /// Preloaded models stay through TTL sweeps and are evicted last. Set at creation
    /// when `models.preload` names the store folder, or later by the preload task (which
    /// may only know the model's alias until its download finished).
    preloaded: Arc<std::sync::atomic::AtomicBool>,
    tx: mpsc::UnboundedSender<RunnerMsg>,
    queued: Arc<AtomicUsize>,
    max_queue: usize,
    pub status: Arc<Mutex<RunnerStatus>>,
}

impl RunnerHandle {
    /// Queues a job; refuses with `Overloaded` past the queue bound.
    pub fn submit(&self, seqs: Vec<Tokens>) -> Result<oneshot::Receiver<JobResult>, JobError> {
        let n = seqs.len();
        let before = self.queued.fetch_add(n, Ordering::SeqCst);
        if before + n > self.max_queue && before > 0 {
            self.queued.fetch_sub(n, Ordering::SeqCst);
            return Err(JobError::Overloaded(format!(
                "model {} has {before} inputs queued (limit {}); retry shortly",
                self.name, self.max_queue
            )));
        }
        let hit = matches!(self.status.lock().unwrap().state, WorkerState::Ready | WorkerState::Busy);
        let t = self.kind.as_str();
        if hit {
            metrics().cache_hits_total.with_label_values(&[t]).inc();
        } else {
            metrics().cache_misses_total.with_label_values(&[t]).inc();
        }
        let (reply, rx) = oneshot::channel();
        self.status.lock().unwrap().last_used = Instant::now();
        if self.tx.send(RunnerMsg::Job { seqs, reply }).is_err() {
            self.queued.fetch_sub(n, Ordering::SeqCst);
            return Err(JobError::Unavailable("server is shutting down".into()));
        }
        Ok(rx)
    }

    pub fn is_preloaded(&self) -> bool {
        self.preloaded.load(Ordering::SeqCst)
    }

    pub fn mark_preloaded(&self) {
        self.preloaded.store(true, Ordering::SeqCst);
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> RunnerMsg) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).ok()?;
        rx.await.ok()
    }

    pub async fn load(&self) -> Result<(), String> {
        self.ask(RunnerMsg::Load).await.unwrap_or_else(|| Err("runner stopped".into()))
    }

    pub async fn evict(&self) -> Result<(), String> {
        self.ask(RunnerMsg::Evict).await.unwrap_or_else(|| Err("runner stopped".into()))
    }

    pub async fn restart(&self) -> Result<(), String> {
        self.ask(RunnerMsg::Restart).await.unwrap_or_else(|| Err("runner stopped".into()))
    }

    pub async fn stats(&self) -> Option<WorkerStats> {
        self.ask(RunnerMsg::Stats).await.flatten()
    }

    pub async fn shutdown(&self) {
        let _ = self.ask(RunnerMsg::Shutdown).await;
    }

    /// True while a worker process exists or is starting.
    pub fn is_loaded(&self) -> bool {
        matches!(
            self.status.lock().unwrap().state,
            WorkerState::Starting | WorkerState::Ready | WorkerState::Busy | WorkerState::Restarting
        )
    }

    pub fn is_idle(&self) -> bool {
        self.queued() == 0 && self.status.lock().unwrap().in_flight == 0
    }
}

/// Settings a runner needs.
#[derive(Clone)]
pub struct RunnerConfig {
    pub limits: Limits,
    pub max_wait: Duration,
    pub max_queue: usize,
    pub worker: WorkerOptions,
    pub stop_grace: Duration,
}

struct JobState {
    reply: Option<oneshot::Sender<JobResult>>,
    n: usize,
    remaining: usize,
    dim: usize,
    data: Vec<f32>,
}

struct InFlight {
    items: Vec<Item>,
    sent: Instant,
}

enum Internal {
    Started { generation: u64, result: Result<(WorkerProcess, mpsc::UnboundedReceiver<WorkerEvent>), String>, took: Duration },
}

struct Runner {
    name: String,
    dir: PathBuf,
    kind: ModelKind,
    cfg: RunnerConfig,
    queue: Queue,
    jobs: HashMap<u64, JobState>,
    next_job: u64,
    next_batch: u64,
    in_flight: HashMap<u64, InFlight>,
    worker: Option<WorkerProcess>,
    events: Option<mpsc::UnboundedReceiver<WorkerEvent>>,
    generation: u64,
    starting: bool,
    start_failures: u32,
    restart_at: Option<Instant>,
    load_waiters: Vec<oneshot::Sender<Result<(), String>>>,
    stats_waiters: HashMap<u64, oneshot::Sender<Option<WorkerStats>>>,
    restart_waiters: Vec<oneshot::Sender<Result<(), String>>>,
    restart_requested: bool,
    queued: Arc<AtomicUsize>,
    status: Arc<Mutex<RunnerStatus>>,
    pool: mpsc::UnboundedSender<PoolRequest>,
    internal_tx: mpsc::UnboundedSender<Internal>,
}

/// Starts the runner task for the model in `dir`.
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
    let status = Arc::new(Mutex::new(RunnerStatus {
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
    }));
    let (internal_tx, internal_rx) = mpsc::unbounded_channel();
    let runner = Runner {
        name: name.clone(),
        dir,
        kind,
        cfg: cfg.clone(),
        queue: Queue::default(),
        jobs: HashMap::new(),
        next_job: 0,
        next_batch: 0,
        in_flight: HashMap::new(),
        worker: None,
        events: None,
        generation: 0,
        starting: false,
        start_failures: 0,
        restart_at: None,
        load_waiters: Vec::new(),
        stats_waiters: HashMap::new(),
        restart_waiters: Vec::new(),
        restart_requested: false,
        queued: queued.clone(),
        status: status.clone(),
        pool,
        internal_tx,
    };
    tokio::spawn(runner.run(rx, internal_rx));
    RunnerHandle { name, kind, preloaded: Arc::new(preload.into()), tx, queued, max_queue: cfg.max_queue, status }
}

async fn next_event(events: &mut Option<mpsc::UnboundedReceiver<WorkerEvent>>) -> WorkerEvent {
    match events {
        Some(rx) => rx.recv().await.unwrap_or(WorkerEvent::Died("worker event stream ended".into())),
        None => std::future::pending().await,
    }
}

impl Runner {
    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<RunnerMsg>, mut internal: mpsc::UnboundedReceiver<Internal>) {
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
                Some(Internal::Started { generation, result, took }) = internal.recv() => {
                    self.on_started(generation, result, took);
                }
                _ = sleep_until_opt(wake), if wake.is_some() => {}
            }
            self.pump();
            self.publish_status();
        }
    }

    /// The next time the loop must wake without an event: a pipelined batch's max_wait
    /// deadline, or a restart back-off.
    fn next_wake(&self) -> Option<Instant> {
        let mut wake = self.restart_at;
        if self.worker.is_some() && !self.in_flight.is_empty() && self.in_flight.len() < PIPELINE_DEPTH {
            if let Some(oldest) = self.queue.oldest() {
                let t = oldest + self.cfg.max_wait;
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
        }
        wake
    }

    async fn on_message(&mut self, msg: RunnerMsg) {
        match msg {
            RunnerMsg::Job { seqs, reply } => {
                let id = self.next_job;
                self.next_job += 1;
                let n = seqs.len();
                let now = Instant::now();
                for (index, tokens) in seqs.into_iter().enumerate() {
                    self.queue.push(Item { job: id, index: index as u32, tokens, crashes: 0, enqueued: now });
                }
                self.jobs.insert(id, JobState { reply: Some(reply), n, remaining: n, dim: 0, data: Vec::new() });
            }
            RunnerMsg::Load(reply) => {
                if self.worker.is_some() {
                    let _ = reply.send(Ok(()));
                } else {
                    self.load_waiters.push(reply);
                    self.restart_at = None;
                    self.start_failures = 0;
                }
            }
            RunnerMsg::Evict(reply) => {
                let busy = !self.queue.is_empty() || !self.in_flight.is_empty() || self.starting;
                if busy {
                    let _ = reply.send(Err(format!("model {} has work queued or in flight", self.name)));
                } else if let Some(w) = self.worker.take() {
                    self.events = None;
                    self.set_state(WorkerState::Draining);
                    w.stop(self.cfg.stop_grace).await;
                    metrics().cache_evictions_total.with_label_values(&[self.kind.as_str()]).inc();
                    self.set_stopped();
                    let _ = reply.send(Ok(()));
                } else {
                    let _ = reply.send(Err(format!("model {} is not loaded", self.name)));
                }
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

    fn on_started(
        &mut self,
        generation: u64,
        result: Result<(WorkerProcess, mpsc::UnboundedReceiver<WorkerEvent>), String>,
        took: Duration,
    ) {
        if generation != self.generation {
            if let Ok((w, _)) = result {
                tokio::spawn(w.kill());
            }
            return;
        }
        self.starting = false;
        match result {
            Ok((w, events)) => {
                metrics().model_load_seconds.with_label_values(&[&self.name]).observe(took.as_secs_f64());
                tracing::info!(model = %self.name, pid = w.pid, seconds = took.as_secs_f64(), "worker ready");
                {
                    let mut s = self.status.lock().unwrap();
                    s.pid = Some(w.pid);
                    s.started_at = Some(Instant::now());
                    s.started_wall = Some(SystemTime::now());
                    s.info = Some(w.info.clone());
                    s.last_error = None;
                }
                self.worker = Some(w);
                self.events = Some(events);
                self.restart_at = None;
                for waiter in self.load_waiters.drain(..) {
                    let _ = waiter.send(Ok(()));
                }
                for waiter in self.restart_waiters.drain(..) {
                    let _ = waiter.send(Ok(()));
                }
            }
            Err(reason) => {
                self.start_failures += 1;
                tracing::error!(model = %self.name, attempt = self.start_failures, "worker failed to start: {reason}");
                self.status.lock().unwrap().last_error = Some(reason.clone());
                let message = format!("model {} failed to load: {reason}", self.name);
                for waiter in self.load_waiters.drain(..).chain(self.restart_waiters.drain(..)) {
                    let _ = waiter.send(Err(message.clone()));
                }
                // Load failures are usually deterministic (corrupt weights, unsupported
                // architecture): answer the waiting requests now with the reason. The next
                // request tries again, but not before the back-off has passed.
                self.fail_all_queued(JobError::Unavailable(message));
                self.set_state(WorkerState::Failed);
                self.restart_at = Some(Instant::now() + backoff(self.start_failures.min(MAX_START_FAILURES)));
            }
        }
    }

    async fn on_worker_event(&mut self, ev: WorkerEvent) {
        match ev {
            WorkerEvent::Message(WorkerMessage::Embeddings { id, dim, data }) => {
                self.complete_batch(id, |job, row, item_index| {
                    let dim = dim as usize;
                    if job.dim == 0 {
                        job.dim = dim;
                        job.data = vec![0.0; job.n * dim];
                    }
                    let i = item_index as usize;
                    job.data[i * dim..(i + 1) * dim].copy_from_slice(&data[row * dim..(row + 1) * dim]);
                })
            }
            WorkerEvent::Message(WorkerMessage::Scores { id, scores }) => {
                self.complete_batch(id, |job, row, item_index| {
                    if job.data.is_empty() {
                        job.data = vec![0.0; job.n];
                        job.dim = 1;
                    }
                    job.data[item_index as usize] = scores[row];
                })
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
                        ErrorKind::InvalidInput => JobError::Invalid(message),
                        ErrorKind::Unsupported => JobError::Invalid(message),
                        ErrorKind::Internal => JobError::Internal(format!("model {} failed: {message}", self.name)),
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

    /// Performs a requested restart once nothing is in flight (an idle worker at once).
    async fn restart_if_requested(&mut self) {
        if self.restart_requested && self.in_flight.is_empty() {
            self.restart_requested = false;
            if let Some(w) = self.worker.take() {
                self.events = None;
                self.set_state(WorkerState::Draining);
                w.stop(self.cfg.stop_grace).await;
                self.set_stopped();
                self.start_worker();
            }
        }
    }

    fn complete_batch(&mut self, id: u64, mut write: impl FnMut(&mut JobState, usize, u32)) {
        let Some(batch) = self.in_flight.remove(&id) else { return };
        metrics().model_inference_seconds.with_label_values(&[&self.name]).observe(batch.sent.elapsed().as_secs_f64());
        self.start_failures = 0;
        for (row, item) in batch.items.iter().enumerate() {
            let Some(job) = self.jobs.get_mut(&item.job) else { continue };
            write(job, row, item.index);
            job.remaining -= 1;
            if job.remaining == 0 {
                let job = self.jobs.remove(&item.job).unwrap();
                if let Some(reply) = job.reply {
                    let out = match self.kind {
                        ModelKind::Embedding => JobOutput::Rows { dim: job.dim, data: job.data },
                        ModelKind::Reranker => JobOutput::Scores(job.data),
                    };
                    let _ = reply.send(Ok(out));
                }
            }
        }
    }

    fn fail_job(&mut self, job: u64, err: JobError) {
        if let Some(mut state) = self.jobs.remove(&job) {
            if let Some(reply) = state.reply.take() {
                let _ = reply.send(Err(err));
            }
        }
        // Its other items are dropped when planned (no job entry) or ignored on return.
        let removed = self.queue.retain(|i| i.job != job);
        self.queued.fetch_sub(removed, Ordering::SeqCst);
    }

    fn fail_all_queued(&mut self, err: JobError) {
        let jobs: Vec<u64> = self.jobs.keys().copied().collect();
        for job in jobs {
            let in_flight = self.in_flight.values().any(|b| b.items.iter().any(|i| i.job == job));
            if !in_flight {
                self.fail_job(job, err.clone());
            }
        }
    }

    async fn on_worker_died(&mut self, reason: String) {
        let Some(w) = self.worker.take() else { return };
        self.events = None;
        let pid = w.pid;
        w.kill().await;
        tracing::error!(model = %self.name, pid, "worker died: {reason}");
        metrics().worker_restarts_total.with_label_values(&[&self.name]).inc();
        {
            let mut s = self.status.lock().unwrap();
            s.restarts += 1;
            s.last_error = Some(reason.clone());
            s.pid = None;
        }
        for (_, waiter) in self.stats_waiters.drain() {
            let _ = waiter.send(None);
        }
        let mut retry = Vec::new();
        let mut batches: Vec<(u64, InFlight)> = self.in_flight.drain().collect();
        batches.sort_by_key(|(id, _)| *id);
        for (_, batch) in batches {
            for mut item in batch.items {
                item.crashes += 1;
                if item.crashes >= 2 {
                    self.fail_job(
                        item.job,
                        JobError::Internal(format!(
                            "input {} was being processed when the model worker crashed twice ({reason}); it was not retried again",
                            item.index
                        )),
                    );
                } else if self.jobs.contains_key(&item.job) {
                    retry.push(item);
                }
            }
        }
        self.queued.fetch_add(retry.len(), Ordering::SeqCst);
        self.queue.requeue_front(retry);
        self.set_state(WorkerState::Restarting);
        let restarts = self.status.lock().unwrap().restarts;
        // The first restart is immediate (in-flight requests are waiting); repeated
        // crashes back off exponentially.
        self.restart_at = Some(Instant::now() + if restarts <= 1 { Duration::ZERO } else { backoff(restarts - 1) });
    }

    /// Starts a worker when work waits, dispatches batches while the pipeline has room.
    fn pump(&mut self) {
        let now = Instant::now();
        if self.worker.is_none() && !self.starting {
            let wanted = !self.queue.is_empty() || !self.load_waiters.is_empty();
            let restart_due = self.restart_at.is_some_and(|t| t <= now);
            let crashed = self.status.lock().unwrap().state == WorkerState::Restarting;
            let allowed = self.restart_at.is_none_or(|t| t <= now);
            if (wanted && allowed) || (crashed && restart_due) {
                self.restart_at = None;
                self.start_worker();
            }
            return;
        }
        while self.worker.is_some() && self.in_flight.len() < PIPELINE_DEPTH && !self.queue.is_empty() {
            // Crash survivors run alone, with nothing else in flight beside them: a second
            // crash then convicts exactly one input.
            let suspect_in_flight = self.in_flight.values().any(|b| b.items.iter().any(|i| i.crashes > 0));
            if suspect_in_flight || (self.queue.head_is_suspect() && !self.in_flight.is_empty()) {
                break;
            }
            let go = self.in_flight.is_empty()
                || self.queue.has_full_batch(self.cfg.limits)
                || self.queue.oldest().is_some_and(|t| t + self.cfg.max_wait <= now);
            if !go || !self.dispatch() {
                break;
            }
        }
    }

    /// Sends one batch; false when nothing was sent.
    fn dispatch(&mut self) -> bool {
        // Drop inputs whose requester went away (client disconnect, timeout).
        let jobs = &mut self.jobs;
        jobs.retain(|_, j| j.reply.as_ref().is_some_and(|r| !r.is_closed()));
        let dropped = self.queue.retain(|i| jobs.contains_key(&i.job));
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
        let msg = match self.kind {
            ModelKind::Embedding => SupervisorMessage::Embed { id, batch },
            ModelKind::Reranker => SupervisorMessage::Score { id, batch },
        };
        let endpoint = match self.kind {
            ModelKind::Embedding => "embed",
            ModelKind::Reranker => "rerank",
        };
        let m = metrics();
        m.batch_size.with_label_values(&[endpoint]).observe(items.len() as f64);
        m.tokens_total.with_label_values(&[&self.name]).inc_by(real);
        m.padded_tokens_total.with_label_values(&[&self.name]).inc_by(padded);
        self.status.lock().unwrap().batches += 1;
        let sent = self.worker.as_ref().map(|w| w.send(&msg));
        self.in_flight.insert(id, InFlight { items, sent: Instant::now() });
        // A failed send means the worker is gone; its Died event requeues the batch.
        matches!(sent, Some(Ok(())))
    }

    fn start_worker(&mut self) {
        self.starting = true;
        self.generation += 1;
        self.set_state(WorkerState::Starting);
        let generation = self.generation;
        let (name, dir, kind, opts) = (self.name.clone(), self.dir.clone(), self.kind, self.cfg.worker.clone());
        let pool = self.pool.clone();
        let internal = self.internal_tx.clone();
        tokio::spawn(async move {
            let (tx, rx) = oneshot::channel();
            if pool.send(PoolRequest::MakeRoom { kind, name: name.clone(), reply: tx }).is_ok() {
                let _ = rx.await;
            }
            let t0 = Instant::now();
            let result = WorkerProcess::start(&name, &dir, &opts).await;
            let _ = internal.send(Internal::Started { generation, result, took: t0.elapsed() });
        });
    }

    async fn shutdown(&mut self) {
        // Finish what is in flight, answer the rest as unavailable.
        let deadline = Instant::now() + self.cfg.stop_grace;
        while !self.in_flight.is_empty() && Instant::now() < deadline {
            let ev = tokio::select! {
                ev = next_event(&mut self.events) => ev,
                _ = tokio::time::sleep_until(deadline.into()) => break,
            };
            if matches!(ev, WorkerEvent::Died(_)) {
                break;
            }
            self.on_worker_event(ev).await;
        }
        self.fail_all_queued(JobError::Unavailable("server is shutting down".into()));
        for (_, b) in self.in_flight.drain() {
            for item in b.items {
                if let Some(mut j) = self.jobs.remove(&item.job) {
                    if let Some(r) = j.reply.take() {
                        let _ = r.send(Err(JobError::Unavailable("server is shutting down".into())));
                    }
                }
            }
        }
        if let Some(w) = self.worker.take() {
            self.set_state(WorkerState::Draining);
            w.stop(self.cfg.stop_grace).await;
        }
        self.set_stopped();
        self.publish_status();
    }

    fn set_state(&self, state: WorkerState) {
        self.status.lock().unwrap().state = state;
    }

    fn set_stopped(&self) {
        let mut s = self.status.lock().unwrap();
        s.state = WorkerState::Stopped;
        s.pid = None;
        s.started_at = None;
        s.started_wall = None;
    }

    fn publish_status(&self) {
        let mut s = self.status.lock().unwrap();
        s.in_flight = self.in_flight.len();
        if self.worker.is_some() {
            s.state = if self.in_flight.is_empty() { WorkerState::Ready } else { WorkerState::Busy };
        }
        let m = metrics();
        m.queue_depth.with_label_values(&[&self.name]).set(self.queue.len() as f64);
        for st in WorkerState::ALL {
            m.worker_state.with_label_values(&[&self.name, st.as_str()]).set(if st == s.state { 1.0 } else { 0.0 });
        }
    }
}

fn backoff(failures: u32) -> Duration {
    let ms = 250u64.saturating_mul(1 << failures.min(7));
    Duration::from_millis(ms.min(30_000))
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
