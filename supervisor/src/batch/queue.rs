//! The per-model queue and batch planning — the one place batches are cut.
//!
//! Items (one tokenized input each) wait in the queue; [`Queue::plan`] puts them in the
//! order they should be served (`order.rs`: priority classes with aging, round robin
//! between clients and between requests) and cuts the next batch. It always includes the
//! first item in that order, so nothing starves, and holds at most
//! `max_batch_size` sequences and `max_batch_tokens` tokens. A worker computes a batch
//! packed, its real tokens and no padding (`TokenBatch`), so lengths may mix freely: the
//! batch is filled in service order, passing over an item that would overflow the token
//! budget for later, smaller ones, until the sequence or the token budget is reached.
//!
//! A batch led by better-priority work than some of the queue holds only work of that
//! priority or better, so a query that overtakes a bulk ingest is not made to wait for bulk
//! inputs in its own batch.
//!
//! An item longer than the token budget still goes, alone. Items that were in flight when
//! a worker died in a way that implicates its inputs ("suspects", `runner/recovery.rs`) go
//! back to the head of the queue and are then sent one per batch, so a poison input is
//! found and fails alone. Either way the batch is sorted by length (a worker that groups
//! sequences of similar length for attention finds them in order).
//!
//! When to cut one is `policy.rs`'s decision.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

pub use super::item::Item;
use super::order::{service_order, Turns};

/// Bounds on one batch (`batch.max_batch_size`, `batch.max_batch_tokens`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_batch_size: usize,
    /// Real tokens: what the worker computes.
    pub max_batch_tokens: usize,
}

/// The tokens a worker computes for `items`: their real tokens (it packs batches).
pub fn tokens(items: &[Item]) -> usize {
    items.iter().map(Item::len).sum()
}

#[derive(Debug, Default)]
pub struct Queue {
    items: VecDeque<Item>,
    /// How long an item waits for its priority to rise one step (`order.rs`).
    aging: Duration,
    /// Whose turn it is, across batches (`order.rs`).
    turns: Turns,
}

impl Queue {
    /// An empty queue whose items' priority rises one step per `aging` waited.
    pub fn new(aging: Duration) -> Queue {
        Queue { items: VecDeque::new(), aging, turns: Turns::default() }
    }

