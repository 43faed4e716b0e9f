//! API errors in the OpenAI shape: `{"error": {"message", "type", "code", "param"}}`
//! (Ollama routes re-render them as `{"error": "..."}`, `ollama.rs`).
//!
//! Every lower layer's error converts into [`ApiError`] here, and this is the one place
//! that decides its status and code: a resolve failure, a failed download, a job's error.
//!
//! Server-side failures never carry internals to the client: a worker's stderr (MLX
//! aborts, Rust backtraces), file paths, a tokenizer's or quantizer's own words go to the
//! log ([`ApiError::concealed`]); the client gets a short message naming what failed.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::resolve::ResolveError;
use crate::runner::JobError;
use crate::store::StoreError;
use crate::tokenize::TokenizeError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI `type`: invalid_request_error, not_found_error, rate_limit_error, server_error…
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub param: Option<String>,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), kind, code: None, param: None, retry_after: None }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        let mut e = Self::invalid(message);
        e.param = Some(param.to_owned());
        e
    }

    /// A 400 for an output the model does not give (a head it lacks, a dense vector from a
    /// sparse or multi-vector model), with the code `unsupported_output`.
    pub fn unsupported_output(param: &str, message: impl Into<String>) -> Self {
        Self::invalid_param(param, message).with_code("unsupported_output")
    }

    pub fn model_not_found(model: &str) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model `{model}` does not exist. `GET /v1/models` lists installed models; `mlx-serve pull {model}` installs it."),
        );
        e.code = Some("model_not_found");
        e.param = Some("model".into());
        e
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found_error", message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", message);
        e.code = Some("request_too_large");
        e
    }

    pub fn overloaded(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message);
        e.code = Some("overloaded");
        e.retry_after = Some(1);
        e
    }

    pub fn unavailable(message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message);
        e.code = Some("unavailable");
        e.retry_after = Some(retry_after);
        e
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::GATEWAY_TIMEOUT, "server_error", message);
        e.code = Some("timeout");
        e
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// A 500 saying `public`; `detail` (paths, stderr, backtraces) is logged, not sent.
    pub fn concealed(public: impl Into<String>, detail: &str) -> Self {
        let public = public.into();
        tracing::error!("{public}: {detail}");
        ApiError::internal(format!("{public} (the server log has the details)"))
    }
}

impl From<ResolveError> for ApiError {
    fn from(e: ResolveError) -> Self {
        let message = e.to_string();
        match e {
            ResolveError::Missing | ResolveError::WrongKind { .. } => ApiError::invalid_param("model", message),
            ResolveError::InvalidName(_) => ApiError::invalid_param("model", message).with_code("invalid_model_name"),
            ResolveError::NotFound(model) => ApiError::model_not_found(&model),
            ResolveError::Unusable(_) => {
                ApiError::concealed("the model's files cannot be used", &message).with_code("model_unusable")
            }
            ResolveError::Downloading(_) => {
                ApiError::unavailable(message, RETRY_AFTER_DOWNLOAD).with_code("model_downloading")
            }
            ResolveError::DownloadFailed(e) => e.into(),
            ResolveError::RecentlyFailed { error, retry_in } => {
                // The public message of the error (a failed download's own words stay in
                // the log), and when it is tried again.
                let mut err = ApiError::from(error);
                err.message = format!("{} {}", err.message, crate::resolve::retry_note(retry_in));
                err.retry_after = Some(retry_in);
                err
            }
            ResolveError::NotLoaded(_) => ApiError::not_found(message),
            ResolveError::OtherOwner(_) => {
                let mut e = ApiError::invalid_param("model", message).with_code("model_name_taken");
                e.status = StatusCode::CONFLICT;
                e
            }
        }
    }
}

/// Seconds a client is told to wait before asking again for a model being downloaded.
const RETRY_AFTER_DOWNLOAD: u64 = 10;

