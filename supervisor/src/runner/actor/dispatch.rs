//! The runner's traffic with its worker: cutting and sending batches when the policy says
//! so, taking answers back (and timing them, so the runner learns the worker's pace), and
//! the watchdog on the batch being computed.
//!
//! A long batch is sent as `Yielding` (`batch/policy.rs`, `batch_yields`); short work that
//! may overtake it is sent right behind it, and the worker computes that at the long one's
//! next layer boundary, so its answer comes back first (docs/scheduling.md, "Long batches
//! yield").

use std::sync::atomic::Ordering;

use mlx_serve_protocol::{ModelKind, SupervisorMessage, TokenBatch, TokenOutputs};
use std::time::Duration;

use tokio::time::Instant;

use super::{Runner, SentBatch};
use crate::batch::{
    batch_yields, decide, is_long, overtakes, Decision, InFlight, Item, Limits, Overhead, Rules, PIPELINE_DEPTH,
};
use crate::metrics::metrics;
use crate::runner::jobs::BatchOutput;
use crate::runner::recovery;
use crate::telemetry::{BatchFacts, BatchTrace};
use crate::worker::{Cause, Death, WorkerState};

/// The smallest token budget the time bound may leave (besides the fixed-cost share that
/// `Pace::tokens_within` keeps, `Overhead`): a short input or two.
const MIN_BATCH_TOKENS: usize = 64;

impl Runner {
    fn in_flight_now(&self) -> InFlight {
        let suspect = self.in_flight.values().any(|b| b.items.iter().any(Item::is_suspect));
        let head = self.in_flight.values().next();
        let cut_at = head.and_then(|head| self.pace.cut_at(self.head_since, head.tokens));
        let head_yields = head.is_some_and(|h| h.yielding);
        let overtake = head_yields && self.in_flight.len() == 1 && {
            let may = self.may_overtake();
            self.queue.any(|i| may(i))
        };
        InFlight { batches: self.in_flight.len(), suspect, cut_at, head_yields, overtake }
    }

    /// The batch being computed, if it yields.
    fn yielding_head(&self) -> Option<&SentBatch> {
        self.in_flight.values().next().filter(|h| h.yielding)
    }

    /// Which queued items may be computed inside the yielding batch being computed
    /// ([`overtakes`] its best priority), leaving out the requests riding in it: their
    /// next inputs would only stretch it, and a query behind them would wait for that.
    fn may_overtake(&self) -> impl Fn(&Item) -> bool {
        let head = self.yielding_head();
        let best = head.and_then(|h| h.items.iter().map(|i| i.priority).min()).unwrap_or(i32::MAX);
        let long = head.is_some_and(|h| h.items.iter().any(is_long));
        let riding: std::collections::HashSet<u64> = head.iter().flat_map(|h| h.items.iter().map(|i| i.job)).collect();
        let default = self.cfg.default_priority;
        move |i: &Item| overtakes(i, best, long, default) && !riding.contains(&i.job)
    }

    /// The bounds of a batch computed inside a yielding one: `scheduling.max_batch_ms`
    /// without the stretch that keeps a batch's fixed cost small, since whatever arrives
    /// while it runs waits for all of it.
    fn nested_limits(&self) -> Limits {
        let mut limits = self.limits;
        let target = Some(self.cfg.max_batch_time).filter(|t| !t.is_zero());
        if let Some(n) = target.and_then(|t| self.pace.tokens_within(t, MIN_BATCH_TOKENS, Overhead::NESTED)) {
            limits.max_batch_tokens = limits.max_batch_tokens.min(n);
        }
        limits
    }

    fn rules(&self) -> Rules {
        let depth = if self.bulk_yields() { 1 } else { PIPELINE_DEPTH };
        Rules { limits: self.batch_limits(), max_wait: self.cfg.max_wait, depth }
    }

