//! Shared helpers for mlx-serve's end-to-end tests.

pub mod balancer;
pub mod base64;
pub mod cli;
pub mod fake_hub;
pub mod fixtures;
pub mod manifests;
pub mod parity;
pub mod process;
pub mod prometheus;
pub mod raw;
pub mod reference_checks;
pub mod server;
pub mod tools;
pub mod worker_process;
