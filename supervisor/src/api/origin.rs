//! Which web pages may drive the API from a browser: the `Host` and `Origin` checks, and
//! CORS answers for the origins allowed (docs/security.md has the threat model).
//!
//! - `Host`: while the server listens on loopback, a request must name it by a loopback
//!   name (`localhost`, `*.localhost`: RFC 6761 §6.3 keeps them on loopback), an IP
//!   address, this machine's name, or a name in `server.allowed_hosts`. A page that
//!   rebinds its own DNS name to 127.0.0.1 (DNS rebinding) sends its own name and gets a
//!   403. A server on another address is reached by names it cannot know; there the API
//!   key guards it.
//! - `Origin`: browsers send it on every cross-origin request, `text/plain` "simple"
//!   requests included, which they send without a preflight (Fetch standard, "CORS
//!   protocol"). A request from an origin that is not the server's own, a loopback page,
//!   or in `server.allowed_origins` is refused before it runs. Allowed origins get the
//!   `Access-Control-Allow-*` headers, so a page there can read the answers.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::peer::Peer;
use super::{error_for_route, ApiError, SharedState};

/// The checks' settings: `server.allowed_hosts`, `server.allowed_origins`, this machine's name.
pub struct OriginPolicy {
    hosts: Vec<String>,
    origins: Vec<String>,
    hostname: Option<String>,
}

impl OriginPolicy {
    pub fn new(hosts: &[String], origins: &[String]) -> OriginPolicy {
        let lower = |v: &[String]| v.iter().map(|s| s.trim().to_ascii_lowercase()).collect();
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .map(|h| h.to_ascii_lowercase())
            .filter(|h| !h.is_empty());
        OriginPolicy { hosts: lower(hosts), origins: lower(origins), hostname }
    }

    /// Whether `host` (a `Host` header: name or address, maybe a port) names this server.
    pub fn host_allowed(&self, host: &str) -> bool {
        let name = strip_port(host).trim_end_matches('.').to_ascii_lowercase();
        name.is_empty()
            || name.parse::<std::net::IpAddr>().is_ok()
            || is_loopback_name(&name)
            || self.hostname.as_deref() == Some(name.as_str())
            || self.hosts.iter().any(|h| h == "*" || h.trim_end_matches('.') == name)
    }

    /// Whether a page at `origin` may call the API; `host` is the request's `Host`.
    pub fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim().to_ascii_lowercase();
        if self.origins.iter().any(|pattern| glob(pattern, &origin)) {
            return true;
        }
        let Some((scheme, authority)) = origin.split_once("://") else { return false };
        if !matches!(scheme, "http" | "https") {
            return false;
        }
        // The server's own pages (`/docs`), under whatever name the Host check let through.
        if host.is_some_and(|h| h.eq_ignore_ascii_case(authority)) {
            return true;
        }
        let name = strip_port(authority);
        is_loopback_name(name) || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

/// `name` without a `:port`; an IPv6 address without its brackets.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn is_loopback_name(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    name == "localhost" || name.ends_with(".localhost")
}

/// `pattern` with `*` matching any run of characters, against `text`.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

fn forbidden(path: &str, message: String) -> Response {
    let mut e = ApiError::invalid(message).with_code("forbidden");
    e.status = StatusCode::FORBIDDEN;
    error_for_route(path, e)
}

/// A header value as text, cut short for messages.
fn shown(value: &str) -> String {
    value.chars().take(100).collect()
}

/// The middleware: the `Host` and `Origin` checks, preflights, CORS headers.
pub async fn check(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let policy = &state.origins;
    let path = req.uri().path().to_owned();
    let headers = req.headers();
    let text = |h: &HeaderMap, name| h.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let host = text(headers, header::HOST);
    // In-process callers (no accept loop) are treated as on loopback: the strict case.
    let on_loopback = req.extensions().get::<Peer>().is_none_or(|p| p.local.ip().is_loopback());
    if on_loopback && !host.as_deref().is_none_or(|h| policy.host_allowed(h)) {
        let host = shown(host.as_deref().unwrap_or_default());
        return forbidden(
            &path,
            format!(
                "Host `{host}` does not name this server; it answers to localhost, IP addresses and \
                 server.allowed_hosts (MLX_SERVE_ALLOWED_HOSTS)"
            ),
        );
    }
    let Some(origin) = text(headers, header::ORIGIN) else { return next.run(req).await };
    if !policy.origin_allowed(&origin, host.as_deref()) {
        return forbidden(
            &path,
            format!(
                "requests from the web page at `{}` are not allowed; allow its origin with \
                 server.allowed_origins (MLX_SERVE_ORIGINS)",
                shown(&origin)
            ),
        );
    }
    let allow_origin = HeaderValue::from_str(&origin).ok();
    let preflight = req.method() == Method::OPTIONS && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut resp = if preflight {
        let mut resp = StatusCode::NO_CONTENT.into_response();
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, DELETE, OPTIONS"));
        let asked = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            asked.unwrap_or_else(|| HeaderValue::from_static("authorization, content-type")),
        );
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        resp
    } else {
        next.run(req).await
    };
    if let Some(origin) = allow_origin {
        resp.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        resp.headers_mut().append(header::VARY, HeaderValue::from_static("Origin"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_loopback_names_addresses_or_listed() {
        let p = OriginPolicy::new(&["models.lan".into()], &[]);
        for ok in [
            "127.0.0.1:8000",
            "localhost",
            "LOCALHOST:1",
            "a.localhost.",
            "[::1]:8000",
            "10.0.0.2",
            "",
            "models.lan:80",
        ] {
            assert!(p.host_allowed(ok), "{ok}");
        }
        for refused in
            ["rebind.attacker.example", "rebind.attacker.example:8000", "localhost.evil.com", "x", "models.lan.evil"]
        {
            assert!(!p.host_allowed(refused), "{refused}");
        }
        assert!(OriginPolicy::new(&["*".into()], &[]).host_allowed("anything.example"));
    }

    #[test]
    fn origins_are_loopback_pages_the_servers_own_or_listed() {
        let p = OriginPolicy::new(&[], &["https://app.example".into(), "chrome-extension://*".into()]);
        for ok in [
            "http://localhost:3000",
            "http://127.0.0.1",
            "https://[::1]:9",
            "http://x.localhost",
            "https://app.example",
        ] {
            assert!(p.origin_allowed(ok, Some("127.0.0.1:8000")), "{ok}");
        }
        assert!(p.origin_allowed("chrome-extension://abcdef", None));
        assert!(p.origin_allowed("http://mac.lan:8000", Some("mac.lan:8000")), "its own page");
        for refused in
            ["http://rebind.attacker.example", "null", "file://", "http://10.0.0.3", "https://app.example.evil"]
        {
            assert!(!p.origin_allowed(refused, Some("127.0.0.1:8000")), "{refused}");
        }
        assert!(OriginPolicy::new(&[], &["*".into()]).origin_allowed("null", None));
    }

    #[test]
    fn globs_match_whole_texts() {
        assert!(glob("a*c", "abbc") && glob("*", "") && glob("a*", "a") && glob("*.x.test", "b.x.test"));
        assert!(!glob("a*c", "abcd") && !glob("abc", "abcd") && !glob("*.x.test", "x.test"));
    }
}
