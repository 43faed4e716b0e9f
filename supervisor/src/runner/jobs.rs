//! The requests a runner is answering: each job's inputs are in the queue or in flight,
//! and its rows or scores are gathered here ("scatter") until the last one arrives, when
//! the job's oneshot gets the whole answer in input order. A late-chunked document's
//! item answers several rows (`Item::rows`): its job's rows are laid out input after
//! input, each taking as many as its item answers.

use std::collections::HashMap;

use mlx_serve_protocol::{ModelKind, TokenOutputs};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::handle::{JobClass, JobError, JobOutput, JobResult, TokenRows};
use crate::batch::{Item, LatePools};
use crate::telemetry::JobTrace;
use crate::tokenize::Tokens;

/// What a worker returned for one batch, row `i` belonging to the batch's item `i`.
#[derive(Clone, Copy)]
pub enum BatchOutput<'a> {
    Rows {
        dim: usize,
        data: &'a [f32],
    },
    Scores(&'a [f32]),
    /// Rows plus, per row, the per-token outputs the batch asked for (empty when not).
    Tokens {
        dim: usize,
        data: &'a [f32],
        sparse: &'a [Vec<(u32, f32)>],
        colbert_dim: usize,
        colbert: &'a [Vec<f32>],
    },
}

struct Job {
    reply: oneshot::Sender<JobResult>,
    /// Rows of the whole answer, and where each input's rows start.
    n: usize,
    starts: Vec<usize>,
    remaining: usize,
    dim: usize,
    data: Vec<f32>,
    outputs: TokenOutputs,
    sparse: Vec<Vec<(u32, f32)>>,
    colbert_dim: usize,
    colbert: Vec<Vec<f32>>,
    /// The request's trace context, when it is traced (`telemetry/`).
    trace: Option<JobTrace>,
}

#[derive(Default)]
pub struct Jobs {
    table: HashMap<u64, Job>,
}

