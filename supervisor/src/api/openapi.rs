//! The machine-readable API: `GET /openapi.json` (OpenAPI 3.1, derived by `utoipa` from the
//! handlers' own request and response types and their `#[utoipa::path]` attributes) and
//! `GET /docs`, a page that renders that document in the browser. The page is one
//! self-contained HTML file compiled into the binary (`docs.html`): nothing is downloaded
//! at build time or when it is viewed.
//!
//! Routes that serve the same handler under another path (`/embeddings`, `/rerank`,
//! `/v2/rerank`, `/late_chunking`, `/score`, `/tokenize`, `/models`, `/models/{id}`) are copied from their primary
//! path with distinct operation ids, so the document lists every route the router has.

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use utoipa::openapi::path::PathItem;
use utoipa::OpenApi;

use super::{
    chunking, cohere, encode, error, health, input, late_chunking, late_request, models, ollama, ollama_pull, openai,
    rerank, score, tei, tei_tokens, tokenize,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "mlx-serve", description = "Local embedding, reranking and classification server on Apple's MLX. \
        OpenAI, Cohere/Jina, TEI and Ollama shapes; see the README's API section."),
    paths(
        openai::embeddings, late_chunking::late_chunking, models::list, models::retrieve, tokenize::tokenize, rerank::rerank, score::score,
        tei::embed, tei_tokens::embed_sparse, tei_tokens::embed_all, tei::similarity, tei::predict, tei::root, tei::info, cohere::embed_v1, cohere::embed_v2,
        ollama::embed, ollama::embeddings_legacy, ollama::tags, ollama::ps, ollama::show, ollama::delete,
        ollama::version, ollama_pull::pull, health::health, health::ready, health::metrics,
        openapi_json, docs,
    ),
    components(schemas(input::EmbeddingInput, input::TextInput, chunking::ChunkingRequest, late_request::LateChunking, encode::Vector, error::ErrorBody)),
    tags(
        (name = "OpenAI", description = "OpenAI embeddings and models"),
        (name = "Rerank", description = "Jina / Cohere / TEI rerank: a reranker, or an embedding model's cosine or bge-m3's weighted dense + sparse + ColBERT scores"),
        (name = "Score", description = "vLLM score: text pairs by a reranker, by embedding cosine, or by bge-m3's weighted scores"),
        (name = "TEI", description = "Text Embeddings Inference"),
        (name = "Cohere", description = "Cohere embed"),
        (name = "Ollama", description = "Ollama-compatible"),
        (name = "mlx-serve", description = "Tokenization and the API's own description"),
        (name = "Operations", description = "Health, readiness, metrics"),
    )
)]
struct ApiDoc;

/// Paths that serve the same handler as another one: (alias, primary).
const ALIASES: &[(&str, &str)] = &[
    ("/embeddings", "/v1/embeddings"),
    ("/late_chunking", "/v1/late_chunking"),
    ("/rerank", "/v1/rerank"),
    ("/v2/rerank", "/v1/rerank"),
    ("/score", "/v1/score"),
    ("/tokenize", "/v1/tokenize"),
    ("/models", "/v1/models"),
    ("/models/{id}", "/v1/models/{id}"),
];

/// The whole document, aliases included.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    for (alias, primary) in ALIASES {
        let Some(item) = doc.paths.paths.get(*primary).cloned() else { continue };
        doc.paths.paths.insert((*alias).to_owned(), renamed(item, alias));
    }
    doc
}

/// A copy of a path item whose operation ids say which path they belong to.
fn renamed(mut item: PathItem, alias: &str) -> PathItem {
    let suffix: String = alias.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    for op in [&mut item.get, &mut item.post, &mut item.delete, &mut item.put].into_iter().flatten() {
        op.operation_id = op.operation_id.take().map(|id| format!("{id}{suffix}"));
    }
    item
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "mlx-serve",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi_json() -> Response {
    let body = document().to_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A browsable rendering of `/openapi.json` (self-contained, no downloads).
#[utoipa::path(get, path = "/docs", tag = "mlx-serve", responses((status = 200, description = "HTML page", content_type = "text/html")))]
pub async fn docs() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_alias_and_operation_id_is_unique() {
        let doc = super::document();
        let json = serde_json::to_value(&doc).unwrap();
        let paths = json["paths"].as_object().unwrap();
        for (alias, _) in super::ALIASES {
            assert!(paths.contains_key(*alias), "{alias} missing");
        }
        let mut ids: Vec<&str> = paths
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .filter_map(|op| op.get("operationId").and_then(|v| v.as_str()))
            .collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "duplicate operationId");
        assert_eq!(json["openapi"], "3.1.0");
    }
}
