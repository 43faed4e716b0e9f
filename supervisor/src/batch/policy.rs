//! When to send the next batch: work-conserving, pipelined, and cut as late as is useful.
//!
//! - An idle worker gets what is queued at once: a lone request never waits.
//! - While the worker computes, one more batch may be sent ahead of it
//!   ([`PIPELINE_DEPTH`] = 2), so it finds its next batch ready the moment it finishes
//!   the current one. Bulk work that yields (`Rules::depth` 1: every queued input is
//!   bulk and `scheduling.bulk_max_batch_ms` bounds it) gets no batch sent ahead, so a
//!   query that arrives waits for the batch being computed only, not for one queued
//!   behind it in the worker. That batch is cut as late as possible, so that it holds everything
//!   that arrived meanwhile: just before the worker is predicted to be free (from its
//!   observed speed, `pace.rs`), even when a full batch is waiting: work that arrives
//!   meanwhile may have a better claim to it (priorities, turns: `order.rs`). Until the
//!   worker's speed is known (its first batch), a full batch goes at once, and
//!   `batch.max_wait_ms` after the oldest input arrived stands in for the prediction.
//!   Committing inputs early to a half-empty batch would leave the next one emptier and
//!   the worker running more, smaller batches; waiting costs no latency, since the worker
//!   is busy anyway.
//! - Suspects (inputs in flight when a worker crashed or hung) run alone, with nothing
//!   else in flight beside them, so a second death convicts exactly one input
//!   (`runner/recovery.rs`).
//! - A long batch yields ([`batch_yields`]: a late-chunked document, a sequence past
//!   [`YIELD_PAST_TOKENS`], a predicted time of [`YIELD_AFTER_BATCHES`] × the batch time
//!   bound, or bulk work only): the worker looks for a batch sent behind it after each
//!   transformer layer and computes that one first. Behind a yielding batch only work that
//!   may overtake it ([`overtakes`]: short, and of a better priority, or of its own
//!   priority when that is not bulk and the batch is long) is sent, and at once, not at
//!   the cut: it runs at the next layer boundary. Anything else waits for the yielding batch's answer, since the
//!   worker would compute it whole in the middle of the long one.
//!
//! Which items form the batch is `Queue::plan`'s business (it always includes the oldest,
//! so nothing starves).

use std::time::Duration;

use tokio::time::Instant;

use super::queue::{Item, Limits, Queue};

/// Batches sent to a worker and not yet answered: one computing, one waiting.
pub const PIPELINE_DEPTH: usize = 2;

/// What is in flight, as far as the policy cares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InFlight {
    /// Batches sent and not answered.
    pub batches: usize,
    /// One of them holds a suspect.
    pub suspect: bool,
    /// When the next batch should be cut to be ready as the worker finishes what it is
    /// computing (`Pace::cut_at`); None while its speed is unknown.
    pub cut_at: Option<Instant>,
    /// The batch being computed yields at its layer boundaries ([`batch_yields`]).
    pub head_yields: bool,
    /// Queued work may overtake it ([`overtakes`]).
    pub overtake: bool,
}

/// A sequence longer than this makes its batch yield: attention's cost grows with the
/// length, and one such window can take seconds on a CPU (`runner/recovery.rs`'s
/// `LINEAR_UP_TO`, the same length).
pub const YIELD_PAST_TOKENS: usize = 512;

/// A batch predicted to take this many times `scheduling.max_batch_ms` yields.
pub const YIELD_AFTER_BATCHES: u32 = 4;

/// Whether the batch of `items` yields: it holds a late-chunked document or a sequence
/// past [`YIELD_PAST_TOKENS`], or its predicted time is [`YIELD_AFTER_BATCHES`] ×
/// `max_batch` (zero: no bound), or all of it is bulk (worse than `default_priority`).
pub fn batch_yields(items: &[Item], predicted: Option<Duration>, max_batch: Duration, default_priority: i32) -> bool {
    let long = items.iter().any(is_long);
    let slow = !max_batch.is_zero() && predicted.is_some_and(|p| p >= max_batch * YIELD_AFTER_BATCHES);
    let bulk = !items.is_empty() && items.iter().all(|i| i.priority > default_priority);
    long || slow || bulk
}

