//! Crash recovery: what happens to the inputs a dead worker held, and when the runner
//! tries again. Pure functions; the runner applies them.
//!
//! - A crash puts the inputs that were in flight back at the head of the queue, in order.
//! - Those survivors are then sent one per batch with nothing else in flight
//!   (`batch/policy.rs`), so an input in flight during a second crash is convicted: it
//!   fails alone with a 500 that says so, and its batch mates are unharmed.
//! - The first restart after a crash is immediate (requests are waiting); repeated crashes
//!   and failed starts back off exponentially, 250 ms doubling up to 30 s.

use std::time::Duration;

use tokio::time::Instant;

use crate::batch::Item;

/// Cap on the exponent of the start back-off.
pub const MAX_START_FAILURES: u32 = 6;

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

/// What a crash does to the inputs that were in flight.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Back to the head of the queue, in the order they were sent.
    pub retry: Vec<Item>,
    /// In flight during two crashes: they fail.
    pub convicted: Vec<Item>,
}

/// Sorts the in-flight batches of a crashed worker (in the order they were sent) into
/// retries and convictions.
pub fn sort_out(batches: Vec<Vec<Item>>) -> Verdict {
    let mut verdict = Verdict::default();
    for mut item in batches.into_iter().flatten() {
        item.crashes = item.crashes.saturating_add(1);
        if item.crashes >= 2 {
            verdict.convicted.push(item);
        } else {
            verdict.retry.push(item);
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenize::Tokens;

    fn item(job: u64, crashes: u8) -> Item {
        let tokens = Tokens { ids: vec![1, 2], type_ids: vec![] };
        Item { job, index: 0, tokens, crashes, enqueued: Instant::now() }
    }

    #[test]
    fn second_crash_convicts() {
        let v = sort_out(vec![vec![item(1, 0), item(2, 0)], vec![item(3, 1)]]);
        assert_eq!(v.retry.iter().map(|i| (i.job, i.crashes)).collect::<Vec<_>>(), [(1, 1), (2, 1)]);
        assert_eq!(v.convicted.iter().map(|i| i.job).collect::<Vec<_>>(), [3]);
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
