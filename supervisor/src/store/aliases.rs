//! Model names users may type: store names, Hugging Face repo ids, aliases, and the
//! `-4bit` / `-8bit` quantized variants of any of them.
//!
//! [`resolve`] turns one of those into the store folder it lives in and, when it can be
//! downloaded, the repo it comes from, trying in order: an installed model, an alias, the
//! last part of an alias's repo (`Qwen3-Embedding-0.6B` → `Qwen/Qwen3-Embedding-0.6B`,
//! from `qwen-embedding`), a repo id. User aliases (`models.aliases` in config.yaml)
//! override the built-in ones. A bare name none of these knows is [`NameSource::Unknown`]:
//! `names/` looks for it on the Hub.

use std::collections::BTreeMap;

use super::{name_for_repo, validate_name, StoreError};

/// Built-in aliases: short names for common embedding and reranking models, and the
/// Ollama library's embedding models under their Ollama names, so `ollama pull
/// nomic-embed-text` and `/api/embed` with that name work unchanged. An Ollama name may
/// carry a tag (`all-minilm:33m`): a tagged entry here names that tag's repo, and the tag
/// `latest` (what Ollama clients add) is the name alone. Repos per tag from the Ollama
/// library's model pages (ollama.com/library/NAME, tags and their source models,
/// 2026-12).
pub const BUILTIN: &[(&str, &str)] = &[
    ("qwen-embedding", "Qwen/Qwen3-Embedding-0.6B"),
    ("qwen-reranker", "Qwen/Qwen3-Reranker-0.6B"),
    ("bge-small", "BAAI/bge-small-en-v1.5"),
    ("bge-base", "BAAI/bge-base-en-v1.5"),
    ("bge-large", "BAAI/bge-large-en-v1.5"),
    ("bge-m3", "BAAI/bge-m3"),
    ("bge-reranker", "BAAI/bge-reranker-v2-m3"),
    ("bge-reranker-base", "BAAI/bge-reranker-base"),
    ("minilm", "sentence-transformers/all-MiniLM-L6-v2"),
    ("ms-marco-reranker", "cross-encoder/ms-marco-MiniLM-L6-v2"),
    ("e5-small", "intfloat/multilingual-e5-small"),
    ("e5-base", "intfloat/multilingual-e5-base"),
    ("e5-large", "intfloat/multilingual-e5-large"),
    // One per family (docs/models.md).
    ("nomic-embed", "nomic-ai/nomic-embed-text-v1.5"),
    ("arctic-embed-m-long", "Snowflake/snowflake-arctic-embed-m-long"),
    ("gte-modernbert", "Alibaba-NLP/gte-modernbert-base"),
    ("gte-reranker-modernbert", "Alibaba-NLP/gte-reranker-modernbert-base"),
    ("granite-embedding-r2", "ibm-granite/granite-embedding-english-r2"),
    ("gte-multilingual", "Alibaba-NLP/gte-multilingual-base"),
    ("gte-multilingual-reranker", "Alibaba-NLP/gte-multilingual-reranker-base"),
    ("gte-large", "Alibaba-NLP/gte-large-en-v1.5"),
    ("mpnet", "sentence-transformers/all-mpnet-base-v2"),
    ("multi-qa-mpnet", "sentence-transformers/multi-qa-mpnet-base-dot-v1"),
    ("distilbert", "sentence-transformers/msmarco-distilbert-base-v4"),
    ("gte-qwen2", "Alibaba-NLP/gte-Qwen2-1.5B-instruct"),
    ("mxbai-reranker", "mixedbread-ai/mxbai-rerank-base-v2"),
    ("mxbai-reranker-large", "mixedbread-ai/mxbai-rerank-large-v2"),
    ("labse", "sentence-transformers/LaBSE"),
    // The Ollama library's embedding models.
    ("nomic-embed-text", "nomic-ai/nomic-embed-text-v1.5"),
    ("nomic-embed-text:v1.5", "nomic-ai/nomic-embed-text-v1.5"),
    ("embeddinggemma", "google/embeddinggemma-300m"),
    ("embeddinggemma:300m", "google/embeddinggemma-300m"),
    ("mxbai-embed-large", "mixedbread-ai/mxbai-embed-large-v1"),
    ("mxbai-embed-large:335m", "mixedbread-ai/mxbai-embed-large-v1"),
    ("all-minilm", "sentence-transformers/all-MiniLM-L6-v2"),
    ("all-minilm:22m", "sentence-transformers/all-MiniLM-L6-v2"),
    ("all-minilm:l6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
    ("all-minilm:33m", "sentence-transformers/all-MiniLM-L12-v2"),
    ("all-minilm:l12-v2", "sentence-transformers/all-MiniLM-L12-v2"),
    ("snowflake-arctic-embed", "Snowflake/snowflake-arctic-embed-l"),
    ("snowflake-arctic-embed:22m", "Snowflake/snowflake-arctic-embed-xs"),
    ("snowflake-arctic-embed:33m", "Snowflake/snowflake-arctic-embed-s"),
    ("snowflake-arctic-embed:110m", "Snowflake/snowflake-arctic-embed-m"),
    ("snowflake-arctic-embed:137m", "Snowflake/snowflake-arctic-embed-m-long"),
    ("snowflake-arctic-embed:335m", "Snowflake/snowflake-arctic-embed-l"),
    ("snowflake-arctic-embed2", "Snowflake/snowflake-arctic-embed-l-v2.0"),
    ("snowflake-arctic-embed2:568m", "Snowflake/snowflake-arctic-embed-l-v2.0"),
    ("bge-m3:567m", "BAAI/bge-m3"),
    ("bge-large:335m", "BAAI/bge-large-en-v1.5"),
    ("granite-embedding", "ibm-granite/granite-embedding-30m-english"),
    ("granite-embedding:30m", "ibm-granite/granite-embedding-30m-english"),
    ("granite-embedding:278m", "ibm-granite/granite-embedding-278m-multilingual"),
    ("paraphrase-multilingual", "sentence-transformers/paraphrase-multilingual-mpnet-base-v2"),
    ("paraphrase-multilingual:278m", "sentence-transformers/paraphrase-multilingual-mpnet-base-v2"),
];

/// The tag Ollama clients add to a name without one.
const OLLAMA_DEFAULT_TAG: &str = ":latest";

/// Quantization suffixes that name a variant of another model (`NAME-4bit`).
const QUANT_SUFFIXES: &[(&str, u8)] = &[("-4bit", 4), ("-8bit", 8)];

/// What a requested model name refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Store folder name (validated).
    pub name: String,
    /// Hugging Face repo id it can be pulled from, when known.
    pub repo: Option<String>,
    /// Bits when the name asks for a quantized variant.
    pub quantize: Option<u8>,
    /// What the name (or, for a variant, its base) was found as.
    pub source: NameSource,
}