impl Jobs {
    /// Registers request `job` (its id comes from the handle) and returns its inputs as
    /// queue items. `late` is empty, or one late-chunked document's pools per input.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        job: u64,
        seqs: Vec<Tokens>,
        late: Vec<LatePools>,
        class: JobClass,
        outputs: TokenOutputs,
        reply: oneshot::Sender<JobResult>,
        now: Instant,
    ) -> Vec<Item> {
        let inputs = seqs.len();
        let mut late: Vec<Option<Box<LatePools>>> = late.into_iter().map(|l| Some(Box::new(l))).collect();
        late.resize_with(inputs, || None);
        let mut starts = Vec::with_capacity(inputs);
        let mut n = 0;
        for l in &late {
            starts.push(n);
            n += l.as_ref().map_or(1, |l| 1 + l.more.len() + l.chunks.len());
        }
        let (sparse, colbert) = (
            if outputs.sparse { vec![Vec::new(); n] } else { Vec::new() },
            if outputs.colbert { vec![Vec::new(); n] } else { Vec::new() },
        );
        let job_state = Job {
            reply,
            n,
            starts,
            remaining: inputs,
            dim: 0,
            data: Vec::new(),
            outputs,
            sparse,
            colbert_dim: 0,
            colbert,
            trace: None,
        };
        self.table.insert(job, job_state);
        seqs.into_iter()
            .zip(late)
            .enumerate()
            .map(|(index, (tokens, late))| Item {
                outputs,
                late,
                ..Item::new(job, index as u32, tokens, now).with_class(class.priority, class.client)
            })
            .collect()
    }

    /// Forgets `job` without answering it (its requester went away); false when it was
    /// already answered.
    /// Keeps the trace context of a job just added.
    pub fn trace(&mut self, job: u64, cx: JobTrace) {
        if let Some(j) = self.table.get_mut(&job) {
            j.trace = Some(cx);
        }
    }

    /// The trace context of a job, when it is traced.
    pub fn trace_of(&self, job: u64) -> Option<&JobTrace> {
        self.table.get(&job).and_then(|j| j.trace.as_ref())
    }

    pub fn forget(&mut self, job: u64) -> bool {
        self.table.remove(&job).is_some()
    }

    /// The job still waits for an answer.
    pub fn contains(&self, job: u64) -> bool {
        self.table.contains_key(&job)
    }

    pub fn ids(&self) -> Vec<u64> {
        self.table.keys().copied().collect()
    }

    /// Forgets jobs whose requester went away (client disconnect, request timeout).
    pub fn drop_abandoned(&mut self) {
        self.table.retain(|_, j| !j.reply.is_closed());
    }

    /// Writes a batch's output into its jobs and answers the jobs that are complete. An
    /// output of the wrong size fails the batch's jobs instead of being trusted.
    pub fn scatter(&mut self, model: &str, kind: ModelKind, items: &[Item], output: BatchOutput<'_>) {
        let width = match output {
            BatchOutput::Rows { dim, .. } | BatchOutput::Tokens { dim, .. } => dim,
            BatchOutput::Scores(_) => 1,
        };
        let len = match output {
            BatchOutput::Rows { data, .. } | BatchOutput::Tokens { data, .. } => data.len(),
            BatchOutput::Scores(s) => s.len(),
        };
        // Per-token outputs come for every row of the batch, or not at all.
        let tokens_ok = match output {
            BatchOutput::Tokens { sparse, colbert, .. } => {
                let want = items.iter().fold(TokenOutputs::default(), |a, i| TokenOutputs {
                    sparse: a.sparse || i.outputs.sparse,
                    colbert: a.colbert || i.outputs.colbert,
                });
                (!want.sparse || sparse.len() == items.len()) && (!want.colbert || colbert.len() == items.len())
            }
            _ => true,
        };
        // A sparse-only (SPLADE) or token-vector-only (PyLate ColBERT) model answers no dense
        // rows: width 0, sparse weights or token vectors per row.
        let sparse_only = matches!(output, BatchOutput::Tokens { data: [], sparse, colbert, .. }
            if sparse.len() == items.len() || colbert.len() == items.len());
        // One row per item, but a late-chunked document's: one per chunk.
        let rows = match output {
            BatchOutput::Rows { .. } => items.iter().map(Item::rows).sum(),
            _ => items.len(),
        };
        if (width == 0 && !sparse_only) || len != rows * width || !tokens_ok {
            let message = format!("the worker answered {len} values for {} inputs", items.len());
            for item in items {
                self.fail(item.job, JobError::WorkerFailed { model: model.to_owned(), message: message.clone() });
            }
            return;
        }
        // The first answer row of each item (one per item but for late-chunked documents).
        let mut first_row = 0;
        for (row, item) in items.iter().enumerate() {
            let at = first_row;
            first_row += item.rows();
            let Some(job) = self.table.get_mut(&item.job) else { continue };
            let i = item.index as usize;
            match output {
                BatchOutput::Rows { dim, data } => {
                    if job.dim == 0 {
                        job.dim = dim;
                        job.data = vec![0.0; job.n * dim];
                    }
                    let (to, k) = (job.starts[i], item.rows());
                    job.data[to * dim..(to + k) * dim].copy_from_slice(&data[at * dim..(at + k) * dim]);
                }
                BatchOutput::Tokens { dim, data, sparse, colbert_dim, colbert } => {
                    if job.dim == 0 {
                        job.dim = dim;
                        job.data = vec![0.0; job.n * dim];
                    }
                    job.data[i * dim..(i + 1) * dim].copy_from_slice(&data[row * dim..(row + 1) * dim]);
                    if job.outputs.sparse {
                        job.sparse[i] = sparse[row].clone();
                    }
                    if job.outputs.colbert {
                        job.colbert_dim = colbert_dim;
                        job.colbert[i] = colbert[row].clone();
                    }
                }
                BatchOutput::Scores(scores) => {
                    if job.data.is_empty() {
                        job.data = vec![0.0; job.n];
                        job.dim = 1;
                    }
                    job.data[i] = scores[row];
                }
            }
            job.remaining -= 1;
            if job.remaining == 0 {
                let job = self.table.remove(&item.job).expect("job present");
                let out = match kind {
                    ModelKind::Embedding if job.outputs.any() => JobOutput::Tokens(TokenRows {
                        dim: job.dim,
                        data: job.data,
                        sparse: job.sparse,
                        colbert_dim: job.colbert_dim,
                        colbert: job.colbert,
                    }),
                    ModelKind::Embedding => JobOutput::Rows { dim: job.dim, data: job.data },
                    ModelKind::Reranker => JobOutput::Scores(job.data),
                    // Every label's logit, row-major per input.
                    ModelKind::Classifier => JobOutput::Rows { dim: job.dim, data: job.data },
                };
                let _ = job.reply.send(Ok(out));
            }
        }
    }

    /// Answers `job` with `err`. Its other inputs are dropped when they are met (the queue
    /// filters by [`Jobs::contains`]; rows for it are ignored). False when it was already
    /// answered.
    pub fn fail(&mut self, job: u64, err: JobError) -> bool {
        match self.table.remove(&job) {
            Some(j) => {
                let _ = j.reply.send(Err(err));
                true
            }
            None => false,
        }
    }
}
