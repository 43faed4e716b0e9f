//! The one module that knows about serde_yaml (archived upstream): parsing config.yaml
//! with errors that name the file, the full key and the line, listing the keys a file
//! sets, and turning a config into `section.key` → value pairs. Swapping the YAML library
//! touches only this file.

use std::path::Path;

use super::{Config, ConfigError};

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
        ConfigError::Parse(format!("{place}: {}", describe_yaml_error(&e.to_string())))
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
pub fn keys_in_yaml(text: &str) -> Vec<String> {
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

/// Every `section.key` of `config` in schema order with its value as JSON.
pub fn flatten(config: &Config) -> Vec<(String, serde_json::Value)> {
    let tree = serde_yaml::to_value(config).expect("config serializes");
    let mut out = Vec::new();
    let serde_yaml::Value::Mapping(sections) = tree else { return out };
    for (section, body) in sections {
        let (Some(section), serde_yaml::Value::Mapping(body)) = (section.as_str(), body) else { continue };
        for (k, v) in body {
            let key = format!("{section}.{}", k.as_str().unwrap_or_default());
            out.push((key, serde_json::to_value(&v).unwrap_or(serde_json::Value::Null)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::BatchConfig;

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

    #[test]
    fn keys_a_file_sets() {
        assert_eq!(
            keys_in_yaml("server:\n  port: 1\nbatch:\n  max_wait_ms: 3\n"),
            ["server.port", "batch.max_wait_ms"]
        );
    }
}
