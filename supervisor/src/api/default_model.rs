//! The model a request means when it names none, for the APIs whose servers serve one model
//! (TEI's routes, Cohere v1 embed, TEI-shaped rerank): the only installed model of the
//! right type. With none or several installed, a 400 that lists them and asks for `model`.

use mlx_serve_protocol::ModelKind;

use super::{ApiError, AppState};

/// `requested` when given, else the only installed model of `kind`.
pub fn model_or_only(state: &AppState, requested: Option<String>, kind: ModelKind) -> Result<String, ApiError> {
    if let Some(m) = requested.filter(|m| !m.is_empty()) {
        return Ok(m);
    }
    let mut names: Vec<String> = state
        .pool
        .store()
        .facts()
        .into_iter()
        .filter(|(_, facts)| facts.as_ref().is_ok_and(|f| f.kind == kind))
        .map(|(name, _)| name)
        .collect();
    names.sort();
    let what = match kind {
        ModelKind::Embedding => "embedding model",
        ModelKind::Reranker => "reranker",
        ModelKind::Classifier => "classifier",
    };
    match names.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(ApiError::invalid_param("model", format!("`model` is required (no {what} is installed)"))),
        _ => Err(ApiError::invalid_param(
            "model",
            format!("`model` is required: {} {what}s are installed ({})", names.len(), names.join(", ")),
        )),
    }
}
