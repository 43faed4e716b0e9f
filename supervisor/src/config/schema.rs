//! The configuration schema: every section and key with its default and what it means,
//! and the checks on values that parse but make no sense. Every limit the server enforces
//! is a named field here, so operators find them in one place; `config.example.yaml`
//! (checked against these defaults by a test) documents them for users.
//!
//! Loading (file < environment < CLI, with provenance) is in `load.rs`; YAML in `yaml.rs`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::paths::Paths;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub models: ModelsConfig,
    pub cache: CacheConfig,
    pub batch: BatchConfig,
    pub limits: LimitsConfig,
    pub metrics: MetricsConfig,
    pub logging: LoggingConfig,
    pub service: ServiceConfig,
    pub scheduling: SchedulingConfig,
    pub embedding_cache: EmbeddingCacheConfig,
    pub tracing: TracingConfig,
    /// Where files live (home, run/, the worker binary): from the environment, not a key
    /// of the file; carried here so every layer that has the config has them.
    #[serde(skip)]
    pub paths: Paths,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Bind address. Loopback by default: without `api_key` there is no authentication.
    pub host: String,
    pub port: u16,
    /// The drain deadline on SIGTERM: seconds accepted requests get to finish; then open
    /// connections are closed and workers stop within what is left (5 s at least).
    pub shutdown_timeout_seconds: u64,
    /// When set, every route but `/health` and `/ready` needs `Authorization: Bearer <key>`
    /// (`/metrics` too unless `metrics.require_api_key` is false).
    pub api_key: Option<ApiKey>,
    /// Seconds a client has to send a request's headers (also how long an idle keep-alive
    /// connection stays open); past it the connection is closed.
    pub header_read_timeout_seconds: u64,
    /// Seconds a client has to send a request's body once its headers arrived (408 past it).
    pub body_read_timeout_seconds: u64,
    /// Seconds a client may read nothing of its answer before the connection is closed.
    pub write_timeout_seconds: u64,
    /// Most HTTP connections open at once; past it the connection idle longest is closed
    /// for the new one, or the new one when every connection is busy.
    pub max_connections: usize,
    /// `Host` names accepted beside loopback names, IP addresses and this machine's name,
    /// while the server listens on loopback (`api/origin.rs`); `*` accepts any.
    pub allowed_hosts: Vec<String>,
    /// Browser origins (`scheme://host[:port]`, `*` a wildcard) allowed to call the API
    /// beside loopback pages (`api/origin.rs`).
    pub allowed_origins: Vec<String>,
    /// Whether `/api/pull` and `/api/delete` are served over HTTP; false limits model
    /// management to the CLI and the control socket (`api/manage.rs`).
    pub http_model_management: bool,
}

/// The API key: compared in constant time (`api/auth.rs`), never printed (`Debug` and
/// `mlx-serve config` show that it is set, not what it is).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ApiKey(pub String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<set>)")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    /// Model store; default `<home>/models`.
    pub directory: Option<PathBuf>,
    /// Models started with the server and evicted last.
    pub preload: Vec<String>,
    pub auto_download: bool,
    /// Seconds a request waits for an auto-download before it gets a 503.
    pub auto_download_timeout: u64,
    /// When false, a request for a missing model gets an immediate error saying the
    /// download started, instead of waiting.
    pub auto_download_on_request: bool,
    /// User aliases: name → repo id or model name.
    pub aliases: BTreeMap<String, String>,
    /// Dtype the worker computes in: auto (float32 on CPU, half precision on GPU),
    /// float32, float16, bfloat16.
    pub compute_dtype: String,
    /// Chunked embedding of inputs longer than the model's window (docs/long-documents.md).
    pub chunking: ChunkingConfig,
}

