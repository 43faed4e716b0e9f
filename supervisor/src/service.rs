//! `mlx-serve service …`: run the server under the OS service manager, as a launchd user
//! agent on macOS (`~/Library/LaunchAgents/com.mlx-serve.server.plist`, from the template
//! in `launchd/`) or a systemd user unit on Linux (`~/.config/systemd/user/mlx-serve.service`).
//! Both run `mlx-serve start --foreground`, so `status`, `stop` and `ctl` work on them.
//!
//! One manager or the other: `brew services` writes its own agent for the same binary
//! (label `homebrew.mxcl.mlx-serve`, systemd `homebrew.mlx-serve`; Homebrew's
//! `Library/Homebrew/service.rb`). Two agents would start two servers on one port, so
//! install/start/enable refuse while Homebrew's file exists.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::config::{home_dir, Config};

pub const LAUNCHD_LABEL: &str = "com.mlx-serve.server";
pub const SYSTEMD_UNIT: &str = "mlx-serve.service";
const BREW_LAUNCHD_LABEL: &str = "homebrew.mxcl.mlx-serve";
const BREW_SYSTEMD_UNIT: &str = "homebrew.mlx-serve.service";
const PLIST_TEMPLATE: &str = include_str!("../../launchd/com.mlx-serve.server.plist");
/// Seconds the manager waits after SIGTERM beyond `server.shutdown_timeout_seconds`
/// before it kills (workers stopping, matches `mlx-serve stop`).
const STOP_MARGIN_SECONDS: u64 = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Manager {
    Launchd,
    Systemd,
}

impl Manager {
    /// This OS's manager.
    pub fn native() -> Manager {
        if cfg!(target_os = "macos") {
            Manager::Launchd
        } else {
            Manager::Systemd
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    /// Write the agent/unit (and load/enable it when service.auto_start is true).
    Install,
    /// Stop, unload and remove it.
    Uninstall,
    Start,
    Stop,
    Status,
    /// Start at login.
    Enable,
    /// Do not start at login.
    Disable,
}

fn user_home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."))
}

/// Where the manager's file goes.
pub fn service_file(manager: Manager) -> PathBuf {
    match manager {
        Manager::Launchd => user_home().join("Library/LaunchAgents").join(format!("{LAUNCHD_LABEL}.plist")),
        Manager::Systemd => systemd_user_dir().join(SYSTEMD_UNIT),
    }
}

/// `$XDG_CONFIG_HOME/systemd/user` (default `~/.config/systemd/user`), systemd.unit(5).
fn systemd_user_dir() -> PathBuf {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| user_home().join(".config"));
    config.join("systemd/user")
}

/// Homebrew's service file for mlx-serve, if `brew services` manages it.
fn brew_service_file(manager: Manager) -> Option<PathBuf> {
    let candidates = match manager {
        Manager::Launchd => vec![
            user_home().join("Library/LaunchAgents").join(format!("{BREW_LAUNCHD_LABEL}.plist")),
            PathBuf::from("/Library/LaunchDaemons").join(format!("{BREW_LAUNCHD_LABEL}.plist")),
        ],
        Manager::Systemd => {
            vec![systemd_user_dir().join(BREW_SYSTEMD_UNIT), PathBuf::from("/etc/systemd/system").join(BREW_SYSTEMD_UNIT)]
        }
    };
    candidates.into_iter().find(|p| p.exists())
}

fn refuse_if_brew_manages(manager: Manager) -> Result<()> {
    if let Some(file) = brew_service_file(manager) {
        bail!(
            "mlx-serve is already run by `brew services` ({}). Use one or the other:\n  \
             keep Homebrew's: `brew services start|stop|info mlx-serve`, or\n  \
             switch: `brew services stop mlx-serve` (removes that file), then `mlx-serve service install`",
            file.display()
        );
    }
    Ok(())
}

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
fn program_path() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the mlx-serve executable")?;
    let text = exe.display().to_string();
    if let Some(i) = text.find("/Cellar/mlx-serve/") {
        let stable = PathBuf::from(&text[..i]).join("opt/mlx-serve/bin/mlx-serve");
        if stable.is_file() {
            return Ok(stable);
        }
    }
    Ok(exe)
}

