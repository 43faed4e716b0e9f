//! The worker pool: one runner per model in use, created on first use, and the eviction
//! policy that gives unified memory back.
//!
//! - A runner (and its tokenizer) is created the first time a model is asked for; its
//!   worker process starts when work arrives and stops on eviction.
//! - Before a worker starts, the pool keeps at most `cache.max_embedding_models` /
//!   `cache.max_reranker_models` loaded by evicting the least recently used idle ones
//!   (preloaded models last).
//! - A sweeper stops workers idle longer than `cache.ttl_seconds` (preloaded ones stay).
//! - A worker with queued or in-flight work is never evicted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mlx_serve_protocol::model_dir::{self, ModelFacts};
use mlx_serve_protocol::ModelKind;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::metrics::metrics;
use crate::runner::{spawn_runner, PoolRequest, RunnerConfig, RunnerHandle};
use crate::store::Store;
use crate::tokenize::ModelTokenizer;

/// A model in use: its facts, its tokenizer and its runner.
pub struct ModelEntry {
    pub name: String,
    pub dir: PathBuf,
    pub facts: ModelFacts,
    pub tokenizer: Arc<ModelTokenizer>,
    pub runner: RunnerHandle,
}

#[derive(Debug, Clone)]
pub enum ResolveError {
    NotFound,
    Broken(String),
}

struct PoolInner {
    store: Store,
    config: Arc<Config>,
    runner_cfg: RunnerConfig,
    entries: Mutex<HashMap<String, Arc<ModelEntry>>>,
    /// Serializes first-use creation, so a burst of requests for a new model loads its
    /// tokenizer once (64 parallel loads of a tokenizer.json cost ~300 MB of heap).
    creating: tokio::sync::Mutex<()>,
    requests: mpsc::UnboundedSender<PoolRequest>,
}

#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

