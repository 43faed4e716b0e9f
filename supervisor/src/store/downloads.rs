//! The daemon's downloads in flight: at most one per model, shared by everyone who asks
//! for it (`POST /api/pull`, requests that auto-download a missing model), with progress
//! that `/api/ps` and `/v1/models` show.
//!
//! A download runs in its own task, so a client that disconnects does not cancel what
//! other requests wait for. A failed download is remembered for [`RETRY_FAILED_AFTER`]:
//! requests in that time get its error and when it will be tried again, instead of each
//! starting a download that fails the same way (an unknown repo, no network, a gated repo
//! without a token). An explicit pull ([`Downloads::start_now`]) tries at once. A Hub
//! search for a bare name that failed is remembered the same way ([`Downloads::name_failure`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::sync::watch;

use super::pull::{self, PullEvent, PullOutcome, PullRequest, Source};
use super::{Store, StoreError};

/// Progress of one download, as its watchers see it.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Ollama-style status line: "pulling manifest", "pulling model.safetensors", …
    pub status: String,
    /// Every status so far, in order (a watcher that wakes late still sees each one).
    pub history: Vec<String>,
    /// Files seen so far: (file, bytes done, bytes total).
    pub files: Vec<(String, u64, u64)>,
    /// Set once when the download ends.
    pub done: Option<Result<PullOutcome, StoreError>>,
}

impl Progress {
    pub fn completed(&self) -> u64 {
        self.files.iter().map(|f| f.1).sum()
    }
    pub fn total(&self) -> u64 {
        self.files.iter().map(|f| f.2).sum()
    }
}

/// How long a failed download or name search is remembered before a request may try it
/// again: long enough that a burst of requests does not hammer the Hub, short enough that
/// a fixed network is noticed soon.
pub const RETRY_FAILED_AFTER: Duration = Duration::from_secs(60);

pub struct Download {
    /// Store name being installed.
    pub name: String,
    /// Repo id or folder.
    pub source: String,
    pub started_unix: u64,
    started: Instant,
    /// When it ended (set once).
    ended: OnceLock<Instant>,
    progress: watch::Sender<Progress>,
}

impl Download {
    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    pub fn snapshot(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// Waits for the end of the download.
    pub async fn wait(&self) -> Result<PullOutcome, StoreError> {
        let mut rx = self.subscribe();
        let done = rx.wait_for(|p| p.done.is_some()).await;
        match done {
            Ok(p) => p.done.clone().unwrap(),
            Err(_) => Err(StoreError::Failed("the download task stopped".into())),
        }
    }

    /// JSON for `/api/ps` and `/v1/models`: what API clients may see.
    pub fn to_json(&self) -> Value {
        let p = self.snapshot();
        let (state, error) = match &p.done {
            None => ("downloading", None),
            Some(Ok(_)) => ("done", None),
            Some(Err(e)) => ("failed", Some(e.public_message())),
        };
        // A folder is named by its last part: clients see no paths of the server's disk.
        let source = match self.source.rsplit_once('/') {
            Some((_, last)) if self.source.starts_with('/') => last,
            _ => self.source.as_str(),
        };
        json!({
            "model": self.name,
            "source": source,
            "state": state,
            "status": p.status,
            "completed": p.completed(),
            "total": p.total(),
            "files": p.files.iter().map(|(f, c, t)| json!({"file": f, "completed": c, "total": t})).collect::<Vec<_>>(),
            "started": self.started_unix,
            "elapsed_seconds": self.started.elapsed().as_secs_f64(),
            "error": error,
        })
    }
}

/// How [`Downloads::start`] went.
pub enum Started {
    /// A new download began.
    New(Arc<Download>),
    /// The model was already downloading; this is that download.
    Joined(Arc<Download>),
    /// The last attempt failed less than [`RETRY_FAILED_AFTER`] ago; the next try is
    /// allowed after `retry_in`.
    RecentlyFailed { error: StoreError, retry_in: Duration },
}

/// A failure being remembered: what it was, and how long until it may be tried again.
fn still_remembered(ended: Instant) -> Option<Duration> {
    RETRY_FAILED_AFTER.checked_sub(ended.elapsed()).filter(|d| !d.is_zero())
}

pub struct Downloads {
    store: Store,
    table: Mutex<HashMap<String, Arc<Download>>>,
    /// Bare names whose Hub search failed: when, and why.
    failed_names: Mutex<HashMap<String, (Instant, StoreError)>>,
    /// One Hub search at a time: a burst of requests for a new name searches once.
    search: tokio::sync::Mutex<()>,
}

impl Downloads {
    pub fn new(store: Store) -> Downloads {
        Downloads {
            store,
            table: Mutex::new(HashMap::new()),
            failed_names: Mutex::new(HashMap::new()),
            search: tokio::sync::Mutex::new(()),
        }
    }

    /// Held while a bare name is searched for (see [`Downloads::name_failure`]).
    pub async fn searching(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.search.lock().await
    }

    /// Starts pulling `req` unless the same model is already being pulled, or its last
    /// attempt failed recently.
    pub fn start(self: &Arc<Self>, req: PullRequest) -> Started {
        self.start_inner(req, false)
    }

