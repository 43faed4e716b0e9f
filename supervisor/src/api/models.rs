//! `GET /v1/models` (installed models: the store, their type and whether a worker is
//! loaded) and `GET /v1/models/{id}` (OpenAI `models.retrieve`; ids such as `BAAI/bge-m3`
//! contain a slash, so the route takes the rest of the path, and aliases resolve).

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, SharedState};
use crate::store::InstalledModel;

/// An OpenAI model object with mlx-serve's facts about it.
#[derive(Serialize, ToSchema)]
pub struct Model {
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    pub loaded: bool,
    pub size_bytes: u64,
    /// `embedding` or `reranker`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pooling: Option<&'static str>,
    /// Embedding models: the vector length.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    /// The model's named prompts (`prompt_name` values).
    pub prompts: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_prompt_name: Option<String>,
    /// Why the model cannot be used, when its files are not servable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<Model>,
    /// Not an OpenAI field: downloads in flight (auto-download, /api/pull).
    #[schema(value_type = Vec<Object>)]
    pub downloads: Vec<serde_json::Value>,
}

fn model_object(m: &InstalledModel, loaded: bool) -> Model {
    let prompts = crate::tokenize::Prompts::load(&m.path);
    let mut out = Model {
        id: m.name.clone(),
        object: "model",
        created: m.modified,
        owned_by: "mlx-serve",
        loaded,
        size_bytes: m.size_bytes,
        r#type: None,
        architecture: None,
        max_tokens: None,
        pooling: None,
        dimensions: None,
        prompts: prompts.names(),
        default_prompt_name: prompts.default_prompt_name,
        error: None,
    };
    match &m.facts {
        Ok(f) => {
            out.r#type = Some(f.kind.as_str());
            out.architecture = Some(f.architecture.clone());
            out.max_tokens = Some(f.max_tokens);
            out.pooling = Some(f.pooling.as_str());
            if f.kind == mlx_serve_protocol::ModelKind::Embedding {
                // The last Dense module's width, or for a SPLADE model the vocabulary's size.
                out.dimensions = Some(f.output_dim);
            }
        }
        Err(e) => out.error = Some(e.clone()),
    }
    out
}

fn loaded(state: &SharedState) -> HashMap<String, bool> {
    state.pool.entries().iter().map(|e| (e.name.clone(), e.runner.is_loaded())).collect()
}

/// List installed models (OpenAI).
#[utoipa::path(get, path = "/v1/models", tag = "OpenAI", responses((status = 200, body = ModelList, description = "success")))]
pub async fn list(State(state): State<SharedState>) -> Json<ModelList> {
    let loaded = loaded(&state);
    let data = state
        .pool
        .store()
        .list()
        .iter()
        .map(|m| model_object(m, loaded.get(&m.name).copied().unwrap_or(false)))
        .collect();
    let downloads = state.downloads.list().iter().map(|d| d.to_json()).collect();
    Json(ModelList { object: "list", data, downloads })
}

/// Retrieve one installed model (OpenAI `models.retrieve`); the id may contain `/`.
#[utoipa::path(get, path = "/v1/models/{id}", tag = "OpenAI",
    params(("id" = String, Path, description = "store name, repo id (`BAAI/bge-m3`) or alias")),
    responses((status = 200, body = Model, description = "success"), (status = 404, body = super::error::ErrorBody, description = "not found")))]
pub async fn retrieve(State(state): State<SharedState>, Path(id): Path<String>) -> Result<Json<Model>, ApiError> {
    let target = state.resolver().resolve_name(&id)?;
    let m = state.pool.store().installed(&target.name).ok_or_else(|| ApiError::model_not_found(&id))?;
    let is_loaded = loaded(&state).get(&m.name).copied().unwrap_or(false);
    let mut model = model_object(&m, is_loaded);
    // The id the client asked for, as OpenAI echoes it (an alias stays an alias).
    model.id = id;
    Ok(Json(model))
}