/// `models.chunking`: whether an embedding input longer than the model's window is split
/// into windows whose vectors are pooled to one, instead of truncated or refused, when the
/// request does not say (its `chunking` field; an explicit `truncate` also wins).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChunkingConfig {
    /// The default for every embedding model.
    pub enabled: bool,
    /// Tokens each window repeats from the end of the one before it.
    pub overlap_tokens: usize,
    /// Per-model overrides, by the model's store name (`mlx-serve list`).
    pub per_model: BTreeMap<String, ModelChunking>,
}

/// One model's override of `models.chunking`; an absent key keeps the default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelChunking {
    pub enabled: Option<bool>,
    pub overlap_tokens: Option<usize>,
}

impl ChunkingConfig {
    /// The overlap a model chunks with when chunking is on for it, or `None` when its
    /// default is off.
    pub fn for_model(&self, model: &str) -> Option<usize> {
        let own = self.per_model.get(model);
        let enabled = own.and_then(|m| m.enabled).unwrap_or(self.enabled);
        enabled.then(|| self.overlap_for(model))
    }

    /// The overlap a model chunks with (its own, else the default).
    pub fn overlap_for(&self, model: &str) -> usize {
        self.per_model.get(model).and_then(|m| m.overlap_tokens).unwrap_or(self.overlap_tokens)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub max_embedding_models: usize,
    pub max_reranker_models: usize,
    /// Idle seconds before a worker is stopped to give memory back (0 = never).
    pub ttl_seconds: u64,
    /// MLX buffer-cache bound per worker, MiB; 0 = automatic (the worker sizes it to one
    /// batch's working set: docs/worker.md, "Memory").
    pub worker_cache_limit_mb: u64,
    /// Memory all loaded workers may hold together, MiB (accelerator memory as the driver
    /// counts it where a worker has one, else resident memory); above it the least recently
    /// used idle workers are stopped. 0 = no bound beyond the model counts.
    pub max_workers_memory_mb: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// Most sequences in one batch sent to a worker.
    pub max_batch_size: usize,
    /// How long a batch may wait to fill while the worker is busy with another and its
    /// speed is not known yet (its first batch). An idle worker always gets queued work at
    /// once; once the worker has been timed, the next batch is cut just before it is
    /// predicted to be free (`batch/policy.rs`).
    pub max_wait_ms: u64,
    /// Most tokens one batch may make the worker compute: real tokens for a worker that
    /// packs batches, sequences × longest for one that pads them.
    pub max_batch_tokens: usize,
    /// Most sequences queued per model; past it requests get 429 (bulk work an eighth
    /// earlier: `runner::handle::bulk_queue_limit`).
    pub max_queue_size: usize,
    /// `max_batch_size` for a worker that computes on a GPU (Metal, CUDA): one batch of a
    /// few hundred sequences keeps a GPU busy where 32 leave it waiting on the host.
    pub gpu_max_batch_size: usize,
    /// `max_batch_tokens` for a worker that computes on a GPU.
    pub gpu_max_batch_tokens: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request body, bytes (413 past it).
    pub max_request_bytes: usize,
    /// Most inputs in one embeddings request (OpenAI allows 2048); on `/v1/embeddings` the
    /// size of a piece of a streamed request instead (`api/pieces.rs`).
    pub max_inputs_per_request: usize,
    /// Most tokens in one request, summed over its inputs after truncation.
    pub max_tokens_per_request: usize,
    /// Most documents in one rerank request.
    pub max_documents_per_rerank: usize,
    /// Seconds before a request is answered 503/504 and dropped from the queue.
    pub request_timeout_seconds: u64,
    /// Truncate inputs longer than the model's limit (false: 400 instead).
    pub truncate: bool,
    /// Memory for requests being handled at once, summed over all requests: each is charged
    /// its body plus what decoding it takes (`api/body.rs`); past it requests get 429.
    pub max_inflight_request_bytes: usize,
    /// Seconds to wait for a worker to load its model.
    pub worker_start_timeout_seconds: u64,
    /// Take token-id lists as embeddings input (OpenAI allows it). False refuses them with
    /// a 400: ids from another tokenizer (LangChain's tiktoken default) embed to garbage.
    pub accept_token_ids: bool,
    /// A batch running longer than this, and 10 times longer than the model's observed
    /// time for a batch of its size, means the worker hangs: it is killed and restarted and
    /// its inputs retried. 0 turns the watchdog off.
    pub hung_worker_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// Serve /metrics on a second listener too (the main port always has it when
    /// enabled). Not 9090 by default: that is Prometheus' own port.
    pub port: Option<u16>,
    /// With `server.api_key` set, `/metrics` needs the key too (false: open to scrapers).
    pub require_api_key: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    pub level: String,
    /// text | json
    pub format: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    pub auto_start: bool,
    pub restart_on_failure: bool,
    /// Seconds between restarts (launchd ThrottleInterval, systemd RestartSec).
    pub restart_delay: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8000,
            shutdown_timeout_seconds: 30,
            api_key: None,
            header_read_timeout_seconds: 30,
            body_read_timeout_seconds: 60,
            write_timeout_seconds: 60,
            max_connections: 512,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            http_model_management: true,
        }
    }
}

