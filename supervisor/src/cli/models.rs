//! The model commands: `pull`, `list`, `show`, `remove`, `quantize`. They work on the
//! store directly (no daemon needed); a running daemon sees the result on its next
//! request (`remove` first asks running daemons to stop the model's worker).
//!
//! Names resolve as in the daemon (`store::names`): `pull NAME` of a bare name nothing
//! local knows searches the Hub and says which repo it chose; `list` and `show` show the
//! names the store remembers; `remove` forgets the model's names.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::builder::TypedValueParser;
use clap::{Args, ValueEnum};
use indicatif::HumanBytes;
use mlx_serve_protocol::model_dir::Pooling;
use mlx_serve_protocol::ModelKind;
use serde_json::json;

use super::progress::Printer;
use crate::config::Config;
use crate::console::errln;
use crate::control::{self, Request};
use crate::daemon::pidfile;
use crate::paths::Paths;
use crate::store::aliases::{self, NameSource};
use crate::store::matryoshka;
use crate::store::metadata::{rfc3339, ModelMetadata};
use crate::store::names::{self, remembered};
use crate::store::pull::{self, PullRequest, Source};
use crate::store::quantize::{self, Spec};
use crate::store::{lock, name_for_repo, validate_name, Store};

#[derive(Clone, Copy, ValueEnum)]
pub enum KindArg {
    Embedding,
    Reranker,
    Classifier,
}

