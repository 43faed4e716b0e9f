//! Model names users may type: store names, Hugging Face repo ids, aliases, and the
//! `-4bit` / `-8bit` quantized variants of any of them.
//!
//! [`resolve`] turns one of those into the store folder it lives in and, when it can be
//! downloaded, the repo it comes from. User aliases (`models.aliases` in config.yaml)
//! override the built-in ones.

use std::collections::BTreeMap;

use super::{name_for_repo, validate_name, StoreError};

/// Built-in aliases: short names for common embedding and reranking models.
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
];

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

/// Resolves `requested` (store name, repo id, alias, or any of them with `-4bit`/`-8bit`).
/// `installed` says whether a store name exists, so an installed model named like an
/// alias wins over the alias.
pub fn resolve(
    requested: &str,
    user: &BTreeMap<String, String>,
    installed: impl Fn(&str) -> bool,
) -> Result<Resolved, StoreError> {
    let requested = requested.trim();
    let aliases = table(user);
    let direct = |req: &str| -> Result<Resolved, StoreError> {
        // An alias target may itself be a store name or a repo id; one level only.
        let target = if installed(req) { req } else { aliases.get(req).map(String::as_str).unwrap_or(req) };
        if is_repo_id(target) {
            return Ok(Resolved { name: name_for_repo(target).to_owned(), repo: Some(target.to_owned()), quantize: None });
        }
        validate_name(target)?;
        Ok(Resolved { name: target.to_owned(), repo: None, quantize: None })
    };
    if installed(requested) {
        return direct(requested);
    }
    for (suffix, bits) in QUANT_SUFFIXES {
        if let Some(base) = requested.strip_suffix(suffix).filter(|b| !b.is_empty()) {
            if installed(base) || aliases.contains_key(base) || is_repo_id(base) {
                let r = direct(base)?;
                return Ok(Resolved { name: format!("{}{suffix}", r.name), repo: r.repo, quantize: Some(*bits) });
            }
        }
    }
    direct(requested)
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
        assert_eq!(resolve("plain", &user, none).unwrap(), Resolved { name: "plain".into(), repo: None, quantize: None });
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
