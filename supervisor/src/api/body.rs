//! Reading a request body as JSON, with every failure (too large, unreadable, empty, not
//! JSON, wrong shape) as an OpenAI-shaped 4xx.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use serde::de::DeserializeOwned;

use super::ApiError;

/// Parses a JSON body, mapping every failure to an OpenAI-shaped error.
pub fn parse_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large("request body exceeds limits.max_request_bytes")
        } else {
            ApiError::invalid(format!("cannot read request body: {e}"))
        }
    })?;
    if bytes.is_empty() {
        return Err(ApiError::invalid("request body is empty; send a JSON object"));
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}
