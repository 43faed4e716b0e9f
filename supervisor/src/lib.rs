//! `mlx-serve`: a local embedding and reranking server on Apple's MLX — the supervisor
//! daemon and its command line, as a library (`main.rs` only calls [`cli::main`]).
//!
//! The supervisor never links MLX; `mlx-serve-worker` does the compute, one process per
//! loaded model, over Unix-socket IPC (`mlx-serve-protocol`).
//!
//! # Layout
//!
//! Data flows one way: HTTP → validate → tokenize → queue → batch → IPC → worker → IPC →
//! scatter → encode → HTTP. Each folder is a layer and uses only the layers below it
//! (`layering.rs` checks this, and that no module cycle exists):
//!
//! ```text
//! cli/        clap commands: start/stop/status/ctl/config/service, pull/list/show/remove/quantize
//! daemon/     run(config, listener, shutdown), PID files, background start, stop,
//!             control-socket server, launchd/systemd service files
//! api/        HTTP routes per API family (OpenAI, Cohere/Jina/TEI, Ollama), OpenAPI, errors → statuses
//! resolve/    model name → running model: aliases, repo ids, auto-download, then the pool
//! runner/     one actor per model (handle, loop, crash recovery, back-off), the pool, eviction
//! batch/      the per-model queue, batch cutting, and the dispatch policy (a pure function)
//! metrics     Prometheus registry and metric names
//! telemetry/  OpenTelemetry traces: OTLP export, request spans, batch and forward spans
//! worker/     a worker process behind a trait: spawn + handshake, IPC framing, state
//! control/    the control socket's JSON-lines language and its blocking client
//! store/      models on disk: store, aliases, pull (hub/folder), quantize, downloads, metadata
//! tokenize    HF tokenizers, truncation, reranker prompt templates, models' named prompts
//! config/     schema and defaults, loading with provenance (file < env < CLI), YAML
//! paths       where files live: home, config, run/, logs/, worker binary and sockets
//! console     CLI output that survives a closed pipe (`| head`)
//! ```
//!
//! The design facts the comments rely on (the data path, the worker conversation,
//! batching, crash recovery, eviction, memory) are in `docs/architecture.md`.

pub mod api;
pub mod batch;
pub mod cli;
pub mod config;
pub mod console;
pub mod control;
pub mod daemon;
pub mod metrics;
pub mod paths;
pub mod resolve;
pub mod runner;
pub mod store;
pub mod telemetry;
pub mod tokenize;
pub mod worker;

#[cfg(test)]
mod layering;
#[cfg(test)]
mod tour;
