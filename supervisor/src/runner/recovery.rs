//! Crash recovery: what happens to the inputs a dead worker held, when the runner tries
//! again, and when a batch means the worker hangs. Pure functions; the runner applies them.
//!
//! - A worker's death puts the inputs that were in flight back at the head of the queue,
//!   in the order they were sent.
//! - How it died decides what that says about them (`worker/death.rs`). A crash or a hang
//!   implicates the batch it was computing (the oldest in flight; the other one was only
//!   waiting): those inputs become suspects, sent one per batch with nothing else in
//!   flight (`batch/policy.rs`), so a suspect being computed during a second such death is
//!   convicted: it fails alone with a 500 that says so, and its batch mates are unharmed.
//!   A kill from outside (SIGKILL, SIGTERM, the OOM killer, a stopped worker) implicates
//!   nothing: the inputs are retried as they were.
//! - Whatever the cause, an input in flight during [`MAX_DEATHS`] deaths is not retried
//!   again (503), so nothing retries forever.
//! - A batch running [`HANG_FACTOR`] times longer than the model's observed time for its
//!   size, and longer than `limits.hung_worker_seconds`, means the worker hangs: the
//!   runner kills it, and its death is handled as above.
//! - The first restart after a crash is immediate (requests are waiting); repeated crashes
//!   and failed starts back off exponentially, 250 ms doubling up to 30 s.

use std::time::Duration;

use tokio::time::Instant;

use crate::batch::Item;

/// Cap on the exponent of the start back-off.
pub const MAX_START_FAILURES: u32 = 6;

/// Worker deaths, of any cause, an input may be in flight for before it fails.
pub const MAX_DEATHS: u8 = 4;

/// How many times the observed time for its size a batch may take before the worker is
/// taken as hung. Generous: a busy machine slows batches down, and killing a worker that
/// was only slow costs a reload and a strike against its inputs.
pub const HANG_FACTOR: u32 = 10;

/// 250 ms × 2^`failures`, at most 30 s.
pub fn backoff(failures: u32) -> Duration {
    let ms = 250u64.saturating_mul(1 << failures.min(7));
    Duration::from_millis(ms.min(30_000))
}

/// How long to wait before restarting after the `restarts`-th crash.
pub fn restart_delay(restarts: u32) -> Duration {
    if restarts <= 1 {
        Duration::ZERO
    } else {
        backoff(restarts - 1)
    }
}

/// How long to wait before the next start after `failures` failed starts in a row.
pub fn start_retry_delay(failures: u32) -> Duration {
    backoff(failures.min(MAX_START_FAILURES))
}

/// Whether a runner without a worker starts one now: when work (or a `load`) waits and no
/// back-off forbids it, or when a crashed worker's restart is due.
pub fn should_start(wanted: bool, crashed: bool, restart_at: Option<Instant>, now: Instant) -> bool {
    let due = restart_at.is_some_and(|t| t <= now);
    (wanted && (restart_at.is_none() || due)) || (crashed && due)
}

/// Sequence length up to which the pace's linear model (a fixed cost plus a cost per
/// token, `batch/pace.rs`) holds for the watchdog: attention's cost per token grows with the
/// sequence's length, so a batch holding a longer sequence is allowed proportionally longer.
/// Measured: one 8,192-token window of nomic-embed-text-v1.5's shape took 70 s on the 2-core
/// CPU where the linear model, fitted on short traffic, predicted 2.8–4.5 s, and the
/// watchdog killed a worker that was only computing.
pub const LINEAR_UP_TO: usize = 512;

/// When the batch that began computing at `started`, its longest sequence `longest`
/// tokens, means the worker hangs: `HANG_FACTOR` × its predicted time, at least `floor`;
/// before the model's speed is known (its first batch ever), `HANG_FACTOR` × `floor`; either
/// stretched by `longest / LINEAR_UP_TO` past that length.
pub fn hang_deadline(started: Instant, predicted: Option<Duration>, floor: Duration, longest: usize) -> Instant {
    let allowed = match predicted {
        Some(took) => took.saturating_mul(HANG_FACTOR).max(floor),
        None => floor.saturating_mul(HANG_FACTOR),
    };
    let stretch = longest.div_ceil(LINEAR_UP_TO).max(1) as u32;
    started + allowed.saturating_mul(stretch)
}

