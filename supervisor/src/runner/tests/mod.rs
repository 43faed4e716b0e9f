//! The runner and eviction driven with a fake worker (`worker/fake.rs`): dispatch policy
//! end to end, crash recovery and poison conviction, slow workers, failed starts and
//! back-off, eviction of idle workers only (here); deaths, hangs, the watchdog and forced
//! evict / restart (`faults.rs`); properties over random traffic and faults
//! (`properties.rs`).
//!
//! Time is paused (`start_paused`): the clock moves only when every task waits, so a
//! `settle()` (a 1 ms sleep) lets the runner handle everything already sent before the
//! test looks, and `max_wait`, back-off or watchdog deadlines pass exactly, never flakily.

mod faults;
mod gate_turns;
mod late;
mod properties;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mlx_serve_protocol::ModelKind;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use super::cpu_gate::{CpuGate, DRAIN_WAIT};
use super::eviction;
use super::handle::{JobError, JobOutput, JobTicket, PoolRequest, RunnerError, RunnerHandle};
use super::{spawn_runner, RunnerConfig};
use crate::batch::Limits;
use crate::metrics::metrics;
use crate::tokenize::Tokens;
use crate::worker::fake::{FakeLauncher, Script};
use crate::worker::WorkerState;

const MAX_WAIT: Duration = Duration::from_millis(50);
/// The watchdog's floor in these tests.
const HUNG_AFTER: Duration = Duration::from_secs(30);

fn config(fake: &FakeLauncher) -> RunnerConfig {
    RunnerConfig {
        limits: Limits { max_batch_size: 4, max_batch_tokens: 1000 },
        gpu_limits: Limits { max_batch_size: 6, max_batch_tokens: 2000 },
        max_wait: MAX_WAIT,
        aging: Duration::from_secs(1),
        max_batch_time: Duration::ZERO,
        bulk_max_batch_time: Duration::ZERO,
        default_priority: 0,
        max_queue: 100,
        stop_grace: Duration::from_secs(1),
        hung_after: HUNG_AFTER,
        launcher: Arc::new(fake.clone()),
        cpu_gate: CpuGate::leaked(),
    }
}

/// A runner on a fake worker, with a pool that always has room.
fn runner(name: &str, script: Script) -> (RunnerHandle, FakeLauncher) {
    runner_with(name, script, |_| {})
}

/// The same with settings changed by `tune`.
fn runner_with(name: &str, script: Script, tune: impl FnOnce(&mut RunnerConfig)) -> (RunnerHandle, FakeLauncher) {
    let fake = FakeLauncher::new(script);
    let (pool_tx, mut pool_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(PoolRequest::MakeRoom { reply, .. }) = pool_rx.recv().await {
            let _ = reply.send(());
        }
    });
    let mut cfg = config(&fake);
    tune(&mut cfg);
    let handle = spawn_runner(name.into(), PathBuf::from("/nowhere"), ModelKind::Embedding, false, cfg, pool_tx);
    (handle, fake)
}

/// An input whose first token identifies it.
fn input(first: u32, len: usize) -> Tokens {
    let mut ids = vec![1; len];
    ids[0] = first;
    Tokens { ids, type_ids: vec![] }
}

fn submit(h: &RunnerHandle, firsts: &[u32]) -> JobTicket {
    h.submit(firsts.iter().map(|&f| input(f, 3)).collect()).expect("queued")
}

/// Lets every task run until all wait; paused time does not move while any can run.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// `f`, given at most `limit` of test time: a runner that never answers (a watchdog that
/// does not fire) fails the test at once instead of hanging it, since paused time jumps to
/// the limit when every task waits.
async fn within<T>(limit: Duration, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, f).await.unwrap_or_else(|_| panic!("no answer within {limit:?} of test time"))
}

/// The rows the fake answers for inputs of length 3: `[first, 3]` each.
fn rows(firsts: &[u32]) -> JobOutput {
    JobOutput::Rows { dim: 2, data: firsts.iter().flat_map(|&f| [f as f32, 3.0]).collect() }
}

#[tokio::test(start_paused = true)]
async fn a_lone_request_never_waits() {
    let (h, fake) = runner("lone", Script::default());
    let t0 = Instant::now();
    let out = submit(&h, &[7]).await.unwrap().unwrap();
    assert_eq!(out, rows(&[7]));
    assert!(t0.elapsed() < MAX_WAIT, "waited {:?}", t0.elapsed());
    assert_eq!(fake.batches(), [vec![7]]);
}