impl Default for ModelsConfig {
    fn default() -> Self {
        ModelsConfig {
            directory: None,
            preload: Vec::new(),
            auto_download: true,
            auto_download_timeout: 600,
            auto_download_on_request: true,
            aliases: BTreeMap::new(),
            compute_dtype: "auto".into(),
            chunking: ChunkingConfig::default(),
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_embedding_models: 2,
            max_reranker_models: 1,
            ttl_seconds: 1800,
            worker_cache_limit_mb: 0,
            max_workers_memory_mb: 0,
        }
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_batch_size: 32,
            max_wait_ms: 50,
            max_batch_tokens: 16384,
            max_queue_size: 4096,
            gpu_max_batch_size: 256,
            gpu_max_batch_tokens: 32768,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_request_bytes: 16 << 20,
            max_inputs_per_request: 2048,
            max_tokens_per_request: 1 << 20,
            max_documents_per_rerank: 1000,
            request_timeout_seconds: 120,
            truncate: true,
            max_inflight_request_bytes: 64 << 20,
            worker_start_timeout_seconds: 120,
            accept_token_ids: true,
            hung_worker_seconds: 30,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: true, port: None, require_api_key: true }
    }
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig { level: "info".into(), format: "text".into() }
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig { auto_start: true, restart_on_failure: true, restart_delay: 5 }
    }
}

/// Which queued work runs first (`batch/order.rs`, docs/scheduling.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulingConfig {
    /// Priority of a request that names none (body `priority`, `X-Priority` header, or
    /// its API key's default). Lower runs first, as in vLLM.
    pub default_priority: i32,
    /// Default priority per API key (the `Authorization: Bearer` token), so an ingest job
    /// marks itself bulk without changing its bodies. Not an authentication list.
    pub key_priorities: Vec<KeyPriority>,
    /// An input's priority rises one step per this many milliseconds waited, up to the
    /// best priority queued, so bulk work is never starved. 0: no aging.
    pub priority_aging_ms: u64,
    /// Batches are sized from the worker's observed speed to take at most this long, so
    /// new work waits about two batches at most; a batch still grows until its learnt
    /// fixed cost is at most a sixteenth of it, up to 16x this (`batch::Overhead`). 0: the
    /// token budget alone.
    pub max_batch_ms: u64,
    /// The same bound for batches cut while every queued input is bulk work (priority
    /// worse than `default_priority`): shorter, so a query that arrives overtakes it
    /// sooner, and none is sent ahead of the one computing; work at the default priority
    /// keeps `max_batch_ms`, pipelining and its throughput. 0: `max_batch_ms` for bulk
    /// work too, pipelined as any other.
    pub bulk_max_batch_ms: u64,
}

