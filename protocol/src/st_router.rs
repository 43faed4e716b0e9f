//! opensearch's inference-free sparse encoders: a sentence-transformers `Router` as the only
//! module (sentence_transformers/base/modules/router.py, 6.2), whose `router_config.json`
//! is what `Router.save` writes:
//!
//! ```json
//! {"types": {"query_0_SparseStaticEmbedding": "sentence_transformers.….SparseStaticEmbedding",
//!            "": "sentence_transformers.….MLMTransformer",
//!            "document_1_SpladePooling": "sentence_transformers.….SpladePooling"},
//!  "structure": {"query": ["query_0_SparseStaticEmbedding"], "document": ["", "document_1_SpladePooling"]},
//!  "parameters": {"default_route": "document", "allow_empty_key": true, "route_mappings": {}}}
//! ```
//!
//! `types` maps a module id — its folder, loaded as `subfolder=<id>` — to its class;
//! `structure` lists each route's modules, applied in order. `encode_query` takes the
//! "query" route, `encode_document` the "document" route, and a plain `encode` the
//! `default_route` (with `allow_empty_key` and no default, the first route; with neither,
//! an error).
//!
//! What is computed, and so all that is accepted:
//! - query: one `SparseStaticEmbedding` (sparse_encoder/modules/sparse_static_embedding.py):
//!   its own tokenizer without special tokens, truncated at that tokenizer's
//!   `model_max_length`, and for each distinct id of the text the module's weight for it
//!   (`weight` in its `model.safetensors`, one per vocabulary id): a repeated token counts
//!   once. The supervisor computes it (`supervisor/src/tokenize/static_query.rs`).
//! - document: an MLM `Transformer` at the model's root (module id `""`: the root folder,
//!   where the published opensearch repositories keep `config.json`, `model.safetensors`
//!   and the tokenizer) and `SpladePooling`: the SPLADE head the worker already runs.
//!
//! Anything else — another module or class in a route, a route other than query/document,
//! `route_mappings`, an unknown key, a SparseStaticEmbedding loading a JSON idf file — is
//! refused by name.

use std::path::Path;

use serde_json::{Map, Value};

use crate::json_file::{get_u32, read_json};
use crate::model_files;
use crate::splade::{self, Splade};
use crate::st_pipeline::PipelineError;

/// A route of the Router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Query,
    Document,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Query => "query",
            Route::Document => "document",
        }
    }
}

/// The query route's `SparseStaticEmbedding`, and which route a request that does not say
/// takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticQuery {
    /// The module's folder (`query_0_SparseStaticEmbedding`): its tokenizer files,
    /// `config.json` and `model.safetensors`.
    pub path: String,
    /// Its tokenizer's `model_max_length`: queries are cut to this many tokens.
    pub max_length: u32,
    /// `encode`'s route without a task: `default_route`, or `None` when the Router has
    /// none (a request must then say which side it is).
    pub default_route: Option<Route>,
}

/// What a Router model computes: the static query side and the SPLADE document side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterModel {
    pub query: StaticQuery,
    pub splade: Splade,
}

fn refused(what: String) -> PipelineError {
    PipelineError::Refused(format!("Router: {what}"))
}

/// A module folder name: plain, inside the model folder (never `..`).
fn plain(id: &str) -> bool {
    !id.is_empty() && !id.starts_with('.') && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

/// The class name of a sentence-transformers module type; custom code is refused.
fn st_class<'a>(id: &str, ty: &'a str) -> Result<&'a str, PipelineError> {
    if !ty.starts_with("sentence_transformers.") {
        return Err(refused(format!("module {id:?} is {ty:?}, custom code, not a sentence_transformers module")));
    }
    Ok(ty.rsplit('.').next().unwrap_or(""))
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, PipelineError> {
    v.as_object().ok_or_else(|| refused(format!("router_config.json: {what} is not a JSON object")))
}

/// The route ids of `structure[name]`.
fn route<'a>(structure: &'a Map<String, Value>, name: &str) -> Result<Vec<&'a str>, PipelineError> {
    let list = structure
        .get(name)
        .ok_or_else(|| refused(format!("router_config.json has no {name:?} route (query and document are needed)")))?;
    list.as_array()
        .and_then(|l| l.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
        .ok_or_else(|| refused(format!("route {name:?} is not a list of module ids")))
}

