//! The optional API key (`server.api_key`): when set, every route but `/health` and
//! `/ready` needs `Authorization: Bearer <key>` — what the OpenAI and Cohere clients send
//! for their `api_key`, and what TEI's and Infinity's `--api-key` check. `/metrics` needs
//! it too unless `metrics.require_api_key` is false.
//!
//! The comparison is of SHA-256 digests, in constant time (`subtle`), so neither the
//! key's bytes nor its length leak through response timing. A refusal is a 401 with
//! `WWW-Authenticate: Bearer` in the route's own error shape, before the body is read.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use ring::digest::{digest, SHA256};
use subtle::ConstantTimeEq;

use super::{error_for_route, ApiError, SharedState};

/// Routes that never need the key: health checks (load balancers, launchd, `start`).
const OPEN_ROUTES: [&str; 2] = ["/health", "/ready"];

/// The configured key, kept as its digest.
pub struct ApiKeyCheck {
    digest: [u8; 32],
    metrics_open: bool,
}

impl ApiKeyCheck {
    pub fn new(key: &str, require_for_metrics: bool) -> ApiKeyCheck {
        ApiKeyCheck { digest: sha256(key.as_bytes()), metrics_open: !require_for_metrics }
    }

    fn is_open(&self, path: &str) -> bool {
        // Every route also answers with a trailing slash (`api/mod.rs`).
        let path = if path.len() > 1 { path.strip_suffix('/').unwrap_or(path) } else { path };
        OPEN_ROUTES.contains(&path) || (self.metrics_open && path == "/metrics")
    }

    /// Whether the request carries the key; `Err` says what is wrong, for the 401.
    fn check(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err("this server needs an API key: send `Authorization: Bearer <key>` (the clients' api_key)");
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or("the Authorization header must be `Bearer <key>`")?;
        if bool::from(sha256(token.as_bytes()).ct_eq(&self.digest)) {
            Ok(())
        } else {
            Err("incorrect API key")
        }
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// The middleware: passes open routes and requests with the key, answers 401 otherwise.
pub async fn require_key(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let Some(check) = &state.api_key else { return next.run(req).await };
    if check.is_open(req.uri().path()) {
        return next.run(req).await;
    }
    match check.check(req.headers()) {
        Ok(()) => next.run(req).await,
        Err(why) => {
            let mut e = ApiError::invalid(why).with_code("invalid_api_key");
            e.status = StatusCode::UNAUTHORIZED;
            let mut resp = error_for_route(req.uri().path(), e);
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn only_the_bearer_key_passes() {
        let check = ApiKeyCheck::new("k-123", true);
        assert!(check.check(&headers("Bearer k-123")).is_ok());
        assert!(check.check(&headers("bearer k-123")).is_ok());
        assert!(check.check(&headers("Bearer k-1234")).is_err());
        assert!(check.check(&headers("Bearer k-12")).is_err());
        assert!(check.check(&headers("Basic k-123")).is_err());
        assert!(check.check(&headers("k-123")).is_err());
        assert!(check.check(&HeaderMap::new()).is_err());
    }

    #[test]
    fn health_is_open_and_metrics_as_configured() {
        let strict = ApiKeyCheck::new("k", true);
        assert!(strict.is_open("/health") && strict.is_open("/ready") && !strict.is_open("/metrics"));
        assert!(strict.is_open("/health/") && !strict.is_open("/health//") && !strict.is_open("/healthz"));
        assert!(!strict.is_open("/") && !strict.is_open("/docs") && !strict.is_open("/openapi.json"));
        assert!(!strict.is_open("/v1/embeddings") && !strict.is_open("/api/pull"));
        assert!(ApiKeyCheck::new("k", false).is_open("/metrics"));
    }
}
