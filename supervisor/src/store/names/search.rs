//! The Hub's model search, for a bare name: which repos are named exactly that, which of
//! them we could serve, and which one the name means.
//!
//! The request is what huggingface_hub's `HfApi.list_models(search=NAME, sort="downloads",
//! limit=100, expand=[...])` sends (huggingface_hub `hf_api.py`; Hub API docs, "GET
//! /api/models"):
//!
//! `GET {HF_ENDPOINT}/api/models?search=NAME&sort=downloads&limit=100&expand=downloads&expand=gated&expand=config&expand=siblings`
//!
//! - `search` matches a substring of the repo id, so `bge-m3` also finds `BAAI/bge-m3-onnx`
//!   and `someone/bge-m3`; only ids whose last part equals the name (ignoring case) count.
//! - `sort=downloads` sorts most downloaded first (the Hub sorts descending only;
//!   huggingface_hub dropped `direction` as unused). `limit` caps one page; a repo named
//!   exactly NAME past the 100 most downloaded matches is not considered.
//! - `expand` returns only the listed properties (and `id`): `downloads` (last 30 days),
//!   `gated` (`false`, `"auto"` or `"manual"`), `config` (the config.json subset the Hub
//!   indexes: `architectures`, `model_type`), `siblings` (`[{rfilename}]`, the file list).
//!   `author` is not sent: the owner is what we are looking for.
//!
//! A repo can be served when its `model_type` is one the worker runs and its files pass
//! the same check a pull makes before any weights (`pull::files::select`: config.json and
//! safetensors weights). The name means the most downloaded such repo when it has at least
//! [`DOMINANCE`] times the downloads of the next (an original beside its copies);
//! otherwise the choice is the user's, and the error lists each repo with the pull line
//! that picks it.

use mlx_serve_protocol::model_dir::Family;
use serde::Deserialize;
use serde_json::Value;

use crate::store::hub_api;
use crate::store::pull::files;
use crate::store::{name_for_repo, StoreError};

/// How many times the downloads of the runner-up the most downloaded repo needs to be
/// chosen on its own.
pub const DOMINANCE: u64 = 10;

/// Results asked for: one page.
const LIMIT: &str = "100";

/// One search result, as `expand` returns it.
#[derive(Debug, Clone, Deserialize)]
pub struct HubModel {
    pub id: String,
    #[serde(default)]
    pub downloads: Option<u64>,
    #[serde(default)]
    pub gated: Option<Value>,
    #[serde(default)]
    pub config: Option<Value>,
    #[serde(default)]
    pub siblings: Option<Vec<Sibling>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Sibling {
    pub rfilename: String,
}

/// A repo named exactly as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub repo: String,
    pub downloads: u64,
    /// Needs accepted conditions and a token (`gated` is `"auto"` or `"manual"`).
    pub gated: bool,
    /// Why it cannot be served; `None` when it can.
    pub problem: Option<String>,
}

/// The repo a search chose, and what it was chosen among.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub chosen: Candidate,
    /// Servable repos of that name, the chosen one included.
    pub servable: usize,
    /// Where it searched.
    pub endpoint: String,
}

/// Why `m` cannot be served, or `None`.
fn problem(m: &HubModel) -> Option<String> {
    let model_type = m.config.as_ref().and_then(|c| c.get("model_type")).and_then(Value::as_str);
    match model_type {
        None => return Some("the Hub lists no model_type for it (no config.json?)".into()),
        Some(t) if Family::of_model_type(t).is_none() => {
            return Some(format!("architecture {t} is not supported (supported: {})", Family::supported_model_types()))
        }
        Some(_) => {}
    }
    let names: Vec<String> = m.siblings.iter().flatten().map(|s| s.rfilename.clone()).collect();
    files::select(&m.id, &names).err().map(|e| e.to_string())
}

fn candidate(m: &HubModel) -> Candidate {
    let gated = match &m.gated {
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Bool(b)) => *b,
        _ => false,
    };
    Candidate { repo: m.id.clone(), downloads: m.downloads.unwrap_or(0), gated, problem: problem(m) }
}

