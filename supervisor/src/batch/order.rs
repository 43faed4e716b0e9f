//! The order in which queued inputs are served: priority classes with aging, then round
//! robin between clients, then round robin between one client's requests.
//!
//! - **Priority** (vLLM's meaning: lower runs first). Each input carries its request's
//!   priority. Aging keeps bulk work from starving: every `aging` an input waits, its
//!   priority rises one step, but never past the best priority queued, so old bulk work
//!   ends up sharing the best class round robin rather than waiting behind it forever.
//! - **Clients** within a class take turns, one input each per round, so one client with
//!   10,000 queued inputs gets one input into a batch for each of another client's.
//! - **Requests** of one client take turns the same way, so a request of 2,048 long inputs
//!   does not hold up a one-word request behind it (each gets one input per round).
//!
//! Turns are remembered across batches ([`Turns`]): each request and each client counts the
//! inputs it had served, so when a batch holds only one input the next batch goes to the
//! next in turn. A newcomer starts level with the least served of those waiting (a client
//! that just arrived does not get the turns it missed while absent).
//!
//! Ties keep the fresher class and then arrival order. Items that were in flight when a
//! worker died implicating them (suspects) come first, in queue order: they run alone.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use super::item::Item;

/// The priority an input is served at after waiting: one step better per `aging` waited,
/// never better than `best` (the best priority queued). `aging` zero: no aging.
pub fn effective_priority(priority: i32, waited: Duration, aging: Duration, best: i32) -> i32 {
    if aging.is_zero() || priority <= best {
        return priority.max(best);
    }
    let steps = (waited.as_nanos() / aging.as_nanos()).min(i32::MAX as u128) as i64;
    (priority as i64 - steps).max(best as i64) as i32
}

/// Inputs served so far per waiting request (with its client) and per waiting client.
#[derive(Debug, Default)]
pub struct Turns {
    jobs: HashMap<u64, (u64, u64)>,
    clients: HashMap<u64, u64>,
}

impl Turns {
    /// Registers the request and client of an input joining the queue.
    pub fn join(&mut self, job: u64, client: u64) {
        if !self.clients.contains_key(&client) {
            let level = self.clients.values().copied().min().unwrap_or(0);
            self.clients.insert(client, level);
        }
        if !self.jobs.contains_key(&job) {
            let level = self.jobs.values().filter(|(c, _)| *c == client).map(|&(_, n)| n).min().unwrap_or(0);
            self.jobs.insert(job, (client, level));
        }
    }

    /// Counts a batch's inputs as served.
    pub fn served(&mut self, batch: &[Item]) {
        for item in batch {
            if let Some((_, n)) = self.jobs.get_mut(&item.job) {
                *n += 1;
            }
            if let Some(n) = self.clients.get_mut(&item.client) {
                *n += 1;
            }
        }
    }

    /// Forgets requests and clients with nothing left in `items`.
    pub fn keep_waiting(&mut self, items: impl Iterator<Item = (u64, u64)>) {
        let (mut jobs, mut clients) = (HashSet::new(), HashSet::new());
        for (job, client) in items {
            jobs.insert(job);
            clients.insert(client);
        }
        self.jobs.retain(|j, _| jobs.contains(j));
        self.clients.retain(|c, _| clients.contains(c));
    }

    fn job(&self, job: u64) -> u64 {
        self.jobs.get(&job).map_or(0, |&(_, n)| n)
    }

    fn client(&self, client: u64) -> u64 {
        self.clients.get(&client).copied().unwrap_or(0)
    }
}

