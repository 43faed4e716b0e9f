//! `MLX_SERVE_*` environment overrides: the level between the config file and CLI flags.
//! Only the variables below are config keys; others (`MLX_SERVE_HOME`, `MLX_SERVE_CONFIG`,
//! `MLX_SERVE_WORKER_BIN`) are paths read in `paths.rs`.

use std::path::PathBuf;

use super::{Config, ConfigError};

/// Applies the `MLX_SERVE_*` overrides to `config`; returns `(section.key, variable)` for
/// each value set. The v0.1 names (HOST, PORT, MODELS_DIR, LOG_LEVEL, PRELOAD_MODELS,
/// AUTO_DOWNLOAD) are kept.
pub fn apply(config: &mut Config) -> Result<Vec<(&'static str, String)>, ConfigError> {
    config.apply_env()
}

impl Config {
    fn apply_env(&mut self) -> Result<Vec<(&'static str, String)>, ConfigError> {
        let mut set = Vec::new();
        let mut vars: Vec<(String, String)> = std::env::vars().collect();
        vars.sort();
        for (var, value) in vars {
            let Some(name) = var.strip_prefix("MLX_SERVE_") else { continue };
            let key = self.apply_env_var(name, &value).map_err(|reason| ConfigError::Env {
                var: var.clone(),
                value: value.clone(),
                reason,
            })?;
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
        fn list(v: &str) -> Vec<String> {
            v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
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
                self.models.preload = list(value);
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
            "MAX_BATCH_TOKENS" => {
                self.batch.max_batch_tokens = parse(value)?;
                "batch.max_batch_tokens"
            }
            "GPU_MAX_BATCH_SIZE" => {
                self.batch.gpu_max_batch_size = parse(value)?;
                "batch.gpu_max_batch_size"
            }
            "GPU_MAX_BATCH_TOKENS" => {
                self.batch.gpu_max_batch_tokens = parse(value)?;
                "batch.gpu_max_batch_tokens"
            }
            "HUNG_WORKER_SECONDS" => {
                self.limits.hung_worker_seconds = parse(value)?;
                "limits.hung_worker_seconds"
            }
            "TTL_SECONDS" => {
                self.cache.ttl_seconds = parse(value)?;
                "cache.ttl_seconds"
            }
            "METRICS_ENABLED" => {
                self.metrics.enabled = boolean(value)?;
                "metrics.enabled"
            }
            "API_KEY" => {
                self.server.api_key = Some(super::ApiKey(value.to_owned()));
                "server.api_key"
            }
            "HEADER_READ_TIMEOUT_SECONDS" => {
                self.server.header_read_timeout_seconds = parse(value)?;
                "server.header_read_timeout_seconds"
            }
            "BODY_READ_TIMEOUT_SECONDS" => {
                self.server.body_read_timeout_seconds = parse(value)?;
                "server.body_read_timeout_seconds"
            }
            "WRITE_TIMEOUT_SECONDS" => {
                self.server.write_timeout_seconds = parse(value)?;
                "server.write_timeout_seconds"
            }
            "MAX_CONNECTIONS" => {
                self.server.max_connections = parse(value)?;
                "server.max_connections"
            }
            "ALLOWED_HOSTS" => {
                self.server.allowed_hosts = list(value);
                "server.allowed_hosts"
            }
            // Named as Ollama's OLLAMA_ORIGINS.
            "ORIGINS" => {
                self.server.allowed_origins = list(value);
                "server.allowed_origins"
            }
            "HTTP_MODEL_MANAGEMENT" => {
                self.server.http_model_management = boolean(value)?;
                "server.http_model_management"
            }
            "MAX_INFLIGHT_REQUEST_BYTES" => {
                self.limits.max_inflight_request_bytes = parse(value)?;
                "limits.max_inflight_request_bytes"
            }
            "COMPUTE_DTYPE" => {
                self.models.compute_dtype = value.to_owned();
                "models.compute_dtype"
            }
            "PRIORITY_AGING_MS" => {
                self.scheduling.priority_aging_ms = parse(value)?;
                "scheduling.priority_aging_ms"
            }
            "MAX_BATCH_MS" => {
                self.scheduling.max_batch_ms = parse(value)?;
                "scheduling.max_batch_ms"
            }
            "CHUNKING" => {
                self.models.chunking.enabled = boolean(value)?;
                "models.chunking.enabled"
            }
            "CHUNK_OVERLAP_TOKENS" => {
                self.models.chunking.overlap_tokens = parse(value)?;
                "models.chunking.overlap_tokens"
            }
            "EMBEDDING_CACHE_MB" => {
                self.embedding_cache.memory_mb = parse(value)?;
                "embedding_cache.memory_mb"
            }
            "EMBEDDING_CACHE_DISK_MB" => {
                self.embedding_cache.disk_mb = parse(value)?;
                "embedding_cache.disk_mb"
            }
            "EMBEDDING_CACHE_DISK_PATH" => {
                self.embedding_cache.disk_path = Some(value.into());
                "embedding_cache.disk_path"
            }
            // Variables that are not config keys (paths of binaries, home, config file).
            _ => return Ok(None),
        };
        Ok(Some(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_set_their_keys() {
        let mut c = Config::default();
        assert_eq!(c.apply_env_var("PORT", "9001"), Ok(Some("server.port")));
        assert_eq!(c.apply_env_var("PRELOAD_MODELS", "a, b,,"), Ok(Some("models.preload")));
        assert_eq!(c.apply_env_var("AUTO_DOWNLOAD", "off"), Ok(Some("models.auto_download")));
        assert_eq!(c.apply_env_var("HOME", "/x"), Ok(None));
        assert_eq!(
            (c.server.port, c.models.preload.clone(), c.models.auto_download),
            (9001, vec!["a".into(), "b".into()], false)
        );
        assert!(c.apply_env_var("PORT", "many").is_err());
        assert_eq!(c.apply_env_var("CHUNKING", "on"), Ok(Some("models.chunking.enabled")));
        assert_eq!(c.apply_env_var("CHUNK_OVERLAP_TOKENS", "32"), Ok(Some("models.chunking.overlap_tokens")));
        assert_eq!(c.apply_env_var("EMBEDDING_CACHE_DISK_MB", "16"), Ok(Some("embedding_cache.disk_mb")));
        assert_eq!(c.apply_env_var("EMBEDDING_CACHE_DISK_PATH", "/v/c.redb"), Ok(Some("embedding_cache.disk_path")));
        assert_eq!((c.embedding_cache.disk_mb, c.embedding_cache.disk_file()), (16, "/v/c.redb".into()));
        assert!(c.validate().is_ok());
        c.embedding_cache.disk_mb = 4;
        assert!(c.validate().unwrap_err().to_string().contains("embedding_cache.disk_mb must be 0"));
        c.embedding_cache.disk_mb = 0;
        assert_eq!(c.models.chunking.for_model("any"), Some(32));
        assert_eq!(c.apply_env_var("API_KEY", "k1"), Ok(Some("server.api_key")));
        assert_eq!(c.server.api_key, Some(crate::config::ApiKey("k1".into())));
        assert_eq!(c.apply_env_var("ORIGINS", "http://a.test, app://*"), Ok(Some("server.allowed_origins")));
        assert_eq!(c.server.allowed_origins, vec!["http://a.test".to_owned(), "app://*".to_owned()]);
    }
}