#[derive(Args)]
pub struct PullArgs {
    /// Hugging Face repo id (BAAI/bge-m3), alias (bge-m3, see `mlx-serve list --aliases`),
    /// a bare model name (Qwen3-Embedding-0.6B: the most downloaded repo of that name on
    /// the Hub), or a local folder in Hugging Face layout (./my-model).
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
#[command(after_help = "Every matrix is quantized (linear layers and embedding tables); vectors, tiny matrices and a \
Qwen3-Reranker's yes/no rows stay exact. The copy is checked against the original on built-in texts (cosine, \
recall@10, nDCG@10), printed here and by `mlx-serve show NAME-4bit` (docs/quantization.md).\n\n\
Defaults: group size 64 (32 costs ~6% more bytes at 4 bits, 128 loses quality); recipe mixed at 4 bits \
(uniform 4-bit changes small models' embeddings too much), uniform at 8 (cosine to the original >= 0.999).")]
pub struct QuantizeArgs {
    /// Installed model (store name, repo id or alias).
    pub model: String,
    /// 8: indistinguishable from the original for retrieval; 4: about half of 8-bit's size.
    #[arg(long, value_parser = ["4", "8"])]
    pub bits: String,
    #[arg(long, default_value_t = 64, value_parser = clap::builder::PossibleValuesParser::new(["32", "64", "128"]).map(|s| s.parse::<u32>().unwrap()))]
    pub group_size: u32,
    /// uniform: every matrix at --bits; mixed: more bits where the error hurts most (small
    /// encoders: linear layers at 8, tables at 4; larger models: mlx-lm mixed_4_6)
    /// [default: mixed for 4 bits, uniform for 8]
    #[arg(long, value_parser = quantize::RECIPES)]
    pub recipe: Option<String>,
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
fn as_folder(arg: &str, paths: &Paths) -> Option<PathBuf> {
    let expanded = paths.expand_tilde(Path::new(arg));
    let path_like =
        arg.starts_with('/') || arg.starts_with("./") || arg.starts_with("../") || arg.starts_with("~/") || arg == ".";
    (path_like || (arg.contains('/') && expanded.join("config.json").is_file())).then_some(expanded)
}

/// Prints a line to stdout through `console` (a closed pipe, `mlx-serve pull … | head -1`,
/// is not an error).
fn say(line: &str) -> Result<()> {
    crate::console::write_out(&format!("{line}\n"));
    Ok(())
}

/// Where `pull NAME` (not a folder) gets the model, and its store name without a
/// quantization suffix; `quantize` takes the suffix's bits when the name has one.
fn pull_source(
    config: &Config,
    store: &Store,
    rt: &tokio::runtime::Runtime,
    model: &str,
    quantize: &mut Option<Spec>,
    group_size: u32,
) -> Result<(Source, String)> {
    // An installed model pulled again by its store name: check its repo for a newer revision.
    if !aliases::is_repo_id(model) && !model.contains('/') {
        if let Some(dir) = store.find(model) {
            if quantize.is_some() {
                return Ok((Source::Folder(dir), model.to_owned()));
            }
            return match ModelMetadata::read(&dir).and_then(|m| m.repo) {
                Some(repo) => Ok((Source::Hub(repo), model.to_owned())),
                None => bail!("{model} is installed, and it has no Hugging Face repo to pull from (it was imported from a folder)"),
            };
        }
    }
    // Installed names count only for `NAME-4bit` (made from the installed NAME).
    let installed = |n: &str| n != model && store.find(n).is_some();
    let resolution = rt.block_on(names::resolve(model, &config.models.aliases, store, installed, true))?;
    if let Some(text) = &resolution.explanation {
        say(text)?;
    }
    let r = resolution.target;
    let mut name = r.name;
    if let Some(bits) = r.quantize {
        name = name.strip_suffix(&format!("-{bits}bit")).unwrap_or(&name).to_owned();
        *quantize = quantize.or(Some(Spec { bits, group_size }));
    }
    let installed_base = quantize.and_then(|_| store.find(&name));
    match (installed_base, r.repo) {
        // A variant of an installed model: made from its folder, no download.
        (Some(dir), _) => Ok((Source::Folder(dir), name)),
        (None, Some(repo)) => {
            if r.source == NameSource::RepoId {
                if let Some(old) = names::repoint(store, &repo)? {
                    say(&format!("`{}` now means {repo} (it meant {})", name_for_repo(&repo), old.repo))?;
                }
            }
            Ok((Source::Hub(repo), name))
        }
        (None, None) => bail!(
            "{model:?} is not a Hugging Face repo id (owner/name), a known alias, an installed model, or a folder \
             (`mlx-serve list --aliases` shows the aliases)"
        ),
    }
}

pub fn pull_cmd(config: &Config, args: PullArgs) -> Result<()> {
    let store = store(config);
    let mut quantize = match &args.quantize {
        Some(q) => Some(Spec::new(Spec::parse_bits(q)?, args.group_size)?),
        None => None,
    };
    let rt = runtime()?;
    let (source, default_name) = match as_folder(&args.model, &config.paths) {
        Some(dir) => {
            let real = std::fs::canonicalize(&dir).with_context(|| format!("folder {}", dir.display()))?;
            let name = real.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            (Source::Folder(dir), name)
        }
        None => pull_source(config, &store, &rt, &args.model, &mut quantize, args.group_size)?,
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
            KindArg::Classifier => ModelKind::Classifier,
        }),
        expect_kind: None,
        quantize,
        worker_bin: config.paths.worker_binary().to_owned(),
    };
    let printer = Printer::new();
    let outcome = rt.block_on(async {
        tokio::select! {
            r = pull::pull(&store, &req, printer.reporter()) => r.map_err(anyhow::Error::from),
            // Dropping the pull removes its partial folder.
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; nothing was installed (run the pull again to resume)")),
        }
    });
    printer.finish();
    let outcome = outcome?;
    if outcome.up_to_date {
        say(&format!("{} is up to date ({})", outcome.name, outcome.path.display()))?;
    } else {
        let m = &outcome.metadata;
        let size = m.quantized_size.unwrap_or(m.original_size);
        // A causal LM served as a reranker says whose recipe judges its pairs.
        let judge = mlx_serve_protocol::model_dir::inspect(&outcome.path)
            .ok()
            .filter(|f| f.pooling == Pooling::YesNo)
            .and_then(|f| f.family.judge())
            .map(|j| format!(", scored as {}", j.name))
            .unwrap_or_default();
        say(&format!(
            "installed {} ({}, {}{judge}, {}) in {}",
            outcome.name,
            m.kind,
            m.architecture,
            HumanBytes(size),
            outcome.path.display()
        ))?;
    }
    Ok(())
}

fn quant_label(m: &Option<ModelMetadata>, config: &serde_json::Value) -> String {
    if let Some(q) = config.get("quantization").filter(|q| !q.is_null()) {
        return format!("{}-bit/{}", q["bits"], q["group_size"]);
    }
    m.as_ref().map(|m| m.dtype.clone()).filter(|d| !d.is_empty()).unwrap_or_else(|| "-".into())
}

/// The names the store remembers for the model with metadata `meta`, as JSON.
fn remembered_names(store: &Store, meta: &Option<ModelMetadata>) -> serde_json::Value {
    let Some(repo) = meta.as_ref().and_then(|m| m.repo.as_deref()) else { return json!([]) };
    let names: Vec<_> = remembered::names_of(store, repo)
        .into_iter()
        .map(|(name, r)| json!({"name": name, "how": r.how, "at": r.at, "downloads": r.downloads}))
        .collect();
    json!(names)
}

