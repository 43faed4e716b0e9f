//! Worker deaths and hangs with the fake worker: a kill from outside is not evidence
//! against the inputs, retries are bounded, the watchdog kills a hung worker and its
//! inputs are retried, timed-out requests leave the queue, and `restart` / `evict --force`
//! work on a worker that hangs.

use std::time::Duration;

use tokio::time::Instant;

use super::{input, rows, runner, runner_with, settle, submit, within, HUNG_AFTER};
use crate::runner::handle::{JobError, RunnerError};
use crate::runner::recovery::{HANG_FACTOR, MAX_DEATHS};
use crate::worker::fake::{Fault, Script};
use crate::worker::WorkerState;

fn faults(list: &[(usize, Fault)]) -> Script {
    Script { faults: list.iter().copied().collect(), ..Default::default() }
}

#[tokio::test(start_paused = true)]
async fn a_kill_from_outside_fails_nothing_and_implicates_nothing() {
    let (h, fake) = runner("killed", faults(&[(1, Fault::Kill), (2, Fault::Kill)]));
    let out = submit(&h, &[1, 2]).await.unwrap().unwrap();
    assert_eq!(out, rows(&[1, 2]));
    assert_eq!(fake.batches(), [vec![1, 2], vec![1, 2], vec![1, 2]], "retried together, not as suspects");
    assert_eq!(fake.starts(), 3);
}

