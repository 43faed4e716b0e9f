//! `POST /api/pull` (Ollama docs/api.md "Pull a Model"): pulls a repo id or alias into the
//! store through the daemon's shared downloads, streaming Ollama's NDJSON progress lines.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::ollama::{NameRequest, OllamaError};
use super::{parse_body, ApiError, SharedState};
use crate::store::downloads::{Download, Progress};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullBody {
    pub model: Option<String>,
    pub name: Option<String>,
    /// Default true: an NDJSON progress stream; false: one object at the end.
    pub stream: Option<bool>,
    /// Accepted and ignored.
    #[allow(dead_code)]
    pub insecure: Option<bool>,
}

/// `POST /api/pull`: pulls a repo id or alias into the store. Streams NDJSON lines
/// (Ollama docs/api.md "Pull a Model"): `{"status": "pulling manifest"}`, then per file
/// `{"status": "pulling <file>", "digest": "<file>", "total": N, "completed": M}`, then
/// `{"status": "verifying sha256 digest"}`, `{"status": "writing manifest"}`,
/// `{"status": "success"}`; a failure is an `{"error": "..."}` line.
#[utoipa::path(post, path = "/api/pull", tag = "Ollama", request_body = PullBody,
    responses((status = 200, description = "NDJSON progress lines, or one object with `stream: false`"),
        (status = "4XX", body = super::ollama::OllamaErrorBody, description = "invalid request, unknown model, too large, overloaded")))]
pub async fn pull(
    State(state): State<SharedState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OllamaError> {
    let req: PullBody = parse_body(body)?;
    let name = NameRequest { model: req.model, name: req.name, verbose: None }.model()?;
    let resolver = state.resolver();
    // A bare name may be searched for on the Hub, as `mlx-serve pull NAME` does.
    let target = resolver.resolve(&name).await?;
    let Some(pull_req) = resolver.pull_request(&target, None) else {
        // Not a repo id or alias: fine when it is installed (a folder import, say).
        return match state.pool.store().find(&target.name) {
            Some(_) => Ok(Json(json!({"status": "success"})).into_response()),
            None => Err(ApiError::not_found(format!(
                "model '{name}' is neither installed nor a Hugging Face repo id (owner/name) or alias"
            ))
            .into()),
        };
    };
    // An explicit pull retries at once what failed before.
    let download = state.downloads.start_now(pull_req);
    if req.stream == Some(false) {
        return match download.wait().await {
            Ok(_) => Ok(Json(json!({"status": "success"})).into_response()),
            Err(e) => Err(e.into()),
        };
    }
    let lines = futures_util::stream::unfold(PullStream::new(download), |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(chunk)), s))
    });
    let mut resp = axum::body::Body::from_stream(lines).into_response();
    resp.headers_mut()
        .insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/x-ndjson"));
    Ok(resp)
}

/// Turns a download's progress into NDJSON lines: every status line once, in order, and
/// the progress of the file being pulled at most every [`PullStream::PERIOD`]. Files are
/// pulled one after another, so when a new status arrives the previous file's progress
/// is final and is sent first (a watcher that woke late still reports 100 %).
struct PullStream {
    download: std::sync::Arc<Download>,
    rx: tokio::sync::watch::Receiver<Progress>,
    statuses_sent: usize,
    /// The file of the last "pulling FILE" status.
    current: Option<String>,
    /// Bytes last reported per file.
    reported: std::collections::HashMap<String, u64>,
    finished: bool,
}

impl PullStream {
    const PERIOD: Duration = Duration::from_millis(100);

    fn new(download: std::sync::Arc<Download>) -> PullStream {
        let rx = download.subscribe();
        PullStream { download, rx, statuses_sent: 0, current: None, reported: Default::default(), finished: false }
    }

    /// A progress line for `file` unless its byte count was already reported.
    fn file_progress(&mut self, p: &Progress, file: &str, out: &mut String) {
        if let Some((f, completed, total)) = p.files.iter().find(|f| f.0 == file) {
            if self.reported.get(f) != Some(completed) {
                self.reported.insert(f.clone(), *completed);
                out.push_str(&progress_line(f, *completed, *total));
            }
        }
    }

    /// The lines to send next, or None when the stream is over.
    async fn next_chunk(&mut self) -> Option<String> {
        if self.finished {
            return None;
        }
        loop {
            let p = self.rx.borrow_and_update().clone();
            let mut out = String::new();
            for status in &p.history[self.statuses_sent.min(p.history.len())..] {
                if let Some(prev) = self.current.take() {
                    self.file_progress(&p, &prev, &mut out);
                }
                match status.strip_prefix("pulling ").filter(|f| *f != "manifest") {
                    Some(file) => {
                        // Before its first bytes (or when it came from the cache) the
                        // file has no progress yet: send the bare status.
                        if !p.files.iter().any(|x| x.0 == file) {
                            out.push_str(&format!("{}\n", json!({"status": status})));
                        }
                        self.file_progress(&p, file, &mut out);
                        self.current = Some(file.to_owned());
                    }
                    None => out.push_str(&format!("{}\n", json!({"status": status}))),
                }
            }
            self.statuses_sent = p.history.len();
            if let Some(cur) = self.current.clone() {
                self.file_progress(&p, &cur, &mut out);
            }
            match &p.done {
                Some(Ok(_)) => {
                    out.push_str(&format!("{}\n", json!({"status": "success"})));
                    self.finished = true;
                }
                Some(Err(e)) => {
                    // The client gets the short message; details go to the log.
                    out.push_str(&format!("{}\n", json!({"error": ApiError::from(e.clone()).message})));
                    self.finished = true;
                }
                None => {}
            }
            if !out.is_empty() {
                return Some(out);
            }
            if self.rx.changed().await.is_err() {
                self.finished = true;
                return Some(format!(
                    "{}\n",
                    json!({"error": format!("the download of {} stopped", self.download.name)})
                ));
            }
            tokio::time::sleep(Self::PERIOD).await;
        }
    }
}

fn progress_line(file: &str, completed: u64, total: u64) -> String {
    format!(
        "{}\n",
        json!({"status": format!("pulling {file}"), "digest": file, "total": total, "completed": completed})
    )
}