    /// All queued work is bulk (worse than `default_priority`) and
    /// `scheduling.bulk_max_batch_ms` asks it to yield: its batches are bounded by that, and
    /// none is sent ahead, so a query that arrives waits only for the batch being computed.
    fn bulk_yields(&self) -> bool {
        let bulk = self.queue.best_priority().is_some_and(|p| p > self.cfg.default_priority);
        bulk && !self.cfg.bulk_max_batch_time.is_zero()
    }

    /// The device's batch bounds, with the token budget cut to what the worker computes in
    /// `scheduling.max_batch_ms` at its observed pace: new work (a query behind a bulk
    /// ingest, a small request behind a huge one) then waits at most about two such
    /// batches (the one computing and the one sent ahead) before its own. While all queued
    /// work is bulk, `bulk_max_batch_ms` instead, so a query that arrives waits less.
    fn batch_limits(&self) -> Limits {
        let mut limits = self.limits;
        let bulk = self.bulk_yields();
        let target = batch_time_target(self.cfg.max_batch_time, self.cfg.bulk_max_batch_time, bulk);
        let overhead = if bulk { Overhead::BULK } else { Overhead::INTERACTIVE };
        if let Some(n) = target.and_then(|t| self.pace.tokens_within(t, MIN_BATCH_TOKENS, overhead)) {
            limits.max_batch_tokens = limits.max_batch_tokens.min(n);
        }
        limits
    }

    fn dispatch_decision(&self, now: Instant) -> Decision {
        if self.restart_requested {
            // A restart waits for what is in flight; sending more would delay it.
            return Decision::Wait(None);
        }
        if self.on_cpu && self.cfg.cpu_gate.is_held() {
            // A heavy tokenization wants the cores; the gate's release wakes the loop.
            return Decision::Wait(None);
        }
        decide(&self.queue, self.in_flight_now(), now, self.rules())
    }

    /// When the policy wants to be asked again without an event.
    pub(super) fn dispatch_deadline(&self) -> Option<Instant> {
        match self.slot.link().is_some().then(|| self.dispatch_decision(Instant::now())) {
            Some(Decision::Wait(t)) => t,
            _ => None,
        }
    }

    /// When the batch being computed means the worker hangs (None: nothing in flight, or
    /// the watchdog is off).
    pub(super) fn hang_deadline(&self) -> Option<Instant> {
        if self.cfg.hung_after.is_zero() || self.slot.link().is_none() {
            return None;
        }
        let head = self.in_flight.values().next()?;
        let longest = head.items.iter().flat_map(|i| i.sequences()).map(|t| t.ids.len()).max().unwrap_or(0);
        Some(recovery::hang_deadline(self.head_since, self.pace.predict(head.tokens), self.cfg.hung_after, longest))
    }

    /// Acts on the deadlines that passed: a hung worker is killed (and its inputs retried
    /// as after a crash), a requested restart stops waiting.
    pub(super) async fn check_deadlines(&mut self) {
        let now = Instant::now();
        if self.hang_deadline().is_some_and(|t| t <= now) {
            let stopped = self.slot.link().is_some_and(|w| w.is_stopped());
            let head = self.in_flight.values().next().expect("a batch in flight");
            let detail = format!(
                "a batch of {} inputs ({} tokens) ran {:.1} s; the model's observed time for that size is {}",
                head.items.len(),
                head.tokens,
                (now - self.head_since).as_secs_f64(),
                match self.pace.predict(head.tokens) {
                    Some(t) => format!("{:.3} s", t.as_secs_f64()),
                    None => "not known yet".into(),
                }
            );
            self.lose_worker(Death::new(Cause::Hung { stopped }, detail)).await;
        }
        self.restart_if_requested().await;
    }

    /// Starts a worker when work waits, dispatches batches while the policy says so.
    pub(super) fn pump(&mut self) {
        let now = Instant::now();
        if self.slot.link().is_none() {
            if self.slot.is_empty() {
                let wanted = !self.queue.is_empty() || !self.load_waiters.is_empty();
                let crashed = self.status.lock().unwrap().state == WorkerState::Restarting;
                if recovery::should_start(wanted, crashed, self.restart_at, now) {
                    self.restart_at = None;
                    self.start_worker();
                }
            }
            return;
        }
        while self.dispatch_decision(now) == Decision::Send && self.dispatch() {}
    }