/// A failed pull (`/api/pull`, auto-download).
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::NotFound(_) => ApiError::not_found(message).with_code("model_not_found"),
            StoreError::Refused(_) | StoreError::InvalidName(_) | StoreError::Invalid(_) => {
                ApiError::invalid_param("model", message).with_code("model_unsupported")
            }
            StoreError::Ambiguous(_) => ApiError::invalid_param("model", message).with_code("model_ambiguous"),
            StoreError::WrongKind { .. } => ApiError::invalid_param("model", message),
            // The Hub refused the server's credentials (HF_TOKEN), not the client's.
            StoreError::Denied(_) => {
                let mut err = ApiError::internal(message).with_code("hub_access_denied");
                err.status = StatusCode::BAD_GATEWAY;
                err
            }
            StoreError::Failed(_) => {
                let mut err = ApiError::concealed("the model could not be downloaded or prepared", &message)
                    .with_code("download_failed");
                err.status = StatusCode::BAD_GATEWAY;
                err
            }
        }
    }
}

/// A worker's reason for a client: its first line, every absolute path cut to its last
/// component (`/home/u/.mlx-serve/models/m/model.safetensors is truncated` ->
/// `model.safetensors is truncated`). The full text is in the server log.
fn without_paths(reason: &str) -> String {
    let first = reason.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("no reason given");
    first
        .split(' ')
        .map(|word| match word.find('/') {
            Some(at) if word[..at].chars().all(|c| "\"'`(".contains(c)) => {
                let tail = word.trim_end_matches(|c: char| ":,;)\"'`.".contains(c));
                let name = tail.rsplit('/').find(|p| !p.is_empty()).unwrap_or("");
                format!("{}{name}{}", &word[..at], &word[tail.len()..])
            }
            _ => word.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        let message = e.to_string();
        match e {
            JobError::Invalid(_) => ApiError::invalid(message),
            JobError::WorkerFailed { model, .. } => {
                ApiError::concealed(format!("model {model} failed on this input"), &message)
            }
            // The runner logged the worker's death with its last words; the reason is
            // what the worker printed, so it stays there.
            JobError::Poisoned { index, .. } => ApiError::internal(format!(
                "input {index} was being processed when the model worker crashed twice; it was not retried again \
                 (the server log has the worker's last words)"
            )),
            JobError::LoadFailed { model, reason } => ApiError::unavailable(
                format!("model {model} failed to load: {}", without_paths(&reason.to_string())),
                5,
            ),
            JobError::Unavailable { .. } | JobError::ShuttingDown => ApiError::unavailable(message, 5),
            JobError::Overloaded { .. } => ApiError::overloaded(message),
        }
    }
}

impl ApiError {
    /// A tokenizer error for the inputs in `param`.
    pub fn tokenize(e: TokenizeError, param: &str) -> Self {
        match e {
            TokenizeError::TooLong { .. } => {
                ApiError::invalid_param(param, e.to_string()).with_code("context_length_exceeded")
            }
            TokenizeError::Empty { .. } => ApiError::invalid_param(param, e.to_string()),
            TokenizeError::EmptyQuery => ApiError::invalid_param("query", e.to_string()),
            TokenizeError::QueryTooLong { .. } => {
                ApiError::invalid_param("query", e.to_string()).with_code("context_length_exceeded")
            }
            TokenizeError::Failed(m) => ApiError::concealed("the tokenizer failed on this input", &m),
            TokenizeError::Load(m) => ApiError::concealed("the model's tokenizer cannot be loaded", &m),
        }
    }
}

/// The OpenAI error shape every non-Ollama, non-TEI, non-Cohere route answers with.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    /// invalid_request_error, not_found_error, rate_limit_error, server_error
    #[serde(rename = "type")]
    pub kind: String,
    pub code: Option<String>,
    pub param: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                message: crate::store::redact::redact(&self.message),
                kind: self.kind.to_owned(),
                code: self.code.map(str::to_owned),
                param: self.param,
            },
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn load_failure_reasons_lose_their_paths() {
        assert_eq!(
            super::without_paths("cannot load model /home/u/.mlx-serve/models/m: /home/u/.mlx-serve/models/m/model.safetensors is truncated\n   0: backtrace"),
            "cannot load model m: model.safetensors is truncated"
        );
        assert_eq!(super::without_paths("bad `/x/y/config.json`."), "bad `config.json`.");
    }
}
