//! When to send the next batch: work-conserving and pipelined.
//!
//! - An idle worker gets what is queued at once: a lone request never waits.
//! - While the worker computes, at most one more batch is sent ahead of it
//!   ([`PIPELINE_DEPTH`] = 2), so IPC and tokenization overlap compute; that batch goes
//!   when a full batch is waiting or the oldest item has waited `batch.max_wait_ms`.
//!   Otherwise the queue keeps filling and is cut when the worker answers.
//! - Inputs that survived a worker crash run alone, with nothing else in flight beside
//!   them, so a second crash convicts exactly one input (`runner/recovery.rs`).
//!
//! Which items form the batch is `Queue::plan`'s business (it always includes the oldest,
//! so nothing starves).

use std::time::Duration;

use tokio::time::Instant;

use super::queue::{Limits, Queue};

/// Batches sent to a worker and not yet answered: one computing, one waiting.
pub const PIPELINE_DEPTH: usize = 2;

/// What is in flight, as far as the policy cares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InFlight {
    /// Batches sent and not answered.
    pub batches: usize,
    /// One of them holds an input that was in flight during a crash.
    pub suspect: bool,
}

/// What the runner should do next about the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Cut a batch (`Queue::plan`) and send it now.
    Send,
    /// Send nothing until an event arrives, or until the given time at the latest.
    Wait(Option<Instant>),
}

/// Decides whether to send a batch now. Pure: the same inputs give the same answer.
pub fn decide(queue: &Queue, in_flight: InFlight, now: Instant, limits: Limits, max_wait: Duration) -> Decision {
    let Some(oldest) = queue.oldest() else { return Decision::Wait(None) };
    // The pipeline is full, or a suspect runs alone: the worker's answer wakes us.
    if in_flight.batches >= PIPELINE_DEPTH || in_flight.suspect {
        return Decision::Wait(None);
    }
    if in_flight.batches == 0 {
        return Decision::Send;
    }
    if queue.head_is_suspect() {
        return Decision::Wait(None);
    }
    let due = oldest + max_wait;
    if queue.has_full_batch(limits) || due <= now {
        Decision::Send
    } else {
        Decision::Wait(Some(due))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Item;
    use crate::tokenize::Tokens;

    const LIMITS: Limits = Limits { max_batch_size: 4, max_batch_tokens: 1000 };
    const WAIT: Duration = Duration::from_millis(50);

    fn queue_of(lens: &[usize], at: Instant) -> Queue {
        let mut q = Queue::default();
        for (job, &len) in lens.iter().enumerate() {
            let tokens = Tokens { ids: vec![1; len], type_ids: vec![] };
            q.push(Item { job: job as u64, index: 0, tokens, crashes: 0, enqueued: at });
        }
        q
    }

    fn busy(batches: usize) -> InFlight {
        InFlight { batches, suspect: false }
    }

    #[test]
    fn empty_queue_waits_for_work() {
        let now = Instant::now();
        assert_eq!(decide(&Queue::default(), busy(0), now, LIMITS, WAIT), Decision::Wait(None));
    }

    #[test]
    fn a_lone_request_never_waits() {
        let now = Instant::now();
        assert_eq!(decide(&queue_of(&[5], now), busy(0), now, LIMITS, WAIT), Decision::Send);
    }

    #[test]
    fn one_batch_is_pipelined_ahead_when_full_or_due() {
        let t0 = Instant::now();
        // Worker busy with one batch: a partial batch waits for max_wait…
        let q = queue_of(&[5, 6], t0);
        assert_eq!(decide(&q, busy(1), t0, LIMITS, WAIT), Decision::Wait(Some(t0 + WAIT)));
        // …and goes once the oldest item has waited that long.
        assert_eq!(decide(&q, busy(1), t0 + WAIT, LIMITS, WAIT), Decision::Send);
        // A full batch goes at once.
        let full = queue_of(&[5, 5, 5, 5], t0);
        assert_eq!(decide(&full, busy(1), t0, LIMITS, WAIT), Decision::Send);
        // A full token budget counts as full too.
        let long = queue_of(&[600, 600], t0);
        assert_eq!(decide(&long, busy(1), t0, LIMITS, WAIT), Decision::Send);
    }

    #[test]
    fn never_more_than_one_batch_ahead() {
        let t0 = Instant::now();
        let full = queue_of(&[5, 5, 5, 5, 5], t0);
        assert_eq!(decide(&full, busy(PIPELINE_DEPTH), t0 + 10 * WAIT, LIMITS, WAIT), Decision::Wait(None));
    }

    #[test]
    fn suspects_run_alone() {
        let t0 = Instant::now();
        let q = queue_of(&[5, 5, 5, 5], t0);
        let suspect = InFlight { batches: 1, suspect: true };
        assert_eq!(decide(&q, suspect, t0 + WAIT, LIMITS, WAIT), Decision::Wait(None));
        // A suspect at the head waits for the pipeline to drain, then goes.
        let mut q = queue_of(&[5], t0);
        let tokens = Tokens { ids: vec![1; 5], type_ids: vec![] };
        q.requeue_front(vec![Item { job: 9, index: 0, tokens, crashes: 1, enqueued: t0 }]);
        assert_eq!(decide(&q, busy(1), t0 + WAIT, LIMITS, WAIT), Decision::Wait(None));
        assert_eq!(decide(&q, busy(0), t0, LIMITS, WAIT), Decision::Send);
    }

    #[test]
    fn the_oldest_sets_the_deadline() {
        let t0 = Instant::now();
        let mut q = queue_of(&[5], t0 + WAIT);
        let tokens = Tokens { ids: vec![1; 5], type_ids: vec![] };
        q.push(Item { job: 7, index: 0, tokens, crashes: 0, enqueued: t0 });
        assert_eq!(decide(&q, busy(1), t0, LIMITS, WAIT), Decision::Wait(Some(t0 + WAIT)));
    }
}
