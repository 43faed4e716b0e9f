//! Each request's place in the batcher's queue (`batch/order.rs`): its priority and its
//! client, read once around every route and held for the handler in a task-local.
//!
//! Priority, lower runs first (vLLM's meaning), from the first of: the body's `priority`
//! (OpenAI, Cohere and rerank routes), the `X-Priority` header (every route), the API
//! key's default (`scheduling.key_priorities`), `scheduling.default_priority`. Values are
//! taken in -1000..1000; anything else is a 400 naming the field or header.
//!
//! The client is a digest of the `Authorization: Bearer` token, or without one of the
//! connection's remote address (so machines behind one server take turns; every local
//! process shares 127.0.0.1): clients take turns within a priority, and one client's
//! requests take turns among themselves.

use std::cell::Cell;
use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;
use ring::digest::{digest, SHA256};

use super::peer::Peer;
use super::{error_for_route, ApiError, SharedState};
use crate::config::{Config, PRIORITY_RANGE};
use crate::runner::JobClass;

/// The header that sets a request's priority on any route.
pub const PRIORITY_HEADER: &str = "x-priority";

tokio::task_local! {
    static CLASS: Cell<JobClass>;
}

/// The bearer token, when the request carries one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

fn in_range(p: i64, what: &str) -> Result<i32, ApiError> {
    if PRIORITY_RANGE.contains(&p) {
        Ok(p as i32)
    } else {
        Err(ApiError::invalid_param(
            "priority",
            format!(
                "{what} must be an integer from {} to {} (lower runs first), got {p}",
                PRIORITY_RANGE.start(),
                PRIORITY_RANGE.end()
            ),
        ))
    }
}

/// A client id from bytes that name it (never 0, the id of a request without a peer).
fn client_id(bytes: &[u8]) -> u64 {
    let d = digest(&SHA256, bytes);
    u64::from_le_bytes(d.as_ref()[..8].try_into().expect("8 bytes")).max(1)
}

/// The class of a request from its headers, the address it came from and the config.
pub fn class_of(headers: &HeaderMap, from: Option<IpAddr>, config: &Config) -> Result<JobClass, ApiError> {
    let token = bearer(headers);
    let client = match (token, from) {
        (Some(t), _) => client_id(t.as_bytes()),
        (None, Some(ip)) => client_id(ip.to_string().as_bytes()),
        (None, None) => 0,
    };
    let header = match headers.get(PRIORITY_HEADER) {
        Some(v) => {
            let text = v.to_str().unwrap_or("").trim();
            let p = text.parse::<i64>().map_err(|_| {
                ApiError::invalid_param(
                    "priority",
                    format!("the X-Priority header must be an integer (lower runs first), got {text:?}"),
                )
            })?;
            Some(in_range(p, "the X-Priority header")?)
        }
        None => None,
    };
    let key_default =
        token.and_then(|t| config.scheduling.key_priorities.iter().find(|k| k.key.0 == t).map(|k| k.priority));
    let priority = header.or(key_default).unwrap_or(config.scheduling.default_priority);
    Ok(JobClass { priority, client })
}

/// The middleware: classifies the request and runs the handler with its class at hand.
pub async fn classify(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let from = req.extensions().get::<Peer>().map(|p| p.remote.ip());
    match class_of(req.headers(), from, &state.config) {
        Ok(class) => CLASS.scope(Cell::new(class), next.run(req)).await,
        Err(e) => error_for_route(req.uri().path(), e),
    }
}

/// The body's `priority`, which wins over the header and the key's default.
pub fn set_from_body(priority: Option<i64>) -> Result<(), ApiError> {
    if let Some(p) = priority {
        let p = in_range(p, "`priority`")?;
        let _ = CLASS.try_with(|c| c.set(JobClass { priority: p, ..c.get() }));
    }
    Ok(())
}

/// The current request's class (the default outside a request).
pub fn current() -> JobClass {
    CLASS.try_with(Cell::get).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ApiKey, KeyPriority};
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn header_then_key_default_then_config_default() {
        let mut config = Config::default();
        config.scheduling.default_priority = 3;
        config.scheduling.key_priorities = vec![KeyPriority { key: ApiKey("ingest".into()), priority: 10 }];
        assert_eq!(class_of(&headers(&[]), None, &config).unwrap(), JobClass { priority: 3, client: 0 });
        let ingest = class_of(&headers(&[("authorization", "Bearer ingest")]), None, &config).unwrap();
        assert_eq!(ingest.priority, 10);
        assert_ne!(ingest.client, 0);
        let other = class_of(&headers(&[("authorization", "Bearer other")]), None, &config).unwrap();
        assert_eq!(other.priority, 3);
        assert_ne!(other.client, ingest.client, "clients are told apart by their key");
        let a = class_of(&headers(&[]), Some([10, 0, 0, 1].into()), &config).unwrap();
        let b = class_of(&headers(&[]), Some([10, 0, 0, 2].into()), &config).unwrap();
        assert!(a.client != 0 && a.client != b.client, "and without one by their address");
        let keyed = class_of(&headers(&[("authorization", "Bearer ingest")]), Some([10, 0, 0, 1].into()), &config);
        assert_eq!(keyed.unwrap().client, ingest.client, "the key wins over the address");
        let h = headers(&[("authorization", "Bearer ingest"), ("x-priority", "-2")]);
        assert_eq!(class_of(&h, None, &config).unwrap().priority, -2);
    }

    #[test]
    fn bad_headers_are_refused() {
        let config = Config::default();
        for bad in ["high", "1.5", "5000", ""] {
            let e = class_of(&headers(&[("x-priority", bad)]), None, &config).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
