//! CPU workers' batches and heavy tokenization taking turns at the CPU gate
//! (`runner/cpu_gate.rs`), end to end through the runner with a fake worker.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::*;

#[tokio::test(start_paused = true)]
async fn a_held_gate_holds_a_cpu_workers_next_batch_until_it_is_let_go() {
    let gate = CpuGate::leaked();
    let (h, fake) = runner_with("gate-cpu", Script::default(), |c| c.cpu_gate = gate);
    // The worker starts (it reports its device when ready) and answers a first request.
    assert_eq!(submit(&h, &[1]).await.unwrap().unwrap(), rows(&[1]));
    let hold = gate.hold(DRAIN_WAIT).await;
    let t = submit(&h, &[2]);
    tokio::time::sleep(10 * MAX_WAIT).await;
    assert_eq!(fake.batches(), [vec![1]], "no batch is sent while a tokenization holds the gate");
    drop(hold);
    assert_eq!(within(MAX_WAIT, t).await.unwrap().unwrap(), rows(&[2]), "sent as soon as it is let go");
}

#[tokio::test(start_paused = true)]
async fn a_tokenization_waits_for_the_batch_being_computed() {
    let gate = CpuGate::leaked();
    let permits = Arc::new(Semaphore::new(1));
    let script = Script { gate: Some(permits.clone()), ..Default::default() };
    let (h, fake) = runner_with("gate-drain", script, |c| c.cpu_gate = gate);
    assert_eq!(submit(&h, &[1]).await.unwrap().unwrap(), rows(&[1]));
    let t = submit(&h, &[2]);
    settle().await;
    assert_eq!(fake.batches(), [vec![1], vec![2]], "the worker computes [2] (held by the fake)");
    let start = Instant::now();
    let holder = tokio::spawn(async move { gate.hold(Duration::from_secs(60)).await });
    tokio::time::sleep(Duration::from_millis(40)).await;
    assert!(!holder.is_finished(), "the tokenization waits while the worker computes");
    let t3 = submit(&h, &[3]);
    permits.add_permits(1);
    let hold = within(MAX_WAIT, holder).await.unwrap();
    assert!(start.elapsed() < Duration::from_millis(50), "it goes once the batch is answered");
    assert_eq!(t.await.unwrap().unwrap(), rows(&[2]));
    settle().await;
    assert_eq!(fake.batches().len(), 2, "[3] waits for the tokenization");
    drop(hold);
    permits.add_permits(1);
    assert_eq!(within(MAX_WAIT, t3).await.unwrap().unwrap(), rows(&[3]));
}

#[tokio::test(start_paused = true)]
async fn a_gpu_worker_does_not_wait_at_the_gate() {
    let gate = CpuGate::leaked();
    let (h, _fake) = runner_with("gate-gpu", Script { gpu: true, ..Default::default() }, |c| c.cpu_gate = gate);
    assert_eq!(submit(&h, &[1]).await.unwrap().unwrap(), rows(&[1]));
    let _hold = gate.hold(DRAIN_WAIT).await;
    assert_eq!(within(MAX_WAIT, submit(&h, &[2])).await.unwrap().unwrap(), rows(&[2]));
}
