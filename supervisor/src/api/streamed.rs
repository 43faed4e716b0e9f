//! The answer to an embeddings request with more inputs than
//! `limits.max_inputs_per_request`, streamed piece by piece (`pieces.rs`): the same JSON
//! bytes the route's unstreamed answer has (serde's compact form, fields in the same
//! order), written as each piece is computed. Each route gives its [`Shape`]: OpenAI's
//! `{"object":"list","data":[…],"model":…,"usage":{…}}` (`openai.rs`), TEI's `[[…],…]`
//! (`tei.rs`), Ollama's `{"embeddings":[…],…}` (`ollama.rs`).
//!
//! The status is decided by the first piece: every failure up to it keeps its status and
//! shape. A failure after the 200 has started (the model lost beyond its retries, the
//! server shutting down) aborts the response: the client sees the connection end before
//! the body does (no closing chunk), never a complete-looking body (docs/api.md).

use std::io;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use futures_util::stream::{self, Stream, StreamExt};

use super::inference::{EmbedOptions, Embedded, Inputs};
use super::pieces;
use super::{with_log, ApiError, RequestLog, SharedState};

/// A response extension marking a body that is still being computed: `body.rs` holds the
/// request's share of `limits.max_inflight_request_bytes` until the body ends.
#[derive(Clone, Copy)]
pub struct StreamedBody;

/// A route's answer around its list of items, each made as the unstreamed answer makes it.
pub trait Shape: Send + 'static {
    /// The bytes before the first item (`{"object":"list","data":[`).
    fn head(&self) -> Vec<u8>;
    /// A piece's items as JSON, one `Vec<u8>` each, given the piece and its first item's
    /// index. An error on the first piece keeps its status; later, it aborts the answer.
    fn items(&self, out: &Embedded, first: usize) -> Result<Vec<Vec<u8>>, ApiError>;
    /// The bytes after the last item, given the request's tokens (`],"model":…}`).
    fn tail(&self, tokens: usize) -> Vec<u8>;
}

/// Checks the whole request, computes its first piece, and answers with a body that
/// computes the rest.
pub async fn respond(
    state: SharedState,
    model: &str,
    inputs: Inputs,
    opts: EmbedOptions,
    shape: impl Shape,
) -> Result<Response, ApiError> {
    // The class is read here: the body is polled outside the request's task-local.
    let class = super::priority::current();
    let plan = pieces::plan(&state, model, inputs, opts).await?;
    let log = RequestLog { model: plan.entry.name.clone(), inputs: plan.inputs(), tokens: plan.tokens };
    let mut pieces = Box::pin(plan.run(state, class));
    let first = pieces.next().await.ok_or_else(|| ApiError::internal("a streamed request without pieces"))??;
    let mut writer = Writer { index: 0, tokens: 0, shape };
    let mut head = writer.shape.head();
    head.extend(writer.piece(&first)?);
    let rest = stream::unfold(Some((pieces, writer)), |s| async move {
        let (mut pieces, mut writer) = s?;
        match pieces.next().await {
            Some(Ok(piece)) => match writer.piece(&piece) {
                Ok(bytes) => Some((Ok(Bytes::from(bytes)), Some((pieces, writer)))),
                Err(e) => Some((Err(writer.abort(e)), None)),
            },
            Some(Err(e)) => Some((Err(writer.abort(e)), None)),
            None => Some((Ok(Bytes::from(writer.tail())), None)),
        }
    });
    let body = stream::once(async move { Ok::<_, io::Error>(Bytes::from(head)) }).chain(rest);
    Ok(streamed(body, log))
}

fn streamed(body: impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static, log: RequestLog) -> Response {
    let mut resp = Response::new(Body::from_stream(body));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.extensions_mut().insert(StreamedBody);
    with_log(resp, log)
}

/// Writes the items of each piece as it comes, then the end of the answer.
struct Writer<S> {
    /// The index of the next item.
    index: usize,
    tokens: usize,
    shape: S,
}

impl<S: Shape> Writer<S> {
    /// A piece's items, each preceded by a comma but the request's first.
    fn piece(&mut self, out: &Embedded) -> Result<Vec<u8>, ApiError> {
        let items = self.shape.items(out, self.index)?;
        let mut bytes = Vec::with_capacity(items.iter().map(|i| i.len() + 1).sum());
        for item in items {
            if self.index > 0 {
                bytes.push(b',');
            }
            bytes.extend(item);
            self.index += 1;
        }
        self.tokens += out.tokens;
        Ok(bytes)
    }

    fn tail(&self) -> Vec<u8> {
        self.shape.tail(self.tokens)
    }

    /// The error that aborts the response, after logging why.
    fn abort(&self, e: ApiError) -> io::Error {
        tracing::warn!(
            items = self.index,
            "streamed embeddings response aborted after {} items: {}",
            self.index,
            e.message
        );
        io::Error::other("the embeddings response was aborted")
    }
}
