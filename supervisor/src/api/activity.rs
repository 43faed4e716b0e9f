//! Whether a connection is doing anything: a request counts from the moment its headers
//! are read until its answer's last byte is handed to the socket (or the connection
//! drops). The accept loop (`daemon/http.rs`) reads it when every connection slot is
//! taken: it closes the connection idle longest to make room, so idle sockets — opened
//! and never used, or kept alive and forgotten — cannot lock clients out, `/health`
//! included, however many there are. The whole server's count ([`server`]) tells the
//! heap trimmer (`daemon/heap.rs`) when traffic has paused.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt;

/// One connection's requests in progress and when it last started or finished one.
#[derive(Debug, Default)]
pub struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds since [`epoch`]; 0 until the first request (an accepted connection
    /// sets it when it is accepted).
    last_ms: AtomicU64,
}

/// Every connection's requests together.
static SERVER: Activity = Activity { in_flight: AtomicUsize::new(0), last_ms: AtomicU64::new(0) };

/// The whole server's activity: requests in progress on any connection.
pub fn server() -> &'static Activity {
    &SERVER
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since the process's first look at the clock here.
pub fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

impl Activity {
    /// A new connection's: idle since now.
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity { in_flight: AtomicUsize::new(0), last_ms: AtomicU64::new(now_ms()) })
    }

    /// How long no request has been in progress; `None` while one is.
    pub fn idle_for(&self) -> Option<std::time::Duration> {
        let since = self.last_ms.load(Ordering::SeqCst);
        (self.in_flight.load(Ordering::SeqCst) == 0)
            .then(|| std::time::Duration::from_millis(now_ms().saturating_sub(since)))
    }

    /// When the last request ended ([`now_ms`]'s clock; 0 before the first), if none is in
    /// progress now.
    pub fn ended_at_ms(&self) -> Option<u64> {
        let since = self.last_ms.load(Ordering::SeqCst);
        (self.in_flight.load(Ordering::SeqCst) == 0).then_some(since)
    }

    /// Records that something that held memory ended now without a request (a connection
    /// closed, its buffers freed), so the heap trimmer looks again.
    pub fn mark_end(&self) {
        self.last_ms.store(now_ms(), Ordering::SeqCst);
    }

    fn begin(self: &Arc<Self>) -> Busy {
        for a in [&**self, &SERVER] {
            a.in_flight.fetch_add(1, Ordering::SeqCst);
            a.last_ms.store(now_ms(), Ordering::SeqCst);
        }
        Busy(self.clone())
    }
}

/// A request in progress; ends when dropped.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        for a in [&*self.0, &SERVER] {
            a.last_ms.store(now_ms(), Ordering::SeqCst);
            a.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The middleware (outermost): marks the connection busy until the answer is sent.
pub async fn track(req: Request, next: Next) -> Response {
    // The accept loop puts each connection's `Arc<Activity>` in its requests' extensions.
    let Some(activity) = req.extensions().get::<Arc<Activity>>().cloned() else {
        return next.run(req).await;
    };
    let busy = activity.begin();
    let resp = next.run(req).await;
    let size = resp.body().size_hint().exact();
    if size == Some(0) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    // The wrapper hides the body's exact size from hyper, which would then send it
    // chunked: the length goes in the header instead.
    if let Some(n) = size {
        parts.headers.entry(header::CONTENT_LENGTH).or_insert_with(|| n.into());
    }
    let body = body.map_frame(move |frame| {
        let _held_until_the_body_is_dropped = &busy;
        frame
    });
    Response::from_parts(parts, Body::new(body))
}
