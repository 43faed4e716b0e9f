//! The model commands: `pull`, `list`, `show`, `remove`, `quantize`. They work on the
//! store directly (no daemon needed); a running daemon sees the result on its next
//! request (`remove` first asks running daemons to stop the model's worker).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::builder::TypedValueParser;
use clap::{Args, ValueEnum};
use indicatif::HumanBytes;
use mlx_serve_protocol::ModelKind;
use serde_json::json;

use super::progress::Printer;
use crate::config::Config;
use crate::control::{self, Request};
use crate::daemon::pidfile;
use crate::paths::worker_binary;
use crate::store::aliases;
use crate::store::metadata::{self, rfc3339, ModelMetadata};
use crate::store::pull::{self, PullRequest, Source};
use crate::store::quantize::{self, Spec};
use crate::store::{validate_name, Store};
use crate::console::{errln, outln};

#[derive(Clone, Copy, ValueEnum)]
pub enum KindArg {
    Embedding,
    Reranker,
}

#[derive(Args)]
pub struct PullArgs {
    /// Hugging Face repo id (BAAI/bge-m3), alias (bge-m3, see `mlx-serve list --aliases`),
    /// or a local folder in Hugging Face layout (./my-model).
    pub model: String,
    /// Model type, when detection from config.json gets it wrong.
    #[arg(long = "type", value_enum)]
    pub kind: Option<KindArg>,
    /// Store name (default: the repo's or folder's last component).
    #[arg(long)]
    pub name: Option<String>,
    /// Branch, tag or commit of the repo.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Install an MLX-quantized copy (NAME-4bit / NAME-8bit) instead of the original.
    #[arg(long, value_name = "4bit|8bit")]
    pub quantize: Option<String>,
    /// Quantization group size.
    #[arg(long, default_value_t = 64, value_parser = clap::builder::PossibleValuesParser::new(["32", "64", "128"]).map(|s| s.parse::<u32>().unwrap()))]
    pub group_size: u32,
}

#[derive(Args)]
pub struct ListArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// List the model aliases instead (built in and from config).
    #[arg(long)]
    pub aliases: bool,
}

#[derive(Args)]
pub struct ShowArgs {
    /// Store name, repo id or alias.
    pub model: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct RemoveArgs {
    /// Store name, repo id or alias.
    pub model: String,
}

#[derive(Args)]
pub struct QuantizeArgs {
    /// Installed model (store name, repo id or alias).
    pub model: String,
    #[arg(long, value_parser = ["4", "8"])]
    pub bits: String,
    #[arg(long, default_value_t = 64, value_parser = clap::builder::PossibleValuesParser::new(["32", "64", "128"]).map(|s| s.parse::<u32>().unwrap()))]
    pub group_size: u32,
}

fn store(config: &Config) -> Store {
    Store::new(config.models_dir())
}

/// One thread: hf-hub spawns a task per 10 MB chunk and they take their turn in spawn
/// order here, so a file arrives front to back and an interrupted download resumes from
/// where it stopped (hf-hub only records the contiguous prefix; on a multi-threaded
/// runtime chunks may finish out of order and a resume may start further back).
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// Whether a `pull` argument means a folder: a path that starts like one, or an existing
/// folder with a config.json (so `org/name` stays a repo id unless such a folder exists).
fn as_folder(arg: &str) -> Option<PathBuf> {
    let expanded = match arg.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME").map(|h| Path::new(&h).join(rest))?,
        None => PathBuf::from(arg),
    };
    let path_like = arg.starts_with('/') || arg.starts_with("./") || arg.starts_with("../") || arg.starts_with("~/") || arg == ".";
    (path_like || (arg.contains('/') && expanded.join("config.json").is_file())).then_some(expanded)
}

