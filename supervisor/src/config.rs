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

/// One value's origin: its level and what set it there (file path, variable, flag).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Origin {
    pub source: Source,
    /// The config file, the `MLX_SERVE_*` variable or the CLI flag; empty for defaults.
    pub detail: String,
}

/// The effective configuration and, for every `section.key`, where its value came from.
#[derive(Debug, Clone)]
pub struct Effective {
    pub config: Config,
    /// The config file consulted (it may not exist).
    pub path: PathBuf,
    pub file_exists: bool,
    /// `section.key` → origin, for keys not at their default.
    origins: BTreeMap<String, Origin>,
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
    /// worker always gets queued work at once; while it is busy, waiting costs no latency
    /// and fills batches (64 clients on MiniLM: 5 ms → 496 texts/s, 50 ms → 539).
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
        CacheConfig { max_embedding_models: 2, max_reranker_models: 1, ttl_seconds: 1800, worker_cache_limit_mb: 512 }
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig { max_batch_size: 32, max_wait_ms: 50, max_batch_tokens: 16384, max_queue_size: 4096 }
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

/// The commented example `mlx-serve config --example` prints (all values at defaults).
pub const EXAMPLE: &str = include_str!("../../config.example.yaml");

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
        ConfigError(format!("{place}: {}", describe_yaml_error(&e.to_string())))
    })
}

/// Rewords serde_yaml's message (`server: unknown field `hots`, expected … at line 3
/// column 3`) to name the full key (`server.hots`); the location is already in front.
fn describe_yaml_error(message: &str) -> String {
    let msg = message;
    if let Some(i) = msg.find(" at line ") {
        let rest = &msg[i + " at line ".len()..];
        // Cut " at line N column M" but keep what follows it (", while parsing …").
        let end = rest.find(',').map(|j| i + " at line ".len() + j);
        let tail = end.map(|e| &msg[e..]).unwrap_or("");
        return describe_yaml_error(&format!("{}{tail}", &msg[..i]));
    }
    let (key_path, what) = match msg.split_once(": ") {
        Some((p, w)) if !p.contains(' ') => (p, w),
        _ => ("", msg),
    };
    if let Some(rest) = what.strip_prefix("unknown field `") {
        let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let key = if key_path.is_empty() { name.to_owned() } else { format!("{key_path}.{name}") };
        let expected = expected.trim_start_matches(", ");
        return format!("unknown key `{key}` ({expected})");
    }
    if !key_path.is_empty() {
        return format!("key `{key_path}`: {what}");
    }
    // libyaml's scanner and parser messages end in "while scanning/parsing …".
    if msg.contains(", while ") {
        format!("YAML syntax error: {msg}")
    } else {
        msg.to_owned()
    }
}

/// The `section.key` names a YAML text sets (the schema is two levels deep).
fn keys_in_yaml(text: &str) -> Vec<String> {
    let Ok(serde_yaml::Value::Mapping(top)) = serde_yaml::from_str::<serde_yaml::Value>(text) else {
        return Vec::new();
    };
    let mut keys = Vec::new();
    for (section, body) in top {
        let (Some(section), serde_yaml::Value::Mapping(body)) = (section.as_str(), body) else { continue };
        keys.extend(body.keys().filter_map(|k| k.as_str()).map(|k| format!("{section}.{k}")));
    }
    keys
}

/// One line of `mlx-serve config`: a key, its effective value and where it came from.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub key: String,
    pub value: serde_json::Value,
    #[serde(flatten)]
    pub origin: Origin,
}

impl Effective {
    /// Loads defaults < file < environment, remembering where each value came from. CLI
    /// flags are applied by the caller with [`Effective::set_from_cli`].
    pub fn load() -> Result<Effective, ConfigError> {
        let path = config_path();
        let mut origins = BTreeMap::new();
        let (mut config, file_exists) = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let config = parse_yaml(&text, &path)?;
                let detail = path.display().to_string();
                for key in keys_in_yaml(&text) {
                    origins.insert(key, Origin { source: Source::File, detail: detail.clone() });
                }
                (config, true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Config::default(), false),
            Err(e) => return Err(ConfigError(format!("{}: {e}", path.display()))),
        };
        for (key, var) in config.apply_env()? {
            origins.insert(key.to_owned(), Origin { source: Source::Env, detail: var });
        }
        Ok(Effective { config, path, file_exists, origins })
    }

    /// Sets `key` from a CLI flag (the highest level).
    pub fn set_from_cli(&mut self, key: &str, flag: &str, apply: impl FnOnce(&mut Config)) {
        apply(&mut self.config);
        self.origins.insert(key.to_owned(), Origin { source: Source::Cli, detail: flag.to_owned() });
    }

    /// Every `section.key` in schema order with its value and origin.
    pub fn entries(&self) -> Vec<Entry> {
        let tree = serde_yaml::to_value(&self.config).expect("config serializes");
        let mut out = Vec::new();
        let serde_yaml::Value::Mapping(sections) = tree else { return out };
        for (section, body) in sections {
            let (Some(section), serde_yaml::Value::Mapping(body)) = (section.as_str(), body) else { continue };
            for (k, v) in body {
                let key = format!("{section}.{}", k.as_str().unwrap_or_default());
                let origin = self
                    .origins
                    .get(&key)
                    .cloned()
                    .unwrap_or(Origin { source: Source::Default, detail: String::new() });
                let value = serde_json::to_value(&v).unwrap_or(serde_json::Value::Null);
                out.push(Entry { key, value, origin });
            }
        }
        out
    }

    /// The text `mlx-serve config` prints: one `key value source` line per key.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# effective configuration: defaults < config file < MLX_SERVE_* environment < CLI flags\n");
        let state = if self.file_exists { "" } else { " (not found: defaults apply)" };
        out.push_str(&format!("# config file: {}{state}\n", self.path.display()));
        for e in self.entries() {
            let value = match &e.value {
                serde_json::Value::String(s) if !s.is_empty() => s.clone(),
                v => v.to_string(),
            };
            let origin = match e.origin.source {
                Source::Default => "default".to_owned(),
                Source::File => "file".to_owned(),
                Source::Env => format!("env {}", e.origin.detail),
                Source::Cli => format!("cli {}", e.origin.detail),
            };
            out.push_str(&format!("{:<38} {:<28} {origin}\n", e.key, value));
        }
        out
    }
}

