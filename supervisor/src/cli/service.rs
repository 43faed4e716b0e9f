//! `mlx-serve service install|uninstall|start|stop|status|enable|disable`: the arguments;
//! the work is in `daemon/service/`.

use anyhow::Result;
use clap::Args;

use crate::config::Config;
use crate::daemon::service;

#[derive(Args)]
pub struct ServiceArgs {
    pub action: service::Action,
    /// Service manager (default: launchd on macOS, systemd elsewhere).
    #[arg(long, value_enum)]
    pub manager: Option<service::Manager>,
    /// Print the agent/unit file instead of acting.
    #[arg(long)]
    pub print: bool,
}

pub fn service_cmd(args: ServiceArgs) -> Result<()> {
    let config = Config::load()?;
    Ok(service::command(args.action, args.manager, args.print, &config)?)
}
