//! The worker's life inside a runner: starting it (after the pool made room), what a
//! finished start does, evict and restart on request (forcibly for a worker that hangs),
//! a death (with `recovery.rs`'s verdict on the inputs in flight), shutdown, and
//! publishing the state.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use mlx_serve_protocol::Device;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{next_event, Runner, Slot, StartDone};
use crate::batch::Item;
use crate::metrics::metrics;
use crate::runner::handle::{JobError, PoolRequest, RunnerError};
use crate::runner::recovery;
use crate::worker::{Death, Started, WorkerEvent, WorkerState};

impl Runner {
    pub(super) fn start_worker(&mut self) {
        self.generation += 1;
        let generation = self.generation;
        self.slot = Slot::Starting { generation };
        self.set_state(WorkerState::Starting);
        let (name, dir, kind) = (self.name.clone(), self.dir.clone(), self.kind);
        let launcher = self.cfg.launcher.clone();
        let pool = self.pool.clone();
        let started = self.started_tx.clone();
        tokio::spawn(async move {
            let (tx, rx) = oneshot::channel();
            if pool.send(PoolRequest::MakeRoom { kind, name: name.clone(), reply: tx }).is_ok() {
                let _ = rx.await;
            }
            let t0 = Instant::now();
            let result = launcher.start(&name, &dir).await;
            let _ = started.send(StartDone { generation, result, took: t0.elapsed() });
        });
    }

    pub(super) fn on_started(&mut self, done: StartDone) {
        let StartDone { generation, result, took } = done;
        if !matches!(self.slot, Slot::Starting { generation: g } if g == generation) {
            // Superseded (a forced eviction, shutdown): the worker it started goes.
            if let Ok(started) = result {
                tokio::spawn(started.link.kill());
            }
            return;
        }
        self.slot = Slot::Empty;
        match result {
            Ok(Started { link, events }) => {
                metrics().model_load_seconds.with_label_values(&[&self.name]).observe(took.as_secs_f64());
                tracing::info!(model = %self.name, pid = link.pid(), seconds = took.as_secs_f64(), "worker ready");
                {
                    let mut s = self.status.lock().unwrap();
                    s.pid = Some(link.pid());
                    s.started_at = Some(Instant::now());
                    s.started_wall = Some(SystemTime::now());
                    s.info = Some(link.info().clone());
                    s.last_error = None;
                }
                self.limits = if link.info().device == Device::Gpu { self.cfg.gpu_limits } else { self.cfg.limits };
                self.on_cpu = link.info().device == Device::Cpu;
                self.pace.set_fixed_floor(link.info().tiny_batch_seconds);
                self.slot = Slot::Running { link, events };
                self.restart_at = None;
                for waiter in self.load_waiters.drain(..).chain(self.restart_waiters.drain(..)) {
                    let _ = waiter.send(Ok(()));
                }
            }
            Err(reason) => {
                self.start_failures += 1;
                tracing::error!(model = %self.name, attempt = self.start_failures, "worker failed to start: {reason}");
                self.status.lock().unwrap().last_error = Some(reason.to_string());
                for waiter in self.load_waiters.drain(..).chain(self.restart_waiters.drain(..)) {
                    let _ =
                        waiter.send(Err(RunnerError::LoadFailed { model: self.name.clone(), reason: reason.clone() }));
                }
                // Load failures are usually deterministic (corrupt weights, unsupported
                // architecture): answer the waiting requests now with the reason. The next
                // request tries again, but not before the back-off has passed.
                self.fail_all_queued(JobError::LoadFailed { model: self.name.clone(), reason });
                self.set_state(WorkerState::Failed);
                self.restart_at = Some(Instant::now() + recovery::start_retry_delay(self.start_failures));
            }
        }
    }

    /// Stops the worker to give its memory back: only an idle one, unless `force`, which
    /// stops it whatever it is doing (a worker that hangs) and answers its queued and
    /// in-flight work as unavailable.
    pub(super) async fn evict(&mut self, force: bool) -> Result<(), RunnerError> {
        let busy = !self.queue.is_empty() || !self.in_flight.is_empty() || self.slot.is_starting();
        if busy && !force {
            return Err(RunnerError::Busy(self.name.clone()));
        }
        if self.slot.is_empty() {
            return Err(RunnerError::NotLoaded(self.name.clone()));
        }
        if force {
            let err = JobError::Unavailable {
                model: self.name.clone(),
                reason: "its worker was stopped by the operator (ctl evict --force); retry to start it again".into(),
            };
            for item in self.take_in_flight().into_iter().flatten() {
                self.fail_job(item.job, err.clone());
            }
            self.fail_all_queued(err);
            // A start under way is dropped when it finishes (the slot no longer waits for it).
            if self.slot.is_starting() {
                self.slot = Slot::Empty;
            }
            for waiter in self.load_waiters.drain(..).chain(self.restart_waiters.drain(..)) {
                let _ = waiter.send(Err(RunnerError::NotLoaded(self.name.clone())));
            }
            self.restart_requested = false;
            self.restart_deadline = None;
        }
        self.set_state(WorkerState::Draining);
        if let Some(w) = self.slot.take() {
            if force {
                w.kill().await;
            } else {
                w.stop(self.cfg.stop_grace).await;
            }
        }
        self.drop_stats_waiters();
        metrics().cache_evictions_total.with_label_values(&[self.kind.as_str()]).inc();
        self.restart_at = None;
        self.set_stopped();
        Ok(())
    }

