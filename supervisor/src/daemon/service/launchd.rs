//! `mlx-serve service …` with launchd (macOS): the agent in `~/Library/LaunchAgents`,
//! driven with `launchctl bootstrap/bootout/kickstart/enable/disable` in the `gui/<uid>`
//! domain.

use super::{fail, find_tool, remove_file, render, require_installed, run_tool, service_file, write_file};
use super::{Action, Manager, ServiceError, LAUNCHD_LABEL};
use crate::config::Config;
use crate::console::outln;

pub(super) fn launchd(action: Action, config: &Config) -> Result<(), ServiceError> {
    let plist = service_file(Manager::Launchd, &config.paths);
    let plist_str = plist.display().to_string();
    let uid = nix::unistd::getuid();
    let domain = format!("gui/{uid}");
    let target = format!("{domain}/{LAUNCHD_LABEL}");
    if action == Action::Install {
        write_file(&config.paths, &plist, &render(Manager::Launchd, config)?)?;
        outln!("wrote {plist_str}");
    }
    let Some(launchctl) = find_tool("launchctl") else {
        match action {
            Action::Install => outln!("launchctl not found (not macOS?): the agent is written but not loaded"),
            Action::Uninstall => {}
            _ => fail!("launchctl not found: launchd agents exist only on macOS (use --manager systemd on Linux)"),
        }
        if action == Action::Uninstall {
            remove_file(&plist)?;
        }
        return Ok(());
    };
    let loaded = || run_tool(&launchctl, &["print", &target]).map(|(ok, _)| ok).unwrap_or(false);
    let check = |(ok, out): (bool, String), what: &str| -> Result<(), ServiceError> {
        if ok {
            Ok(())
        } else {
            fail!("launchctl {what} failed: {out}")
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
                outln!("loaded {LAUNCHD_LABEL}: it runs now and at every login");
            } else {
                outln!("service.auto_start is false: start it with `mlx-serve service start`");
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
            outln!("{LAUNCHD_LABEL}: {}", if action == Action::Start { "started" } else { "enabled" });
        }
        Action::Stop | Action::Disable => {
            if action == Action::Disable {
                check(run_tool(&launchctl, &["disable", &target])?, "disable")?;
            }
            if loaded() {
                check(run_tool(&launchctl, &["bootout", &target])?, "bootout")?;
            }
            outln!("{LAUNCHD_LABEL}: {}", if action == Action::Stop { "stopped" } else { "disabled" });
        }
        Action::Status => {
            outln!("agent file: {plist_str} ({})", if plist.exists() { "installed" } else { "not installed" });
            let (ok, out) = run_tool(&launchctl, &["print", &target])?;
            if ok {
                for line in out.lines().map(str::trim).filter(|l| l.starts_with("state =") || l.starts_with("pid =")) {
                    outln!("launchd: {line}");
                }
            } else {
                outln!("launchd: not loaded");
            }
        }
    }
    Ok(())
}