    /// Sends one batch; false when nothing was sent.
    fn dispatch(&mut self) -> bool {
        // Drop inputs whose requester went away without its ticket saying so.
        self.jobs.drop_abandoned();
        let jobs = &self.jobs;
        let dropped = self.queue.retain(|i| jobs.contains(i.job));
        self.queued.fetch_sub(dropped, Ordering::SeqCst);
        // Behind a yielding batch only what may overtake it, and a small batch of it: the
        // worker computes it whole in the middle of the yielding one.
        let behind = self.yielding_head().is_some();
        let mut items = if behind {
            let (limits, may) = (self.nested_limits(), self.may_overtake());
            self.queue.plan_where(limits, may)
        } else {
            self.queue.plan(self.batch_limits())
        };
        // One batch is one message: per-token outputs (`EmbedTokens`) and late-chunked
        // documents (`EmbedPooled`) do not ride together; the documents go next.
        if items.iter().any(|i| i.late.is_some()) && items.iter().any(|i| i.outputs.any()) {
            let (late, rest): (Vec<Item>, Vec<Item>) = items.into_iter().partition(|i| i.late.is_some());
            self.queue.requeue_front(late);
            items = rest;
        }
        if items.is_empty() {
            return false;
        }
        let now = Instant::now();
        for item in &items {
            metrics().observe_queue_wait(&self.name, item.priority, (now - item.enqueued).as_secs_f64());
        }
        self.queued.fetch_sub(items.len(), Ordering::SeqCst);
        let mut batch = TokenBatch::new();
        for seq in items.iter().flat_map(Item::sequences) {
            batch.push(&seq.ids, &seq.type_ids);
        }
        let pools = crate::batch::pools(&items);
        let tokens = crate::batch::tokens(&items);
        // A batch computed inside a yielding one runs whole (the worker nests one deep).
        let yielding = !behind
            && batch_yields(&items, self.pace.predict(tokens), self.cfg.max_batch_time, self.cfg.default_priority);
        let id = self.next_batch;
        self.next_batch += 1;
        // One forward pass gives every job what it asked for: the union of their outputs.
        let outputs = items.iter().fold(TokenOutputs::default(), |a, i| TokenOutputs {
            sparse: a.sparse || i.outputs.sparse,
            colbert: a.colbert || i.outputs.colbert,
        });
        let (msg, endpoint) = match self.kind {
            ModelKind::Embedding if pools.is_some() => {
                (SupervisorMessage::EmbedPooled { id, batch, pools: pools.unwrap_or_default() }, "embed")
            }
            ModelKind::Embedding if outputs.any() => (SupervisorMessage::EmbedTokens { id, batch, outputs }, "embed"),
            ModelKind::Embedding => (SupervisorMessage::Embed { id, batch }, "embed"),
            ModelKind::Reranker => (SupervisorMessage::Score { id, batch }, "rerank"),
            ModelKind::Classifier => (SupervisorMessage::Classify { id, batch }, "predict"),
        };
        let msg = if yielding { SupervisorMessage::Yielding(Box::new(msg)) } else { msg };
        let mut trace = BatchTrace::default();
        if crate::telemetry::enabled() {
            for item in &items {
                if let Some(cx) = self.jobs.trace_of(item.job) {
                    trace.ride(item.job, cx, item.len(), item.enqueued);
                }
            }
        }
        let m = metrics();
        m.batch_size.with_label_values(&[endpoint]).observe(items.len() as f64);
        m.tokens_total.with_label_values(&[&self.name]).inc_by(tokens as u64);
        // What the worker computes: every worker packs batches, so the same real tokens.
        m.padded_tokens_total.with_label_values(&[&self.name]).inc_by(tokens as u64);
        self.status.lock().unwrap().batches += 1;
        let sent = self.slot.link().map(|w| w.send(&msg));
        trace.sent();
        let now = Instant::now();
        if self.in_flight.is_empty() {
            self.head_since = now;
        }
        self.in_flight.insert(id, SentBatch { items, sent: now, tokens, trace, yielding });
        // A failed send means the worker is gone; its Died event requeues the batch.
        matches!(sent, Some(Ok(())))
    }

