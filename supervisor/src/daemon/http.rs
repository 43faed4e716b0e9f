//! The HTTP accept loop, in place of `axum::serve`, for the limits it cannot set:
//!
//! - `server.header_read_timeout_seconds`: hyper closes a connection whose request
//!   headers have not all arrived in time — a client sending a byte a second is dropped,
//!   and so is a keep-alive connection idle that long (the timer runs while hyper waits
//!   for the next request's head);
//! - `server.max_connections`: past it, the connection idle longest (no request in
//!   progress, for a second at least: `api/activity.rs`) is closed to make room for the
//!   new one, so sockets
//!   opened and left idle cannot lock clients out (`/health` included); when every
//!   connection is busy, the new one is closed as soon as it is accepted (the listen
//!   backlog keeps draining, so the kernel never queues clients we would not serve).
//!   Either is logged at most every 10 s.
//!
//! - `server.write_timeout_seconds`: a client that takes nothing of its answer that long
//!   is disconnected (`write_timeout.rs`), freeing the answer's memory.
//!
//! The body read timeout is the body middleware's (`api/body.rs`): it can answer 408.
//! Shutdown is graceful as with `axum::serve`: stop accepting, let each connection finish
//! the request it is on, close idle ones, wait for all — but only until the drain
//! deadline (`server.shutdown_timeout_seconds`): then the connections still open (a
//! client that never reads its answer, a body that never ends) are closed.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::write_timeout::TimedWrite;
use crate::api::activity::Activity;
use crate::api::peer::Peer;

/// Connection limits for [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    /// How long shutdown waits for connections to finish before it closes them.
    pub drain: Duration,
    /// How long a client may take nothing of its answer before the connection is closed.
    pub write_timeout: Duration,
}

/// Open connections by accept order: their activity, and how to close one.
type OpenConnections = Arc<Mutex<BTreeMap<u64, (Arc<Activity>, Arc<Notify>)>>>;

/// How long a connection must have been idle to be closed for a new one: one just
/// accepted gets the time to send its request.
const MIN_IDLE: Duration = Duration::from_secs(1);

/// How often a refused connection is logged at most.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` resolves, then drains the connections.
pub async fn serve(listener: TcpListener, app: Router, limits: ConnectionLimits, shutdown: impl Future<Output = ()>) {
    let open: OpenConnections = Arc::default();
    let mut next_id = 0u64;
    let mut evicted_since_log = 0u64;
    let graceful = GracefulShutdown::new();
    // Set at the drain deadline: every connection still open drops (closes) its socket.
    let (close_all, closed) = tokio::sync::watch::channel(false);
    let mut last_refusal_log: Option<Instant> = None;
    let mut refused_since_log = 0u64;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Per-connection errors (reset before accept) are not ours; running out
                    // of file descriptors is: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let activity = Activity::new();
        let evict = Arc::new(Notify::new());
        let id = next_id;
        next_id += 1;
        {
            let mut open = open.lock().unwrap();
            if open.len() >= limits.max_connections {
                let idlest = open
                    .iter()
                    .filter_map(|(id, (a, _))| a.idle_for().filter(|&d| d >= MIN_IDLE).map(|d| (d, *id)))
                    .max();
                match idlest.and_then(|(_, id)| open.remove(&id)) {
                    Some((_, close)) => {
                        close.notify_one();
                        evicted_since_log += 1;
                    }
                    None => {
                        drop(open);
                        drop(stream);
                        refused_since_log += 1;
                        if last_refusal_log.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY) {
                            tracing::warn!(
                                refused = refused_since_log,
                                last_peer = %peer,
                                "server.max_connections ({}) reached, every connection busy: closing new connections",
                                limits.max_connections
                            );
                            last_refusal_log = Some(Instant::now());
                            refused_since_log = 0;
                        }
                        continue;
                    }
                }
                if last_refusal_log.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY) {
                    tracing::warn!(
                        closed = evicted_since_log,
                        last_peer = %peer,
                        "server.max_connections ({}) reached: closing the connections idle longest",
                        limits.max_connections
                    );
                    last_refusal_log = Some(Instant::now());
                    evicted_since_log = 0;
                }
            }
            open.insert(id, (activity.clone(), evict.clone()));
        }
        let _ = stream.set_nodelay(true);
        // Who connected, for the routes that check it (`api/peer.rs`).
        let local = stream.local_addr().unwrap_or(peer);
        let app = app.clone().layer(Extension(Peer { remote: peer, local })).layer(Extension(activity));
        let service = TowerToHyperService::new(app);
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(TimedWrite::new(stream, limits.write_timeout)), service);
        let conn = graceful.watch(conn);
        let mut closed = closed.clone();
        let open = open.clone();
        tokio::spawn(async move {
            tokio::select! {
                ended = conn => if let Err(e) = ended {
                    tracing::debug!(peer = %peer, "connection ended: {e}");
                },
                _ = evict.notified() => {}
                _ = closed.wait_for(|&c| c) => {}
            }
            open.lock().unwrap().remove(&id);
            // Its buffers are freed: time to look at the heap again (`heap.rs`).
            crate::api::activity::server().mark_end();
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            "connections still open after server.shutdown_timeout_seconds ({} s): closing them",
            limits.drain.as_secs()
        );
        let _ = close_all.send(true);
    }
}