/// The Router model in `dir` (its `modules.json` holds the Router alone, at the root).
pub fn read(dir: &Path) -> Result<RouterModel, PipelineError> {
    let Some(config) = read_json(dir, "router_config.json")? else {
        return Err(refused("router_config.json is missing".into()));
    };
    let config = object(&config, "the file")?;
    if let Some(key) = config.keys().find(|k| !["types", "structure", "parameters"].contains(&k.as_str())) {
        return Err(refused(format!("router_config.json: key {key:?} is not supported")));
    }
    let types = object(config.get("types").unwrap_or(&Value::Null), "types")?;
    let structure = object(config.get("structure").unwrap_or(&Value::Null), "structure")?;
    if let Some(name) = structure.keys().find(|k| !["query", "document"].contains(&k.as_str())) {
        return Err(refused(format!("route {name:?} is not supported (only query and document routes are)")));
    }
    let type_of = |id: &str| -> Result<&str, PipelineError> {
        types
            .get(id)
            .and_then(Value::as_str)
            .ok_or_else(|| refused(format!("module {id:?} of a route has no type in router_config.json")))
    };

    let query = route(structure, "query")?;
    let [query_id] = query.as_slice() else {
        return Err(refused(format!(
            "the query route has {} modules {query:?}; only one SparseStaticEmbedding is supported",
            query.len()
        )));
    };
    let class = st_class(query_id, type_of(query_id)?)?;
    if class != "SparseStaticEmbedding" || !plain(query_id) {
        return Err(refused(format!(
            "query module {class} ({query_id:?}) is not supported (a SparseStaticEmbedding in its folder is)"
        )));
    }

    let document = route(structure, "document")?;
    let [transformer, pooling] = document.as_slice() else {
        return Err(refused(format!(
            "the document route {document:?} is not supported (an MLM Transformer, then SpladePooling, is)"
        )));
    };
    let class = st_class(transformer, type_of(transformer)?)?;
    if !["Transformer", "MLMTransformer"].contains(&class) {
        return Err(refused(format!("document module {class} ({transformer:?}) is not supported (a Transformer is)")));
    }
    if !transformer.is_empty() {
        return Err(refused(format!(
            "the document route's {class} in the subfolder {transformer:?} is not supported; only a Transformer at \
             the model's root (module id \"\"), as the published opensearch models keep it"
        )));
    }
    if class != "MLMTransformer" && !splade::transformer_task_is_fill_mask(dir)? {
        return Err(refused(format!(
            "the document route's Transformer gives hidden states, not MLM logits (no transformer_task \
             \"fill-mask\"), so {pooling:?} cannot pool it"
        )));
    }
    let class = st_class(pooling, type_of(pooling)?)?;
    if class != "SpladePooling" || !plain(pooling) {
        return Err(refused(format!("document module {class} ({pooling:?}) is not supported (SpladePooling is)")));
    }
    let splade = splade::read_pooling(dir, pooling)?;
    if let Some(k) = splade.max_active_dims {
        // It would trim the query side's weights too (SparseEncoder.encode), by magnitude.
        return Err(refused(format!("max_active_dims {k} on an inference-free model is not supported")));
    }
    let used = [*query_id, *transformer, *pooling];
    if let Some(id) = types.keys().find(|id| !used.contains(&id.as_str())) {
        return Err(refused(format!("module {id:?} is in no route")));
    }

    check_prompts(dir)?;
    let default_route = read_parameters(config.get("parameters"))?;
    let max_length = read_static_embedding(dir, query_id)?;
    Ok(RouterModel { query: StaticQuery { path: (*query_id).to_owned(), max_length, default_route }, splade })
}

/// `encode_query` / `encode_document` prepend the model's "query" / "document" prompt when
/// it has one (SparseEncoder.encode_query): only empty prompts, which change nothing, are
/// accepted (the published models ship `{"query": "", "document": ""}`).
fn check_prompts(dir: &Path) -> Result<(), PipelineError> {
    let Some(c) = read_json(dir, "config_sentence_transformers.json")? else { return Ok(()) };
    if let Some(Value::Object(prompts)) = c.get("prompts") {
        if let Some((name, _)) = prompts.iter().find(|(_, p)| p.as_str() != Some("")) {
            return Err(refused(format!("prompt {name:?} in config_sentence_transformers.json is not supported")));
        }
    }
    match c.get("default_prompt_name") {
        None | Some(Value::Null) => Ok(()),
        Some(v) => Err(refused(format!("default_prompt_name {v} is not supported"))),
    }
}

/// `parameters`: the default route; `route_mappings` must be empty.
fn read_parameters(parameters: Option<&Value>) -> Result<Option<Route>, PipelineError> {
    let empty = Map::new();
    let parameters = match parameters {
        None => &empty,
        Some(p) => object(p, "parameters")?,
    };
    let mut default_route = None;
    // Router.__init__'s defaults.
    let mut allow_empty_key = true;
    for (key, v) in parameters {
        match (key.as_str(), v) {
            ("default_route", Value::Null) => {}
            ("default_route", Value::String(s)) if s == "query" => default_route = Some(Route::Query),
            ("default_route", Value::String(s)) if s == "document" => default_route = Some(Route::Document),
            ("allow_empty_key", Value::Bool(b)) => allow_empty_key = *b,
            ("route_mappings", Value::Null) => {}
            ("route_mappings", Value::Object(m)) if m.is_empty() => {}
            _ => return Err(refused(format!("parameters: {key} {v} is not supported"))),
        }
    }
    if default_route.is_none() && allow_empty_key {
        // The first route in the file's order: serde_json here does not keep it.
        return Err(refused(
            "parameters: allow_empty_key without a default_route (the first route in the file's order) is not \
             supported; set default_route"
                .into(),
        ));
    }
    Ok(default_route)
}

