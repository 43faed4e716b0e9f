//! Request bodies: reading them under limits, and parsing them as JSON.
//!
//! [`admit`] (a middleware in front of every handler) reads the whole body before the
//! handler runs, and bounds what bodies can cost:
//!
//! - size: past `limits.max_request_bytes` a 413, from `Content-Length` before anything
//!   is kept, or as soon as a chunked body passes it (a body refused before it is read is
//!   still read and dropped when that is cheap, so the client gets the answer: `after_drain`);
//! - time: the body must arrive within `server.body_read_timeout_seconds` of its headers,
//!   or the client gets a 408 and the connection is closed (a slow client holds no memory
//!   or task for longer);
//! - memory: every request in progress holds a charge on one budget,
//!   `limits.max_inflight_request_bytes`, until its answer is ready. The charge is the
//!   body (taken as it arrives, so a client that declares 16 MiB and sends a byte a second
//!   holds what it sent, not what it promised; a declared body that cannot fit beside the
//!   requests in progress is refused before it is read) plus what
//!   decoding it will allocate (each JSON string, number and container as a
//!   `serde_json::Value` would hold it — an upper bound of what the handlers' typed
//!   structs take; see [`decoded_size`]), so a body of millions of tiny numbers is charged
//!   what it costs, not its byte size. A request whose charge alone exceeds the budget
//!   gets a 413; one that does not fit beside the requests in progress gets a 429 with
//!   `Retry-After`. Tokenization after decoding is bounded per input (`tokenize.rs`), so
//!   the supervisor's memory for requests stays within a small multiple of the budget.
//!
//! [`parse_body`] turns the bytes into a handler's request type, every failure (empty,
//! not JSON, wrong shape) an OpenAI-shaped 400.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt;
use serde::de::{DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{error_for_route, ApiError, SharedState};

/// The budget behind `limits.max_inflight_request_bytes`: a semaphore of KiB (tokio
/// takes at most `u32::MAX` permits at once).
pub struct InflightBudget {
    kib: Arc<Semaphore>,
    /// The budget in bytes.
    total: usize,
}

impl InflightBudget {
    pub fn new(total: usize) -> InflightBudget {
        let kib = total.div_ceil(1024).clamp(1, u32::MAX as usize);
        InflightBudget { kib: Arc::new(Semaphore::new(kib)), total }
    }

    /// Bytes charged by requests in progress now.
    pub fn in_use(&self) -> usize {
        (self.total.div_ceil(1024).clamp(1, u32::MAX as usize) - self.kib.available_permits()) << 10
    }

    /// Bytes the budget has left now.
    fn available(&self) -> usize {
        self.kib.available_permits() << 10
    }

    /// Takes `bytes` from the budget (rounded up to KiB), or nothing when they do not fit.
    fn charge(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let kib = bytes.div_ceil(1024).min(u32::MAX as usize) as u32;
        self.kib.clone().try_acquire_many_owned(kib).ok()
    }

    fn overloaded(&self) -> ApiError {
        ApiError::overloaded(format!(
            "the server is handling {} MiB of requests (limits.max_inflight_request_bytes is {} MiB); retry shortly",
            self.in_use() >> 20,
            self.total >> 20
        ))
    }
}

/// The middleware: reads the body under the size, time and memory limits above.
pub async fn admit(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let limits = &state.config.limits;
    let path = req.uri().path().to_owned();
    let refuse = |e: ApiError| error_for_route(&path, e);
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let timeout = Duration::from_secs(state.config.server.body_read_timeout_seconds);
    // Refused before its body is read. The body is read and dropped first, when that is
    // cheap (`after_drain`), so that a client still sending it gets the answer rather than
    // a broken pipe; otherwise the connection closes.
    if declared.is_some_and(|n| n > limits.max_request_bytes as u64) {
        let limit = 2 * limits.max_request_bytes as u64;
        return after_drain(req, declared, limit, timeout, refuse(too_large(limits.max_request_bytes))).await;
    }
    let budget = &state.inflight;
    // Every body is charged as it arrives (no body is buffered beyond the budget); one
    // that declares more than the budget has left now is refused at once.
    if declared.is_some_and(|n| n as usize > budget.available()) {
        return after_drain(req, declared, limits.max_request_bytes as u64, timeout, refuse(budget.overloaded())).await;
    }
    let Some(mut permit) = budget.charge(0) else { return refuse(budget.overloaded()) };
    let (parts, body) = req.into_parts();
    let read = read_limited(body, declared, limits.max_request_bytes, budget, &mut permit);
    let bytes = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(ReadError::TooLarge)) => return closing(refuse(too_large(limits.max_request_bytes))),
        Ok(Err(ReadError::Overloaded)) => return closing(refuse(budget.overloaded())),
        Ok(Err(ReadError::Failed(e))) => {
            return refuse(ApiError::invalid(format!("cannot read the request body: {e}")))
        }
        Err(_) => {
            let mut e = ApiError::invalid(format!(
                "the request body did not arrive within server.body_read_timeout_seconds ({} s)",
                timeout.as_secs()
            ))
            .with_code("request_timeout");
            e.status = StatusCode::REQUEST_TIMEOUT;
            return closing(refuse(e));
        }
    };
    // What decoding will take, beside the body, until the body is dropped. Scanning
    // megabytes takes milliseconds: off the async threads.
    let decoded = if bytes.len() > 1 << 20 {
        let scan = bytes.clone();
        tokio::task::spawn_blocking(move || decoded_size(&scan)).await.unwrap_or(usize::MAX)
    } else {
        decoded_size(&bytes)
    };
    if bytes.len().saturating_add(decoded) > budget.total {
        return refuse(ApiError::too_large(format!(
            "decoding this request would take about {} MiB beside its body, more than \
             limits.max_inflight_request_bytes ({} MiB) allows",
            decoded >> 20,
            budget.total >> 20
        )));
    }
    match budget.charge(decoded) {
        Some(more) => permit.merge(more),
        None => return refuse(budget.overloaded()),
    }
    let resp = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    if resp.extensions().get::<super::streamed::StreamedBody>().is_none() {
        drop(permit);
        return resp;
    }
    // A body still being computed holds the request's inputs: the charge goes with it.
    let (parts, body) = resp.into_parts();
    let body = body.map_frame(move |frame| {
        let _held = &permit;
        frame
    });
    Response::from_parts(parts, Body::new(body))
}

