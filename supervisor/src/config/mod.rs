//! Configuration: what can be set (`schema.rs`), how the effective value is found —
//! defaults < `<home>/config.yaml` < `MLX_SERVE_*` environment < CLI flags — and where each
//! value came from (`load.rs`, `env.rs`), and the YAML behind it (`yaml.rs`, the one file
//! that knows serde_yaml).

mod env;
mod load;
mod schema;
mod yaml;

use std::path::PathBuf;

pub use load::{Effective, Entry, Origin, Source};
pub use schema::{
    ApiKey, BatchConfig, CacheConfig, Config, EmbeddingCacheConfig, KeyPriority, LimitsConfig, LoggingConfig,
    MetricsConfig, ModelsConfig, SchedulingConfig, ServerConfig, ServiceConfig, TracingConfig, EXAMPLE, PRIORITY_RANGE,
};
pub use yaml::parse_yaml;

/// Why a configuration cannot be used. Messages name the file, the key and the line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid YAML or does not fit the schema (`file:line:col: …`).
    #[error("{0}")]
    Parse(String),
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("environment {var}={value:?}: {reason}")]
    Env { var: String, value: String, reason: String },
    /// Values that parse but make no sense, all of them in one message.
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Loads defaults < file < environment (CLI flags are applied by the caller).
    pub fn load() -> Result<Config, ConfigError> {
        Ok(Effective::load()?.config)
    }
}
