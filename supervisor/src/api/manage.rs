//! The routes that change the model store (`POST /api/pull`, `DELETE /api/delete`) and
//! who may call them, checked before their body is read:
//!
//! - `server.http_model_management: false` turns them off (the CLI and the control socket
//!   still manage models);
//! - their body must be declared JSON (`Content-Type: application/json`): a browser sends
//!   `text/plain` cross-origin without asking first, never `application/json`;
//! - on a loopback listener without an API key, the connecting user must be the one
//!   running the server (or root), as for the control socket (a 0600 file): another
//!   local user cannot delete what `mlx-serve remove` would refuse them. The user is read
//!   where the OS tells it (`peer.rs`: Linux); elsewhere set an API key to keep other
//!   users out.
//!
//! With an API key, holding the key is what allows them (`auth.rs` runs first).

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::peer::{Peer, PeerUser};
use super::{error_for_route, ApiError, SharedState};

/// Routes that change the store.
const MANAGEMENT_ROUTES: [&str; 2] = ["/api/pull", "/api/delete"];

fn is_management(path: &str) -> bool {
    let path = if path.len() > 1 { path.strip_suffix('/').unwrap_or(path) } else { path };
    MANAGEMENT_ROUTES.contains(&path)
}

/// `application/json`, or a `+json` type, with any parameters.
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn refused(path: &str, status: StatusCode, message: String) -> Response {
    let mut e = ApiError::invalid(message).with_code("forbidden");
    e.status = status;
    error_for_route(path, e)
}

/// The middleware.
pub async fn check(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if !is_management(path) {
        return next.run(req).await;
    }
    let path = path.to_owned();
    if !state.config.server.http_model_management {
        return refused(
            &path,
            StatusCode::FORBIDDEN,
            "model management over HTTP is turned off (server.http_model_management); use `mlx-serve pull` \
             or `mlx-serve remove`"
                .into(),
        );
    }
    let content_type =
        req.headers().get(header::CONTENT_TYPE).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    if !content_type.as_deref().is_some_and(is_json) {
        let mut e = ApiError::invalid("this route takes a JSON body: send `Content-Type: application/json`")
            .with_code("unsupported_media_type");
        e.status = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        return error_for_route(&path, e);
    }
    if state.api_key.is_none() {
        if let Err(why) = same_user(req.extensions().get::<Peer>()) {
            return refused(&path, StatusCode::FORBIDDEN, why);
        }
    }
    next.run(req).await
}

/// Whether the client on a loopback connection runs as this server's user (or root).
fn same_user(peer: Option<&Peer>) -> Result<(), String> {
    // In-process callers have no connection: they are this process.
    let Some(peer) = peer else { return Ok(()) };
    if !peer.local.ip().is_loopback() {
        // Another machine: no user to compare; the API key is the guard there (the
        // daemon warns when there is none).
        return Ok(());
    }
    let ours = nix::unistd::geteuid().as_raw();
    match peer.user() {
        PeerUser::Uid(uid) if uid == ours || uid == 0 => Ok(()),
        PeerUser::Uid(_) => Err(format!(
            "model management is limited to the user running the server (uid {ours}); other users need \
             server.api_key"
        )),
        PeerUser::NotFound => Err("cannot tell which user is connecting; model management needs server.api_key".into()),
        PeerUser::Unknowable => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_types_pass_others_do_not() {
        for ok in ["application/json", "Application/JSON; charset=utf-8", "application/merge-patch+json"] {
            assert!(is_json(ok), "{ok}");
        }
        for no in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "", "json"] {
            assert!(!is_json(no), "{no}");
        }
        assert!(is_management("/api/pull") && is_management("/api/delete/") && !is_management("/api/show"));
    }
}
