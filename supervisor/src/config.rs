//! Configuration: defaults < `<home>/config.yaml` < `MLX_SERVE_*` environment < CLI flags.
//!
//! This is the one module that knows about serde_yaml (archived upstream); swapping the
//! YAML library touches only [`parse_yaml`]. Every limit the server enforces is a named
//! field here with its default, so operators find them in one place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where a value came from, for `mlx-serve config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Default,
    File,
    Env,
    Cli,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Bind address. Loopback by default: there is no authentication.
    pub host: String,
    pub port: u16,
    /// Seconds to wait for accepted requests to finish on SIGTERM before workers are stopped.
    pub shutdown_timeout_seconds: u64,
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
    /// Dtype the worker computes in: auto (float32 on CPU, stored dtype on GPU),
    /// float32, float16, bfloat16.
    pub compute_dtype: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub max_embedding_models: usize,
    pub max_reranker_models: usize,
    /// Idle seconds before a worker is stopped to give memory back (0 = never).
    pub ttl_seconds: u64,
    /// MLX buffer-cache bound per worker, MiB.
    pub worker_cache_limit_mb: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// Most sequences in one batch sent to a worker.
    pub max_batch_size: usize,
    /// How long a batch may wait to fill while the worker is busy with another. An idle
    /// worker always gets queued work at once.
    pub max_wait_ms: u64,
    /// Most padded tokens (sequences × longest) in one batch.
    pub max_batch_tokens: usize,
    /// Most sequences queued per model; past it requests get 429.
    pub max_queue_size: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request body, bytes (413 past it).
    pub max_request_bytes: usize,
    /// Most inputs in one embeddings request (OpenAI allows 2048).
    pub max_inputs_per_request: usize,
    /// Most tokens in one request, summed over its inputs after truncation.
    pub max_tokens_per_request: usize,
    /// Most documents in one rerank request.
    pub max_documents_per_rerank: usize,
    /// Seconds before a request is answered 503/504 and dropped from the queue.
    pub request_timeout_seconds: u64,
    /// Truncate inputs longer than the model's limit (false: 400 instead).
    pub truncate: bool,
    /// Seconds to wait for a worker to load its model.
    pub worker_start_timeout_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// Serve /metrics on a second listener too (the main port always has it when
    /// enabled). Not 9090 by default: that is Prometheus' own port.
    pub port: Option<u16>,
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

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            models: ModelsConfig::default(),
            cache: CacheConfig::default(),
            batch: BatchConfig::default(),
            limits: LimitsConfig::default(),
            metrics: MetricsConfig::default(),
            logging: LoggingConfig::default(),
            service: ServiceConfig::default(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { host: "127.0.0.1".into(), port: 8000, shutdown_timeout_seconds: 30 }
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
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { max_embedding_models: 2, max_reranker_models: 1, ttl_seconds: 1800, worker_cache_limit_mb: 256 }
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig { max_batch_size: 32, max_wait_ms: 5, max_batch_tokens: 16384, max_queue_size: 4096 }
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
            worker_start_timeout_seconds: 120,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: true, port: None }
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

/// `MLX_SERVE_HOME`, default `~/.mlx-serve`.
pub fn home_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("MLX_SERVE_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".mlx-serve")
}

/// The config file path: `MLX_SERVE_CONFIG` or `<home>/config.yaml`.
pub fn config_path() -> PathBuf {
    std::env::var_os("MLX_SERVE_CONFIG")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| home_dir().join("config.yaml"))
}

/// A config error that names the file, the key and the line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Parses YAML text into a [`Config`]; unknown keys and wrong types are errors that name
/// the key and the line.
pub fn parse_yaml(text: &str, path: &Path) -> Result<Config, ConfigError> {
    if text.trim().is_empty() {
        return Ok(Config::default());
    }
    serde_yaml::from_str::<Config>(text).map_err(|e| {
        let place = match e.location() {
            Some(l) => format!("{}:{}:{}", path.display(), l.line(), l.column()),
            None => path.display().to_string(),
        };
        ConfigError(format!("{place}: {e}"))
    })
}

