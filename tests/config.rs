//! Configuration end to end, through the real `mlx-serve` binary: precedence (defaults <
//! file < MLX_SERVE_* < CLI flags), provenance in `mlx-serve config`, the example file,
//! and bad files refused with file, key and line before the server starts.

use std::time::Duration;

use mlx_serve_tests::cli::{candidate_port, parse_started, retry_on_port_clash, Home};
use mlx_serve_tests::fixtures::repo_root;
use serde_json::Value;

/// `config --json` values as key → (value, source, detail).
fn config_values(home: &Home, env: &[(&str, &str)]) -> Vec<(String, Value, String, String)> {
    let out = home.run_env(&["config", "--json"], env, Duration::from_secs(30));
    assert!(out.ok(), "{}", out.text());
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    v["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["key"].as_str().unwrap().to_owned(),
                e["value"].clone(),
                e["source"].as_str().unwrap().to_owned(),
                e["detail"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn value_of(values: &[(String, Value, String, String)], key: &str) -> (Value, String, String) {
    let (_, v, s, d) = values.iter().find(|(k, ..)| k == key).unwrap_or_else(|| panic!("no {key}"));
    (v.clone(), s.clone(), d.clone())
}

/// Starts in the background and returns the port from the printed URL; `Err` with the
/// output when start fails (a clash on the port says "already in use").
fn start_port(home: &Home, args: &[&str], env: &[(&str, &str)]) -> Result<u16, String> {
    let mut all = vec!["start"];
    all.extend_from_slice(args);
    let out = home.run_env(&all, env, Duration::from_secs(90));
    if !out.ok() {
        return Err(out.text());
    }
    let port = parse_started(&out).port;
    let stop = home.run(&["stop", "--port", &port.to_string()]);
    assert!(stop.ok(), "{}", stop.text());
    Ok(port)
}

#[test]
fn precedence_file_then_env_then_cli() {
    let home = Home::new(&[]);
    // The ports themselves are what is tested, so they cannot be 0: candidates from the OS,
    // and a fresh set if another process takes one before the server binds it.
    retry_on_port_clash(|| {
        let mut ports = vec![candidate_port()];
        while ports.len() < 3 {
            let p = candidate_port();
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let (file_port, env_port, cli_port) = (ports[0], ports[1], ports[2]);
        home.write_config(&format!("server:\n  port: {file_port}\n"));
        let env_port_s = env_port.to_string();
        let env = [("MLX_SERVE_PORT", env_port_s.as_str())];

        // What `config` reports at each level.
        let file_only = config_values(&home, &[]);
        assert_eq!(
            value_of(&file_only, "server.port"),
            (Value::from(file_port), "file".into(), home.config_file().display().to_string())
        );
        let with_env = config_values(&home, &env);
        assert_eq!(value_of(&with_env, "server.port"), (Value::from(env_port), "env".into(), "MLX_SERVE_PORT".into()));

        // What the server really binds at each level.
        assert_eq!(start_port(&home, &[], &[])?, file_port);
        assert_eq!(start_port(&home, &[], &env)?, env_port);
        assert_eq!(start_port(&home, &["--port", &cli_port.to_string()], &env)?, cli_port);
        Ok(())
    });
}

#[test]
fn config_prints_each_value_with_its_source() {
    let home = Home::new(&[]);
    home.write_config("logging:\n  format: json\nbatch:\n  max_wait_ms: 9\n");
    let out = home.run_env(&["config"], &[("MLX_SERVE_LOG_LEVEL", "debug")], Duration::from_secs(30));
    assert!(out.ok(), "{}", out.text());
    let line = |key: &str| {
        out.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no line for {key}:\n{}", out.stdout))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(out.stdout.contains(&home.config_file().display().to_string()), "{}", out.stdout);
    assert_eq!(line("server.host"), "server.host 127.0.0.1 default");
    assert_eq!(line("logging.format"), "logging.format json file");
    assert_eq!(line("batch.max_wait_ms"), "batch.max_wait_ms 9 file");
    assert_eq!(line("logging.level"), "logging.level debug env MLX_SERVE_LOG_LEVEL");

    // No file: every value is a default and the header says the file is missing.
    let empty = Home::new(&[]);
    let out = empty.run(&["config"]);
    assert!(out.ok(), "{}", out.text());
    assert!(out.stdout.contains("not found"), "{}", out.stdout);
    assert!(out.stdout.lines().filter(|l| !l.starts_with('#')).all(|l| l.ends_with("default")), "{}", out.stdout);

    // --path follows MLX_SERVE_HOME, then MLX_SERVE_CONFIG.
    let out = home.run(&["config", "--path"]);
    assert_eq!(out.stdout.trim(), home.config_file().display().to_string());
    let other = home.path().join("elsewhere.yaml");
    let out =
        home.run_env(&["config", "--path"], &[("MLX_SERVE_CONFIG", other.to_str().unwrap())], Duration::from_secs(30));
    assert_eq!(out.stdout.trim(), other.display().to_string());
}

#[test]
fn example_config_is_the_committed_file_and_the_defaults() {
    let home = Home::new(&[]);
    let out = home.run(&["config", "--example"]);
    assert!(out.ok(), "{}", out.text());
    let committed = std::fs::read_to_string(repo_root().join("config.example.yaml")).unwrap();
    assert_eq!(out.stdout, committed);

    let defaults = config_values(&home, &[]);
    home.write_config(&out.stdout);
    let from_example = config_values(&home, &[]);
    assert_eq!(defaults.len(), from_example.len());
    for ((key, default, ..), (key2, value, source, _)) in defaults.iter().zip(&from_example) {
        assert_eq!(key, key2);
        assert_eq!(default, value, "{key}: the example's value is not the default");
        // Keys the example leaves commented out (no default value to show) stay defaults.
        let commented =
            ["models.directory", "metrics.port", "server.api_key", "embedding_cache.disk_path"].contains(&key.as_str());
        assert_eq!(source, if commented { "default" } else { "file" }, "{key}");
    }
}

#[test]
fn bad_config_is_refused_with_file_key_and_line() {
    // (file text, expected fragments of the message, line)
    let cases = [
        ("server:\n  port: 9000\n host: x\n", vec!["YAML syntax error"], 3),
        ("server:\n  port: 9000\n  hots: x\n", vec!["unknown key `server.hots`"], 3),
        ("batch:\n  max_batch_size: lots\n", vec!["key `batch.max_batch_size`", "invalid type"], 2),
        ("models:\n  preload: yes-please\n", vec!["key `models.preload`", "invalid type"], 2),
    ];
    for (text, fragments, line) in cases {
        let home = Home::new(&[]);
        home.write_config(text);
        let place = format!("{}:{line}:", home.config_file().display());
        for args in [&["config"][..], &["start", "--foreground", "--port", "0"], &["start", "--port", "0"]] {
            let out = home.run_env(args, &[], Duration::from_secs(30));
            assert!(!out.ok(), "{args:?} accepted {text:?}:\n{}", out.text());
            assert!(out.stderr.contains(&place), "{args:?}: no {place} in:\n{}", out.text());
            for f in &fragments {
                assert!(out.stderr.contains(f), "{args:?}: no {f:?} in:\n{}", out.text());
            }
            assert!(home.recorded_pids().is_empty(), "a server started on a bad config");
        }
    }

    // A bad environment value names the variable.
    let home = Home::new(&[]);
    let out = home.run_env(&["start", "--foreground"], &[("MLX_SERVE_PORT", "eighty")], Duration::from_secs(30));
    assert!(!out.ok() && out.stderr.contains("MLX_SERVE_PORT"), "{}", out.text());

    // Values that parse but make no sense stop the server too.
    home.write_config("logging:\n  format: xml\n");
    let out = home.run(&["start", "--foreground", "--port", "0"]);
    assert!(!out.ok() && out.stderr.contains("logging.format"), "{}", out.text());
}
