//! A fake worker for unit tests (compiled only under `cfg(test)`): the runner under test
//! talks to it through the same traits as to a real process, and the test scripts how it
//! behaves — fail at load, answer slowly, hang, crash or be killed on a chosen batch or
//! input — and reads what it was sent. It stands in for the worker *around* the runner;
//! the real worker is exercised by the end-to-end suites.
//!
//! Answers are a function of the input, so a test can check each request got its own
//! rows back: an embedding row is `[first token, length]`, a score is the first token.
//! A late-chunking batch (`EmbedPooled`) gets one row per pool: a sequence's
//! `[first token, length]`, a span's `[its first row's token, its number of rows]`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use mlx_serve_protocol::model_dir::Pooling;
use mlx_serve_protocol::{
    Device, ModelInfo, ModelKind, Pool, SupervisorMessage, TokenBatch, WorkerMessage, WorkerStats,
};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::{Cause, Death, LinkClosed, StartError, Started, WorkerEvent, WorkerLauncher, WorkerLink};

/// What happens to a worker on a given batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// It crashes (SIGSEGV), as an input that breaks MLX would make it.
    Crash,
    /// Someone kills it (SIGKILL: an operator, the OOM killer).
    Kill,
    /// It never answers, while running (hung on its input).
    Hang,
    /// It never answers because someone stopped it (SIGSTOP).
    Stop,
}

/// How fake workers behave; change it at any time, new batches see the change.
#[derive(Default)]
pub struct Script {
    /// This many starts fail with `LoadFailed` before starts succeed.
    pub fail_starts: u32,
    /// Each start takes this long.
    pub start_delay: Duration,
    /// A batch holding this first token crashes the worker (a poison input).
    pub poison: Option<u32>,
    /// A batch holding this first token hangs the worker (an input that hangs it).
    pub hang_token: Option<u32>,
    /// The worker dies on the n-th batch sent overall (1-based, counted in [`Log`]).
    pub crash_on_batch: Option<usize>,
    /// Faults by batch number (1-based, counted in [`Log`]).
    pub faults: BTreeMap<usize, Fault>,
    /// Each answer takes this long (a slow worker)…
    pub delay: Duration,
    /// …plus this long per token of the batch (as the worker computes them).
    pub per_token: Duration,
    /// Batches are received but never answered (a hung worker).
    pub hang: bool,
    /// When set, each answer waits for a permit (the test releases answers one by one).
    pub gate: Option<Arc<Semaphore>>,
    /// The worker says it computes on a GPU.
    pub gpu: bool,
}

/// What fake workers saw.
#[derive(Default, Debug)]
pub struct Log {
    pub starts: usize,
    /// First token of every sequence, per batch, in the order the runner sent them.
    pub batches: Vec<Vec<u32>>,
    /// When each batch was sent.
    pub sent_at: Vec<Instant>,
    pub stops: usize,
    pub kills: usize,
}

/// Starts fake workers that follow a shared [`Script`] and write a shared [`Log`].
#[derive(Clone, Default)]
pub struct FakeLauncher {
    pub script: Arc<Mutex<Script>>,
    pub log: Arc<Mutex<Log>>,
}

impl FakeLauncher {
    pub fn new(script: Script) -> FakeLauncher {
        FakeLauncher { script: Arc::new(Mutex::new(script)), log: Arc::default() }
    }

    /// First tokens per batch received so far.
    pub fn batches(&self) -> Vec<Vec<u32>> {
        self.log.lock().unwrap().batches.clone()
    }

    pub fn starts(&self) -> usize {
        self.log.lock().unwrap().starts
    }
}

impl WorkerLauncher for FakeLauncher {
    fn start(&self, _name: &str, _dir: &Path) -> BoxFuture<'static, Result<Started, StartError>> {
        let this = self.clone();
        async move {
            let (fail, delay) = {
                let mut s = this.script.lock().unwrap();
                let fail = s.fail_starts > 0;
                s.fail_starts = s.fail_starts.saturating_sub(1);
                (fail, s.start_delay)
            };
            tokio::time::sleep(delay).await;
            let pid = {
                let mut log = this.log.lock().unwrap();
                log.starts += 1;
                10_000 + log.starts as u32
            };
            if fail {
                return Err(StartError::LoadFailed("fake: the weights are corrupt".into()));
            }
            let (outbox, inbox) = mpsc::unbounded_channel();
            let (events_tx, events) = mpsc::unbounded_channel();
            let stopped = Arc::new(AtomicBool::new(false));
            let task = tokio::spawn(serve(inbox, events_tx, this.clone(), stopped.clone()));
            let gpu = this.script.lock().unwrap().gpu;
            let link =
                FakeLink { pid, info: info(gpu), stopped, outbox, task: task.abort_handle(), log: this.log.clone() };
            Ok(Started { link: Box::new(link), events })
        }
        .boxed()
    }
}

fn info(gpu: bool) -> ModelInfo {
    ModelInfo {
        kind: ModelKind::Embedding,
        architecture: "FakeModel".into(),
        family: "fake".into(),
        hidden_size: 2,
        output_dim: 2,
        max_tokens: 512,
        vocab_size: 1000,
        pooling: Pooling::MEAN,
        normalize: false,
        stored_dtype: "float32".into(),
        compute_dtype: "float32".into(),
        device: if gpu { Device::Gpu } else { Device::Cpu },
        blas: "none".into(),
        load_seconds: 0.0,
        tiny_batch_seconds: 0.0,
        token_outputs: Default::default(),
    }
}

fn firsts(batch: &TokenBatch) -> Vec<u32> {
    (0..batch.len()).map(|i| batch.sequence(i).first().copied().unwrap_or(0)).collect()
}

