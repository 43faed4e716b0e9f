//! Shared helpers for mlx-serve's end-to-end tests.

pub mod fake_hub;
pub mod fixtures;
pub mod worker_process;
pub mod server;
pub mod cli;
pub mod balancer;
pub mod manifests;
pub mod process;
pub mod prometheus;
pub mod raw;
