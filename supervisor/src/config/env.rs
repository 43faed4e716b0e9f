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
        // The OpenTelemetry variables first: an `MLX_SERVE_TRACING_*` variable, more
        // specific, wins over its `OTEL_*` counterpart.
        let otel: Vec<(String, String)> = vars.iter().filter(|(v, _)| v.starts_with("OTEL_")).cloned().collect();
        for (key, var) in self.apply_otel_env(&otel) {
            set.push((key, var));
        }
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
            "BULK_MAX_BATCH_MS" => {
                self.scheduling.bulk_max_batch_ms = parse(value)?;
                "scheduling.bulk_max_batch_ms"
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
            "TRACING" | "TRACING_ENABLED" => {
                self.tracing.enabled = boolean(value)?;
                "tracing.enabled"
            }
            "TRACING_ENDPOINT" => {
                self.tracing.endpoint = value.to_owned();
                "tracing.endpoint"
            }
            "TRACING_SERVICE_NAME" => {
                self.tracing.service_name = value.to_owned();
                "tracing.service_name"
            }
            "TRACING_SAMPLE_RATIO" => {
                self.tracing.sample_ratio = parse(value)?;
                "tracing.sample_ratio"
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

/// The OpenTelemetry SDK variables that map onto `tracing.*` keys, as the specification
/// defines them ("Environment Variable Specification" and "OTLP Exporter Configuration",
/// opentelemetry.io/docs/specs/otel/): a base endpoint gets `/v1/traces` appended, the
/// traces endpoint is used as given; samplers are `always_on`, `always_off`,
/// `traceidratio` and their `parentbased_` forms (all are parent-based here). Values the
/// SDK would ignore are ignored with a warning, as the specification asks.
impl Config {
    fn apply_otel_env(&mut self, vars: &[(String, String)]) -> Vec<(&'static str, String)> {
        let get = |name: &str| vars.iter().find(|(v, _)| v == name).map(|(_, value)| value.trim());
        let mut set = Vec::new();
        if let Some(disabled) = get("OTEL_SDK_DISABLED") {
            if disabled.eq_ignore_ascii_case("true") {
                self.tracing.enabled = false;
                set.push(("tracing.enabled", "OTEL_SDK_DISABLED".to_owned()));
            }
        }
        if let Some(base) = get("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|v| !v.is_empty()) {
            self.tracing.endpoint = format!("{}/v1/traces", base.trim_end_matches('/'));
            set.push(("tracing.endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned()));
        }
        if let Some(url) = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").filter(|v| !v.is_empty()) {
            self.tracing.endpoint = url.to_owned();
            set.push(("tracing.endpoint", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".to_owned()));
        }
        if let Some(name) = get("OTEL_SERVICE_NAME").filter(|v| !v.is_empty()) {
            self.tracing.service_name = name.to_owned();
            set.push(("tracing.service_name", "OTEL_SERVICE_NAME".to_owned()));
        }
        if let Some(sampler) = get("OTEL_TRACES_SAMPLER") {
            let ratio = match sampler.trim_start_matches("parentbased_") {
                "always_on" => Some(1.0),
                "always_off" => Some(0.0),
                "traceidratio" => match get("OTEL_TRACES_SAMPLER_ARG").map(str::parse::<f64>) {
                    Some(Ok(r)) if (0.0..=1.0).contains(&r) => Some(r),
                    // The specification's default argument for a ratio sampler.
                    None => Some(1.0),
                    Some(_) => {
                        tracing::warn!("OTEL_TRACES_SAMPLER_ARG is not a ratio between 0 and 1: ignored");
                        None
                    }
                },
                other => {
                    tracing::warn!("OTEL_TRACES_SAMPLER={other} is not supported here: ignored");
                    None
                }
            };
            if let Some(r) = ratio {
                self.tracing.sample_ratio = r;
                set.push(("tracing.sample_ratio", "OTEL_TRACES_SAMPLER".to_owned()));
            }
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn otel(pairs: &[(&str, &str)]) -> (Config, Vec<&'static str>) {
        let mut c = Config::default();
        let vars: Vec<(String, String)> = pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        let keys = c.apply_otel_env(&vars).into_iter().map(|(k, _)| k).collect();
        (c, keys)
    }

    #[test]
    fn otel_variables_set_tracing_keys() {
        let (c, _) = otel(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]);
        assert_eq!(c.tracing.endpoint, "http://collector:4318/v1/traces");
        // The signal-specific endpoint wins over the base one and is used as given.
        let (c, _) = otel(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:4318/custom"),
        ]);
        assert_eq!(c.tracing.endpoint, "http://b:4318/custom");
        let (c, keys) =
            otel(&[("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0.25")]);
        assert_eq!((c.tracing.sample_ratio, keys), (0.25, vec!["tracing.sample_ratio"]));
        let (c, _) = otel(&[("OTEL_TRACES_SAMPLER", "always_off")]);
        assert_eq!(c.tracing.sample_ratio, 0.0);
        let (c, _) = otel(&[("OTEL_SERVICE_NAME", "embedder-eu")]);
        assert_eq!(c.tracing.service_name, "embedder-eu");
        let mut on = Config::default();
        on.tracing.enabled = true;
        on.apply_otel_env(&[("OTEL_SDK_DISABLED".into(), "true".into())]);
        assert!(!on.tracing.enabled);
        // A bad argument leaves the ratio alone.
        let (c, keys) = otel(&[("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "2")]);
        assert_eq!((c.tracing.sample_ratio, keys.len()), (1.0, 0));
    }

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
        assert_eq!((c.embedding_cache.disk_mb, c.embedding_cache_file()), (16, "/v/c.redb".into()));
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
