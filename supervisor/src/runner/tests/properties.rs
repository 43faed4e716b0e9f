//! Properties of the runner under random traffic and faults (proptest): requests of random
//! sizes and lengths arrive at random times, some give up (their ticket is dropped), some
//! hold a poison input that crashes or hangs the worker, and the worker is killed or
//! stopped from outside on random batches. Whatever happens:
//!
//! - every request that did not give up is answered exactly once: with its own rows, in
//!   its inputs' order; with a poison error only when it holds a poison input; as
//!   unavailable only after the worker died at least `MAX_DEATHS` times;
//! - an input of a request that gave up is never sent to the worker afterwards;
//! - in the end nothing is left queued.
//!
//! Each case runs on its own paused clock (seconds of traffic take microseconds), so the
//! default 64 cases finish in well under a second; `PROPTEST_CASES` runs more.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use super::{input, runner_with};
use crate::batch::Limits;
use crate::runner::handle::{JobError, JobOutput};
use crate::runner::recovery::MAX_DEATHS;
use crate::worker::fake::{Fault, Script};

/// First tokens of poison inputs; every other input's first token is its own id (≥ 100).
const CRASHES: u32 = 7;
const HANGS: u32 = 8;

#[derive(Debug, Clone)]
struct Request {
    /// Milliseconds after the previous request.
    gap_ms: u64,
    /// Length of each input; `poison[i]` makes input i a poison one.
    lens: Vec<usize>,
    poison: Vec<Option<u32>>,
    /// Gives up this many milliseconds after submitting.
    gives_up_ms: Option<u64>,
}

#[derive(Debug, Clone)]
struct Scenario {
    requests: Vec<Request>,
    /// Kills and stops from outside, by batch number.
    outside: BTreeMap<usize, Fault>,
    max_batch_size: usize,
    max_batch_tokens: usize,
    per_token_us: u64,
}

fn request() -> impl Strategy<Value = Request> {
    let poison = prop_oneof![20 => Just(None), 1 => Just(Some(CRASHES)), 1 => Just(Some(HANGS))];
    (
        0u64..40,
        prop::collection::vec((1usize..60, poison), 1..5),
        prop_oneof![4 => Just(None), 1 => (0u64..400).prop_map(Some)],
    )
        .prop_map(|(gap_ms, inputs, gives_up_ms)| {
            let (lens, poison) = inputs.into_iter().unzip();
            Request { gap_ms, lens, poison, gives_up_ms }
        })
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let outside = prop::collection::btree_map(1usize..40, prop_oneof![Just(Fault::Kill), Just(Fault::Stop)], 0..3);
    (prop::collection::vec(request(), 1..30), outside, 1usize..8, 20usize..200, 0u64..300).prop_map(
        |(requests, outside, max_batch_size, max_batch_tokens, per_token_us)| Scenario {
            requests,
            outside,
            max_batch_size,
            max_batch_tokens,
            per_token_us,
        },
    )
}

/// What one request ended with: its inputs' first tokens, when it gave up (None: it
/// waited), and the answer (None: it gave up first).
type Outcome = (Vec<u32>, Option<Instant>, Option<Result<JobOutput, JobError>>);

async fn run(s: Scenario, name: String) -> Result<(), TestCaseError> {
    let script = Script {
        poison: Some(CRASHES),
        hang_token: Some(HANGS),
        faults: s.outside.clone(),
        delay: Duration::from_millis(2),
        per_token: Duration::from_micros(s.per_token_us),
        ..Default::default()
    };
    let (h, fake) = runner_with(&name, script, |c| {
        c.limits = Limits { max_batch_size: s.max_batch_size, max_batch_tokens: s.max_batch_tokens };
        c.hung_after = Duration::from_secs(1);
        c.max_queue = 10_000;
    });
    let mut tasks = Vec::new();
    let mut next_id = 100u32;
    for r in &s.requests {
        tokio::time::sleep(Duration::from_millis(r.gap_ms)).await;
        let firsts: Vec<u32> = r
            .poison
            .iter()
            .map(|p| {
                next_id += 1;
                p.unwrap_or(next_id)
            })
            .collect();
        let seqs = firsts.iter().zip(&r.lens).map(|(&f, &len)| input(f, len)).collect();
        let ticket = h.submit(seqs).expect("queued");
        let gives_up = r.gives_up_ms.map(Duration::from_millis);
        tasks.push(tokio::spawn(async move {
            let outcome: Outcome = match gives_up {
                None => (firsts, None, Some(ticket.await.expect("answered, not dropped"))),
                Some(after) => tokio::select! {
                    answer = ticket => (firsts, None, Some(answer.expect("answered, not dropped"))),
                    _ = tokio::time::sleep(after) => (firsts, Some(Instant::now()), None),
                },
            };
            outcome
        }));
    }
    let all = futures_util::future::join_all(tasks);
    let outcomes = tokio::time::timeout(Duration::from_secs(3600), all)
        .await
        .map_err(|_| TestCaseError::fail("some request was never answered"))?;
    tokio::time::sleep(Duration::from_millis(10)).await;

    let (batches, sent_at) = {
        let log = fake.log.lock().unwrap();
        (log.batches.clone(), log.sent_at.clone())
    };
    let mut last_sent: HashMap<u32, Instant> = HashMap::new();
    for (batch, &at) in batches.iter().zip(&sent_at) {
        for &first in batch {
            last_sent.insert(first, at);
        }
    }
    for outcome in outcomes {
        let (firsts, gave_up, answer) = outcome.expect("request task");
        let poisoned = firsts.iter().any(|&f| f == CRASHES || f == HANGS);
        match (gave_up, answer) {
            (Some(t), None) => {
                for f in firsts.iter().filter(|&&f| f >= 100) {
                    let after = last_sent.get(f).is_some_and(|&sent| sent > t);
                    prop_assert!(!after, "input {} was sent after its request gave up", f);
                }
            }
            (None, Some(Ok(JobOutput::Rows { dim, data }))) => {
                prop_assert!(!poisoned, "a poison request succeeded: {:?}", firsts);
                prop_assert_eq!(dim, 2);
                let got: Vec<u32> = data.chunks(2).map(|row| row[0] as u32).collect();
                prop_assert_eq!(got, firsts, "rows in the request's order");
            }
            (None, Some(Err(JobError::Poisoned { .. }))) => {
                prop_assert!(poisoned, "an innocent request was convicted: {:?}", firsts);
            }
            (None, Some(Err(JobError::Unavailable { .. }))) => {
                let deaths = fake.starts() - 1;
                prop_assert!(deaths >= MAX_DEATHS as usize, "gave up after {} deaths: {:?}", deaths, firsts);
            }
            (gave_up, answer) => prop_assert!(false, "unexpected outcome {:?} {:?} for {:?}", gave_up, answer, firsts),
        }
    }
    prop_assert_eq!(h.queued(), 0, "inputs left queued");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_request_is_answered_once_in_order_whatever_happens(s in scenario()) {
        static CASE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!("prop-{}", CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        rt.block_on(run(s, name))?;
    }
}