    /// Like [`Downloads::start`], but a recent failure does not stop it (an explicit pull).
    pub fn start_now(self: &Arc<Self>, req: PullRequest) -> Arc<Download> {
        match self.start_inner(req, true) {
            Started::New(d) | Started::Joined(d) => d,
            Started::RecentlyFailed { .. } => unreachable!("start_inner(force) forgets failures"),
        }
    }

    /// The error of a Hub search for `name` that failed less than [`RETRY_FAILED_AFTER`]
    /// ago, and how long until it may be searched again.
    pub fn name_failure(&self, name: &str) -> Option<(StoreError, Duration)> {
        let mut failed = self.failed_names.lock().unwrap();
        match failed.get(name).map(|(at, e)| (still_remembered(*at), e.clone())) {
            Some((Some(left), e)) => Some((e, left)),
            Some((None, _)) => {
                failed.remove(name);
                None
            }
            None => None,
        }
    }

    /// Remembers that the Hub search for `name` failed with `error`.
    pub fn remember_name_failure(&self, name: &str, error: StoreError) {
        self.failed_names.lock().unwrap().insert(name.to_owned(), (Instant::now(), error));
    }

    fn start_inner(self: &Arc<Self>, req: PullRequest, force: bool) -> Started {
        let name = req.installed_name();
        let mut table = self.table.lock().unwrap();
        if let Some(d) = table.get(&name) {
            match d.snapshot().done {
                None => return Started::Joined(d.clone()),
                Some(Err(error)) => match d.ended.get().and_then(|at| still_remembered(*at)) {
                    Some(retry_in) if !force => return Started::RecentlyFailed { error, retry_in },
                    _ => {
                        table.remove(&name);
                    }
                },
                Some(Ok(_)) => {
                    table.remove(&name);
                }
            }
        }
        let source = match &req.source {
            Source::Hub(r) => r.clone(),
            Source::Folder(p) => p.display().to_string(),
        };
        let (tx, _) = watch::channel(Progress { status: "starting".into(), ..Default::default() });
        let download = Arc::new(Download {
            name: name.clone(),
            source,
            started_unix: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            started: Instant::now(),
            ended: OnceLock::new(),
            progress: tx,
        });
        table.insert(name.clone(), download.clone());
        drop(table);
        let this = self.clone();
        let d = download.clone();
        tokio::spawn(async move {
            let watch = d.clone();
            let report: pull::Reporter = Arc::new(move |event| {
                watch.progress.send_modify(|p| match event {
                    PullEvent::Status(s) => {
                        p.history.push(s.clone());
                        p.status = s;
                    }
                    PullEvent::File { file, completed, total } => match p.files.iter_mut().find(|f| f.0 == file) {
                        Some(f) => (f.1, f.2) = (completed, total),
                        None => p.files.push((file, completed, total)),
                    },
                })
            });
            tracing::info!(model = %d.name, source = %d.source, "download started");
            let result = pull::pull(&this.store, &req, report).await;
            match &result {
                Ok(o) => {
                    tracing::info!(model = %o.name, up_to_date = o.up_to_date, secs = d.started.elapsed().as_secs_f64(), "download finished")
                }
                Err(e) => tracing::warn!(model = %d.name, "download failed: {e}"),
            }
            // A model of the other type than a request needed says nothing about the
            // next request: not remembered.
            let forget = matches!(result, Ok(_) | Err(StoreError::WrongKind { .. }));
            let _ = d.ended.set(Instant::now());
            d.progress.send_modify(|p| p.done = Some(result));
            if forget {
                let mut table = this.table.lock().unwrap();
                if table.get(&d.name).is_some_and(|x| Arc::ptr_eq(x, &d)) {
                    table.remove(&d.name);
                }
            }
        });
        Started::New(download)
    }

    /// Downloads in the table (running, or failed and still remembered), by name.
    pub fn list(&self) -> Vec<Arc<Download>> {
        let mut table = self.table.lock().unwrap();
        table.retain(|_, d| d.ended.get().is_none_or(|at| still_remembered(*at).is_some()));
        let mut v: Vec<_> = table.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_remembered_for_a_while() {
        let now = Instant::now();
        let left = still_remembered(now).unwrap();
        assert!(left > RETRY_FAILED_AFTER - Duration::from_secs(5) && left <= RETRY_FAILED_AFTER, "{left:?}");
        if let Some(long_ago) = now.checked_sub(RETRY_FAILED_AFTER + Duration::from_secs(1)) {
            assert_eq!(still_remembered(long_ago), None);
        }
        let d = Downloads::new(Store::new("/nonexistent".into()));
        assert!(d.name_failure("x").is_none());
        d.remember_name_failure("x", StoreError::NotFound("no repo named x".into()));
        let (e, left) = d.name_failure("x").unwrap();
        assert_eq!(e, StoreError::NotFound("no repo named x".into()));
        assert!(left.as_secs() >= RETRY_FAILED_AFTER.as_secs() - 5);
        // Expired entries are dropped when asked for.
        if let Some(long_ago) = now.checked_sub(RETRY_FAILED_AFTER + Duration::from_secs(1)) {
            d.failed_names.lock().unwrap().insert("old".into(), (long_ago, StoreError::Failed("x".into())));
            assert!(d.name_failure("old").is_none());
            assert!(d.failed_names.lock().unwrap().get("old").is_none());
        }
    }
}