impl Config {
    /// Loads defaults < file < environment. CLI flags are applied by the caller.
    pub fn load() -> Result<(Config, PathBuf), ConfigError> {
        let path = config_path();
        let mut config = match std::fs::read_to_string(&path) {
            Ok(text) => parse_yaml(&text, &path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Config::default(),
            Err(e) => return Err(ConfigError(format!("{}: {e}", path.display()))),
        };
        config.apply_env()?;
        Ok((config, path))
    }

    /// `MLX_SERVE_*` overrides. The v0.1 names (HOST, PORT, MODELS_DIR, LOG_LEVEL,
    /// PRELOAD_MODELS, AUTO_DOWNLOAD) are kept.
    pub fn apply_env(&mut self) -> Result<(), ConfigError> {
        for (key, value) in std::env::vars() {
            let Some(name) = key.strip_prefix("MLX_SERVE_") else { continue };
            self.apply_env_var(name, &value).map_err(|e| ConfigError(format!("environment {key}={value:?}: {e}")))?;
        }
        Ok(())
    }

    fn apply_env_var(&mut self, name: &str, value: &str) -> Result<(), String> {
        fn parse<T: std::str::FromStr>(v: &str) -> Result<T, String>
        where
            T::Err: std::fmt::Display,
        {
            v.trim().parse::<T>().map_err(|e| e.to_string())
        }
        fn boolean(v: &str) -> Result<bool, String> {
            match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                other => Err(format!("expected true or false, got {other:?}")),
            }
        }
        match name {
            "HOST" => self.server.host = value.to_owned(),
            "PORT" => self.server.port = parse(value)?,
            "MODELS_DIR" => self.models.directory = Some(PathBuf::from(value)),
            "LOG_LEVEL" => self.logging.level = value.to_owned(),
            "LOG_FORMAT" => self.logging.format = value.to_owned(),
            "PRELOAD_MODELS" => {
                self.models.preload =
                    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
            }
            "AUTO_DOWNLOAD" => self.models.auto_download = boolean(value)?,
            "MAX_BATCH_SIZE" => self.batch.max_batch_size = parse(value)?,
            "MAX_WAIT_MS" => self.batch.max_wait_ms = parse(value)?,
            "TTL_SECONDS" => self.cache.ttl_seconds = parse(value)?,
            "METRICS_ENABLED" => self.metrics.enabled = boolean(value)?,
            "COMPUTE_DTYPE" => self.models.compute_dtype = value.to_owned(),
            // Variables that are not config keys (paths of binaries, home, config file).
            _ => {}
        }
        Ok(())
    }

    /// The model store directory.
    pub fn models_dir(&self) -> PathBuf {
        self.models.directory.clone().unwrap_or_else(|| home_dir().join("models"))
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.batch.max_batch_size == 0 {
            problems.push("batch.max_batch_size must be at least 1");
        }
        if self.batch.max_queue_size == 0 {
            problems.push("batch.max_queue_size must be at least 1");
        }
        if self.batch.max_batch_tokens == 0 {
            problems.push("batch.max_batch_tokens must be at least 1");
        }
        if !matches!(self.logging.format.as_str(), "text" | "json") {
            problems.push("logging.format must be text or json");
        }
        if !matches!(self.models.compute_dtype.as_str(), "auto" | "float32" | "float16" | "bfloat16") {
            problems.push("models.compute_dtype must be auto, float32, float16 or bfloat16");
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(problems.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = parse_yaml("server:\n  port: 9000\n  hots: x\n", Path::new("c.yaml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("c.yaml:3"), "{msg}");
        assert!(msg.contains("hots"), "{msg}");
    }

    #[test]
    fn wrong_type_is_reported() {
        let err = parse_yaml("batch:\n  max_batch_size: lots\n", Path::new("c.yaml")).unwrap_err();
        assert!(err.to_string().contains("c.yaml:2"), "{err}");
    }

    #[test]
    fn partial_file_keeps_defaults() {
        let c = parse_yaml("server:\n  port: 9000\n", Path::new("c.yaml")).unwrap();
        assert_eq!(c.server.port, 9000);
        assert_eq!(c.server.host, "127.0.0.1");
        assert_eq!(c.batch, BatchConfig::default());
    }
}