pub fn pull_cmd(config: &Config, args: PullArgs) -> Result<()> {
    let store = store(config);
    let mut quantize = match &args.quantize {
        Some(q) => Some(Spec::new(Spec::parse_bits(q)?, args.group_size)?),
        None => None,
    };
    let (source, default_name) = match as_folder(&args.model) {
        Some(dir) => {
            let real = std::fs::canonicalize(&dir).with_context(|| format!("folder {}", dir.display()))?;
            let name = real.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            (Source::Folder(dir), name)
        }
        None => {
            // Installed names count only for `NAME-4bit` (made from the installed NAME): a
            // plain pull of an installed repo checks the hub for a newer revision.
            let installed = |n: &str| n != args.model && store.find(n).is_some();
            let r = aliases::resolve(&args.model, &config.models.aliases, installed)?;
            let mut name = r.name;
            if let Some(bits) = r.quantize {
                name = name.strip_suffix(&format!("-{bits}bit")).unwrap_or(&name).to_owned();
                quantize = quantize.or(Some(Spec { bits, group_size: args.group_size }));
            }
            match (r.repo, quantize) {
                (Some(repo), _) => (Source::Hub(repo), name),
                (None, Some(_)) if store.find(&name).is_some() => (Source::Folder(store.find(&name).unwrap()), name),
                _ => bail!(
                    "{:?} is not a Hugging Face repo id (owner/name), a known alias, or a folder (`mlx-serve list --aliases` shows the aliases)",
                    args.model
                ),
            }
        }
    };
    let name = args.name.clone().unwrap_or(default_name);
    validate_name(&name)?;
    let req = PullRequest {
        source,
        name,
        revision: args.revision.clone(),
        kind: args.kind.map(|k| match k {
            KindArg::Embedding => ModelKind::Embedding,
            KindArg::Reranker => ModelKind::Reranker,
        }),
        quantize,
        worker_bin: worker_binary(),
    };
    let printer = Printer::new();
    let outcome = runtime()?.block_on(async {
        tokio::select! {
            r = pull::pull(&store, &req, printer.reporter()) => r.map_err(anyhow::Error::from),
            // Dropping the pull removes its partial folder.
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; nothing was installed (run the pull again to resume)")),
        }
    });
    printer.finish();
    let outcome = outcome?;
    if outcome.up_to_date {
        outln!("{} is up to date ({})", outcome.name, outcome.path.display());
    } else {
        let m = &outcome.metadata;
        let size = m.quantized_size.unwrap_or(m.original_size);
        outln!("installed {} ({}, {}, {}) in {}", outcome.name, m.kind, m.architecture, HumanBytes(size), outcome.path.display());
    }
    Ok(())
}

fn quant_label(m: &Option<ModelMetadata>, config: &serde_json::Value) -> String {
    if let Some(q) = config.get("quantization").filter(|q| !q.is_null()) {
        return format!("{}-bit/{}", q["bits"], q["group_size"]);
    }
    m.as_ref().map(|m| m.dtype.clone()).filter(|d| !d.is_empty()).unwrap_or_else(|| "-".into())
}