pub fn list_cmd(config: &Config, args: ListArgs) -> Result<()> {
    if args.aliases {
        let table = aliases::table(&config.models.aliases);
        if args.json {
            say(&serde_json::to_string_pretty(&table)?)?;
        } else {
            for (alias, target) in &table {
                say(&format!("{alias:<20} {target}"))?;
            }
        }
        return Ok(());
    }
    let store = store(config);
    let models = store.list();
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
                    "names": remembered_names(&store, &meta),
                    "metadata": meta,
                })
            })
            .collect();
        return say(&serde_json::to_string_pretty(&v)?);
    }
    let names = remembered::all(&store);
    if models.is_empty() && names.is_empty() {
        return say(&format!("no models in {} (`mlx-serve pull minilm` installs one)", config.models_dir().display()));
    }
    if !models.is_empty() {
        say(&format!(
            "{:<36} {:<10} {:<32} {:<12} {:>10}  MODIFIED",
            "NAME", "TYPE", "ARCHITECTURE", "WEIGHTS", "SIZE"
        ))?;
    }
    for m in &models {
        let meta = ModelMetadata::read(&m.path);
        let (kind, arch, quant) = match &m.facts {
            Ok(f) => (f.kind.as_str().to_owned(), f.architecture.clone(), quant_label(&meta, &f.config)),
            Err(e) => ("?".into(), format!("unusable: {e}"), "-".into()),
        };
        say(&format!(
            "{:<36} {:<10} {:<32} {:<12} {:>10}  {}",
            m.name,
            kind,
            arch,
            quant,
            HumanBytes(m.size_bytes).to_string(),
            rfc3339(m.modified)
        ))?;
    }
    if !names.is_empty() {
        say(
            "\nnames found on the Hub (`mlx-serve pull OWNER/NAME` re-points one, `mlx-serve remove NAME` forgets it):",
        )?;
        for (name, r) in &names {
            let installed = if store.find(name_for_repo(&r.repo)).is_some() { "" } else { "  (not installed)" };
            let downloads = r.downloads.map(|d| format!(", {d} downloads")).unwrap_or_default();
            say(&format!("  {name:<34} {:<44} by {} on {}{downloads}{installed}", r.repo, r.how, r.at))?;
        }
    }
    Ok(())
}

/// The installed folder for a name, repo id, alias or remembered name.
fn find_installed(config: &Config, store: &Store, requested: &str) -> Result<(String, PathBuf)> {
    let r = names::resolve_local(requested, &config.models.aliases, store, |n| store.find(n).is_some())?.target;
    let path = store
        .find(&r.name)
        .with_context(|| format!("model {requested:?} is not installed (`mlx-serve list` shows what is)"))?;
    // The folder's own spelling (`Store::find` matches names in any Unicode normalization).
    let name = path.file_name().and_then(|n| n.to_str()).map_or(r.name, str::to_owned);
    Ok((name, path))
}

pub fn show_cmd(config: &Config, args: ShowArgs) -> Result<()> {
    let store = store(config);
    let (name, path) = find_installed(config, &store, &args.model)?;
    let installed = store.installed(&name).context("the model was removed meanwhile")?;
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
        // Whose recipe a causal-LM reranker scores with (docs/models.md, "Causal LMs as rerankers").
        "judge": facts.ok().filter(|f| f.pooling == Pooling::YesNo).and_then(|f| f.family.judge()).map(|j| j.name),
        "normalize": facts.ok().map(|f| f.normalize),
        "max_tokens": facts.ok().map(|f| f.max_tokens),
        "hidden_size": facts.ok().map(|f| f.hidden_size),
        "vocab_size": facts.ok().map(|f| f.vocab_size),
        // What `dimensions` means for it (docs/api.md).
        "dimensions": facts
            .ok()
            .filter(|f| f.kind == ModelKind::Embedding)
            .map(|_| matryoshka::summary(meta.as_ref().and_then(|m| m.matryoshka.as_ref()))),
        "error": facts.err(),
        "names": remembered_names(&store, &meta),
        "metadata": meta,
    });
    if args.json {
        return say(&serde_json::to_string_pretty(&v)?);
    }
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
    for (k, val) in v.as_object().unwrap() {
        match val {
            serde_json::Value::Null => {}
            serde_json::Value::Array(a) if a.is_empty() => {}
            serde_json::Value::Array(a) => {
                say(&format!("{k}:"))?;
                for item in a {
                    // A remembered name: `NAME  by search on DATE, N downloads`.
                    let downloads = item["downloads"].as_u64().map(|d| format!(", {d} downloads")).unwrap_or_default();
                    say(&format!(
                        "  {:<16} by {} on {}{downloads}",
                        text(&item["name"]),
                        text(&item["how"]),
                        text(&item["at"])
                    ))?;
                }
            }
            serde_json::Value::Object(o) => {
                say(&format!("{k}:"))?;
                for (k2, v2) in o {
                    // Printed below as a summary.
                    if k2 == "quantization_details" || k2 == "quality" {
                        continue;
                    }
                    if !v2.is_null() {
                        say(&format!("  {k2:<16} {}", text(v2)))?;
                    }
                }
            }
            _ => say(&format!("{k:<18} {}", text(val)))?,
        }
    }
    let summary = meta.as_ref().map(quantize::summary).unwrap_or_default();
    if !summary.is_empty() {
        say("quantization:")?;
        for line in summary {
            say(&format!("  {line}"))?;
        }
    }
    Ok(())
}

