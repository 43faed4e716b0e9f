//! The daemon's downloads in flight: at most one per model, shared by everyone who asks
//! for it (`POST /api/pull`, requests that auto-download a missing model), with progress
//! that `/api/ps` and `/v1/models` show.
//!
//! A download runs in its own task, so a client that disconnects does not cancel what
//! other requests wait for. A failed download stays in the table until someone asks for
//! the model again, so the next request learns why instead of silently starting over.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

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

pub struct Download {
    /// Store name being installed.
    pub name: String,
    /// Repo id or folder.
    pub source: String,
    pub started_unix: u64,
    started: Instant,
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

    /// JSON for `/api/ps` and `/v1/models`.
    pub fn to_json(&self) -> Value {
        let p = self.snapshot();
        let (state, error) = match &p.done {
            None => ("downloading", None),
            Some(Ok(_)) => ("done", None),
            Some(Err(e)) => ("failed", Some(e.to_string())),
        };
        json!({
            "model": self.name,
            "source": self.source,
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
    /// The last attempt failed; it is forgotten now, so the next call starts over.
    PreviousFailed(StoreError),
}

pub struct Downloads {
    store: Store,
    table: Mutex<HashMap<String, Arc<Download>>>,
}

impl Downloads {
    pub fn new(store: Store) -> Downloads {
        Downloads { store, table: Mutex::new(HashMap::new()) }
    }

    /// Starts pulling `req` unless the same model is already being pulled.
    pub fn start(self: &Arc<Self>, req: PullRequest) -> Started {
        let name = req.installed_name();
        let mut table = self.table.lock().unwrap();
        if let Some(d) = table.get(&name) {
            match d.snapshot().done {
                None => return Started::Joined(d.clone()),
                Some(Err(e)) => {
                    table.remove(&name);
                    return Started::PreviousFailed(e);
                }
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
                Ok(o) => tracing::info!(model = %o.name, up_to_date = o.up_to_date, secs = d.started.elapsed().as_secs_f64(), "download finished"),
                Err(e) => tracing::warn!(model = %d.name, "download failed: {e}"),
            }
            let ok = result.is_ok();
            d.progress.send_modify(|p| p.done = Some(result));
            if ok {
                this.table.lock().unwrap().remove(&d.name);
            }
        });
        Started::New(download)
    }

    /// Downloads in the table (running, or failed and not yet reported), by name.
    pub fn list(&self) -> Vec<Arc<Download>> {
        let mut v: Vec<_> = self.table.lock().unwrap().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}