/// How a name was found, in the order they are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameSource {
    /// A model in the store.
    Installed,
    /// An alias (built in or from config).
    Alias,
    /// The last part of an alias's repo id.
    AliasTarget,
    /// An `owner/name` repo id.
    RepoId,
    /// A remembered Hub search (`names/`).
    Remembered,
    /// A Hub search just now (`names/`).
    Searched,
    /// A bare name nothing local knows.
    Unknown,
}

/// The repo among the alias targets whose last part is `name` (ignoring case, as the Hub
/// does): the user's aliases first, then the built-ins.
pub fn alias_target(name: &str, user: &BTreeMap<String, String>) -> Option<String> {
    let matches = |repo: &&str| is_repo_id(repo) && name_for_repo(repo).eq_ignore_ascii_case(name);
    user.values()
        .map(String::as_str)
        .find(matches)
        .or_else(|| BUILTIN.iter().map(|(_, r)| *r).find(matches))
        .map(str::to_owned)
}

/// Whether `s` looks like a Hugging Face repo id: `owner/name`, both plain components.
pub fn is_repo_id(s: &str) -> bool {
    let mut parts = s.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(owner), Some(name), None) => validate_name(owner).is_ok() && validate_name(name).is_ok(),
        _ => false,
    }
}

/// The alias table: built-ins overridden by the user's aliases.
pub fn table(user: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut t: BTreeMap<String, String> = BUILTIN.iter().map(|(a, r)| (a.to_string(), r.to_string())).collect();
    t.extend(user.iter().map(|(a, r)| (a.clone(), r.clone())));
    t
}

