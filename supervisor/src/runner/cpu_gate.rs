//! Heavy tokenization and CPU forwards take turns (docs/scheduling.md, "The queries' p99
//! under the ingest").
//!
//! A worker on MLX's CPU backend computes with every core, and its BLAS threads hand work
//! to each other by yielding the CPU: anything else runnable beside a forward (say, the
//! ~8 ms of tokenizing a bulk request of 64 passages) makes it 2–4× slower, whatever that
//! thread's priority. So a tokenization of more than a few milliseconds (`api/inference.rs`,
//! `off_thread`) first *holds* the gate: runners of CPU workers send no new batch while it
//! is held, the batches in flight finish, and the tokenization then runs with the CPU to
//! itself; dispatch resumes when the last holder lets go. A holder waits at most
//! [`DRAIN_WAIT`] for the forwards to finish (a long document's forward takes seconds), then
//! tokenizes anyway. Workers on a GPU take no part: their forwards do not compete for the
//! cores.
//!
//! The gate is process-wide, as the cores are: one model's tokenization holds every CPU
//! runner's dispatch.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::watch;

/// How long a holder waits for the CPU workers' batches in flight to finish before it
/// tokenizes beside them: two bulk batches of `scheduling.bulk_max_batch_ms` (25 ms) and
/// more, but short of a long document's forward.
pub const DRAIN_WAIT: Duration = Duration::from_millis(100);

/// The gate's two counts, each a watch channel so waiters learn of changes.
pub struct CpuGate {
    /// CPU-backend runners with a batch in flight.
    computing: watch::Sender<usize>,
    /// Tokenizations waiting for the gate or running under it.
    holders: watch::Sender<usize>,
}

impl CpuGate {
    fn new() -> CpuGate {
        CpuGate { computing: watch::Sender::new(0), holders: watch::Sender::new(0) }
    }

    /// The daemon's gate.
    pub fn global() -> &'static CpuGate {
        static GATE: OnceLock<CpuGate> = OnceLock::new();
        GATE.get_or_init(CpuGate::new)
    }

    /// A gate of its own that lives as long as the process (tests: one per runner test,
    /// so that tests running at once do not hold each other's dispatch).
    pub fn leaked() -> &'static CpuGate {
        Box::leak(Box::new(CpuGate::new()))
    }

    /// Whether a CPU runner must hold its next batch.
    pub fn is_held(&self) -> bool {
        *self.holders.borrow() > 0
    }

    /// Changes to the holders: a runner waiting on the gate re-checks on each.
    pub fn watch_holders(&self) -> watch::Receiver<usize> {
        self.holders.subscribe()
    }

    /// Holds the gate until the returned guard is dropped: returns once no CPU worker is
    /// computing, or after `drain_wait`.
    pub async fn hold(&'static self, drain_wait: Duration) -> Hold {
        self.holders.send_modify(|n| *n += 1);
        let hold = Hold { gate: self };
        let mut computing = self.computing.subscribe();
        let _ = tokio::time::timeout(drain_wait, computing.wait_for(|&n| n == 0)).await;
        hold
    }

    /// A runner's place at the gate, counted while its CPU worker computes.
    pub fn seat(&'static self) -> Seat {
        Seat { gate: self, computing: false }
    }
}

/// A held gate; dropping it lets go.
pub struct Hold {
    gate: &'static CpuGate,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.gate.holders.send_modify(|n| *n -= 1);
    }
}

/// A runner's seat: says whether its CPU worker is computing; leaving (drop) while it
/// computes counts it out.
pub struct Seat {
    gate: &'static CpuGate,
    computing: bool,
}

impl Seat {
    pub fn set_computing(&mut self, computing: bool) {
        if computing != self.computing {
            self.computing = computing;
            self.gate.computing.send_modify(|n| if computing { *n += 1 } else { *n -= 1 });
        }
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.set_computing(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaked() -> &'static CpuGate {
        CpuGate::leaked()
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_waits_for_the_forwards_then_holds_dispatch_until_it_lets_go() {
        let gate = leaked();
        let mut seat = gate.seat();
        seat.set_computing(true);
        let start = tokio::time::Instant::now();
        let waiter = tokio::spawn(async move { gate.hold(Duration::from_secs(10)).await });
        tokio::task::yield_now().await;
        assert!(gate.is_held(), "runners hold their next batch while a tokenization waits");
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiter.is_finished(), "the tokenization waits while a forward runs");
        seat.set_computing(false);
        let hold = waiter.await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(30), "it goes as soon as the forward ends");
        assert!(gate.is_held());
        drop(hold);
        assert!(!gate.is_held(), "dispatch resumes when the last holder lets go");
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_waits_at_most_the_drain_bound() {
        let gate = leaked();
        let mut seat = gate.seat();
        seat.set_computing(true);
        let start = tokio::time::Instant::now();
        let hold = gate.hold(DRAIN_WAIT).await;
        assert_eq!(start.elapsed(), DRAIN_WAIT, "a long forward does not hold tokenization back longer");
        drop(hold);
        drop(seat);
        assert_eq!(*gate.computing.borrow(), 0, "a seat that goes counts itself out");
        let start = tokio::time::Instant::now();
        let _idle = gate.hold(DRAIN_WAIT).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "no forward running: no wait");
    }
}