fn facts() -> Result<Facts> {
    let program = program_path()?;
    let home = std::path::absolute(home_dir())?;
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
pub fn render(manager: Manager, config: &Config) -> Result<String> {
    let f = facts()?;
    Ok(match manager {
        Manager::Launchd => render_plist(config, &f),
        Manager::Systemd => render_unit(config, &f),
    })
}

/// Looks `tool` up on PATH.
fn find_tool(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(tool)).find(|p| p.is_file())
}

/// Runs a manager tool; returns (success, combined output).
fn run_tool(tool: &Path, args: &[&str]) -> Result<(bool, String)> {
    let out = Command::new(tool).args(args).output().with_context(|| format!("cannot run {}", tool.display()))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text.trim_end().to_owned()))
}

/// `mlx-serve service ACTION`.
pub fn command(action: Action, manager: Option<Manager>, print: bool, config: &Config) -> Result<()> {
    let manager = manager.unwrap_or_else(Manager::native);
    if print {
        print!("{}", render(manager, config)?);
        return Ok(());
    }
    if matches!(action, Action::Install | Action::Start | Action::Enable) {
        refuse_if_brew_manages(manager)?;
        let port = config.server.port;
        let running = if action == Action::Install { crate::lifecycle::running() } else { Vec::new() };
        if let Some((_, pid, _)) = running.into_iter().find(|(p, _, _)| *p == port) {
            println!(
                "note: mlx-serve (pid {pid}) already serves port {port}; the service cannot bind it \
                 until that one stops (`mlx-serve stop --port {port}`)"
            );
        }
    }
    match manager {
        Manager::Launchd => launchd(action, config),
        Manager::Systemd => systemd(action, config),
    }
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::create_dir_all(home_dir().join("logs"))?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn require_installed(path: &Path) -> Result<()> {
    if !path.exists() {
        bail!("the service is not installed ({} is missing): run `mlx-serve service install`", path.display());
    }
    Ok(())
}

fn launchd(action: Action, config: &Config) -> Result<()> {
    let plist = service_file(Manager::Launchd);
    let plist_str = plist.display().to_string();
    let uid = nix::unistd::getuid();
    let domain = format!("gui/{uid}");
    let target = format!("{domain}/{LAUNCHD_LABEL}");
    if action == Action::Install {
        write_file(&plist, &render(Manager::Launchd, config)?)?;
        println!("wrote {plist_str}");
    }
    let Some(launchctl) = find_tool("launchctl") else {
        match action {
            Action::Install => println!("launchctl not found (not macOS?): the agent is written but not loaded"),
            Action::Uninstall => {}
            _ => bail!("launchctl not found: launchd agents exist only on macOS (use --manager systemd on Linux)"),
        }
        if action == Action::Uninstall {
            remove_file(&plist)?;
        }
        return Ok(());
    };
    let loaded = || run_tool(&launchctl, &["print", &target]).map(|(ok, _)| ok).unwrap_or(false);
    let check = |(ok, out): (bool, String), what: &str| -> Result<()> {
        if ok {
            Ok(())
        } else {
            bail!("launchctl {what} failed: {out}")
        }
    };
    match action {
        Action::Install => {
            if loaded() {
                // Reload so launchd reads the new file.
                let _ = run_tool(&launchctl, &["bootout", &target]);
            }
            if config.service.auto_start {
                check(run_tool(&launchctl, &["bootstrap", &domain, &plist_str])?, "bootstrap")?;
                println!("loaded {LAUNCHD_LABEL}: it runs now and at every login");
            } else {
                println!("service.auto_start is false: start it with `mlx-serve service start`");
            }
        }
        Action::Uninstall => {
            if loaded() {
                check(run_tool(&launchctl, &["bootout", &target])?, "bootout")?;
            }
            remove_file(&plist)?;
        }
        Action::Start | Action::Enable => {
            require_installed(&plist)?;
            if action == Action::Enable {
                check(run_tool(&launchctl, &["enable", &target])?, "enable")?;
            }
            if !loaded() {
                check(run_tool(&launchctl, &["bootstrap", &domain, &plist_str])?, "bootstrap")?;
            }
            if action == Action::Start {
                check(run_tool(&launchctl, &["kickstart", &target])?, "kickstart")?;
            }
            println!("{LAUNCHD_LABEL}: {}", if action == Action::Start { "started" } else { "enabled" });
        }
        Action::Stop | Action::Disable => {
            if action == Action::Disable {
                check(run_tool(&launchctl, &["disable", &target])?, "disable")?;
            }
            if loaded() {
                check(run_tool(&launchctl, &["bootout", &target])?, "bootout")?;
            }
            println!("{LAUNCHD_LABEL}: {}", if action == Action::Stop { "stopped" } else { "disabled" });
        }
        Action::Status => {
            println!("agent file: {plist_str} ({})", if plist.exists() { "installed" } else { "not installed" });
            let (ok, out) = run_tool(&launchctl, &["print", &target])?;
            if ok {
                for line in out.lines().map(str::trim).filter(|l| l.starts_with("state =") || l.starts_with("pid =")) {
                    println!("launchd: {line}");
                }
            } else {
                println!("launchd: not loaded");
            }
        }
    }
    Ok(())
}

fn systemd(action: Action, config: &Config) -> Result<()> {
    let unit = service_file(Manager::Systemd);
    if action == Action::Install {
        write_file(&unit, &render(Manager::Systemd, config)?)?;
        println!("wrote {}", unit.display());
    }
    let systemctl = find_tool("systemctl");
    let user = |args: &[&str]| -> Result<(bool, String)> {
        let tool = systemctl.as_ref().context("systemctl not found")?;
        let mut all = vec!["--user"];
        all.extend_from_slice(args);
        run_tool(tool, &all)
    };
    let check = |(ok, out): (bool, String), what: &str| -> Result<()> {
        if ok {
            Ok(())
        } else {
            bail!("systemctl --user {what} failed: {out}")
        }
    };
    match action {
        Action::Install => {
            if systemctl.is_none() {
                println!("systemctl not found: the unit is written; without systemd run `mlx-serve start` instead");
                return Ok(());
            }
            // Best effort: a machine without a user session bus (containers, ssh without
            // lingering) can still get the file.
            let (ok, out) = user(&["daemon-reload"])?;
            if !ok {
                println!("note: systemctl --user daemon-reload failed ({out}); the unit is written but not loaded");
                return Ok(());
            }
            if config.service.auto_start {
                check(user(&["enable", "--now", SYSTEMD_UNIT])?, "enable --now")?;
                println!("enabled and started {SYSTEMD_UNIT}: it runs now and at every login");
            } else {
                println!("service.auto_start is false: start it with `mlx-serve service start`");
            }
        }
        Action::Uninstall => {
            if systemctl.is_some() {
                let _ = user(&["disable", "--now", SYSTEMD_UNIT]);
            }
            remove_file(&unit)?;
            if systemctl.is_some() {
                let _ = user(&["daemon-reload"]);
            }
        }
        Action::Status => {
            println!("unit file: {} ({})", unit.display(), if unit.exists() { "installed" } else { "not installed" });
            if systemctl.is_some() {
                let (_, out) = user(&["status", "--no-pager", SYSTEMD_UNIT])?;
                println!("{out}");
            }
        }
        Action::Start | Action::Stop | Action::Enable | Action::Disable => {
            require_installed(&unit)?;
            if systemctl.is_none() {
                bail!(
                    "systemctl not found: {} is written, but this system has no systemd to run it; \
                     use `mlx-serve start` / `mlx-serve stop`",
                    unit.display()
                );
            }
            let verb = match action {
                Action::Start => "start",
                Action::Stop => "stop",
                Action::Enable => "enable",
                _ => "disable",
            };
            check(user(&[verb, SYSTEMD_UNIT])?, verb)?;
            println!("{SYSTEMD_UNIT}: {verb} done");
        }
    }
    Ok(())
}

fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            println!("removed {}", path.display());
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("not installed ({} does not exist)", path.display());
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

