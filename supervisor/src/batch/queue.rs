//! The per-model queue and batch planning — the one place batches are cut.
//!
//! Items (one tokenized input each) wait in arrival order. [`Queue::plan`] cuts the next
//! batch: everything when it fits, otherwise a window of items of similar length that
//! includes the oldest item (so nothing starves), chosen to waste the least padding,
//! within `max_batch_size` sequences and `max_batch_tokens` padded tokens. Items of a
//! batch that was lost in a worker crash go back to the head of the queue and are then
//! sent one per batch, so a poison input is found and fails alone.
//!
//! When to cut one is `policy.rs`'s decision.

use std::collections::VecDeque;

use tokio::time::Instant;

use crate::tokenize::Tokens;

/// One input waiting for the worker.
#[derive(Debug)]
pub struct Item {
    /// Which job (request) it belongs to and its position there.
    pub job: u64,
    pub index: u32,
    pub tokens: Tokens,
    /// Times it was in flight when a worker crashed.
    pub crashes: u8,
    pub enqueued: Instant,
}

impl Item {
    /// Its length in tokens.
    pub fn len(&self) -> usize {
        self.tokens.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.ids.is_empty()
    }
}

/// Bounds on one batch (`batch.max_batch_size`, `batch.max_batch_tokens`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
}

#[derive(Debug, Default)]
pub struct Queue {
    items: VecDeque<Item>,
}

impl Queue {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn push(&mut self, item: Item) {
        self.items.push_back(item);
    }

    /// Puts items back at the head, keeping their order (crash retry).
    pub fn requeue_front(&mut self, items: Vec<Item>) {
        for item in items.into_iter().rev() {
            self.items.push_front(item);
        }
    }

    /// True when the next item survived a worker crash (it will be sent alone).
    pub fn head_is_suspect(&self) -> bool {
        self.items.front().is_some_and(|i| i.crashes > 0)
    }

    /// When the oldest item arrived.
    pub fn oldest(&self) -> Option<Instant> {
        self.items.iter().map(|i| i.enqueued).min()
    }

    /// Removes items for which `keep` is false (cancelled jobs); returns how many.
    pub fn retain(&mut self, mut keep: impl FnMut(&Item) -> bool) -> usize {
        let before = self.items.len();
        self.items.retain(|i| keep(i));
        before - self.items.len()
    }

    /// True when a full batch is waiting (no reason to wait for more).
    pub fn has_full_batch(&self, limits: Limits) -> bool {
        if self.items.len() >= limits.max_batch_size {
            return true;
        }
        let longest = self.items.iter().map(Item::len).max().unwrap_or(0);
        longest * self.items.len() >= limits.max_batch_tokens
    }

    /// Takes the next batch, or nothing when the queue is empty. A single item longer
    /// than the token budget still goes alone.
    pub fn plan(&mut self, limits: Limits) -> Vec<Item> {
        let n = self.items.len();
        if n == 0 {
            return Vec::new();
        }
        // An item that was in flight when a worker crashed goes alone: if it is what kills
        // the worker, the next crash then fails only it, not its batch mates.
        if self.items[0].crashes > 0 {
            return vec![self.items.pop_front().unwrap()];
        }
        let max_size = limits.max_batch_size.max(1);
        let longest = self.items.iter().map(Item::len).max().unwrap_or(0);
        if n <= max_size && longest * n <= limits.max_batch_tokens {
            let mut all: Vec<Item> = self.items.drain(..).collect();
            all.sort_by_key(Item::len);
            return all;
        }

        // Sort positions by length; the oldest item is the one at the queue head.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| (self.items[i].len(), i));
        let anchor = order.iter().position(|&i| i == 0).unwrap();
        let len_at = |k: usize| self.items[order[k]].len();

        // Best window [start, end) around the anchor: most items that fit, then least padding.
        let mut best: Option<(usize, usize, usize, usize)> = None; // (start, end, count, waste)
        let lo = anchor.saturating_sub(max_size - 1);
        for start in lo..=anchor {
            let mut end = start;
            let mut sum = 0usize;
            while end < n && end - start < max_size {
                let l = len_at(end);
                if l * (end - start + 1) > limits.max_batch_tokens && end > start {
                    break;
                }
                sum += l;
                end += 1;
            }
            if end <= anchor {
                continue; // window does not reach the oldest item
            }
            let count = end - start;
            let waste = len_at(end - 1) * count - sum;
            let better = match best {
                None => true,
                Some((_, _, c, w)) => count > c || (count == c && waste < w),
            };
            if better {
                best = Some((start, end, count, waste));
            }
        }
        let (start, end, _, _) = best.unwrap_or((anchor, anchor + 1, 1, 0));
        let mut chosen: Vec<usize> = order[start..end].to_vec();
        chosen.sort_unstable_by(|a, b| b.cmp(a));
        let mut batch: Vec<Item> = chosen.into_iter().map(|i| self.items.remove(i).unwrap()).collect();
        batch.sort_by_key(Item::len);
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(job: u64, len: usize) -> Item {
        Item {
            job,
            index: 0,
            tokens: Tokens { ids: vec![1; len], type_ids: vec![] },
            crashes: 0,
            enqueued: Instant::now(),
        }
    }

    const LIMITS: Limits = Limits { max_batch_size: 4, max_batch_tokens: 1000 };

    #[test]
    fn small_queue_goes_whole() {
        let mut q = Queue::default();
        for (j, l) in [(0, 5), (1, 50), (2, 7)] {
            q.push(item(j, l));
        }
        let b = q.plan(LIMITS);
        assert_eq!(b.iter().map(|i| i.job).collect::<Vec<_>>(), vec![0, 2, 1]);
        assert!(q.is_empty());
    }

    #[test]
    fn groups_similar_lengths_and_keeps_the_oldest() {
        let mut q = Queue::default();
        // Oldest is long; several short ones and other long ones follow.
        for (j, l) in [(0, 100), (1, 5), (2, 6), (3, 101), (4, 5), (5, 99), (6, 7), (7, 102)] {
            q.push(item(j, l));
        }
        let b = q.plan(LIMITS);
        let jobs: Vec<u64> = b.iter().map(|i| i.job).collect();
        assert!(jobs.contains(&0), "oldest must be served: {jobs:?}");
        assert!(b.iter().all(|i| i.len() >= 99), "long ones together: {jobs:?}");
        assert_eq!(b.len(), 4);
        let b2 = q.plan(LIMITS);
        assert!(b2.iter().all(|i| i.len() <= 7));
        assert!(q.is_empty());
    }

    #[test]
    fn token_budget_splits_batches() {
        let mut q = Queue::default();
        for j in 0..4 {
            q.push(item(j, 400));
        }
        let b = q.plan(LIMITS);
        assert_eq!(b.len(), 2, "2 × 400 fits 1000, 3 × 400 does not");
        let huge = Limits { max_batch_size: 4, max_batch_tokens: 10 };
        assert_eq!(q.plan(huge).len(), 1, "an item over budget still goes alone");
    }

    #[test]
    fn crash_survivors_go_alone() {
        let mut q = Queue::default();
        let mut suspect = item(0, 5);
        suspect.crashes = 1;
        q.requeue_front(vec![suspect, { let mut s = item(1, 5); s.crashes = 1; s }]);
        q.push(item(2, 5));
        assert_eq!(q.plan(LIMITS).iter().map(|i| i.job).collect::<Vec<_>>(), vec![0]);
        assert_eq!(q.plan(LIMITS).iter().map(|i| i.job).collect::<Vec<_>>(), vec![1]);
        assert_eq!(q.plan(LIMITS).len(), 1);
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