    /// Performs a requested restart once nothing is in flight (an idle worker at once), or
    /// when the grace for in-flight work has passed: the worker is then killed and that
    /// work retried on the new one as it was (the operator's restart is not its doing).
    pub(super) async fn restart_if_requested(&mut self) {
        if !self.restart_requested {
            return;
        }
        let waited_enough = self.restart_deadline.is_some_and(|t| t <= Instant::now());
        if !self.in_flight.is_empty() && !waited_enough {
            return;
        }
        self.restart_requested = false;
        self.restart_deadline = None;
        let Some(w) = self.slot.take() else { return };
        self.set_state(WorkerState::Draining);
        if self.in_flight.is_empty() {
            w.stop(self.cfg.stop_grace).await;
        } else {
            tracing::warn!(model = %self.name, pid = w.pid(), "restart: in-flight work did not finish in time; killing the worker");
            w.kill().await;
            let retry: Vec<Item> =
                self.take_in_flight().into_iter().flatten().filter(|i| self.jobs.contains(i.job)).collect();
            self.queued.fetch_add(retry.len(), Ordering::SeqCst);
            self.queue.requeue_front(retry);
        }
        self.drop_stats_waiters();
        self.set_stopped();
        self.start_worker();
    }

    /// The worker is gone (its connection ended, or the watchdog found it hung): kill what
    /// is left of it, judge the inputs it held by how it died, and schedule the restart.
    pub(super) async fn lose_worker(&mut self, death: Death) {
        let Some(w) = self.slot.take() else { return };
        let pid = w.pid();
        w.kill().await;
        let implicates = death.cause.implicates_input();
        tracing::error!(model = %self.name, pid, implicates_input = implicates, "worker died: {death}");
        metrics().worker_restarts_total.with_label_values(&[&self.name]).inc();
        let restarts = {
            let mut s = self.status.lock().unwrap();
            s.restarts += 1;
            s.last_error = Some(death.to_string());
            s.pid = None;
            s.restarts
        };
        self.drop_stats_waiters();
        let verdict = recovery::sort_out(self.take_in_flight(), implicates);
        let cause = death.cause.to_string();
        for item in verdict.convicted {
            self.fail_job(item.job, JobError::Poisoned { index: item.index, reason: cause.clone() });
        }
        for item in verdict.exhausted {
            let reason = format!(
                "its worker died {} times while input {} was being processed (last: {cause}); it was not retried again",
                item.deaths, item.index
            );
            self.fail_job(item.job, JobError::Unavailable { model: self.name.clone(), reason });
        }
        let retry: Vec<Item> = verdict.retry.into_iter().collect();
        self.queued.fetch_add(retry.len(), Ordering::SeqCst);
        self.queue.requeue_front(retry);
        self.set_state(WorkerState::Restarting);
        self.restart_at = Some(Instant::now() + recovery::restart_delay(restarts));
    }

    /// The worker is gone: its waiters get no answer, and its last figures are not the next one's.
    fn drop_stats_waiters(&mut self) {
        for (_, waiter) in self.stats_waiters.drain() {
            let _ = waiter.send(None);
        }
        self.status.lock().unwrap().worker_stats = None;
    }

    pub(super) async fn shutdown(&mut self) {
        // Finish what is in flight, answer the rest as unavailable.
        let deadline = Instant::now() + self.cfg.stop_grace;
        while !self.in_flight.is_empty() && Instant::now() < deadline {
            let ev = tokio::select! {
                ev = next_event(&mut self.slot) => ev,
                _ = tokio::time::sleep_until(deadline) => break,
            };
            if matches!(ev, WorkerEvent::Died(_)) {
                break;
            }
            self.on_worker_event(ev).await;
        }
        for item in self.take_in_flight().into_iter().flatten() {
            self.jobs.fail(item.job, JobError::ShuttingDown);
        }
        self.fail_all_queued(JobError::ShuttingDown);
        if let Some(w) = self.slot.take() {
            self.set_state(WorkerState::Draining);
            w.stop(self.cfg.stop_grace).await;
        }
        self.set_stopped();
        self.publish_status();
    }

    pub(super) fn set_state(&self, state: WorkerState) {
        self.status.lock().unwrap().state = state;
    }

    pub(super) fn set_stopped(&self) {
        let mut s = self.status.lock().unwrap();
        s.state = WorkerState::Stopped;
        s.pid = None;
        s.started_at = None;
        s.started_wall = None;
    }

    pub(super) fn publish_status(&self) {
        let mut s = self.status.lock().unwrap();
        s.in_flight = self.in_flight.len();
        if self.slot.link().is_some() {
            s.state = if self.in_flight.is_empty() { WorkerState::Ready } else { WorkerState::Busy };
        }
        let m = metrics();
        m.queue_depth.with_label_values(&[&self.name]).set(self.queue.len() as f64);
        m.set_queue_by_priority(&self.name, &self.queue.depth_by_priority());
        for st in WorkerState::ALL {
            m.worker_state.with_label_values(&[&self.name, st.as_str()]).set(if st == s.state { 1.0 } else { 0.0 });
        }
    }
}