/// The embedding cache (`runner/vector_cache.rs`, its disk tier `runner/disk_cache.rs`,
/// docs/cache.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddingCacheConfig {
    /// Memory for cached vectors, MiB (0: no cache). Least recently used go first.
    pub memory_mb: u64,
    /// The disk tier's file may hold this many MiB (0: no disk tier). Oldest written go
    /// first.
    pub disk_mb: u64,
    /// The disk tier's file (default `<home>/cache/embeddings.redb`). One daemon per file.
    pub disk_path: Option<PathBuf>,
}

impl Default for EmbeddingCacheConfig {
    fn default() -> Self {
        EmbeddingCacheConfig { memory_mb: 64, disk_mb: 0, disk_path: None }
    }
}

/// The smallest disk tier: an empty store file takes about 1.5 MiB and the file is kept
/// at under half its budget between compactions (runner/disk_cache.rs).
pub const MIN_DISK_MB: u64 = 8;

impl EmbeddingCacheConfig {
    /// The disk tier's file: `disk_path` (a leading `~` is the user's home) or
    /// `<home>/cache/embeddings.redb`.
    pub fn disk_file(&self, paths: &Paths) -> PathBuf {
        match &self.disk_path {
            Some(p) => paths.expand_tilde(p),
            None => paths.home().join("cache").join("embeddings.redb"),
        }
    }
}

/// OpenTelemetry trace export over OTLP/HTTP (`telemetry/`, docs/tracing.md). Off by
/// default; the standard `OTEL_*` variables set these keys too (`env.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingConfig {
    pub enabled: bool,
    /// The OTLP/HTTP traces URL (a Collector, Jaeger or Tempo), `/v1/traces` included.
    pub endpoint: String,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// Share of traces kept, 0 to 1, for traces that start here; a request carrying a
    /// `traceparent` follows its caller's decision (parent-based sampling).
    pub sample_ratio: f64,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            enabled: false,
            // OTLP/HTTP's default port and path (OpenTelemetry specification, "OTLP
            // Exporter Configuration": http://localhost:4318/v1/traces).
            endpoint: "http://localhost:4318/v1/traces".into(),
            service_name: "mlx-serve".into(),
            sample_ratio: 1.0,
        }
    }
}

/// One entry of `scheduling.key_priorities`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPriority {
    pub key: ApiKey,
    pub priority: i32,
}

/// Priorities are taken in this range (vLLM's field is any integer; Cohere's 0–999).
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i64> = -1000..=1000;

impl Default for SchedulingConfig {
    fn default() -> Self {
        SchedulingConfig {
            default_priority: 0,
            key_priorities: Vec::new(),
            priority_aging_ms: 1000,
            max_batch_ms: 50,
            bulk_max_batch_ms: 25,
        }
    }
}

/// The commented example `mlx-serve config --example` prints (all values at defaults).
pub const EXAMPLE: &str = include_str!("../../../config.example.yaml");

impl Config {
    /// The model store directory. A leading `~` is the user's home
    /// (`directory: ~/.mlx-serve/models`): YAML does not expand it.
    pub fn models_dir(&self) -> PathBuf {
        match &self.models.directory {
            Some(dir) => self.paths.expand_tilde(dir),
            None => self.paths.home().join("models"),
        }
    }

