//! Batching: a model's queue of tokenized inputs, how the next batch is cut from it
//! (`queue.rs`), and when it is sent (`policy.rs`, a pure function of the queue, what is
//! in flight and the clock). The runner owns one queue per model and asks the policy
//! after every event; see `docs/architecture.md` ("Batching and dispatch").

mod policy;
mod queue;

pub use policy::{decide, Decision, InFlight, PIPELINE_DEPTH};
pub use queue::{Item, Limits, Queue};