    /// Takes an answered batch out of flight and, with its rows or scores, answers its
    /// jobs. The batch being computed finished: the worker's pace learns how long it took,
    /// and the next batch begins computing now. `output` comes with the worker's forward
    /// time in microseconds; None is an error answer.
    pub(super) fn complete_batch(&mut self, id: u64, output: Option<(BatchOutput<'_>, u64)>) -> Option<SentBatch> {
        let was_head = self.in_flight.keys().next() == Some(&id);
        let mut batch = self.in_flight.remove(&id)?;
        let facts = BatchFacts { model: &self.name, id, size: batch.items.len(), tokens: batch.tokens as u64 };
        let forward = output.as_ref().map(|(_, us)| Duration::from_micros(*us));
        let error = output.is_none().then_some("the worker answered an error");
        std::mem::take(&mut batch.trace).finish(facts, forward, error);
        let now = Instant::now();
        if was_head {
            if output.is_some() {
                self.pace.observe(batch.tokens, now - self.head_since);
            }
            self.head_since = now;
        } else if let Some(forward) = forward {
            // Answered before the head: computed at one of its layer boundaries. Its time
            // is not the head's (pace, watchdog); the pace learns from it on its own.
            self.head_since = (self.head_since + forward).min(now);
            self.pace.observe(batch.tokens, forward);
        }
        tracing::trace!(target: "pace", model = %self.name, tokens = batch.tokens, forward_us = ?forward.map(|f| f.as_micros()), pace = %self.pace, "batch answered");
        let m = metrics();
        m.model_inference_seconds.with_label_values(&[&self.name]).observe((now - batch.sent).as_secs_f64());
        if let Some(forward) = forward {
            m.worker_forward_seconds.with_label_values(&[&self.name]).observe(forward.as_secs_f64());
        }
        if let Some((output, _)) = output {
            self.start_failures = 0;
            self.jobs.scatter(&self.name, self.kind, &batch.items, output);
        }
        Some(batch)
    }

    /// Every batch in flight, in the order sent (the first was being computed).
    pub(super) fn take_in_flight(&mut self) -> Vec<Vec<Item>> {
        std::mem::take(&mut self.in_flight).into_values().map(|b| b.items).collect()
    }
}

/// How long the next batch may take: `max_batch` (zero: no bound), or for a batch of bulk
/// work the shorter of that and `bulk_max_batch` (zero: `max_batch` alone).
fn batch_time_target(max_batch: Duration, bulk_max_batch: Duration, bulk: bool) -> Option<Duration> {
    let bounds = [Some(max_batch), bulk.then_some(bulk_max_batch)];
    bounds.into_iter().flatten().filter(|t| !t.is_zero()).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_batches_take_the_shorter_bound() {
        let ms = Duration::from_millis;
        assert_eq!(batch_time_target(ms(50), ms(25), false), Some(ms(50)));
        assert_eq!(batch_time_target(ms(50), ms(25), true), Some(ms(25)));
        assert_eq!(batch_time_target(ms(50), ms(0), true), Some(ms(50)), "0: max_batch_ms for bulk too");
        assert_eq!(batch_time_target(ms(0), ms(25), true), Some(ms(25)));
        assert_eq!(batch_time_target(ms(0), ms(25), false), None);
        assert_eq!(batch_time_target(ms(10), ms(25), true), Some(ms(10)), "never longer than max_batch_ms");
    }
}