    /// The embedding cache's disk tier file ([`EmbeddingCacheConfig::disk_file`]).
    pub fn embedding_cache_file(&self) -> PathBuf {
        self.embedding_cache.disk_file(&self.paths)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if !(0.0..=1.0).contains(&self.tracing.sample_ratio) {
            problems.push("tracing.sample_ratio must be between 0 and 1");
        }
        if !(self.tracing.endpoint.starts_with("http://") || self.tracing.endpoint.starts_with("https://")) {
            problems.push("tracing.endpoint must be an http:// or https:// URL");
        }
        if self.batch.max_batch_size == 0 {
            problems.push("batch.max_batch_size must be at least 1");
        }
        if (1..MIN_DISK_MB).contains(&self.embedding_cache.disk_mb) {
            // An empty redb file already takes about 1.5 MiB (docs/cache.md).
            problems.push("embedding_cache.disk_mb must be 0 (no disk tier) or at least 8");
        }
        if self.batch.max_queue_size == 0 {
            problems.push("batch.max_queue_size must be at least 1");
        }
        if self.batch.max_batch_tokens == 0 {
            problems.push("batch.max_batch_tokens must be at least 1");
        }
        if self.batch.gpu_max_batch_size == 0 {
            problems.push("batch.gpu_max_batch_size must be at least 1");
        }
        if self.batch.gpu_max_batch_tokens == 0 {
            problems.push("batch.gpu_max_batch_tokens must be at least 1");
        }
        if let Some(ApiKey(key)) = &self.server.api_key {
            // It travels in an HTTP header: visible ASCII, no spaces.
            if key.is_empty() || key.len() > 256 || !key.bytes().all(|b| b.is_ascii_graphic()) {
                problems.push("server.api_key must be 1 to 256 visible ASCII characters without spaces (remove the key to turn authentication off)");
            }
        }
        if self.server.header_read_timeout_seconds == 0
            || self.server.body_read_timeout_seconds == 0
            || self.server.write_timeout_seconds == 0
        {
            problems.push("server.header_read_timeout_seconds, server.body_read_timeout_seconds and server.write_timeout_seconds must be at least 1");
        }
        if self.server.max_connections == 0 {
            problems.push("server.max_connections must be at least 1");
        }
        // A body is charged its size plus what it decodes to (about as much again for text).
        if self.limits.max_inflight_request_bytes / 2 < self.limits.max_request_bytes {
            problems.push("limits.max_inflight_request_bytes must be at least twice limits.max_request_bytes (a body is charged its size plus what decoding it takes)");
        }
        let prio_ok = |p: i32| PRIORITY_RANGE.contains(&(p as i64));
        if !prio_ok(self.scheduling.default_priority)
            || !self.scheduling.key_priorities.iter().all(|k| prio_ok(k.priority))
        {
            problems.push("scheduling priorities must be between -1000 and 1000");
        }
        if !self.scheduling.key_priorities.iter().all(|k| !k.key.0.is_empty()) {
            problems.push("scheduling.key_priorities: each key must be non-empty");
        }
        if !matches!(self.logging.format.as_str(), "text" | "json") {
            problems.push("logging.format must be text or json");
        }
        if !matches!(self.models.compute_dtype.as_str(), "auto" | "float32" | "float16" | "bfloat16") {
            problems.push("models.compute_dtype must be auto, float32, float16 or bfloat16");
        }
        // Otherwise the second bind fails with a misleading "port already in use".
        if self.metrics.enabled && self.metrics.port.is_some_and(|p| p != 0 && p == self.server.port) {
            problems.push("metrics.port must differ from server.port (the main port already serves /metrics)");
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn example_is_the_defaults() {
        let parsed = crate::config::parse_yaml(EXAMPLE, std::path::Path::new("config.example.yaml")).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn a_models_directory_under_tilde_is_in_the_users_home() {
        let mut c = Config { paths: Paths::under(Path::new("/home/u"), Path::new("w")), ..Config::default() };
        assert_eq!(c.models_dir(), PathBuf::from("/home/u/models"));
        c.models.directory = Some("~/.mlx-serve/models".into());
        assert_eq!(c.models_dir(), PathBuf::from("/home/u/.mlx-serve/models"));
        c.models.directory = Some("/srv/models".into());
        assert_eq!(c.models_dir(), PathBuf::from("/srv/models"));
        // Only a whole `~` component: `~other/x` is a folder named so.
        c.models.directory = Some("~other/x".into());
        assert_eq!(c.models_dir(), PathBuf::from("~other/x"));
    }

    #[test]
    fn nonsense_values_are_refused() {
        let mut c = Config::default();
        assert!(c.validate().is_ok());
        c.batch.max_batch_size = 0;
        c.logging.format = "xml".into();
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("batch.max_batch_size") && msg.contains("logging.format"), "{msg}");
    }
}
