//! `mlx-serve service …` with systemd (Linux): a user unit driven with `systemctl --user`.
//! Without a user session bus (containers, ssh without lingering) the unit is still
//! written, and the message says so.

use super::{fail, find_tool, remove_file, render, require_installed, run_tool, service_file, write_file};
use super::{Action, Manager, ServiceError, SYSTEMD_UNIT};
use crate::config::Config;
use crate::console::outln;

pub(super) fn systemd(action: Action, config: &Config) -> Result<(), ServiceError> {
    let unit = service_file(Manager::Systemd, &config.paths);
    if action == Action::Install {
        write_file(&config.paths, &unit, &render(Manager::Systemd, config)?)?;
        outln!("wrote {}", unit.display());
    }
    let systemctl = find_tool("systemctl");
    let user = |args: &[&str]| -> Result<(bool, String), ServiceError> {
        let tool = systemctl.as_ref().ok_or_else(|| ServiceError("systemctl not found".into()))?;
        let mut all = vec!["--user"];
        all.extend_from_slice(args);
        run_tool(tool, &all)
    };
    let check = |(ok, out): (bool, String), what: &str| -> Result<(), ServiceError> {
        if ok {
            Ok(())
        } else {
            fail!("systemctl --user {what} failed: {out}")
        }
    };
    match action {
        Action::Install => {
            if systemctl.is_none() {
                outln!("systemctl not found: the unit is written; without systemd run `mlx-serve start` instead");
                return Ok(());
            }
            // Best effort: a machine without a user session bus (containers, ssh without
            // lingering) can still get the file.
            let (ok, out) = user(&["daemon-reload"])?;
            if !ok {
                outln!("note: systemctl --user daemon-reload failed ({out}); the unit is written but not loaded");
                return Ok(());
            }
            if config.service.auto_start {
                check(user(&["enable", "--now", SYSTEMD_UNIT])?, "enable --now")?;
                outln!("enabled and started {SYSTEMD_UNIT}: it runs now and at every login");
            } else {
                outln!("service.auto_start is false: start it with `mlx-serve service start`");
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
            outln!("unit file: {} ({})", unit.display(), if unit.exists() { "installed" } else { "not installed" });
            if systemctl.is_some() {
                let (_, out) = user(&["status", "--no-pager", SYSTEMD_UNIT])?;
                outln!("{out}");
            }
        }
        Action::Start | Action::Stop | Action::Enable | Action::Disable => {
            require_installed(&unit)?;
            if systemctl.is_none() {
                fail!(
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
            outln!("{SYSTEMD_UNIT}: {verb} done");
        }
    }
    Ok(())
}
