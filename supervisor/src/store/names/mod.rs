//! Model names as people type them, all the way to a repo: what `aliases.rs` knows
//! locally (an installed model, an alias, the last part of an alias's repo, a repo id),
//! then, for a bare name none of those knows, the repo the store remembers for it
//! (`remembered.rs`), then a Hub model search (`search.rs`), whose choice is remembered.
//!
//! The CLI (`mlx-serve pull NAME`) and the daemon (requests, preload, `/api/pull`) both
//! resolve through [`resolve`], so a name means the same repo everywhere. A `-4bit` /
//! `-8bit` suffix is kept apart: the base name is looked up, and the result is its
//! quantized variant.

pub mod remembered;
pub mod search;

use std::collections::BTreeMap;

use super::aliases::{self, NameSource, Resolved};
use super::metadata::now_rfc3339;
use super::{name_for_repo, Store, StoreError};

pub use remembered::Remembered;

/// A resolved name and, when it took more than a local lookup, how it was found (for the
/// CLI to print and the daemon to log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub target: Resolved,
    pub explanation: Option<String>,
}

/// Resolves `requested` without asking the Hub: installed model, alias, alias repo's last
/// part, repo id, then the repo the store remembers for a bare name. A bare name none of
/// these knows comes back with [`NameSource::Unknown`].
pub fn resolve_local(
    requested: &str,
    user_aliases: &BTreeMap<String, String>,
    store: &Store,
    installed: impl Fn(&str) -> bool,
) -> Result<Resolution, StoreError> {
    let local = aliases::resolve(requested, user_aliases, &installed)?;
    match local.source {
        NameSource::AliasTarget => {
            let repo = local.repo.clone().unwrap_or_default();
            let text = format!("`{requested}` is {repo}, the repo of a model alias (`mlx-serve list --aliases`)");
            return Ok(Resolution { target: local, explanation: Some(text) });
        }
        NameSource::Unknown => {}
        _ => return Ok(Resolution { target: local, explanation: None }),
    }
    let (base, suffix, bits) = split(&local.name);
    let Some(r) = remembered::get(store, base) else { return Ok(Resolution { target: local, explanation: None }) };
    let how = match r.how.as_str() {
        "pull" => "pulled by its id".to_owned(),
        _ => format!("chosen by a Hub search on {}", r.at.get(..10).unwrap_or(&r.at)),
    };
    let text = format!(
        "`{base}` is {} ({how}; remembered in {}; `mlx-serve pull OWNER/{base}` re-points it)",
        r.repo,
        store.dir().join(remembered::FILE).display()
    );
    Ok(Resolution { target: variant(&r.repo, &suffix, bits, NameSource::Remembered), explanation: Some(text) })
}

/// `NAME-4bit` → (`NAME`, `-4bit`, 4); a name without the suffix → (name, "", None).
fn split(name: &str) -> (&str, String, Option<u8>) {
    match aliases::split_variant(name) {
        Some((base, bits)) => (base, format!("-{bits}bit"), Some(bits)),
        None => (name, String::new(), None),
    }
}

/// The store name and repo of `repo`'s model, or of its quantized variant.
fn variant(repo: &str, suffix: &str, quantize: Option<u8>, source: NameSource) -> Resolved {
    Resolved { name: format!("{}{suffix}", name_for_repo(repo)), repo: Some(repo.to_owned()), quantize, source }
}

/// Resolves `requested` (see the module docs): [`resolve_local`], then, with `search`, a
/// Hub search for a bare name nothing local knows; its choice is remembered. Without
/// `search` such a name comes back with [`NameSource::Unknown`]; with it, a name the Hub
/// does not know either is an error that says what was searched.
pub async fn resolve(
    requested: &str,
    user_aliases: &BTreeMap<String, String>,
    store: &Store,
    installed: impl Fn(&str) -> bool,
    search: bool,
) -> Result<Resolution, StoreError> {
    let local = resolve_local(requested, user_aliases, store, installed)?;
    if local.target.source != NameSource::Unknown || !search {
        return Ok(local);
    }
    let (base, suffix, bits) = split(&local.target.name);
    let found = search::search(base, &suffix).await?;
    let chosen = &found.chosen;
    let entry = Remembered {
        repo: chosen.repo.clone(),
        how: "search".into(),
        at: now_rfc3339(),
        downloads: Some(chosen.downloads),
        endpoint: Some(found.endpoint.clone()),
    };
    // Not remembering costs a search next time, nothing more.
    let saved = std::fs::create_dir_all(store.dir())
        .map_err(|e| StoreError::Failed(e.to_string()))
        .and_then(|_| remembered::set(store, base, entry));
    if let Err(e) = saved {
        tracing::warn!("cannot remember that `{base}` is {}: {e}", chosen.repo);
    }
    let others = match found.servable {
        1 => format!("the only servable repo named {base} on {}", found.endpoint),
        n => format!("the most downloaded of {n} servable repos named {base} on {}", found.endpoint),
    };
    let text = format!(
        "`{base}` is {} ({others}, {} downloads; remembered: `mlx-serve pull OWNER/{base}` re-points it)",
        chosen.repo, chosen.downloads
    );
    Ok(Resolution { target: variant(&chosen.repo, &suffix, bits, NameSource::Searched), explanation: Some(text) })
}

/// After an explicit pull of `repo` by its id: a bare name that meant another repo of the
/// same last part now means this one.
pub fn repoint(store: &Store, repo: &str) -> Result<Option<Remembered>, StoreError> {
    let name = name_for_repo(repo);
    match remembered::get(store, name) {
        Some(old) if old.repo != repo => {
            let entry = Remembered {
                repo: repo.to_owned(),
                how: "pull".into(),
                at: now_rfc3339(),
                downloads: None,
                endpoint: None,
            };
            remembered::forget(store, name)?;
            remembered::set(store, name, entry)?;
            Ok(Some(old))
        }
        _ => Ok(None),
    }
}
