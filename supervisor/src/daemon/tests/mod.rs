//! The daemon run in-process ([`super::run_with`] with the fake worker, `harness.rs`): its
//! wiring, and the HTTP contract — every route's JSON shapes, the API key, unknown fields
//! and 4xx answers — which needs no worker binary and no MLX. What needs real workers,
//! MLX or the OS (vectors against references, crashes, signals, installs, the official
//! clients) is tested end to end in `tests/`.

mod auth;
mod dialects;
mod errors;
mod harness;
mod wiring;