/// Chooses among search `results` for `name`; `suffix` (`-4bit`, or empty) is what the
/// user added to the name, for the pull lines in errors.
pub fn choose(name: &str, suffix: &str, results: &[HubModel], endpoint: &str) -> Result<Found, StoreError> {
    let exact: Vec<Candidate> =
        results.iter().filter(|m| name_for_repo(&m.id).eq_ignore_ascii_case(name)).map(candidate).collect();
    let mut servable: Vec<&Candidate> = exact.iter().filter(|c| c.problem.is_none()).collect();
    servable.sort_by(|a, b| b.downloads.cmp(&a.downloads).then_with(|| a.repo.cmp(&b.repo)));
    let found = |c: &Candidate| Found { chosen: c.clone(), servable: servable.len(), endpoint: endpoint.to_owned() };
    match servable.as_slice() {
        [] if exact.is_empty() => Err(StoreError::NotFound(format!(
            "no model named `{name}` is installed, an alias, or a repo on {endpoint}: its model search \
             (GET {endpoint}/api/models?search={name}&sort=downloads) found {} repos, none named exactly {name}. \
             Name the repo as OWNER/NAME, or add an alias in config.yaml (models.aliases)",
            results.len()
        ))),
        [] => Err(StoreError::Refused(format!(
            "the repos named `{name}` on {endpoint} cannot be served: {}",
            exact.iter().map(|c| format!("{} ({})", c.repo, c.problem.as_deref().unwrap_or(""))).collect::<Vec<_>>().join("; ")
        ))),
        [only] => Ok(found(only)),
        [top, next, ..] if top.downloads > 0 && top.downloads >= DOMINANCE.saturating_mul(next.downloads) => Ok(found(top)),
        all => Err(StoreError::Ambiguous(format!(
            "`{name}{suffix}` is ambiguous: {} repos on {endpoint} are named {name}, none with {DOMINANCE}x the downloads \
             of the others; choose one: {}",
            all.len(),
            all.iter()
                .map(|c| format!("`mlx-serve pull {}{suffix}` ({} downloads{})", c.repo, c.downloads, if c.gated { ", gated" } else { "" }))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Searches the Hub for repos named `name` and chooses one (see the module docs).
pub async fn search(name: &str, suffix: &str) -> Result<Found, StoreError> {
    // The URL requested carries any credentials; what messages and the store's memory of
    // the search name does not.
    let url = format!("{}/api/models", hub_api::endpoint());
    let endpoint = hub_api::shown_endpoint();
    let api = hub_api::api()?;
    let what = format!("searching for `{name}`");
    let query = [
        ("search", name),
        ("sort", "downloads"),
        ("limit", LIMIT),
        ("expand", "downloads"),
        ("expand", "gated"),
        ("expand", "config"),
        ("expand", "siblings"),
    ];
    let resp = hub_api::get(&api, &url, &query, &what).await?;
    let status = resp.status().as_u16();
    if status >= 400 {
        // 401: a token the Hub does not accept (the search itself needs none).
        let hint = if status == 401 { "; check HF_TOKEN" } else { "" };
        return Err(StoreError::Failed(format!("{what} on {endpoint} failed: HTTP {status}{hint}")));
    }
    let results: Vec<HubModel> = resp.json().await.map_err(|e| {
        StoreError::Failed(format!("{what} on {endpoint}: unexpected answer: {}", hub_api::error_chain(&e)))
    })?;
    choose(name, suffix, &results, &endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn model(id: &str, downloads: u64, model_type: &str, files: &[&str]) -> HubModel {
        serde_json::from_value(json!({
            "id": id,
            "downloads": downloads,
            "gated": false,
            "config": {"architectures": ["X"], "model_type": model_type},
            "siblings": files.iter().map(|f| json!({"rfilename": f})).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    const OK: &[&str] = &["config.json", "model.safetensors", "tokenizer.json"];

    #[test]
    fn the_most_downloaded_servable_repo_of_that_exact_name_wins() {
        let results = vec![
            model("big/thing", 9_000_000, "gpt2", OK), // unsupported architecture
            model("popular/thing", 5000, "bert", OK),
            model("popular/thing-onnx", 90_000, "bert", OK), // another name
            model("copy/Thing", 12, "bert", OK),
            model("pickled/thing", 400, "bert", &["config.json", "pytorch_model.bin"]),
        ];
        let f = choose("thing", "", &results, "E").unwrap();
        assert_eq!((f.chosen.repo.as_str(), f.chosen.downloads, f.servable), ("popular/thing", 5000, 2));
    }

    #[test]
    fn close_download_counts_are_ambiguous() {
        let results = vec![model("a/twin", 900, "bert", OK), model("b/twin", 200, "xlm-roberta", OK)];
        let StoreError::Ambiguous(msg) = choose("twin", "-4bit", &results, "E").unwrap_err() else { panic!() };
        assert!(msg.contains("`mlx-serve pull a/twin-4bit` (900 downloads)"), "{msg}");
        assert!(msg.contains("`mlx-serve pull b/twin-4bit` (200 downloads)"), "{msg}");
        // Two repos nobody downloaded are no choice either.
        let zeros = vec![model("a/z", 0, "bert", OK), model("b/z", 0, "bert", OK)];
        assert!(matches!(choose("z", "", &zeros, "E"), Err(StoreError::Ambiguous(_))));
    }

    #[test]
    fn nothing_servable_says_what_was_found() {
        let StoreError::NotFound(msg) = choose("nope", "", &[model("a/nope-onnx", 1, "bert", OK)], "E").unwrap_err()
        else {
            panic!()
        };
        assert!(msg.contains("search=nope") && msg.contains("found 1 repos, none named exactly nope"), "{msg}");
        let only_bad =
            vec![model("a/gpt", 5, "gpt2", OK), model("b/gpt", 5, "bert", &["config.json", "pytorch_model.bin"])];
        let StoreError::Refused(msg) = choose("gpt", "", &only_bad, "E").unwrap_err() else { panic!() };
        assert!(
            msg.contains("a/gpt (architecture gpt2 is not supported") && msg.contains("only pickle weights"),
            "{msg}"
        );
    }
}