pub fn remove_cmd(config: &Config, args: RemoveArgs) -> Result<()> {
    let store = store(config);
    let (name, path) = find_installed(config, &store, &args.model)?;
    let repo = ModelMetadata::read(&path).and_then(|m| m.repo);
    // The name goes first (rename), so no running server starts the model again and a
    // request under way finds it gone; then the servers of this home stop its worker
    // (their control sockets); then the files go.
    let trash = store.dir().join(format!(".deleting-{name}-{}", std::process::id()));
    std::fs::rename(&path, &trash).with_context(|| format!("cannot remove {}", path.display()))?;
    for (port, _pid, _) in pidfile::running(&config.paths) {
        let forget = Request::Forget { model: name.clone() };
        if let Err(e) = control::request(&config.paths, port, &forget, std::time::Duration::from_secs(30)) {
            errln!("warning: could not ask the server on port {port} to stop {name}'s worker: {e}");
        }
    }
    std::fs::remove_dir_all(&trash).with_context(|| format!("cannot delete {}", trash.display()))?;
    say(&format!("removed {name}"))?;
    // Its names: the one typed, and those remembered for its repo. A quantized variant
    // shares its base's repo, and the base keeps them.
    let forget: Vec<String> = match (&repo, aliases::split_variant(&name)) {
        (Some(repo), None) => remembered::names_of(&store, repo).into_iter().map(|(n, _)| n).collect(),
        _ => Vec::new(),
    };
    for n in forget.iter().map(String::as_str).chain(std::iter::once(args.model.as_str())) {
        if let Some(r) = remembered::get(&store, n) {
            remembered::forget(&store, n)?;
            say(&format!("forgot that `{n}` means {} (the next use of the name searches the Hub again)", r.repo))?;
        }
    }
    Ok(())
}

pub fn quantize_cmd(config: &Config, args: QuantizeArgs) -> Result<()> {
    let store = store(config);
    let (name, src) = find_installed(config, &store, &args.model)?;
    let spec = Spec::new(args.bits.parse()?, args.group_size)?;
    let dst_name = spec.variant_name(&name);
    validate_name(&dst_name)?;
    let printer = Printer::new();
    let report = printer.reporter();
    let worker_bin = config.paths.worker_binary().to_owned();
    let result = runtime()?.block_on(async {
        tokio::select! {
            r = async {
                let waiting = report.clone();
                let message = format!("waiting for another install of {dst_name} to finish");
                let _lock = lock::acquire(&store, &dst_name, move || waiting(pull::PullEvent::Status(message))).await?;
                if store.find(&dst_name).is_some() {
                    return Err(anyhow::anyhow!("{dst_name} already exists; `mlx-serve remove {dst_name}` first to make it again"));
                }
                report(pull::PullEvent::Status(format!("quantizing {name} to {}-bit (group size {})", spec.bits, spec.group_size)));
                Ok(quantize::installed_variant(&store, &worker_bin, &src, &name, spec, args.recipe.as_deref()).await?)
            } => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; nothing was installed")),
        }
    });
    printer.finish();
    let (path, meta) = result?;
    let q = meta.quantized_size.unwrap_or(0);
    say(&format!(
        "installed {dst_name} in {}: weights {} → {} ({:.1}%)",
        path.display(),
        HumanBytes(meta.original_size),
        HumanBytes(q),
        100.0 * q as f64 / meta.original_size.max(1) as f64
    ))?;
    if let Some(line) = quantize::summary(&meta).into_iter().find(|l| l.starts_with("quality:")) {
        say(&line)?;
    }
    Ok(())
}