    /// Inputs waiting per priority (their request's, before aging).
    pub fn depth_by_priority(&self) -> std::collections::BTreeMap<i32, usize> {
        let mut out = std::collections::BTreeMap::new();
        for item in &self.items {
            *out.entry(item.priority).or_insert(0) += 1;
        }
        out
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn push(&mut self, item: Item) {
        self.turns.join(item.job, item.client);
        self.items.push_back(item);
    }

    /// Puts items back at the head, keeping their order (retry after a worker died).
    pub fn requeue_front(&mut self, items: Vec<Item>) {
        for item in items.into_iter().rev() {
            self.turns.join(item.job, item.client);
            self.items.push_front(item);
        }
    }

    /// True when the next item is a suspect (it will be sent alone).
    pub fn head_is_suspect(&self) -> bool {
        self.items.front().is_some_and(Item::is_suspect)
    }

    /// The best (lowest) original priority queued.
    pub fn best_priority(&self) -> Option<i32> {
        self.items.iter().map(|i| i.priority).min()
    }

    /// Whether any queued item is `such` (the runner asks whether work may overtake a
    /// yielding batch, `policy.rs`).
    pub fn any(&self, such: impl FnMut(&Item) -> bool) -> bool {
        self.items.iter().any(such)
    }

    /// When the oldest item arrived.
    pub fn oldest(&self) -> Option<Instant> {
        self.items.iter().map(|i| i.enqueued).min()
    }

    /// Removes items for which `keep` is false (cancelled jobs); returns how many.
    pub fn retain(&mut self, mut keep: impl FnMut(&Item) -> bool) -> usize {
        let before = self.items.len();
        self.items.retain(|i| keep(i));
        self.turns.keep_waiting(self.items.iter().map(|i| (i.job, i.client)));
        before - self.items.len()
    }

    /// True when a full batch is waiting: waiting longer could not make it fuller.
    pub fn has_full_batch(&self, limits: Limits) -> bool {
        self.items.len() >= limits.max_batch_size
            || self.items.iter().map(Item::len).sum::<usize>() >= limits.max_batch_tokens
    }

    /// Takes the next batch, or nothing when the queue is empty.
    pub fn plan(&mut self, limits: Limits) -> Vec<Item> {
        self.plan_at(limits, Instant::now())
    }

    /// [`Queue::plan`] at time `now` (which decides how far priorities have aged).
    pub fn plan_at(&mut self, limits: Limits, now: Instant) -> Vec<Item> {
        self.plan_among(limits, now, |_| true)
    }

    /// `plan` over the queued items that are `eligible` only (work that may be computed
    /// inside a yielding batch, `runner/actor/dispatch.rs`); the others stay queued.
    pub fn plan_where(&mut self, limits: Limits, eligible: impl Fn(&Item) -> bool) -> Vec<Item> {
        self.plan_among(limits, Instant::now(), eligible)
    }

    fn plan_among(&mut self, limits: Limits, now: Instant, eligible: impl Fn(&Item) -> bool) -> Vec<Item> {
        let aside: VecDeque<Item>;
        (self.items, aside) = self.items.drain(..).partition(|i| eligible(i));
        let batch = self.plan_eligible(limits, now);
        self.items.extend(aside);
        self.count_served(&batch);
        batch
    }

    /// `plan` over every queued item; the caller counts the batch served.
    fn plan_eligible(&mut self, limits: Limits, now: Instant) -> Vec<Item> {
        if self.items.is_empty() {
            return Vec::new();
        }
        // An item that was in flight when a worker crashed goes alone: if it is what kills
        // the worker, the next crash then fails only it, not its batch mates.
        if self.head_is_suspect() {
            return vec![self.items.pop_front().unwrap()];
        }
        // Serve order: the head is what must go now; the cut below works on this order.
        let order = service_order(self.items.make_contiguous(), now, self.aging, &self.turns);
        let mut slots: Vec<Option<Item>> = self.items.drain(..).map(Some).collect();
        let ordered: VecDeque<Item> = order.into_iter().map(|p| slots[p].take().expect("a permutation")).collect();
        // A batch led by work of a better priority than other queued work (a query that
        // overtook a bulk ingest) holds only work of that priority or better: worse work
        // riding along would make the query wait for it too. The rest waits its turn.
        let lead = ordered[0].priority;
        let held: VecDeque<Item>;
        (self.items, held) = ordered.into_iter().partition(|i| i.priority <= lead);
        let chosen = self.fill_in_order(limits);
        let mut batch = Vec::new();
        let mut rest = VecDeque::with_capacity(self.items.len());
        for (i, item) in self.items.drain(..).enumerate() {
            if chosen[i] {
                batch.push(item);
            } else {
                rest.push_back(item);
            }
        }
        self.items = rest;
        self.items.extend(held);
        batch.sort_by_key(Item::len);
        batch
    }

    fn count_served(&mut self, batch: &[Item]) {
        self.turns.served(batch);
        self.turns.keep_waiting(self.items.iter().map(|i| (i.job, i.client)));
    }

    /// Items in service order while they fit (one over budget goes alone).
    fn fill_in_order(&self, limits: Limits) -> Vec<bool> {
        let max_size = limits.max_batch_size.max(1);
        let mut chosen = vec![false; self.items.len()];
        let (mut count, mut tokens) = (0, 0);
        for (i, item) in self.items.iter().enumerate() {
            if count == max_size || tokens >= limits.max_batch_tokens {
                break;
            }
            if item.is_suspect() {
                continue;
            }
            if count == 0 || tokens + item.len() <= limits.max_batch_tokens {
                chosen[i] = true;
                count += 1;
                tokens += item.len();
            }
        }
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenize::Tokens;

    fn item(job: u64, len: usize) -> Item {
        Item::new(job, 0, Tokens { ids: vec![1; len], type_ids: vec![] }, Instant::now())
    }

    fn suspect(job: u64, len: usize) -> Item {
        Item { strikes: 1, deaths: 1, ..item(job, len) }
    }

    fn jobs(batch: &[Item]) -> Vec<u64> {
        batch.iter().map(|i| i.job).collect()
    }

    const LIMITS: Limits = Limits { max_batch_size: 4, max_batch_tokens: 1000 };

    #[test]
    fn small_queue_goes_whole() {
        let mut q = Queue::default();
        for (j, l) in [(0, 5), (1, 50), (2, 7)] {
            q.push(item(j, l));
        }
        assert_eq!(jobs(&q.plan(LIMITS)), vec![0, 2, 1], "sorted by length");
        assert!(q.is_empty());
    }

    #[test]
    fn a_plan_where_takes_only_eligible_items_and_keeps_the_rest_queued() {
        let mut q = Queue::default();
        for (j, l) in [(0, 100), (1, 5), (0, 100), (2, 6), (0, 100)] {
            q.push(item(j, l));
        }
        // Behind a yielding batch of request 0: its own inputs are not eligible.
        assert_eq!(jobs(&q.plan_where(LIMITS, |i| i.job != 0)), vec![1, 2]);
        assert_eq!(q.len(), 3, "request 0's inputs stay queued");
        assert!(q.plan_where(LIMITS, |i| i.job != 0).is_empty(), "nothing eligible: nothing planned");
        assert_eq!(jobs(&q.plan(LIMITS)), vec![0, 0, 0]);
    }

    #[test]
    fn fills_in_arrival_order_whatever_the_lengths() {
        let mut q = Queue::default();
        for (j, l) in [(0, 100), (1, 5), (2, 6), (3, 101), (4, 5), (5, 99)] {
            q.push(item(j, l));
        }
        // Mixing lengths costs a packing worker nothing: the four oldest go.
        assert_eq!(jobs(&q.plan(LIMITS)), vec![1, 2, 0, 3]);
        assert_eq!(jobs(&q.plan(LIMITS)), vec![4, 5]);
    }

    #[test]
    fn the_budget_counts_real_tokens_and_passes_over_what_does_not_fit() {
        let mut q = Queue::default();
        for (j, l) in [(0, 400), (1, 500), (2, 300), (3, 50), (4, 60)] {
            q.push(item(j, l));
        }
        // 400 + 500 = 900; 300 would overflow 1000, the next 50 fits, then the size limit.
        let b = q.plan(LIMITS);
        assert_eq!(jobs(&b), vec![3, 0, 1]);
        assert_eq!(tokens(&b), 950);
        // The item passed over is now the oldest and goes first.
        assert_eq!(jobs(&q.plan(LIMITS)), vec![4, 2]);
    }

    #[test]
    fn token_budget_splits_batches() {
        let mut q = Queue::default();
        for j in 0..4 {
            q.push(item(j, 400));
        }
        assert_eq!(q.plan(LIMITS).len(), 2, "2 × 400 fits 1000, 3 × 400 does not");
        let huge = Limits { max_batch_size: 4, max_batch_tokens: 10 };
        assert_eq!(q.plan(huge).len(), 1, "an item over budget still goes alone");
        assert_eq!(q.plan(huge).len(), 1, "an item over budget still goes alone");
        assert!(q.is_empty());
    }

    #[test]
    fn a_full_batch_is_full_by_sequences_or_tokens() {
        let mut q = Queue::default();
        for j in 0..3 {
            q.push(item(j, 300));
        }
        q.push(item(3, 50));
        assert!(q.has_full_batch(LIMITS), "4 sequences");
        let roomy = Limits { max_batch_size: 6, ..LIMITS };
        assert!(!q.has_full_batch(roomy), "950 real tokens leave room");
        q.push(item(4, 60));
        assert!(q.has_full_batch(roomy), "1010 real tokens");
    }

    #[test]
    fn crash_survivors_go_alone() {
        let mut q = Queue::default();
        q.requeue_front(vec![suspect(0, 5), suspect(1, 5)]);
        q.push(item(2, 5));
        q.push(item(3, 5));
        assert_eq!(jobs(&q.plan(LIMITS)), vec![0]);
        assert_eq!(jobs(&q.plan(LIMITS)), vec![1]);
        assert_eq!(jobs(&q.plan(LIMITS)), vec![2, 3]);
    }

    #[test]
    fn a_batch_led_by_better_priority_work_holds_only_that() {
        let mut q = Queue::new(Duration::ZERO);
        for j in 0..3 {
            q.push(item(j, 20).with_class(10, 1));
        }
        q.push(item(3, 5).with_class(0, 2));
        assert_eq!(jobs(&q.plan(LIMITS)), vec![3], "the query alone, bulk waits");
        assert_eq!(jobs(&q.plan(LIMITS)), vec![0, 1, 2]);
        // Work of the lead's priority or better rides along; worse does not.
        q.push(item(4, 20).with_class(10, 1));
        q.push(item(5, 5).with_class(0, 2));
        q.push(item(6, 5).with_class(-1, 3));
        assert_eq!(jobs(&q.plan(LIMITS)), vec![6]);
        assert_eq!(jobs(&q.plan(LIMITS)), vec![5]);
        assert_eq!(jobs(&q.plan(LIMITS)), vec![4]);
    }

    #[test]
    fn requeue_goes_first() {
        let mut q = Queue::default();
        q.push(item(1, 5));
        q.requeue_front(vec![item(0, 5)]);
        assert_eq!(q.items.front().unwrap().job, 0);
        assert!(q.has_full_batch(Limits { max_batch_size: 2, max_batch_tokens: 100 }));
    }
}