#[tokio::test(start_paused = true)]
async fn retries_are_bounded_whatever_the_cause() {
    let kills: Vec<(usize, Fault)> = (1..=MAX_DEATHS as usize).map(|n| (n, Fault::Kill)).collect();
    let (h, fake) = runner("killed-often", faults(&kills));
    let err = submit(&h, &[1]).await.unwrap().unwrap_err();
    assert!(matches!(&err, JobError::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains(&format!("died {MAX_DEATHS} times")), "{err}");
    assert!(err.to_string().contains("SIGKILL"), "{err}");
    assert_eq!(fake.batches().len(), MAX_DEATHS as usize);
    assert_eq!(submit(&h, &[2]).await.unwrap().unwrap(), rows(&[2]), "the model serves again");
}

#[tokio::test(start_paused = true)]
async fn a_crash_implicates_only_the_batch_being_computed() {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let (h, fake) =
        runner("crash-head", Script { gate: Some(gate.clone()), crash_on_batch: Some(2), ..Default::default() });
    let a = submit(&h, &[1]);
    settle().await;
    let b = submit(&h, &[2, 3]);
    // [2, 3] is sent ahead while [1] computes, at max_wait (the pace is unknown yet); the
    // settle lets the runner's timer fire before `c` is submitted at the same instant.
    tokio::time::sleep(super::MAX_WAIT).await;
    settle().await;
    let c = submit(&h, &[4, 5]);
    gate.add_permits(1);
    assert_eq!(a.await.unwrap().unwrap(), rows(&[1]));
    tokio::time::sleep(Duration::from_secs(1)).await; // [4, 5] is sent ahead while [2, 3] computes
    assert_eq!(fake.batches(), [vec![1], vec![2, 3], vec![4, 5]]);
    gate.add_permits(100); // [2, 3] crashes the worker
    assert_eq!(b.await.unwrap().unwrap(), rows(&[2, 3]));
    assert_eq!(c.await.unwrap().unwrap(), rows(&[4, 5]));
    let batches = fake.batches();
    assert_eq!(
        batches[3..],
        [vec![2], vec![3], vec![4, 5]],
        "suspects alone, the waiting batch as it was: {batches:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_worker_is_killed_by_the_watchdog_and_its_inputs_retried() {
    let (h, fake) = runner("hung-once", faults(&[(2, Fault::Hang)]));
    assert_eq!(submit(&h, &[1]).await.unwrap().unwrap(), rows(&[1]), "timed: the model's pace is known");
    let t0 = Instant::now();
    let out = within(HUNG_AFTER * HANG_FACTOR, submit(&h, &[2, 3])).await.unwrap().unwrap();
    assert_eq!(out, rows(&[2, 3]));
    let took = t0.elapsed();
    assert!(took >= HUNG_AFTER && took < HUNG_AFTER + Duration::from_secs(1), "the floor applies: {took:?}");
    assert_eq!(fake.starts(), 2);
    assert_eq!(fake.batches()[2..], [vec![2], vec![3]], "a hang implicates its batch: suspects run alone");
    assert_eq!(h.status().restarts, 1);
}

#[tokio::test(start_paused = true)]
async fn a_stopped_worker_is_killed_and_implicates_nothing() {
    let (h, fake) = runner("stopped", faults(&[(2, Fault::Stop)]));
    submit(&h, &[1]).await.unwrap().unwrap();
    let out = within(HUNG_AFTER * HANG_FACTOR, submit(&h, &[2, 3])).await.unwrap().unwrap();
    assert_eq!(out, rows(&[2, 3]));
    assert_eq!(fake.batches()[2..], [vec![2, 3]], "retried together");
    assert_eq!(h.status().restarts, 1);
}

#[tokio::test(start_paused = true)]
async fn an_input_that_hangs_the_worker_twice_fails_alone() {
    let (h, _fake) = runner("hang-poison", Script { hang_token: Some(666), ..Default::default() });
    submit(&h, &[1]).await.unwrap().unwrap();
    let poison = submit(&h, &[666]);
    let mates = submit(&h, &[7, 8]);
    let err = within(HUNG_AFTER * HANG_FACTOR * 4, poison).await.unwrap().unwrap_err();
    assert!(matches!(&err, JobError::Poisoned { .. }), "{err:?}");
    assert!(err.to_string().contains("hung"), "{err}");
    assert_eq!(within(HUNG_AFTER * HANG_FACTOR, mates).await.unwrap().unwrap(), rows(&[7, 8]));
}

#[tokio::test(start_paused = true)]
async fn the_first_batch_ever_gets_a_generous_watchdog() {
    let (h, fake) = runner("hang-first", Script { hang: true, ..Default::default() });
    let ticket = submit(&h, &[1]);
    tokio::time::sleep(HUNG_AFTER * 2).await;
    assert_eq!(fake.starts(), 1, "no pace yet: {HANG_FACTOR} × the floor");
    tokio::time::sleep(HUNG_AFTER * (HANG_FACTOR - 2)).await;
    settle().await;
    assert_eq!(fake.starts(), 2);
    drop(ticket);
}

#[tokio::test(start_paused = true)]
async fn timed_out_requests_leave_the_queue_at_once() {
    let (h, _fake) = runner_with("timeouts", Script { hang: true, ..Default::default() }, |c| {
        c.hung_after = Duration::ZERO;
        c.max_queue = 4;
    });
    let in_flight = submit(&h, &[1]);
    settle().await;
    // The worker hangs: the API's limits.request_timeout_seconds gives up on each request.
    for round in 0..10u32 {
        let queued = submit(&h, &[10 + round, 20 + round, 30 + round]);
        assert!(tokio::time::timeout(Duration::from_secs(1), queued).await.is_err());
        settle().await;
        assert_eq!(h.queued(), 0, "the timed-out inputs stopped counting toward the bound");
    }
    assert_eq!(h.state(), WorkerState::Busy);
    drop(in_flight);
}

#[tokio::test(start_paused = true)]
async fn restart_works_on_a_hung_worker() {
    let (h, fake) = runner_with("restart-hung", Script { hang: true, ..Default::default() }, |c| {
        c.hung_after = Duration::ZERO;
    });
    let ticket = submit(&h, &[1]);
    settle().await;
    fake.script.lock().unwrap().hang = false;
    let t0 = Instant::now();
    h.restart().await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(2), "waited the grace, not forever: {:?}", t0.elapsed());
    assert_eq!(ticket.await.unwrap().unwrap(), rows(&[1]), "the input in flight was retried on the new worker");
    assert_eq!(fake.starts(), 2);
    assert_eq!(fake.log.lock().unwrap().kills, 1);
    assert_eq!(h.status().restarts, 0, "an operator's restart is not a crash");
}

#[tokio::test(start_paused = true)]
async fn forced_evict_works_on_a_hung_worker() {
    let (h, fake) = runner_with("evict-hung", Script { hang: true, ..Default::default() }, |c| {
        c.hung_after = Duration::ZERO;
    });
    let in_flight = submit(&h, &[1]);
    settle().await;
    let queued = h.submit(vec![input(2, 3)]).unwrap();
    assert!(matches!(h.evict().await, Err(RunnerError::Busy(_))), "a busy worker is not evicted without force");
    h.force_evict().await.unwrap();
    assert_eq!(h.state(), WorkerState::Stopped);
    for ticket in [in_flight, queued] {
        let err = ticket.await.unwrap().unwrap_err();
        assert!(matches!(&err, JobError::Unavailable { .. }) && err.to_string().contains("--force"), "{err}");
    }
    assert_eq!(h.queued(), 0);
    // The next request starts a new worker.
    fake.script.lock().unwrap().hang = false;
    assert_eq!(submit(&h, &[3]).await.unwrap().unwrap(), rows(&[3]));
    assert_eq!(fake.starts(), 2);
}
