//! Loading the effective configuration, defaults < `config.yaml` < `MLX_SERVE_*`
//! environment < CLI flags, and remembering where every value came from, for
//! `mlx-serve config` and the start-up log.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use super::{env, yaml, Config, ConfigError};
use crate::paths::Paths;

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

/// Keys whose values `mlx-serve config` never prints.
const SECRET_KEYS: [&str; 2] = ["server.api_key", "scheduling.key_priorities"];

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
        let paths = Paths::from_env();
        let path = paths.config_file().to_owned();
        let mut origins = BTreeMap::new();
        let (mut config, file_exists) = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let config = yaml::parse_yaml(&text, &path)?;
                let detail = path.display().to_string();
                for key in yaml::keys_in_yaml(&text) {
                    origins.insert(key, Origin { source: Source::File, detail: detail.clone() });
                }
                (config, true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Config::default(), false),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        for (key, var) in env::apply(&mut config)? {
            origins.insert(key.to_owned(), Origin { source: Source::Env, detail: var });
        }
        config.paths = paths;
        Ok(Effective { config, path, file_exists, origins })
    }

    /// Defaults only, as if no file and no environment existed.
    pub fn defaults() -> Effective {
        Effective { config: Config::default(), path: PathBuf::new(), file_exists: false, origins: BTreeMap::new() }
    }

    /// Sets `key` from a CLI flag (the highest level).
    pub fn set_from_cli(&mut self, key: &str, flag: &str, apply: impl FnOnce(&mut Config)) {
        apply(&mut self.config);
        self.origins.insert(key.to_owned(), Origin { source: Source::Cli, detail: flag.to_owned() });
    }

    /// Every `section.key` in schema order with its value and origin. A secret (the API
    /// key, the keys of `scheduling.key_priorities`) shows as `"<set>"`, never its value.
    pub fn entries(&self) -> Vec<Entry> {
        yaml::flatten(&self.config)
            .into_iter()
            .map(|(key, value)| {
                let unset = value.is_null() || value.as_array().is_some_and(Vec::is_empty);
                let value = if SECRET_KEYS.contains(&key.as_str()) && !unset { "<set>".into() } else { value };
                let origin = self
                    .origins
                    .get(&key)
                    .cloned()
                    .unwrap_or(Origin { source: Source::Default, detail: String::new() });
                Entry { key, value, origin }
            })
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EXAMPLE;

    #[test]
    fn example_mentions_every_key() {
        for e in Effective::defaults().entries() {
            let (section, key) = e.key.split_once('.').unwrap();
            assert!(EXAMPLE.contains(&format!("\n{section}:\n")), "example lacks section {section}");
            assert!(EXAMPLE.contains(&format!(" {key}:")), "example lacks {}", e.key);
        }
    }

    #[test]
    fn cli_flags_win_and_say_so() {
        let mut e = Effective::defaults();
        e.set_from_cli("server.port", "--port", |c| c.server.port = 9);
        let port = e.entries().into_iter().find(|x| x.key == "server.port").unwrap();
        assert_eq!(
            (port.value, port.origin.source, port.origin.detail.as_str()),
            (serde_json::json!(9), Source::Cli, "--port")
        );
        assert!(e.render().contains("cli --port"));
    }

    #[test]
    fn the_api_key_is_never_printed() {
        let mut e = Effective::defaults();
        e.set_from_cli("server.api_key", "--api-key", |c| {
            c.server.api_key = Some(crate::config::ApiKey("s3cret-key".into()))
        });
        let text = format!("{}{}{:?}", e.render(), serde_json::to_string(&e.entries()).unwrap(), e.config);
        assert!(!text.contains("s3cret-key"), "{text}");
        assert!(e.render().contains("<set>"));
    }
}
