//! `mlx-serve cache stats|clear`: the running daemon's embedding cache, over its control
//! socket (the cache lives in the daemon's memory).

use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::format::human_bytes;
use crate::config::Config;
use crate::console::outln;
use crate::control::{self, Request};
use crate::daemon::pidfile;

#[derive(Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub command: CacheCommand,
    /// The server's port (default: the configured port, or the only running server).
    #[arg(long, global = true)]
    pub port: Option<u16>,
    /// Print the daemon's answer as JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum CacheCommand {
    /// Entries, memory held and budget, hits, misses and evictions since start; the
    /// same for the disk tier when it is on.
    Stats,
    /// Drop every cached vector, in memory and on disk.
    Clear,
}

pub fn cache_cmd(args: CacheArgs) -> Result<()> {
    let config = Config::load()?;
    let port = pidfile::target_port(args.port, &config)?;
    let request = match args.command {
        CacheCommand::Stats => Request::CacheStats,
        CacheCommand::Clear => Request::CacheClear,
    };
    let result = control::request(&config.paths, port, &request, Duration::from_secs(15))?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    let n = |k: &str| result[k].as_u64().unwrap_or(0);
    match request {
        Request::CacheClear => {
            outln!("cleared {} vectors ({})", n("entries"), human_bytes(n("bytes")));
            let disk = &result["disk"];
            if disk.is_object() {
                let d = |k: &str| disk[k].as_u64().unwrap_or(0);
                outln!("cleared {} vectors on disk ({})", d("entries"), human_bytes(d("bytes")));
            }
        }
        _ => {
            let looked = n("hits") + n("misses");
            let rate = if looked == 0 { 0.0 } else { 100.0 * n("hits") as f64 / looked as f64 };
            outln!("entries    {}", n("entries"));
            outln!("memory     {} of {}", human_bytes(n("bytes")), human_bytes(n("budget_bytes")));
            outln!("hits       {} ({rate:.1}% of {looked} lookups)", n("hits"));
            outln!("misses     {}", n("misses"));
            outln!("evictions  {}", n("evictions"));
            let disk = &result["disk"];
            if disk.is_object() {
                let d = |k: &str| disk[k].as_u64().unwrap_or(0);
                let looked = d("hits") + d("misses");
                let rate = if looked == 0 { 0.0 } else { 100.0 * d("hits") as f64 / looked as f64 };
                outln!("disk       {}", disk["path"].as_str().unwrap_or(""));
                outln!(
                    "  entries  {} ({} of {}; file {})",
                    d("entries"),
                    human_bytes(d("bytes")),
                    human_bytes(d("budget_bytes")),
                    human_bytes(d("file_bytes"))
                );
                outln!("  hits     {} ({rate:.1}% of {looked} lookups)", d("hits"));
                outln!(
                    "  evictions {}, dropped writes {}, corrupt {}",
                    d("evictions"),
                    d("dropped_writes"),
                    d("corrupt")
                );
            } else {
                outln!("disk       off (embedding_cache.disk_mb)");
            }
        }
    }
    Ok(())
}