/// Resolves `requested` (store name, repo id, alias, alias repo's last part, or any of them
/// with `-4bit`/`-8bit`). `installed` says whether a store name exists, so an installed
/// model named like an alias wins over the alias.
pub fn resolve(
    requested: &str,
    user: &BTreeMap<String, String>,
    installed: impl Fn(&str) -> bool,
) -> Result<Resolved, StoreError> {
    let requested = requested.trim();
    let requested = requested.strip_suffix(OLLAMA_DEFAULT_TAG).unwrap_or(requested);
    // Built only when a name is not installed: most requests name an installed model.
    let aliases = std::cell::OnceCell::new();
    let aliases = || aliases.get_or_init(|| table(user));
    let repo = |target: &str, source| Resolved {
        name: name_for_repo(target).to_owned(),
        repo: Some(target.to_owned()),
        quantize: None,
        source,
    };
    let direct = |req: &str| -> Result<Resolved, StoreError> {
        // A repo id that is installed is still a repo id (below): its store name is its last part.
        if installed(req) && !is_repo_id(req) {
            validate_name(req)?;
            return Ok(Resolved { name: req.to_owned(), repo: None, quantize: None, source: NameSource::Installed });
        }
        if let Some(target) = aliases().get(req) {
            // An alias target may itself be a store name or a repo id; one level only.
            if is_repo_id(target) {
                return Ok(repo(target, NameSource::Alias));
            }
            validate_name(target)?;
            let source = if installed(target) { NameSource::Installed } else { NameSource::Alias };
            return Ok(Resolved { name: target.clone(), repo: None, quantize: None, source });
        }
        if is_repo_id(req) {
            return Ok(repo(req, NameSource::RepoId));
        }
        validate_name(req)?;
        match alias_target(req, user) {
            Some(target) => Ok(repo(&target, NameSource::AliasTarget)),
            None => Ok(Resolved { name: req.to_owned(), repo: None, quantize: None, source: NameSource::Unknown }),
        }
    };
    if installed(requested) {
        return direct(requested);
    }
    for (suffix, bits) in QUANT_SUFFIXES {
        if let Some(base) = requested.strip_suffix(suffix).filter(|b| !b.is_empty()) {
            let r = direct(base)?;
            if r.source != NameSource::Unknown {
                return Ok(Resolved { name: format!("{}{suffix}", r.name), quantize: Some(*bits), ..r });
            }
        }
    }
    direct(requested)
}