/// Positions of `items` in the order they should be served.
pub fn service_order(items: &[Item], now: Instant, aging: Duration, turns: &Turns) -> Vec<usize> {
    let best = items.iter().map(|i| i.priority).min().unwrap_or(0);
    let class: Vec<i32> = items
        .iter()
        .map(|i| effective_priority(i.priority, now.saturating_duration_since(i.enqueued), aging, best))
        .collect();

    // Rank of each request among its client's requests in the same class: the better raw
    // priority first (fresh interactive work before aged bulk work), then the older.
    #[derive(Clone, Copy)]
    struct JobInfo {
        class: i32,
        client: u64,
        priority: i32,
        oldest: Instant,
    }
    let mut jobs: HashMap<u64, JobInfo> = HashMap::new();
    for (pos, item) in items.iter().enumerate() {
        let e = jobs.entry(item.job).or_insert(JobInfo {
            class: class[pos],
            client: item.client,
            priority: item.priority,
            oldest: item.enqueued,
        });
        e.class = e.class.min(class[pos]);
        e.oldest = e.oldest.min(item.enqueued);
    }
    let mut job_list: Vec<(u64, JobInfo)> = jobs.iter().map(|(&j, &info)| (j, info)).collect();
    job_list.sort_by_key(|(j, info)| (info.class, info.client, info.priority, info.oldest, *j));
    let mut job_rank: HashMap<u64, usize> = HashMap::with_capacity(job_list.len());
    let mut client_rank: HashMap<(i32, u64), (i32, Instant)> = HashMap::new();
    let mut last: Option<(i32, u64)> = None;
    let mut rank = 0;
    for (j, info) in &job_list {
        let key = (info.class, info.client);
        rank = if last == Some(key) { rank + 1 } else { 0 };
        last = Some(key);
        job_rank.insert(*j, rank);
        let c = client_rank.entry(key).or_insert((info.priority, info.oldest));
        *c = (c.0.min(info.priority), c.1.min(info.oldest));
    }

    // Each input's round within its request (its position among the request's queued
    // inputs), then its position in its client's interleaved sequence.
    let mut by_job: HashMap<u64, Vec<usize>> = HashMap::new();
    for (pos, item) in items.iter().enumerate() {
        by_job.entry(item.job).or_default().push(pos);
    }
    let mut job_round = vec![0usize; items.len()];
    for positions in by_job.values_mut() {
        positions.sort_by_key(|&p| (items[p].index, p));
        for (round, &p) in positions.iter().enumerate() {
            job_round[p] = turns.job(items[p].job) as usize + round;
        }
    }
    let mut by_client: HashMap<(i32, u64), Vec<usize>> = HashMap::new();
    for (pos, item) in items.iter().enumerate() {
        by_client.entry((jobs[&item.job].class, item.client)).or_default().push(pos);
    }
    let mut client_round = vec![0usize; items.len()];
    for positions in by_client.values_mut() {
        positions.sort_by_key(|&p| (job_round[p], job_rank[&items[p].job]));
        for (round, &p) in positions.iter().enumerate() {
            client_round[p] = turns.client(items[p].client) as usize + round;
        }
    }

    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&p| {
        let item = &items[p];
        let job_class = jobs[&item.job].class;
        let (client_prio, client_oldest) = client_rank[&(job_class, item.client)];
        (
            !item.is_suspect(),
            if item.is_suspect() { p } else { 0 },
            job_class,
            client_round[p],
            client_prio,
            client_oldest,
            item.client,
            p,
        )
    });
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenize::Tokens;

    const AGING: Duration = Duration::from_secs(1);

    fn item(job: u64, index: u32, priority: i32, client: u64, at: Instant) -> Item {
        Item::new(job, index, Tokens { ids: vec![1; 3], type_ids: vec![] }, at).with_class(priority, client)
    }

    fn served(items: &[Item], now: Instant) -> Vec<(u64, u32)> {
        let mut turns = Turns::default();
        for i in items {
            turns.join(i.job, i.client);
        }
        service_order(items, now, AGING, &turns).into_iter().map(|p| (items[p].job, items[p].index)).collect()
    }

    #[test]
    fn turns_are_remembered_across_batches_of_one() {
        // A batch holds one input: the huge request's next input must not always win.
        let t0 = Instant::now();
        let mut items: Vec<Item> = (0..50).map(|i| item(0, i, 0, 0, t0)).collect();
        let mut turns = Turns::default();
        turns.join(0, 0);
        // One batch of the huge request was served before the small one arrived.
        turns.served(&[items.remove(0)]);
        items.push(item(1, 0, 0, 0, t0 + Duration::from_millis(5)));
        turns.join(1, 0);
        let mut picks = Vec::new();
        for _ in 0..3 {
            let first = service_order(&items, t0, AGING, &turns)[0];
            let taken = items.remove(first);
            picks.push(taken.job);
            turns.served(std::slice::from_ref(&taken));
            turns.keep_waiting(items.iter().map(|i| (i.job, i.client)));
        }
        assert!(picks[..2].contains(&1), "the small request is served within two batches: {picks:?}");
    }

    #[test]
    fn lower_priority_first() {
        let t0 = Instant::now();
        let items = vec![item(0, 0, 5, 0, t0), item(0, 1, 5, 0, t0), item(1, 0, 0, 0, t0)];
        assert_eq!(served(&items, t0)[0], (1, 0));
    }

    #[test]
    fn requests_take_turns_so_a_huge_one_does_not_hold_up_a_small_one() {
        let t0 = Instant::now();
        let mut items: Vec<Item> = (0..100).map(|i| item(0, i, 0, 0, t0)).collect();
        items.push(item(1, 0, 0, 0, t0 + Duration::from_millis(5)));
        let order = served(&items, t0 + Duration::from_millis(10));
        assert_eq!(&order[..2], &[(0, 0), (1, 0)], "the small request's input is in the first round");
        assert_eq!(order[2], (0, 1));
    }

    #[test]
    fn clients_take_turns_whatever_their_request_count() {
        let t0 = Instant::now();
        // Client 7 has 10 requests of 10 inputs; client 9 one request of 3, arriving later.
        let mut items = Vec::new();
        for j in 0..10 {
            for i in 0..10 {
                items.push(item(j, i, 0, 7, t0));
            }
        }
        for i in 0..3 {
            items.push(item(100, i, 0, 9, t0 + Duration::from_millis(1)));
        }
        let order = served(&items, t0);
        let first6: Vec<u64> = order[..6].iter().map(|&(j, _)| if j == 100 { 9 } else { 7 }).collect();
        assert_eq!(first6, vec![7, 9, 7, 9, 7, 9], "{order:?}");
    }

    #[test]
    fn aging_lifts_bulk_to_the_best_class_never_past_it() {
        assert_eq!(effective_priority(10, Duration::from_millis(2500), AGING, 0), 8);
        assert_eq!(effective_priority(10, Duration::from_secs(60), AGING, 0), 0);
        assert_eq!(effective_priority(10, Duration::from_secs(60), Duration::ZERO, 0), 10);
        let t0 = Instant::now();
        // Bulk waited 20 s: it shares class 0 with a fresh query, which still goes first
        // in each round (its raw priority is better), and bulk is served in the same round.
        let items = vec![item(0, 0, 10, 1, t0), item(0, 1, 10, 1, t0), item(1, 0, 0, 2, t0 + Duration::from_secs(20))];
        let order = served(&items, t0 + Duration::from_secs(20));
        assert_eq!(order, vec![(1, 0), (0, 0), (0, 1)]);
        // Fresh bulk waits behind fresh queries.
        let items = vec![item(0, 0, 10, 1, t0), item(1, 0, 0, 2, t0), item(1, 1, 0, 2, t0)];
        assert_eq!(served(&items, t0), vec![(1, 0), (1, 1), (0, 0)]);
    }

    #[test]
    fn suspects_come_first() {
        let t0 = Instant::now();
        let mut s = item(5, 0, 10, 0, t0);
        s.strikes = 1;
        let items = vec![item(0, 0, 0, 0, t0), s];
        assert_eq!(served(&items, t0)[0], (5, 0));
    }
}