/// One fake worker: answers batches in arrival order, one at a time, as a real one does.
/// `n` is the batch's number in the [`Log`] (1-based; 0 for other messages).
async fn serve(
    mut inbox: mpsc::UnboundedReceiver<(SupervisorMessage, usize)>,
    events: mpsc::UnboundedSender<WorkerEvent>,
    fake: FakeLauncher,
    stopped: Arc<AtomicBool>,
) {
    while let Some((msg, n)) = inbox.recv().await {
        // A yielding batch is computed like any other: the fake never nests.
        let (id, batch, embed, pools) = match msg.unwrapped().clone() {
            // A classifier's logits come back as rows, as embeddings do.
            SupervisorMessage::Embed { id, batch }
            | SupervisorMessage::EmbedTokens { id, batch, .. }
            | SupervisorMessage::Classify { id, batch } => (id, batch, true, None),
            SupervisorMessage::Score { id, batch } => (id, batch, false, None),
            SupervisorMessage::EmbedPooled { id, batch, pools } => (id, batch, true, Some(pools)),
            SupervisorMessage::Stats { id } => {
                let stats = WorkerStats { rss_bytes: 1 << 20, ..Default::default() };
                let _ = events.send(WorkerEvent::Message(WorkerMessage::Stats { id, stats }));
                continue;
            }
            SupervisorMessage::Shutdown => return,
            SupervisorMessage::Yielding(_) => unreachable!("unwrapped above"),
        };
        let first = firsts(&batch);
        let (fault, delay, gate) = {
            let s = fake.script.lock().unwrap();
            let fault = if s.poison.is_some_and(|p| first.contains(&p)) || s.crash_on_batch == Some(n) {
                Some(Fault::Crash)
            } else if s.hang || s.hang_token.is_some_and(|p| first.contains(&p)) {
                Some(Fault::Hang)
            } else {
                s.faults.get(&n).copied()
            };
            let tokens: usize = (0..batch.len()).map(|i| batch.sequence(i).len()).sum();
            (fault, s.delay + s.per_token * tokens as u32, s.gate.clone())
        };
        // The gate stands for the computation: a fault strikes while the batch computes.
        if let Some(gate) = gate {
            gate.acquire().await.expect("gate open").forget();
        }
        match fault {
            Some(Fault::Crash) => {
                let _ = events.send(WorkerEvent::Died(Death::new(Cause::Signal(11), "fake worker crashed")));
                return;
            }
            Some(Fault::Kill) => {
                let _ = events.send(WorkerEvent::Died(Death::new(Cause::Signal(9), "fake worker killed")));
                return;
            }
            Some(Fault::Stop) => {
                stopped.store(true, Ordering::SeqCst);
                std::future::pending::<()>().await;
            }
            // Receives nothing more: a worker stuck in a batch reads no further frames
            // that matter (it would never answer them).
            Some(Fault::Hang) => std::future::pending::<()>().await,
            None => {}
        }
        tokio::time::sleep(delay).await;
        let answer = if let Some(pools) = pools {
            let data = pools
                .iter()
                .flat_map(|p| match p {
                    Pool::Sequence(i) => [first[*i as usize] as f32, batch.sequence(*i as usize).len() as f32],
                    Pool::Rows(r) => {
                        [batch.tokens[r[0].0 as usize] as f32, r.iter().map(|&(s, e)| e - s).sum::<u32>() as f32]
                    }
                })
                .collect();
            WorkerMessage::Embeddings { id, dim: 2, data, forward_us: delay.as_micros() as u64 }
        } else if embed {
            let data = (0..batch.len()).flat_map(|i| [first[i] as f32, batch.sequence(i).len() as f32]).collect();
            WorkerMessage::Embeddings { id, dim: 2, data, forward_us: delay.as_micros() as u64 }
        } else {
            WorkerMessage::Scores {
                id,
                scores: first.iter().map(|&t| t as f32).collect(),
                forward_us: delay.as_micros() as u64,
            }
        };
        let _ = events.send(WorkerEvent::Message(answer));
    }
}

struct FakeLink {
    pid: u32,
    info: ModelInfo,
    stopped: Arc<AtomicBool>,
    outbox: mpsc::UnboundedSender<(SupervisorMessage, usize)>,
    task: AbortHandle,
    log: Arc<Mutex<Log>>,
}

impl WorkerLink for FakeLink {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    fn send(&self, msg: &SupervisorMessage) -> Result<(), LinkClosed> {
        if self.outbox.is_closed() {
            return Err(LinkClosed);
        }
        let n = match msg.unwrapped() {
            SupervisorMessage::Embed { batch, .. }
            | SupervisorMessage::Score { batch, .. }
            | SupervisorMessage::EmbedTokens { batch, .. }
            | SupervisorMessage::EmbedPooled { batch, .. }
            | SupervisorMessage::Classify { batch, .. } => {
                let mut log = self.log.lock().unwrap();
                log.batches.push(firsts(batch));
                log.sent_at.push(Instant::now());
                log.batches.len()
            }
            _ => 0,
        };
        self.outbox.send((msg.clone(), n)).map_err(|_| LinkClosed)
    }

    fn stop(self: Box<Self>, _grace: Duration) -> BoxFuture<'static, ()> {
        self.log.lock().unwrap().stops += 1;
        let _ = self.outbox.send((SupervisorMessage::Shutdown, 0));
        async {}.boxed()
    }

    fn kill(self: Box<Self>) -> BoxFuture<'static, ()> {
        self.log.lock().unwrap().kills += 1;
        self.task.abort();
        async {}.boxed()
    }
}
