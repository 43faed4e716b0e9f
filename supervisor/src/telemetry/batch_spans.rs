//! The spans of a batch, recorded with explicit start and end times when its answer comes
//! back (the runner knows the times; no span is open while the batch computes).
//!
//! A batch serves several requests, and each request's trace gets its own copies: a
//! `queue.wait` span, a `batch` span and its `worker.forward` child, all with the batch's
//! id, so one trace shows the whole request without following links into other traces
//! (docs/tracing.md says why this was chosen over span links).

use std::time::{Duration, SystemTime};

use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use tokio::time::Instant;

/// A job's trace context, kept with the job while its inputs wait and compute.
pub type JobTrace = Context;

/// One traced request in a batch: how many of its inputs and tokens rode in it, and when
/// the first of them was queued.
struct Rider {
    job: u64,
    cx: Context,
    inputs: usize,
    tokens: usize,
    queued: SystemTime,
}

/// The traced requests of one batch in flight (empty when tracing is off or no request in
/// it is sampled).
#[derive(Default)]
pub struct BatchTrace {
    riders: Vec<Rider>,
    sent: Option<SystemTime>,
}

/// The wall-clock time of a runtime instant (spans carry wall-clock times).
fn wall(at: Instant) -> SystemTime {
    SystemTime::now() - Instant::now().saturating_duration_since(at)
}

/// What the batch was, for its spans' attributes.
pub struct BatchFacts<'a> {
    pub model: &'a str,
    pub id: u64,
    pub size: usize,
    pub tokens: u64,
}

impl BatchTrace {
    /// Counts one input of `job` (traced with `cx`) into the batch.
    pub fn ride(&mut self, job: u64, cx: &Context, tokens: usize, queued: Instant) {
        let queued = wall(queued);
        match self.riders.iter_mut().find(|r| r.job == job) {
            Some(r) => {
                r.inputs += 1;
                r.tokens += tokens;
                r.queued = r.queued.min(queued);
            }
            None => self.riders.push(Rider { job, cx: cx.clone(), inputs: 1, tokens, queued }),
        }
    }

    /// The batch was sent to the worker now.
    pub fn sent(&mut self) {
        if !self.riders.is_empty() {
            self.sent = Some(SystemTime::now());
        }
    }

    /// The answer came now: records every rider's spans. `forward` is the time the worker
    /// measured (None when it answered with an error or not at all: `error` says why).
    pub fn finish(self, facts: BatchFacts<'_>, forward: Option<Duration>, error: Option<&str>) {
        let (Some(tracer), Some(sent)) = (super::tracer(), self.sent) else { return };
        let now = SystemTime::now();
        let batch_attrs = || {
            vec![
                KeyValue::new("mlx.model", facts.model.to_owned()),
                KeyValue::new("mlx.batch.id", facts.id as i64),
                KeyValue::new("mlx.batch.size", facts.size as i64),
                KeyValue::new("mlx.batch.tokens", facts.tokens as i64),
            ]
        };
        for rider in self.riders {
            tracer
                .span_builder("queue.wait")
                .with_kind(SpanKind::Internal)
                .with_start_time(rider.queued)
                .with_attributes([
                    KeyValue::new("mlx.model", facts.model.to_owned()),
                    KeyValue::new("mlx.inputs", rider.inputs as i64),
                    KeyValue::new("mlx.batch.id", facts.id as i64),
                ])
                .start_with_context(tracer, &rider.cx)
                .end_with_timestamp(sent);
            let mut attrs = batch_attrs();
            attrs.push(KeyValue::new("mlx.inputs", rider.inputs as i64));
            attrs.push(KeyValue::new("mlx.tokens", rider.tokens as i64));
            let mut batch = tracer
                .span_builder("batch")
                .with_kind(SpanKind::Internal)
                .with_start_time(sent)
                .with_attributes(attrs)
                .start_with_context(tracer, &rider.cx);
            if let Some(e) = error {
                batch.set_status(Status::error(e.to_owned()));
            }
            if let Some(took) = forward {
                // The worker's own time, ending when its answer arrived; never before the
                // batch was sent (clocks of one machine, but the answer's transfer is not in it).
                let start = now.checked_sub(took).map_or(sent, |s| s.max(sent));
                let batch_cx = rider.cx.with_remote_span_context(batch.span_context().clone());
                tracer
                    .span_builder("worker.forward")
                    .with_kind(SpanKind::Internal)
                    .with_start_time(start)
                    .with_attributes([
                        KeyValue::new("mlx.model", facts.model.to_owned()),
                        KeyValue::new("mlx.batch.id", facts.id as i64),
                        KeyValue::new("mlx.worker.forward_us", took.as_micros() as i64),
                    ])
                    .start_with_context(tracer, &batch_cx)
                    .end_with_timestamp(now);
            }
            batch.end_with_timestamp(now);
        }
    }
}