impl Pool {
    pub fn new(store: Store, config: Arc<Config>, runner_cfg: RunnerConfig) -> Pool {
        let (tx, rx) = mpsc::unbounded_channel();
        let pool = Pool {
            inner: Arc::new(PoolInner { store, config, runner_cfg, entries: Mutex::new(HashMap::new()), creating: tokio::sync::Mutex::new(()), requests: tx }),
        };
        tokio::spawn(pool.clone().serve_requests(rx));
        tokio::spawn(pool.clone().sweep_idle());
        pool
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The entry for `requested` (a store name or `org/name` repo id), creating its
    /// runner on first use.
    pub async fn get(&self, requested: &str) -> Result<Arc<ModelEntry>, ResolveError> {
        let dir = self.inner.store.find(requested).ok_or_else(|| ResolveError::NotFound)?;
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or(requested).to_owned();
        if let Some(e) = self.inner.entries.lock().unwrap().get(&name) {
            return Ok(e.clone());
        }
        let _creating = self.inner.creating.lock().await;
        if let Some(e) = self.inner.entries.lock().unwrap().get(&name) {
            return Ok(e.clone());
        }
        let load_dir = dir.clone();
        let (facts, tokenizer) = tokio::task::spawn_blocking(move || {
            let facts = model_dir::inspect(&load_dir)?;
            let tokenizer = ModelTokenizer::load(&load_dir, &facts)?;
            Ok::<_, String>((facts, tokenizer))
        })
        .await
        .map_err(|e| ResolveError::Broken(e.to_string()))?
        .map_err(|e| ResolveError::Broken(format!("model {name}: {e}")))?;
        let mut entries = self.inner.entries.lock().unwrap();
        if let Some(e) = entries.get(&name) {
            return Ok(e.clone());
        }
        let preload = self.inner.config.models.preload.iter().any(|p| p == &name || self.inner.store.find(p).as_ref() == Some(&dir));
        let runner = spawn_runner(
            name.clone(),
            dir.clone(),
            facts.kind,
            preload,
            self.inner.runner_cfg.clone(),
            self.inner.requests.clone(),
        );
        let entry = Arc::new(ModelEntry { name: name.clone(), dir, facts, tokenizer: Arc::new(tokenizer), runner });
        entries.insert(name, entry.clone());
        Ok(entry)
    }

    /// Entries created so far (loaded or not), sorted by name.
    pub fn entries(&self) -> Vec<Arc<ModelEntry>> {
        let mut v: Vec<_> = self.inner.entries.lock().unwrap().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Stops a model's worker and forgets its runner (before its files are removed).
    pub async fn forget(&self, name: &str) {
        let entry = self.inner.entries.lock().unwrap().remove(name);
        if let Some(e) = entry {
            e.runner.shutdown().await;
            // After shutdown, so the stopped runner cannot publish its series again.
            metrics().forget_model(name);
        }
    }

    /// Stops every worker (graceful shutdown).
    pub async fn shutdown(&self) {
        let entries = self.entries();
        futures_util::future::join_all(entries.iter().map(|e| e.runner.shutdown())).await;
    }

    /// Updates the gauges derived from runner states, and worker memory.
    pub async fn refresh_gauges(&self) {
        let m = metrics();
        let entries = self.entries();
        for kind in [ModelKind::Embedding, ModelKind::Reranker] {
            let n = entries.iter().filter(|e| e.facts.kind == kind && e.runner.is_loaded()).count();
            m.models_loaded.with_label_values(&[kind.as_str()]).set(n as f64);
        }
        m.memory_usage_bytes
            .with_label_values(&["supervisor", ""])
            .set(crate::metrics::process_rss_bytes() as f64);
        for e in &entries {
            let stats = if e.runner.is_loaded() {
                tokio::time::timeout(Duration::from_millis(500), e.runner.stats()).await.ok().flatten()
            } else {
                None
            };
            let (rss, active, cache) =
                stats.map(|s| (s.rss_bytes, s.mlx_active_bytes, s.mlx_cache_bytes)).unwrap_or((0, 0, 0));
            m.memory_usage_bytes.with_label_values(&["worker", &e.name]).set(rss as f64);
            m.memory_usage_bytes.with_label_values(&["mlx_active", &e.name]).set(active as f64);
            m.memory_usage_bytes.with_label_values(&["mlx_cache", &e.name]).set(cache as f64);
        }
    }

    async fn serve_requests(self, mut rx: mpsc::UnboundedReceiver<PoolRequest>) {
        while let Some(req) = rx.recv().await {
            match req {
                PoolRequest::MakeRoom { kind, name, reply } => {
                    self.make_room(kind, &name).await;
                    let _ = reply.send(());
                }
            }
        }
    }

    async fn make_room(&self, kind: ModelKind, starting: &str) {
        let limit = match kind {
            ModelKind::Embedding => self.inner.config.cache.max_embedding_models,
            ModelKind::Reranker => self.inner.config.cache.max_reranker_models,
        }
        .max(1);
        let mut loaded: Vec<Arc<ModelEntry>> = self
            .entries()
            .into_iter()
            .filter(|e| e.facts.kind == kind && e.name != starting && e.runner.is_loaded())
            .collect();
        if loaded.len() < limit {
            return;
        }
        // Least recently used first; preloaded models last.
        loaded.sort_by_key(|e| (e.runner.is_preloaded(), e.runner.status.lock().unwrap().last_used));
        let mut excess = loaded.len() + 1 - limit;
        for e in loaded {
            if excess == 0 {
                break;
            }
            if !e.runner.is_idle() {
                continue;
            }
            if e.runner.evict().await.is_ok() {
                tracing::info!(model = %e.name, reason = "lru", "evicted worker");
                excess -= 1;
            }
        }
        if excess > 0 {
            tracing::warn!(model = starting, "over the {} model limit: the other workers are busy", kind.as_str());
        }
    }

    async fn sweep_idle(self) {
        let ttl = self.inner.config.cache.ttl_seconds;
        if ttl == 0 {
            return;
        }
        let ttl = Duration::from_secs(ttl);
        let period = (ttl / 4).clamp(Duration::from_millis(250), Duration::from_secs(10));
        loop {
            tokio::time::sleep(period).await;
            for e in self.entries() {
                let idle_for = Instant::now().saturating_duration_since(e.runner.status.lock().unwrap().last_used);
                if e.runner.is_preloaded() || !e.runner.is_loaded() || !e.runner.is_idle() || idle_for < ttl {
                    continue;
                }
                if e.runner.evict().await.is_ok() {
                    tracing::info!(model = %e.name, reason = "ttl", idle_seconds = idle_for.as_secs(), "evicted worker");
                }
            }
        }
    }
}