/// `resp` for `req`, refused before its body was read: the body (`declared` bytes) is read
/// and dropped first when it declares at most `limit` bytes and arrives within `timeout`
/// (memory: one frame at a time), and the connection stays usable; otherwise, or when the
/// client waits for `Expect: 100-continue` (it sends no body then), the connection is
/// closed. A client writing its body while the server closes gets a broken pipe instead of
/// the answer (nginx's lingering close solves the same problem).
async fn after_drain(req: Request, declared: Option<u64>, limit: u64, timeout: Duration, resp: Response) -> Response {
    let waits_for_continue =
        req.headers().get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if waits_for_continue || declared.is_none_or(|n| n > limit) {
        return closing(resp);
    }
    let drained = tokio::time::timeout(timeout, async {
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                return false;
            }
        }
        true
    });
    match drained.await {
        Ok(true) => resp,
        _ => closing(resp),
    }
}

/// Asks the client to close the connection (its body was not read to the end).
fn closing(mut resp: Response) -> Response {
    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

fn too_large(limit: usize) -> ApiError {
    ApiError::too_large(format!("request body exceeds limits.max_request_bytes ({limit} bytes)"))
}

enum ReadError {
    TooLarge,
    /// A body outgrew, as it arrived, what the budget has left.
    Overloaded,
    Failed(String),
}

/// Reads a body into one buffer, refusing it as soon as it passes `limit`; every frame is
/// charged to `permit` as it arrives (in whole KiB, as the budget counts), and the buffer
/// grows with what arrived, not with what was `declared`.
async fn read_limited(
    mut body: Body,
    declared: Option<u64>,
    limit: usize,
    budget: &InflightBudget,
    permit: &mut OwnedSemaphorePermit,
) -> Result<Bytes, ReadError> {
    // A first frame's worth up front: a declared body that comes at once is copied once.
    let mut buf = Vec::with_capacity((declared.unwrap_or(0) as usize).min(limit).min(FIRST_BUFFER));
    let mut charged_kib = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Failed(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(ReadError::TooLarge);
            }
            let kib = (buf.len() + data.len()).div_ceil(1024);
            if kib > charged_kib {
                permit.merge(budget.charge((kib - charged_kib) << 10).ok_or(ReadError::Overloaded)?);
                charged_kib = kib;
            }
            let need = buf.len() + data.len();
            if need > buf.capacity() {
                // Doubling, but never past a declared length: the buffer ends its exact size.
                let grown = need.max(buf.capacity() * 2);
                let grown = match declared {
                    Some(d) if d as usize >= need => grown.min(d as usize),
                    _ => grown,
                };
                buf.reserve_exact(grown - buf.len());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

/// The buffer a body starts with (it grows as frames arrive).
const FIRST_BUFFER: usize = 256 << 10;

/// An upper bound of the heap a JSON text takes once decoded, counted as
/// `serde_json::Value` would hold it (32 bytes per value, plus string contents and map
/// keys), by a pass that allocates nothing. Text that is not JSON counts as its length
/// (the handler refuses it without decoding much).
pub fn decoded_size(json: &[u8]) -> usize {
    let mut de = serde_json::Deserializer::from_slice(json);
    de.deserialize_any(SizeOf).unwrap_or(json.len())
}

/// Bytes of one `serde_json::Value` on the heap, without its contents.
const VALUE: usize = 32;

struct SizeOf;

impl<'de> serde::de::DeserializeSeed<'de> for SizeOf {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_any(SizeOf)
    }
}

impl<'de> Visitor<'de> for SizeOf {
    type Value = usize;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, _: bool) -> Result<usize, E> {
        Ok(VALUE)
    }
    fn visit_i64<E>(self, _: i64) -> Result<usize, E> {
        Ok(VALUE)
    }
    fn visit_u64<E>(self, _: u64) -> Result<usize, E> {
        Ok(VALUE)
    }
    fn visit_f64<E>(self, _: f64) -> Result<usize, E> {
        Ok(VALUE)
    }
    fn visit_unit<E>(self) -> Result<usize, E> {
        Ok(VALUE)
    }
    fn visit_str<E>(self, s: &str) -> Result<usize, E> {
        Ok(VALUE + s.len())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut total = VALUE;
        while let Some(n) = seq.next_element_seed(SizeOf)? {
            total = total.saturating_add(n);
        }
        Ok(total)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        let mut total = VALUE;
        while let Some(k) = map.next_key_seed(SizeOf)? {
            // A map entry: the key string, its value, and the map's own node.
            total = total.saturating_add(k).saturating_add(map.next_value_seed(SizeOf)?).saturating_add(VALUE);
        }
        Ok(total)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoded_size_counts_values_not_bytes() {
        let ids = format!("[{}1]", "1,".repeat(1000));
        assert_eq!(decoded_size(ids.as_bytes()), VALUE + 1001 * VALUE);
        assert_eq!(decoded_size(br#"{"input": "abc"}"#), VALUE + (VALUE + 5) + (VALUE + 3) + VALUE);
        assert_eq!(decoded_size(b"not json"), 8);
    }
}
