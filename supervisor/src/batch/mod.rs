//! Batching: a model's queue of tokenized inputs, the order they are served in
//! (`order.rs`: priorities, aging, fairness between clients and requests), how the next
//! batch is cut from it (`queue.rs`), when it is sent (`policy.rs`, a pure function of the queue, what is in
//! flight and the clock), and how long the worker takes for a batch (`pace.rs`, learnt
//! from its answers). The runner owns one queue per model and asks the policy after every
//! event; see `docs/architecture.md` ("Batching and dispatch").

mod item;
mod order;
mod pace;
mod policy;
mod pools;
mod queue;

pub use item::LatePools;
pub use order::effective_priority;
pub use pace::{Overhead, Pace};
pub use policy::{batch_yields, decide, is_long, overtakes, Decision, InFlight, Rules, PIPELINE_DEPTH};
pub use pools::pools;
pub use queue::{tokens, Item, Limits, Queue};