#[tokio::test(start_paused = true)]
async fn one_batch_is_pipelined_ahead_after_max_wait() {
    let gate = Arc::new(Semaphore::new(0));
    let (h, fake) = runner("pipeline", Script { gate: Some(gate.clone()), ..Default::default() });
    let a = submit(&h, &[1]);
    settle().await;
    assert_eq!(fake.batches(), [vec![1]], "an idle worker gets work at once");
    let bc = submit(&h, &[2, 3]);
    settle().await;
    assert_eq!(fake.batches().len(), 1, "a partial batch waits while the worker is busy");
    tokio::time::sleep(MAX_WAIT).await;
    assert_eq!(fake.batches(), [vec![1], vec![2, 3]], "sent ahead once the oldest waited max_wait");
    let d = submit(&h, &[4]);
    tokio::time::sleep(10 * MAX_WAIT).await;
    assert_eq!(fake.batches().len(), 2, "never more than one batch ahead of the worker");
    gate.add_permits(3);
    assert_eq!(a.await.unwrap().unwrap(), rows(&[1]));
    assert_eq!(bc.await.unwrap().unwrap(), rows(&[2, 3]));
    assert_eq!(d.await.unwrap().unwrap(), rows(&[4]));
    assert_eq!(fake.batches(), [vec![1], vec![2, 3], vec![4]]);
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_goes_ahead_without_waiting() {
    let gate = Arc::new(Semaphore::new(0));
    let (h, fake) = runner("full", Script { gate: Some(gate.clone()), ..Default::default() });
    let _a = submit(&h, &[1]);
    settle().await;
    let _full = submit(&h, &[2, 3, 4, 5]);
    settle().await;
    assert_eq!(fake.batches(), [vec![1], vec![2, 3, 4, 5]]);
    gate.add_permits(2);
}

#[tokio::test(start_paused = true)]
async fn the_oldest_input_is_never_starved() {
    let gate = Arc::new(Semaphore::new(0));
    let (h, fake) = runner("oldest", Script { gate: Some(gate.clone()), ..Default::default() });
    let _a = submit(&h, &[1]);
    settle().await;
    // A long input first, then many short ones that would make fuller batches alone.
    let long = h.submit(vec![input(100, 200)]).unwrap();
    let shorts: Vec<_> = (0..7).map(|i| submit(&h, &[10 + i])).collect();
    settle().await;
    gate.add_permits(10);
    long.await.unwrap().unwrap();
    for s in shorts {
        s.await.unwrap().unwrap();
    }
    let batches = fake.batches();
    assert!(batches[1].contains(&100), "the oldest input rides in the next batch: {batches:?}");
}

#[tokio::test(start_paused = true)]
async fn inputs_of_disconnected_clients_are_dropped() {
    let gate = Arc::new(Semaphore::new(0));
    let (h, fake) = runner("gone", Script { gate: Some(gate.clone()), ..Default::default() });
    let a = submit(&h, &[1]);
    settle().await;
    drop(submit(&h, &[50, 51, 52])); // the client hung up
    let c = submit(&h, &[3]);
    gate.add_permits(10);
    assert_eq!(a.await.unwrap().unwrap(), rows(&[1]));
    assert_eq!(c.await.unwrap().unwrap(), rows(&[3]));
    assert!(fake.batches().iter().flatten().all(|t| !(50..=52).contains(t)), "{:?}", fake.batches());
    assert_eq!(h.queued(), 0, "the queue counter forgot the dropped inputs");
}

#[tokio::test(start_paused = true)]
async fn a_crash_mid_batch_retries_its_inputs() {
    let (h, fake) = runner("crash", Script { crash_on_batch: Some(1), ..Default::default() });
    let out = submit(&h, &[1, 2]).await.unwrap().unwrap();
    assert_eq!(out, rows(&[1, 2]), "answered after the restart, in input order");
    assert_eq!(fake.starts(), 2);
    assert_eq!(fake.batches(), [vec![1, 2], vec![1], vec![2]], "survivors are retried one by one");
    assert_eq!(h.status().restarts, 1);
}

#[tokio::test(start_paused = true)]
async fn an_input_in_flight_during_two_crashes_fails_alone() {
    let (h, fake) = runner("poison", Script { poison: Some(666), ..Default::default() });
    let poison = submit(&h, &[666]);
    let mates = submit(&h, &[7, 8]);
    let err = poison.await.unwrap().unwrap_err();
    assert!(matches!(err, JobError::Poisoned { index: 0, .. }), "{err:?}");
    assert!(err.to_string().contains("crashed twice"), "{err}");
    assert_eq!(mates.await.unwrap().unwrap(), rows(&[7, 8]), "innocent batch mates succeed");
    assert_eq!(fake.batches()[0], [666, 7, 8]);
    assert_eq!(fake.starts(), 3, "one restart per crash");
    // Back to normal afterwards.
    assert_eq!(submit(&h, &[9]).await.unwrap().unwrap(), rows(&[9]));
}

#[tokio::test(start_paused = true)]
async fn repeated_crashes_back_off() {
    let (h, fake) = runner("backoff", Script { poison: Some(666), ..Default::default() });
    let t0 = Instant::now();
    let _ = submit(&h, &[666]).await.unwrap();
    assert!(t0.elapsed() < Duration::from_millis(1), "the first restart is immediate: {:?}", t0.elapsed());
    assert_eq!(h.state(), WorkerState::Restarting);
    // The second crash's restart waits 500 ms; work that arrives meanwhile waits for it.
    let out = submit(&h, &[9]).await.unwrap().unwrap();
    assert_eq!(out, rows(&[9]));
    assert!(t0.elapsed() >= Duration::from_millis(500), "{:?}", t0.elapsed());
    assert_eq!(fake.starts(), 3);
}

/// A worker answers stats between forwards. While one runs, `/metrics` and the memory sweep
/// get the last figures it gave instead of waiting for it or reading its memory as zero;
/// once it is gone, none.
#[tokio::test(start_paused = true)]
async fn a_busy_worker_reports_its_last_figures() {
    let (h, fake) = runner("busy", Script::default());
    let wait = Duration::from_millis(200);
    assert_eq!(h.stats_within(wait).await, None, "no worker yet");
    submit(&h, &[1]).await.unwrap().unwrap();
    assert_eq!(h.stats_within(wait).await.map(|s| s.rss_bytes), Some(1 << 20), "an idle worker answers");
    fake.script.lock().unwrap().delay = Duration::from_secs(10);
    let busy = submit(&h, &[2]);
    settle().await;
    let t0 = Instant::now();
    assert_eq!(h.stats_within(wait).await.map(|s| s.rss_bytes), Some(1 << 20), "a busy one: its last figures");
    assert!(t0.elapsed() <= wait + Duration::from_millis(1), "{:?}", t0.elapsed());
    busy.await.unwrap().unwrap();
    h.evict().await.unwrap();
    assert_eq!(h.stats_within(wait).await, None, "an evicted worker has no figures");
}

#[tokio::test(start_paused = true)]
async fn a_slow_reply_is_waited_for() {
    let (h, fake) = runner("slow", Script { delay: Duration::from_secs(2), ..Default::default() });
    let t0 = Instant::now();
    let a = submit(&h, &[1]);
    settle().await;
    let b = submit(&h, &[2]);
    assert_eq!(a.await.unwrap().unwrap(), rows(&[1]));
    assert!(t0.elapsed() >= Duration::from_secs(2));
    assert_eq!(b.await.unwrap().unwrap(), rows(&[2]));
    assert_eq!(fake.batches(), [vec![1], vec![2]], "the second was sent ahead, not batched late");
}

#[tokio::test(start_paused = true)]
async fn the_next_batch_is_cut_just_before_the_worker_is_free() {
    // 10 ms + 1 ms per token: a batch of one 3-token input takes 13 ms, of 100 tokens 110 ms.
    let script = Script { delay: Duration::from_millis(10), per_token: Duration::from_millis(1), ..Default::default() };
    let (h, fake) = runner("cut-late", script);
    // The worker is timed on two sizes, so the runner knows both costs.
    submit(&h, &[1]).await.unwrap().unwrap();
    h.submit(vec![input(9, 50)]).unwrap().await.unwrap().unwrap();
    let t0 = Instant::now();
    let long = h.submit(vec![input(2, 100)]).unwrap();
    // Inputs keep arriving while it computes, long after max_wait (50 ms).
    let mut later = Vec::new();
    for k in 0..3 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        later.push(submit(&h, &[10 + k]));
    }
    long.await.unwrap().unwrap();
    for t in later {
        t.await.unwrap().unwrap();
    }
    let (batches, sent_at) = {
        let log = fake.log.lock().unwrap();
        (log.batches.clone(), log.sent_at.clone())
    };
    assert_eq!(batches[2..], [vec![2], vec![10, 11, 12]], "one batch with all that arrived, not one cut at max_wait");
    let cut = sent_at[3] - t0;
    assert!(
        cut > Duration::from_millis(90) && cut < Duration::from_millis(110),
        "cut just before the worker was free: {cut:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn batches_are_cut_by_real_tokens_and_metrics_say_so() {
    let gate = Arc::new(Semaphore::new(0));
    let (h, fake) = runner_with("packed", Script { gate: Some(gate.clone()), ..Default::default() }, |c| {
        c.limits = Limits { max_batch_size: 8, max_batch_tokens: 400 };
    });
    let first = submit(&h, &[1]);
    settle().await;
    // One long and three short: padded to the longest they would be 4 × 300 > 400; the
    // worker packs them, 330 tokens.
    let mixed = h.submit(vec![input(2, 300), input(3, 10), input(4, 10), input(5, 10)]).unwrap();
    settle().await;
    gate.add_permits(2);
    first.await.unwrap().unwrap();
    mixed.await.unwrap().unwrap();
    assert_eq!(fake.batches(), [vec![1], vec![3, 4, 5, 2]], "one batch, sorted by length");
    let m = metrics();
    assert_eq!(m.tokens_total.with_label_values(&["packed"]).get(), 333);
    assert_eq!(m.padded_tokens_total.with_label_values(&["packed"]).get(), 333, "a packing worker computes no padding");
}

#[tokio::test(start_paused = true)]
async fn a_gpu_worker_gets_the_gpu_batch_limits() {
    for (gpu, want) in [
        (false, vec![vec![1], vec![2, 3, 4, 5], vec![6, 7, 8]]),
        (true, vec![vec![1], vec![2, 3, 4, 5, 6, 7], vec![8]]),
    ] {
        let gate = Arc::new(Semaphore::new(0));
        let (h, fake) = runner(
            if gpu { "gpu-limits" } else { "cpu-limits" },
            Script { gate: Some(gate.clone()), gpu, ..Default::default() },
        );
        let first = submit(&h, &[1]);
        settle().await;
        // Seven more while the first computes: batches of 4 (CPU bounds) or 6 (GPU bounds).
        let rest = submit(&h, &[2, 3, 4, 5, 6, 7, 8]);
        settle().await;
        gate.add_permits(3);
        first.await.unwrap().unwrap();
        rest.await.unwrap().unwrap();
        assert_eq!(fake.batches(), want, "gpu = {gpu}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_start_is_reported_and_retried_after_back_off() {
    let (h, fake) = runner("load", Script { fail_starts: 1, ..Default::default() });
    let err = submit(&h, &[1]).await.unwrap().unwrap_err();
    assert!(matches!(&err, JobError::LoadFailed { .. }), "{err:?}");
    assert!(err.to_string().contains("the weights are corrupt"), "{err}");
    assert_eq!(h.state(), WorkerState::Failed);
    let t0 = Instant::now();
    let out = submit(&h, &[2]).await.unwrap().unwrap();
    assert_eq!(out, rows(&[2]));
    assert!(t0.elapsed() >= Duration::from_millis(400), "retried before the back-off: {:?}", t0.elapsed());
    assert_eq!(fake.starts(), 2);
}

#[tokio::test(start_paused = true)]
async fn load_says_why_a_worker_cannot_start() {
    let (h, _fake) = runner("load-ctl", Script { fail_starts: 1, ..Default::default() });
    let err = h.load().await.unwrap_err();
    assert!(matches!(err, RunnerError::LoadFailed { .. }), "{err:?}");
    assert!(h.load().await.is_ok(), "an explicit load tries again at once");
    assert_eq!(h.state(), WorkerState::Ready);
}

#[tokio::test(start_paused = true)]
async fn eviction_takes_idle_workers_only_least_recently_used_first() {
    let (busy, _) = runner("evict-busy", Script { hang: true, ..Default::default() });
    let (old, _) = runner("evict-old", Script::default());
    let (recent, _) = runner("evict-recent", Script::default());
    let _stuck = submit(&busy, &[1]);
    old.load().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    recent.load().await.unwrap();
    recent.status.lock().unwrap().last_used = Instant::now();
    settle().await;
    // Room for one more with a limit of 2: two of the three must go, but the busy one stays.
    let all = vec![busy.clone(), old.clone(), recent.clone()];
    let left_over = eviction::make_room(all, ModelKind::Embedding, "new", 2).await;
    assert_eq!(left_over, 0);
    assert!(busy.is_loaded());
    assert_eq!(old.state(), WorkerState::Stopped, "least recently used goes first");
    assert_eq!(recent.state(), WorkerState::Stopped);
    // Limit 1 with only the busy one loaded: nothing can go.
    assert_eq!(eviction::make_room(vec![busy.clone()], ModelKind::Embedding, "new", 1).await, 1);
    assert!(busy.is_loaded());
}

#[tokio::test(start_paused = true)]
async fn over_the_memory_budget_idle_workers_go_least_recently_used_first() {
    // Each fake worker reports 1 MiB.
    let (a, _) = runner("mem-a", Script::default());
    let (b, _) = runner("mem-b", Script::default());
    let (c, _) = runner("mem-c", Script::default());
    for (i, r) in [&a, &b, &c].into_iter().enumerate() {
        r.load().await.unwrap();
        r.status.lock().unwrap().last_used = Instant::now() + Duration::from_secs(i as u64);
    }
    settle().await;
    let all = || vec![a.clone(), b.clone(), c.clone()];
    assert_eq!(eviction::sweep_memory(all(), 3 << 20).await, 3 << 20, "within the budget nothing goes");
    assert!(a.is_loaded() && b.is_loaded() && c.is_loaded());
    assert_eq!(eviction::sweep_memory(all(), (5 << 20) / 2).await, 2 << 20);
    assert_eq!(a.state(), WorkerState::Stopped, "least recently used goes first");
    assert!(b.is_loaded() && c.is_loaded());
}

#[tokio::test(start_paused = true)]
async fn the_memory_budget_never_stops_a_busy_worker() {
    let (busy, _) = runner("mem-busy", Script { hang: true, ..Default::default() });
    let (idle, _) = runner("mem-idle", Script::default());
    let _stuck = submit(&busy, &[1]);
    idle.load().await.unwrap();
    settle().await;
    eviction::sweep_memory(vec![busy.clone(), idle.clone()], 0).await;
    assert!(busy.is_loaded(), "work in flight keeps its worker");
    assert_eq!(idle.state(), WorkerState::Stopped);
}

#[tokio::test(start_paused = true)]
async fn preloaded_workers_go_last_and_survive_the_ttl() {
    let (pre, _) = runner("ttl-pre", Script::default());
    let (plain, _) = runner("ttl-plain", Script::default());
    pre.mark_preloaded();
    pre.load().await.unwrap();
    plain.load().await.unwrap();
    let mut order = vec![pre.clone(), plain.clone()];
    eviction::eviction_order(&mut order);
    assert_eq!(order[0].name, "ttl-plain", "preloaded models are evicted last");
    tokio::time::sleep(Duration::from_secs(60)).await;
    eviction::sweep(vec![pre.clone(), plain.clone()], Duration::from_secs(30)).await;
    assert_eq!(plain.state(), WorkerState::Stopped);
    assert!(pre.is_loaded());
}

#[tokio::test(start_paused = true)]
async fn shutdown_answers_what_is_left() {
    let (h, _) = runner("shutdown", Script { hang: true, ..Default::default() });
    let in_flight = submit(&h, &[1]);
    settle().await;
    h.shutdown().await;
    assert_eq!(in_flight.await.unwrap().unwrap_err(), JobError::ShuttingDown);
    assert_eq!(h.state(), WorkerState::Stopped);
    assert!(matches!(h.submit(vec![input(2, 3)]), Err(JobError::ShuttingDown)));
}
