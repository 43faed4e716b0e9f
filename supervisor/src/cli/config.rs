//! `mlx-serve config [--path|--example|--json]`: the effective configuration and where
//! each value came from.

use anyhow::Result;
use clap::Args;

use crate::config::{Effective, EXAMPLE};
use crate::console::{self, outln};
use crate::paths::Paths;

#[derive(Args)]
pub struct ConfigArgs {
    /// Print the config file's path and exit.
    #[arg(long)]
    pub path: bool,
    /// Print a commented example config (every key at its default).
    #[arg(long, conflicts_with = "path")]
    pub example: bool,
    /// The effective config as JSON: `{path, file_exists, values: [{key, value, source, detail}]}`.
    #[arg(long, conflicts_with_all = ["path", "example"])]
    pub json: bool,
}

pub fn config_cmd(args: ConfigArgs) -> Result<()> {
    if args.example {
        return print_out(EXAMPLE);
    }
    if args.path {
        outln!("{}", Paths::from_env().config_file().display());
        return Ok(());
    }
    let effective = Effective::load()?;
    if args.json {
        let out = serde_json::json!({
            "path": effective.path,
            "file_exists": effective.file_exists,
            "values": effective.entries(),
        });
        print_out(&format!("{}\n", serde_json::to_string_pretty(&out)?))?;
    } else {
        print_out(&effective.render())?;
    }
    // Values that parse but make no sense stop the server; say so here too.
    effective.config.validate()?;
    Ok(())
}

/// Writes to stdout; a closed pipe (`mlx-serve config | head`) is not an error.
fn print_out(text: &str) -> Result<()> {
    console::write_out(text);
    Ok(())
}