/// A late-chunked document, or an input with a sequence past [`YIELD_PAST_TOKENS`].
pub fn is_long(item: &Item) -> bool {
    item.late.is_some() || item.sequences().any(|t| t.ids.len() > YIELD_PAST_TOKENS)
}

/// Whether queued `item` may run inside a yielding batch whose best priority is `head`
/// (`head_long`: it holds a long input, [`is_long`]): it is not long itself, and its
/// priority is better, or the same where that is not bulk (a bulk batch yields to
/// queries, not to the next bulk batch, which would then run whole in its middle) and the
/// batch is long. A batch that yields only for its predicted time was sized by the pace
/// from queued work of its own class (up to sixteen times `max_batch_ms`, so that its
/// fixed cost stays small: `Overhead::INTERACTIVE`); that class overtaking it in batches
/// of `max_batch_ms` would pay the fixed cost on every one of those instead.
pub fn overtakes(item: &Item, head: i32, head_long: bool, default_priority: i32) -> bool {
    !is_long(item) && (item.priority < head || (item.priority == head && head <= default_priority && head_long))
}

/// The settings the policy applies.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub limits: Limits,
    /// `batch.max_wait_ms`: how long the next batch may wait to fill while the worker is
    /// busy and its speed is not known yet.
    pub max_wait: Duration,
    /// Batches that may be in flight at once: [`PIPELINE_DEPTH`], or 1 for bulk work that
    /// yields to queries.
    pub depth: usize,
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
pub fn decide(queue: &Queue, in_flight: InFlight, now: Instant, rules: Rules) -> Decision {
    let Some(oldest) = queue.oldest() else { return Decision::Wait(None) };
    // The pipeline is full, or a suspect runs alone: the worker's answer wakes us.
    if in_flight.batches >= rules.depth.clamp(1, PIPELINE_DEPTH) || in_flight.suspect {
        return Decision::Wait(None);
    }
    if in_flight.batches == 0 {
        return Decision::Send;
    }
    if queue.head_is_suspect() {
        return Decision::Wait(None);
    }
    // Behind a yielding batch: work that may overtake it goes now (the worker takes it at
    // the next layer boundary); other work waits for its answer.
    if in_flight.head_yields {
        return if in_flight.overtake { Decision::Send } else { Decision::Wait(None) };
    }
    // Once the worker's speed is known, even a full batch is cut only just before the
    // worker is free: work that arrives meanwhile (a query behind a bulk ingest, a small
    // request behind a huge one) can still take its turn in it (`order.rs`), and waits at
    // most for the batch being computed instead of that one and a batch sent ahead.
    if in_flight.cut_at.is_none() && queue.has_full_batch(rules.limits) {
        return Decision::Send;
    }
    let due = in_flight.cut_at.unwrap_or(oldest + rules.max_wait);
    if due <= now {
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

    const WAIT: Duration = Duration::from_millis(50);
    const RULES: Rules =
        Rules { limits: Limits { max_batch_size: 4, max_batch_tokens: 1000 }, max_wait: WAIT, depth: PIPELINE_DEPTH };

    fn item(job: u64, len: usize, at: Instant) -> Item {
        Item::new(job, 0, Tokens { ids: vec![1; len], type_ids: vec![] }, at)
    }

    fn queue_of(lens: &[usize], at: Instant) -> Queue {
        let mut q = Queue::default();
        for (job, &len) in lens.iter().enumerate() {
            q.push(item(job as u64, len, at));
        }
        q
    }

    fn busy(batches: usize) -> InFlight {
        InFlight { batches, ..Default::default() }
    }

    #[test]
    fn empty_queue_waits_for_work() {
        let now = Instant::now();
        assert_eq!(decide(&Queue::default(), busy(0), now, RULES), Decision::Wait(None));
    }

    #[test]
    fn a_lone_request_never_waits() {
        let now = Instant::now();
        assert_eq!(decide(&queue_of(&[5], now), busy(0), now, RULES), Decision::Send);
        let known = InFlight { cut_at: Some(now + WAIT), ..busy(0) };
        assert_eq!(decide(&queue_of(&[5], now), known, now, RULES), Decision::Send);
    }

    #[test]
    fn the_next_batch_is_cut_just_before_the_worker_is_free() {
        let t0 = Instant::now();
        let q = queue_of(&[5, 6], t0);
        // The worker will be free in 300 ms: no reason to commit these two at max_wait.
        let computing = InFlight { cut_at: Some(t0 + 6 * WAIT), ..busy(1) };
        assert_eq!(decide(&q, computing, t0 + WAIT, RULES), Decision::Wait(Some(t0 + 6 * WAIT)));
        assert_eq!(decide(&q, computing, t0 + 6 * WAIT, RULES), Decision::Send);
        // A worker quicker than max_wait gets its next batch sooner.
        let quick = InFlight { cut_at: Some(t0 + WAIT / 5), ..busy(1) };
        assert_eq!(decide(&q, quick, t0, RULES), Decision::Wait(Some(t0 + WAIT / 5)));
    }

    #[test]
    fn until_the_speed_is_known_max_wait_stands_in() {
        let t0 = Instant::now();
        let q = queue_of(&[5, 6], t0);
        assert_eq!(decide(&q, busy(1), t0, RULES), Decision::Wait(Some(t0 + WAIT)));
        assert_eq!(decide(&q, busy(1), t0 + WAIT, RULES), Decision::Send);
    }

    #[test]
    fn a_full_batch_goes_at_once_until_the_speed_is_known() {
        let t0 = Instant::now();
        let unknown = busy(1);
        assert_eq!(decide(&queue_of(&[5, 5, 5, 5], t0), unknown, t0, RULES), Decision::Send);
        // A full token budget counts as full too: 600 + 500 real tokens > 1000…
        assert_eq!(decide(&queue_of(&[600, 500], t0), unknown, t0, RULES), Decision::Send);
        // …while 700 leave room.
        assert_eq!(decide(&queue_of(&[600, 100], t0), unknown, t0, RULES), Decision::Wait(Some(t0 + WAIT)));
        // Speed known: even a full batch waits for the cut, so later work can join it.
        let computing = InFlight { cut_at: Some(t0 + 10 * WAIT), ..busy(1) };
        assert_eq!(decide(&queue_of(&[5, 5, 5, 5], t0), computing, t0, RULES), Decision::Wait(Some(t0 + 10 * WAIT)));
        assert_eq!(decide(&queue_of(&[5, 5, 5, 5], t0), computing, t0 + 10 * WAIT, RULES), Decision::Send);
    }

    #[test]
    fn never_more_than_one_batch_ahead() {
        let t0 = Instant::now();
        let full = queue_of(&[5, 5, 5, 5, 5], t0);
        assert_eq!(decide(&full, busy(PIPELINE_DEPTH), t0 + 10 * WAIT, RULES), Decision::Wait(None));
    }

    #[test]
    fn bulk_work_that_yields_gets_no_batch_sent_ahead() {
        let t0 = Instant::now();
        let q = queue_of(&[5, 5], t0);
        let computing = InFlight { cut_at: Some(t0), ..busy(1) };
        let yielding = Rules { depth: 1, ..RULES };
        assert_eq!(decide(&q, computing, t0 + WAIT, yielding), Decision::Wait(None), "the worker's answer wakes it");
        assert_eq!(decide(&q, busy(0), t0, yielding), Decision::Send, "an idle worker still gets it at once");
        assert_eq!(decide(&q, computing, t0 + WAIT, RULES), Decision::Send);
    }

    #[test]
    fn work_that_overtakes_a_yielding_batch_goes_at_once() {
        let t0 = Instant::now();
        let q = queue_of(&[5], t0);
        let long = InFlight { cut_at: Some(t0 + 10 * WAIT), head_yields: true, ..busy(1) };
        assert_eq!(decide(&q, InFlight { overtake: true, ..long }, t0, RULES), Decision::Send, "not at the cut");
        assert_eq!(decide(&q, long, t0 + 20 * WAIT, RULES), Decision::Wait(None), "the rest waits for the answer");
        let two = InFlight { overtake: true, ..long };
        assert_eq!(decide(&q, InFlight { batches: 2, ..two }, t0, RULES), Decision::Wait(None), "one at a time");
        let suspect = InFlight { suspect: true, ..two };
        assert_eq!(decide(&q, suspect, t0, RULES), Decision::Wait(None), "a suspect still runs alone");
    }

    #[test]
    fn long_slow_and_bulk_batches_yield() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let short = vec![item(1, 5, t0), item(2, 512, t0)];
        assert!(!batch_yields(&short, Some(ms(20)), ms(50), 0));
        assert!(batch_yields(&[item(1, 5, t0), item(2, 513, t0)], Some(ms(20)), ms(50), 0), "a long sequence");
        let mut late = item(3, 100, t0);
        late.late = Some(Box::new(crate::batch::LatePools { more: vec![], chunks: vec![vec![(0, 50)]] }));
        assert!(batch_yields(&[late], None, ms(50), 0), "a late-chunked document, however short");
        assert!(batch_yields(&short, Some(ms(200)), ms(50), 0), "predicted at 4 × max_batch_ms");
        assert!(!batch_yields(&short, Some(ms(200)), ms(0), 0), "no time bound: not by time");
        let bulk: Vec<Item> = short.into_iter().map(|i| i.with_class(5, 0)).collect();
        assert!(batch_yields(&bulk, None, ms(50), 0), "bulk only");
    }

    #[test]
    fn short_work_of_a_better_or_interactive_priority_overtakes() {
        let t0 = Instant::now();
        let query = item(1, 12, t0);
        assert!(overtakes(&query, 0, true, 0), "a query overtakes an interactive document");
        assert!(overtakes(&query, 5, false, 0), "and a bulk batch");
        assert!(!overtakes(&item(2, 12, t0).with_class(5, 0), 5, true, 0), "bulk does not overtake bulk");
        assert!(overtakes(&item(2, 12, t0).with_class(5, 0), 9, false, 0), "better bulk overtakes worse bulk");
        assert!(!overtakes(&item(3, 600, t0), 5, false, 0), "a long input does not overtake");
        assert!(!overtakes(&item(4, 12, t0).with_class(1, 0), 0, true, 0), "worse than the head does not");
        // A batch of short interactive inputs that yields for its predicted time (the pace
        // sized it): its own class waits for it, a better priority does not.
        assert!(!overtakes(&query, 0, false, 0), "the same class behind a slow batch waits");
        assert!(overtakes(&query, 1, false, 0), "a better priority overtakes it");
    }

    #[test]
    fn suspects_run_alone() {
        let t0 = Instant::now();
        let q = queue_of(&[5, 5, 5, 5], t0);
        let suspect = InFlight { suspect: true, ..busy(1) };
        assert_eq!(decide(&q, suspect, t0 + WAIT, RULES), Decision::Wait(None));
        // A suspect at the head waits for the pipeline to drain, then goes.
        let mut q = queue_of(&[5], t0);
        q.requeue_front(vec![Item { strikes: 1, deaths: 1, ..item(9, 5, t0) }]);
        assert_eq!(decide(&q, busy(1), t0 + WAIT, RULES), Decision::Wait(None));
        assert_eq!(decide(&q, busy(0), t0, RULES), Decision::Send);
    }

    #[test]
    fn the_oldest_sets_the_fallback_deadline() {
        let t0 = Instant::now();
        let mut q = queue_of(&[5], t0 + WAIT);
        q.push(item(7, 5, t0));
        assert_eq!(decide(&q, busy(1), t0, RULES), Decision::Wait(Some(t0 + WAIT)));
    }
}