pub fn list_cmd(config: &Config, args: ListArgs) -> Result<()> {
    if args.aliases {
        let table = aliases::table(&config.models.aliases);
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&table)?);
        } else {
            for (alias, target) in &table {
                outln!("{alias:<20} {target}");
            }
        }
        return Ok(());
    }
    let models = store(config).list();
    if args.json {
        let v: Vec<_> = models
            .iter()
            .map(|m| {
                let meta = ModelMetadata::read(&m.path);
                json!({
                    "name": m.name,
                    "path": m.path,
                    "size": m.size_bytes,
                    "modified": rfc3339(m.modified),
                    "type": m.facts.as_ref().ok().map(|f| f.kind.as_str()),
                    "architecture": m.facts.as_ref().ok().map(|f| f.architecture.clone()),
                    "error": m.facts.as_ref().err(),
                    "metadata": meta,
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if models.is_empty() {
        outln!("no models in {} (`mlx-serve pull minilm` installs one)", config.models_dir().display());
        return Ok(());
    }
    outln!("{:<36} {:<10} {:<32} {:<12} {:>10}  MODIFIED", "NAME", "TYPE", "ARCHITECTURE", "WEIGHTS", "SIZE");
    for m in &models {
        let meta = ModelMetadata::read(&m.path);
        let (kind, arch, quant) = match &m.facts {
            Ok(f) => (f.kind.as_str().to_owned(), f.architecture.clone(), quant_label(&meta, &f.config)),
            Err(e) => ("?".into(), format!("unusable: {e}"), "-".into()),
        };
        outln!(
            "{:<36} {:<10} {:<32} {:<12} {:>10}  {}",
            m.name,
            kind,
            arch,
            quant,
            HumanBytes(m.size_bytes).to_string(),
            rfc3339(m.modified)
        );
    }
    Ok(())
}

/// The installed folder for a name, repo id or alias.
fn find_installed(config: &Config, store: &Store, requested: &str) -> Result<(String, PathBuf)> {
    let r = aliases::resolve(requested, &config.models.aliases, |n| store.find(n).is_some())?;
    let path = store
        .find(&r.name)
        .with_context(|| format!("model {requested:?} is not installed (`mlx-serve list` shows what is)"))?;
    Ok((r.name, path))
}

pub fn show_cmd(config: &Config, args: ShowArgs) -> Result<()> {
    let store = store(config);
    let (name, path) = find_installed(config, &store, &args.model)?;
    let installed = store.installed(&name).context("model vanished")?;
    let meta = ModelMetadata::read(&path);
    let facts = installed.facts.as_ref();
    let v = json!({
        "name": name,
        "path": path,
        "size": installed.size_bytes,
        "type": facts.ok().map(|f| f.kind.as_str()),
        "architecture": facts.ok().map(|f| f.architecture.clone()),
        "family": facts.ok().map(|f| f.family.as_str()),
        "pooling": facts.ok().map(|f| f.pooling.as_str()),
        "normalize": facts.ok().map(|f| f.normalize),
        "max_tokens": facts.ok().map(|f| f.max_tokens),
        "hidden_size": facts.ok().map(|f| f.hidden_size),
        "vocab_size": facts.ok().map(|f| f.vocab_size),
        "error": facts.err(),
        "metadata": meta,
    });
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for (k, val) in v.as_object().unwrap() {
        match val {
            serde_json::Value::Null => {}
            serde_json::Value::Object(o) => {
                outln!("{k}:");
                for (k2, v2) in o {
                    if !v2.is_null() {
                        outln!("  {k2:<16} {}", v2.as_str().map(str::to_owned).unwrap_or_else(|| v2.to_string()));
                    }
                }
            }
            _ => outln!("{k:<18} {}", val.as_str().map(str::to_owned).unwrap_or_else(|| val.to_string())),
        }
    }
    Ok(())
}

pub fn remove_cmd(config: &Config, args: RemoveArgs) -> Result<()> {
    let store = store(config);
    let (name, path) = find_installed(config, &store, &args.model)?;
    // Running servers of this home stop the model's worker first (their control sockets).
    for (port, _pid, _) in pidfile::running() {
        let forget = Request::Forget { model: name.clone() };
        if let Err(e) = control::request(port, &forget, std::time::Duration::from_secs(30)) {
            errln!("warning: could not ask the server on port {port} to stop {name}'s worker: {e}");
        }
    }
    // Rename first: the name disappears at once, even if deleting many files takes time.
    let trash = store.dir().join(format!(".deleting-{name}-{}", std::process::id()));
    std::fs::rename(&path, &trash).with_context(|| format!("cannot remove {}", path.display()))?;
    std::fs::remove_dir_all(&trash).with_context(|| format!("cannot delete {}", trash.display()))?;
    outln!("removed {name}");
    Ok(())
}

pub fn quantize_cmd(config: &Config, args: QuantizeArgs) -> Result<()> {
    let store = store(config);
    let (name, src) = find_installed(config, &store, &args.model)?;
    let spec = Spec::new(args.bits.parse()?, args.group_size)?;
    let dst_name = spec.variant_name(&name);
    validate_name(&dst_name)?;
    if store.find(&dst_name).is_some() {
        bail!("{dst_name} already exists; `mlx-serve remove {dst_name}` first to make it again");
    }
    let mut base = ModelMetadata::read(&src).unwrap_or_default();
    if base.kind.is_empty() {
        // A folder placed in the store by hand: describe it from its own files.
        let facts = mlx_serve_protocol::model_dir::inspect(&src).map_err(anyhow::Error::msg)?;
        base.kind = facts.kind.as_str().into();
        base.architecture = facts.architecture;
        base.dtype = metadata::dominant_dtype(&src).unwrap_or_default();
    }
    base.source_type = "quantize".into();
    base.source = name.clone();
    let printer = Printer::new();
    let report = printer.reporter();
    report(pull::PullEvent::Status(format!("quantizing {name} to {}-bit (group size {})", spec.bits, spec.group_size)));
    let worker_bin = worker_binary();
    let result = runtime()?.block_on(async {
        tokio::select! {
            r = quantize::into_store(&store, &worker_bin, &src, &dst_name, spec, &base) => r.map_err(anyhow::Error::from),
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; nothing was installed")),
        }
    });
    printer.finish();
    let (path, meta) = result?;
    let q = meta.quantized_size.unwrap_or(0);
    outln!(
        "installed {dst_name} in {}: weights {} → {} ({:.1}%)",
        path.display(),
        HumanBytes(meta.original_size),
        HumanBytes(q),
        100.0 * q as f64 / meta.original_size.max(1) as f64
    );
    Ok(())
}
