//! The service files: a launchd agent from the template in `launchd/`, or a systemd user
//! unit, both running `mlx-serve start --foreground` with this shell's mlx-serve paths.

use std::path::PathBuf;

use super::{Manager, ServiceError, LAUNCHD_LABEL, PLIST_TEMPLATE, STOP_MARGIN_SECONDS};
use crate::config::Config;
use crate::paths::Paths;

/// The absolute paths and values the service file is built from.
struct Facts {
    program: PathBuf,
    home: PathBuf,
    log: PathBuf,
    env: Vec<(String, String)>,
}

/// This executable, by a path that survives upgrades: a Homebrew install runs from
/// `<prefix>/Cellar/mlx-serve/<version>/bin`, which the next `brew upgrade` deletes, so
/// the `<prefix>/opt/mlx-serve` link is used instead when it exists.
fn program_path() -> Result<PathBuf, ServiceError> {
    let exe =
        std::env::current_exe().map_err(|e| ServiceError(format!("cannot find the mlx-serve executable: {e}")))?;
    let text = exe.display().to_string();
    if let Some(i) = text.find("/Cellar/mlx-serve/") {
        let stable = PathBuf::from(&text[..i]).join("opt/mlx-serve/bin/mlx-serve");
        if stable.is_file() {
            return Ok(stable);
        }
    }
    Ok(exe)
}

fn facts(paths: &Paths) -> Result<Facts, ServiceError> {
    let program = program_path()?;
    let home = std::path::absolute(paths.home())?;
    let mut env = vec![("MLX_SERVE_HOME".to_owned(), home.display().to_string())];
    // Keep what this shell uses, so the service runs the same configuration.
    for var in ["MLX_SERVE_CONFIG", "MLX_SERVE_WORKER_BIN"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            env.push((var.to_owned(), std::path::absolute(PathBuf::from(v))?.display().to_string()));
        }
    }
    Ok(Facts { program, log: home.join("logs/service.log"), home, env })
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The launchd agent for `config`, from `launchd/com.mlx-serve.server.plist`.
fn render_plist(config: &Config, f: &Facts) -> String {
    let s = &config.service;
    let env: Vec<String> = f
        .env
        .iter()
        .map(|(k, v)| format!("\t\t<key>{}</key>\n\t\t<string>{}</string>", xml_escape(k), xml_escape(v)))
        .collect();
    let keep_alive = if s.restart_on_failure {
        // Restart after a crash or a failed exit; a clean exit (SIGTERM from `mlx-serve
        // stop`, exit 0) stays stopped.
        "<dict>\n\t\t<key>SuccessfulExit</key>\n\t\t<false/>\n\t</dict>"
    } else {
        "<false/>"
    };
    PLIST_TEMPLATE
        .replace("{{LABEL}}", LAUNCHD_LABEL)
        .replace("{{PROGRAM}}", &xml_escape(&f.program.display().to_string()))
        .replace("{{ENVIRONMENT}}", &env.join("\n"))
        .replace("{{HOME}}", &xml_escape(&f.home.display().to_string()))
        .replace("{{RUN_AT_LOAD}}", if s.auto_start { "<true/>" } else { "<false/>" })
        .replace("{{KEEP_ALIVE}}", keep_alive)
        .replace("{{THROTTLE_INTERVAL}}", &s.restart_delay.to_string())
        .replace("{{EXIT_TIMEOUT}}", &(config.server.shutdown_timeout_seconds + STOP_MARGIN_SECONDS).to_string())
        .replace("{{LOG}}", &xml_escape(&f.log.display().to_string()))
}

/// Quotes one systemd command-line word or assignment (systemd.syntax(7)): `%` is a
/// specifier and `$` a variable there, so both are doubled.
fn systemd_quote(s: &str) -> String {
    let escaped = s.replace('%', "%%").replace('$', "$$");
    if escaped.chars().any(|c| c.is_whitespace() || c == '"' || c == '\'' || c == '\\') {
        format!("\"{}\"", escaped.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        escaped
    }
}

/// The systemd user unit for `config` (systemd.service(5)).
fn render_unit(config: &Config, f: &Facts) -> String {
    let s = &config.service;
    let mut out = String::new();
    out.push_str("# mlx-serve as a systemd user unit, written by `mlx-serve service install`.\n");
    out.push_str("# Logs: journalctl --user -u mlx-serve. Regenerate after changing service.* in config.yaml.\n");
    out.push_str("[Unit]\nDescription=mlx-serve: local embedding and reranking server\n\n[Service]\nType=exec\n");
    out.push_str(&format!("ExecStart={} start --foreground\n", systemd_quote(&f.program.display().to_string())));
    for (k, v) in &f.env {
        out.push_str(&format!("Environment={}\n", systemd_quote(&format!("{k}={v}"))));
    }
    out.push_str(&format!("WorkingDirectory={}\n", systemd_quote(&f.home.display().to_string())));
    out.push_str(&format!("Restart={}\n", if s.restart_on_failure { "on-failure" } else { "no" }));
    out.push_str(&format!("RestartSec={}\n", s.restart_delay));
    out.push_str("# SIGTERM to the daemon only: it stops its workers itself; the rest get SIGKILL on timeout.\n");
    out.push_str("KillMode=mixed\n");
    out.push_str(&format!("TimeoutStopSec={}\n", config.server.shutdown_timeout_seconds + STOP_MARGIN_SECONDS));
    out.push_str("\n[Install]\nWantedBy=default.target\n");
    out
}

/// The file `install` writes for `manager`.
pub fn render(manager: Manager, config: &Config) -> Result<String, ServiceError> {
    let f = facts(&config.paths)?;
    Ok(match manager {
        Manager::Launchd => render_plist(config, &f),
        Manager::Systemd => render_unit(config, &f),
    })
}