/// `NAME-4bit` → (`NAME`, 4); `None` without a quantization suffix.
pub fn split_variant(name: &str) -> Option<(&str, u8)> {
    QUANT_SUFFIXES
        .iter()
        .find_map(|(suffix, bits)| name.strip_suffix(suffix).filter(|b| !b.is_empty()).map(|b| (b, *bits)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str) -> bool {
        false
    }

    #[test]
    fn names_repos_aliases_and_variants() {
        let user = BTreeMap::from([("mine".to_string(), "acme/mini".to_string()), ("bge-small".into(), "x/y".into())]);
        let r = resolve("qwen-embedding", &user, none).unwrap();
        assert_eq!((r.name.as_str(), r.repo.as_deref()), ("Qwen3-Embedding-0.6B", Some("Qwen/Qwen3-Embedding-0.6B")));
        // User aliases win over built-ins.
        assert_eq!(resolve("bge-small", &user, none).unwrap().repo.as_deref(), Some("x/y"));
        assert_eq!(resolve("mine", &user, none).unwrap().name, "mini");
        let q = resolve("minilm-4bit", &user, none).unwrap();
        assert_eq!((q.name.as_str(), q.quantize), ("all-MiniLM-L6-v2-4bit", Some(4)));
        let q = resolve("BAAI/bge-m3-8bit", &user, none).unwrap();
        assert_eq!((q.name.as_str(), q.repo.as_deref(), q.quantize), ("bge-m3-8bit", Some("BAAI/bge-m3"), Some(8)));
        // Installed names are taken as they are, even when they end in -4bit.
        let r = resolve("local-4bit", &user, |n| n == "local-4bit").unwrap();
        assert_eq!((r.name.as_str(), r.repo, r.quantize), ("local-4bit", None, None));
        // The variant of an installed model without a repo: made from the installed one.
        let r = resolve("local-8bit", &user, |n| n == "local").unwrap();
        assert_eq!((r.name.as_str(), r.repo, r.quantize), ("local-8bit", None, Some(8)));
        let plain = resolve("plain", &user, none).unwrap();
        assert_eq!((plain.name.as_str(), plain.repo, plain.source), ("plain", None, NameSource::Unknown));
        let q = resolve("plain-4bit", &user, none).unwrap();
        assert_eq!((q.name.as_str(), q.quantize, q.source), ("plain-4bit", None, NameSource::Unknown));
        assert_eq!(split_variant("plain-4bit"), Some(("plain", 4)));
        assert_eq!(split_variant("-8bit"), None);
    }

    #[test]
    fn the_last_part_of_an_alias_repo_names_it() {
        let user = BTreeMap::from([("docs".to_string(), "acme/bge-m3".to_string())]);
        let r = resolve("Qwen3-Embedding-0.6B", &BTreeMap::new(), none).unwrap();
        assert_eq!((r.repo.as_deref(), r.source), (Some("Qwen/Qwen3-Embedding-0.6B"), NameSource::AliasTarget));
        // Case as the Hub spells it; the store name follows the repo.
        let r = resolve("qwen3-embedding-0.6b-4bit", &BTreeMap::new(), none).unwrap();
        assert_eq!((r.name.as_str(), r.quantize), ("Qwen3-Embedding-0.6B-4bit", Some(4)));
        // A user alias's repo wins over a built-in one with the same last part; an alias
        // itself wins over both.
        assert_eq!(alias_target("bge-m3", &user).as_deref(), Some("acme/bge-m3"));
        let r = resolve("bge-m3", &user, none).unwrap();
        assert_eq!((r.repo.as_deref(), r.source), (Some("BAAI/bge-m3"), NameSource::Alias));
        // An installed model of that name is used as it is.
        let r = resolve("Qwen3-Embedding-0.6B", &BTreeMap::new(), |n| n == "Qwen3-Embedding-0.6B").unwrap();
        assert_eq!((r.repo, r.source), (None, NameSource::Installed));
    }

    #[test]
    fn ollama_library_names_and_tags() {
        let user = BTreeMap::new();
        for (name, repo) in [
            ("nomic-embed-text", "nomic-ai/nomic-embed-text-v1.5"),
            ("nomic-embed-text:latest", "nomic-ai/nomic-embed-text-v1.5"),
            ("all-minilm:33m", "sentence-transformers/all-MiniLM-L12-v2"),
            ("snowflake-arctic-embed2:latest", "Snowflake/snowflake-arctic-embed-l-v2.0"),
            ("embeddinggemma", "google/embeddinggemma-300m"),
            ("paraphrase-multilingual", "sentence-transformers/paraphrase-multilingual-mpnet-base-v2"),
        ] {
            let r = resolve(name, &user, none).unwrap();
            assert_eq!((r.repo.as_deref(), r.source), (Some(repo), NameSource::Alias), "{name}");
        }
        // The quantized variant of an Ollama name, and an unknown tag.
        let r = resolve("mxbai-embed-large-8bit", &user, none).unwrap();
        assert_eq!((r.name.as_str(), r.quantize), ("mxbai-embed-large-v1-8bit", Some(8)));
        // A tag the table does not know is no alias (a Hub search then says it is not found).
        assert_eq!(resolve("all-minilm:999m", &user, none).unwrap().source, NameSource::Unknown);
    }

    #[test]
    fn bad_names_are_refused() {
        let user = BTreeMap::new();
        for bad in ["../x", "a/../b", "a/b/c", "..", "/etc", ""] {
            assert!(resolve(bad, &user, none).is_err(), "{bad:?}");
        }
        assert!(!is_repo_id("a/.."));
        assert!(is_repo_id("BAAI/bge-m3"));
    }
}