/// What a worker's death does to the inputs that were in flight.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Back to the head of the queue, in the order they were sent.
    pub retry: Vec<Item>,
    /// Computed during two deaths that implicate them: they fail as poison.
    pub convicted: Vec<Item>,
    /// In flight during `MAX_DEATHS` deaths: they fail as unavailable.
    pub exhausted: Vec<Item>,
}

/// Sorts the in-flight batches of a dead worker (in the order they were sent; the first
/// was being computed) into retries, convictions and exhausted retries. `implicates`: the
/// death implicates the batch being computed (`Cause::implicates_input`).
pub fn sort_out(batches: Vec<Vec<Item>>, implicates: bool) -> Verdict {
    let mut verdict = Verdict::default();
    for (n, batch) in batches.into_iter().enumerate() {
        for mut item in batch {
            item.deaths = item.deaths.saturating_add(1);
            if implicates && n == 0 {
                item.strikes = item.strikes.saturating_add(1);
            }
            if item.strikes >= 2 {
                verdict.convicted.push(item);
            } else if item.deaths >= MAX_DEATHS {
                verdict.exhausted.push(item);
            } else {
                verdict.retry.push(item);
            }
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenize::Tokens;

    fn item(job: u64, strikes: u8, deaths: u8) -> Item {
        let tokens = Tokens { ids: vec![1, 2], type_ids: vec![] };
        Item { strikes, deaths, ..Item::new(job, 0, tokens, Instant::now()) }
    }

    fn marks(items: &[Item]) -> Vec<(u64, u8, u8)> {
        items.iter().map(|i| (i.job, i.strikes, i.deaths)).collect()
    }

    #[test]
    fn a_crash_implicates_the_batch_being_computed_and_a_second_convicts() {
        let v = sort_out(vec![vec![item(1, 0, 0), item(2, 0, 0)], vec![item(3, 0, 0)]], true);
        assert_eq!(marks(&v.retry), [(1, 1, 1), (2, 1, 1), (3, 0, 1)], "the waiting batch is not implicated");
        let v = sort_out(vec![vec![item(1, 1, 1)]], true);
        assert_eq!(marks(&v.convicted), [(1, 2, 2)]);
    }

    #[test]
    fn a_kill_implicates_nothing_but_retries_are_bounded() {
        let v = sort_out(vec![vec![item(1, 1, 1), item(2, 0, 2)]], false);
        assert_eq!(marks(&v.retry), [(1, 1, 2), (2, 0, 3)]);
        assert!(v.convicted.is_empty());
        let v = sort_out(vec![vec![item(1, 0, MAX_DEATHS - 1)]], false);
        assert_eq!(marks(&v.exhausted), [(1, 0, MAX_DEATHS)]);
    }

    #[test]
    fn a_hang_is_many_times_the_observed_time_with_a_floor() {
        let t0 = Instant::now();
        let floor = Duration::from_secs(30);
        assert_eq!(hang_deadline(t0, Some(Duration::from_secs(10)), floor, 300), t0 + Duration::from_secs(100));
        assert_eq!(hang_deadline(t0, Some(Duration::from_millis(20)), floor, 512), t0 + floor);
        assert_eq!(hang_deadline(t0, None, floor, 64), t0 + floor * HANG_FACTOR, "first batch ever: generous");
        // An 8,192-token window: sixteen times as long (attention grows with its length).
        let long = hang_deadline(t0, Some(Duration::from_secs(3)), floor, 8192);
        assert_eq!(long, t0 + Duration::from_secs(30 * 16));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(restart_delay(1), Duration::ZERO);
        assert_eq!(restart_delay(2), Duration::from_millis(500));
        assert_eq!(restart_delay(3), Duration::from_millis(1000));
        assert_eq!(backoff(20), Duration::from_millis(30_000));
        assert_eq!(start_retry_delay(100), backoff(MAX_START_FAILURES));
    }

    #[test]
    fn starts_when_wanted_and_allowed() {
        let now = Instant::now();
        let later = Some(now + Duration::from_secs(1));
        assert!(should_start(true, false, None, now));
        assert!(!should_start(true, false, later, now), "back-off holds");
        assert!(should_start(true, false, Some(now), now));
        assert!(!should_start(false, false, None, now), "nothing to do");
        assert!(should_start(false, true, Some(now), now), "a crashed worker comes back");
        assert!(!should_start(false, true, later, now));
    }
}