/// The SparseStaticEmbedding's `config.json` (only `frozen`, which only training reads)
/// and its tokenizer's length limit.
fn read_static_embedding(dir: &Path, path: &str) -> Result<u32, PipelineError> {
    let config = read_json(dir, &format!("{path}/config.json"))?.unwrap_or(Value::Object(Map::new()));
    for (key, v) in object(&config, &format!("{path}/config.json"))? {
        match (key.as_str(), v) {
            ("frozen", Value::Bool(_)) => {}
            ("path", _) => {
                return Err(refused(format!(
                    "SparseStaticEmbedding ({path}): weights from a JSON file (`path` {v}) are not supported; its \
                     model.safetensors is"
                )))
            }
            _ => {
                return Err(refused(format!("SparseStaticEmbedding ({path}): config key {key:?} {v} is not supported")))
            }
        }
    }
    let limit = read_json(dir, &format!("{path}/tokenizer_config.json"))?
        .and_then(|c| get_u32(&c, "model_max_length"))
        .filter(|&n| n > 0 && n < 1_000_000);
    limit.ok_or_else(|| {
        refused(format!(
            "SparseStaticEmbedding ({path}): its tokenizer_config.json sets no model_max_length (queries would not be \
             truncated); not supported"
        ))
    })
}

/// The query weights, one per vocabulary id: `weight` in `<path>/model.safetensors`, F32,
/// `vocab` long (the document side's vocabulary, so both sides index the same ids).
pub fn read_weights(dir: &Path, query: &StaticQuery, vocab: u32) -> Result<Vec<f32>, PipelineError> {
    let file = format!("{}/model.safetensors", query.path);
    let bad = |what: String| refused(format!("SparseStaticEmbedding weights {file}: {what}"));
    let path = dir.join(&file);
    if !path.is_file() {
        return Err(bad("missing (only safetensors are read)".into()));
    }
    // Errors name the file as the folder spells it, never the server's path.
    let header =
        model_files::read_header(&path).map_err(|e| bad(e.to_string().replace(&*path.to_string_lossy(), "")))?;
    let [t] = header.tensors.as_slice() else {
        let names: Vec<&str> = header.tensors.iter().map(|t| t.name.as_str()).collect();
        return Err(bad(format!("holds {names:?}; one tensor `weight` is expected")));
    };
    if t.name != "weight" || t.dtype != "F32" || t.shape != [vocab as u64] {
        return Err(bad(format!(
            "tensor {} is {} {:?}; `weight` F32 [{vocab}] (the vocabulary) is expected",
            t.name, t.dtype, t.shape
        )));
    }
    let bytes = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
    let start = bytes.len() - header.data_len as usize + t.start as usize;
    let weights: Vec<f32> = bytes[start..start + (t.end - t.start) as usize]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if let Some(i) = weights.iter().position(|w| !w.is_finite()) {
        return Err(bad(format!("the weight of id {i} is {}", weights[i])));
    }
    Ok(weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/tiny-bert-opensearch-sparse")
    }

    #[test]
    fn the_fixture_reads_as_sentence_transformers_saved_it() {
        let r = read(&fixture()).unwrap();
        assert_eq!(r.query.path, "query_0_SparseStaticEmbedding");
        assert_eq!((r.query.max_length, r.query.default_route), (64, Some(Route::Document)));
        assert_eq!(r.splade.activation, splade::SpladeActivation::Log1pRelu);
        let w = read_weights(&fixture(), &r.query, 1000).unwrap();
        assert_eq!((w.len(), w[0]), (1000, 0.0), "[PAD] has no weight");
        let err = read_weights(&fixture(), &r.query, 999).unwrap_err().to_string();
        assert!(err.contains("F32 [999]"), "{err}");
    }

    #[test]
    fn parameters_follow_router_init() {
        let p = |v: Value| read_parameters(Some(&v)).map_err(|e| e.to_string());
        assert_eq!(p(serde_json::json!({"default_route": "query"})).unwrap(), Some(Route::Query));
        assert_eq!(p(serde_json::json!({"default_route": null, "allow_empty_key": false})).unwrap(), None);
        assert!(p(serde_json::json!({})).unwrap_err().contains("allow_empty_key"));
        assert!(p(serde_json::json!({"default_route": "image"})).unwrap_err().contains("default_route"));
        assert!(p(serde_json::json!({"other": 1})).unwrap_err().contains("other"));
    }
}