impl Config {
    /// Loads defaults < file < environment. CLI flags are applied by the caller.
    pub fn load() -> Result<(Config, PathBuf), ConfigError> {
        let effective = Effective::load()?;
        Ok((effective.config, effective.path))
    }

    /// `MLX_SERVE_*` overrides; returns `(section.key, variable)` for each value set.
    /// The v0.1 names (HOST, PORT, MODELS_DIR, LOG_LEVEL, PRELOAD_MODELS, AUTO_DOWNLOAD)
    /// are kept.
    pub fn apply_env(&mut self) -> Result<Vec<(&'static str, String)>, ConfigError> {
        let mut set = Vec::new();
        let mut vars: Vec<(String, String)> = std::env::vars().collect();
        vars.sort();
        for (var, value) in vars {
            let Some(name) = var.strip_prefix("MLX_SERVE_") else { continue };
            let key = self
                .apply_env_var(name, &value)
                .map_err(|e| ConfigError(format!("environment {var}={value:?}: {e}")))?;
            if let Some(key) = key {
                set.push((key, var));
            }
        }
        Ok(set)
    }

    /// Applies one `MLX_SERVE_<name>` variable; returns the key it set, if it is a config
    /// variable.
    fn apply_env_var(&mut self, name: &str, value: &str) -> Result<Option<&'static str>, String> {
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
        let key = match name {
            "HOST" => {
                self.server.host = value.to_owned();
                "server.host"
            }
            "PORT" => {
                self.server.port = parse(value)?;
                "server.port"
            }
            "MODELS_DIR" => {
                self.models.directory = Some(PathBuf::from(value));
                "models.directory"
            }
            "LOG_LEVEL" => {
                self.logging.level = value.to_owned();
                "logging.level"
            }
            "LOG_FORMAT" => {
                self.logging.format = value.to_owned();
                "logging.format"
            }
            "PRELOAD_MODELS" => {
                self.models.preload =
                    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
                "models.preload"
            }
            "AUTO_DOWNLOAD" => {
                self.models.auto_download = boolean(value)?;
                "models.auto_download"
            }
            "MAX_BATCH_SIZE" => {
                self.batch.max_batch_size = parse(value)?;
                "batch.max_batch_size"
            }
            "MAX_WAIT_MS" => {
                self.batch.max_wait_ms = parse(value)?;
                "batch.max_wait_ms"
            }
            "TTL_SECONDS" => {
                self.cache.ttl_seconds = parse(value)?;
                "cache.ttl_seconds"
            }
            "METRICS_ENABLED" => {
                self.metrics.enabled = boolean(value)?;
                "metrics.enabled"
            }
            "COMPUTE_DTYPE" => {
                self.models.compute_dtype = value.to_owned();
                "models.compute_dtype"
            }
            // Variables that are not config keys (paths of binaries, home, config file).
            _ => return Ok(None),
        };
        Ok(Some(key))
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
        // Otherwise the second bind fails with a misleading "port already in use".
        if self.metrics.enabled && self.metrics.port.is_some_and(|p| p != 0 && p == self.server.port) {
            problems.push("metrics.port must differ from server.port (the main port already serves /metrics)");
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
    fn example_is_the_defaults_and_mentions_every_key() {
        let parsed = parse_yaml(EXAMPLE, Path::new("config.example.yaml")).unwrap();
        assert_eq!(parsed, Config::default());
        let effective =
            Effective { config: Config::default(), path: PathBuf::new(), file_exists: false, origins: BTreeMap::new() };
        for e in effective.entries() {
            let (section, key) = e.key.split_once('.').unwrap();
            assert!(EXAMPLE.contains(&format!("\n{section}:\n")), "example lacks section {section}");
            assert!(EXAMPLE.contains(&format!(" {key}:")), "example lacks {}", e.key);
        }
    }

    #[test]
    fn error_messages_name_file_key_and_line() {
        let cases = [
            ("server:\n  port: 9000\n  hots: x\n", "c.yaml:3:3: unknown key `server.hots`"),
            ("batch:\n  max_batch_size: lots\n", "c.yaml:2:19: key `batch.max_batch_size`: invalid type"),
            ("server:\n  port: 1\n host: x\n", "c.yaml:3:2: YAML syntax error: did not find expected key"),
            ("servr:\n  port: 1\n", "c.yaml:1:1: unknown key `servr`"),
        ];
        for (text, expected) in cases {
            let msg = parse_yaml(text, Path::new("c.yaml")).unwrap_err().to_string();
            assert!(msg.starts_with(expected), "{msg}");
            assert!(!msg.contains(" at line "), "location repeated: {msg}");
        }
    }

    #[test]
    fn partial_file_keeps_defaults() {
        let c = parse_yaml("server:\n  port: 9000\n", Path::new("c.yaml")).unwrap();
        assert_eq!(c.server.port, 9000);
        assert_eq!(c.server.host, "127.0.0.1");
        assert_eq!(c.batch, BatchConfig::default());
    }
}
