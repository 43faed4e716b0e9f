//! The worker pool: one runner per model in use, created on first use, and the tasks that
//! apply the eviction policy (`eviction.rs`).
//!
//! A runner (and its tokenizer) is created the first time a model is asked for; its
//! worker process starts when work arrives and stops on eviction.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mlx_serve_protocol::model_dir::{self, ModelFacts};
use mlx_serve_protocol::ModelKind;
use tokio::sync::mpsc;

use super::actor::spawn_runner;
use super::disk_cache::DiskCache;
use super::eviction;
use super::handle::{PoolRequest, RunnerHandle, STATS_WAIT};
use super::vector_cache::{model_identity, VectorCache};
use super::RunnerConfig;
use crate::config::CacheConfig;
use crate::metrics::{metrics, process_rss_bytes};
use crate::store::Store;
use crate::tokenize::{ModelTokenizer, StaticQueryEncoder};

/// A model in use: its facts, its tokenizer and its runner.
pub struct ModelEntry {
    pub name: String,
    pub dir: PathBuf,
    pub facts: ModelFacts,
    pub tokenizer: Arc<ModelTokenizer>,
    /// An inference-free sparse encoder's query side, computed without a worker.
    pub static_query: Option<Arc<StaticQueryEncoder>>,
    pub runner: RunnerHandle,
    /// What its vectors are cached under (`vector_cache.rs`): name, revision,
    /// quantization and a fingerprint of its files.
    pub cache_id: Arc<str>,
}

/// Why the pool has no entry for a model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("model is not installed")]
    NotFound,
    /// Installed, but its files cannot be used (unsupported, broken tokenizer).
    #[error("{0}")]
    Unusable(String),
}

/// What the pool needs from the configuration.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub cache: CacheConfig,
    /// `models.preload`, as the user wrote the names.
    pub preload: Vec<String>,
    /// `embedding_cache.memory_mb` in bytes (0: no cache).
    pub vector_cache_bytes: usize,
    /// The embedding cache's disk tier (`embedding_cache.disk_mb`), opened by the daemon.
    pub vector_disk: Option<Arc<DiskCache>>,
}

struct PoolInner {
    store: Store,
    config: PoolConfig,
    runner_cfg: RunnerConfig,
    entries: Mutex<HashMap<String, Arc<ModelEntry>>>,
    /// Serializes first-use creation, so a burst of requests for a new model loads its
    /// tokenizer once (64 parallel loads of a tokenizer.json cost ~300 MB of heap).
    creating: tokio::sync::Mutex<()>,
    requests: mpsc::UnboundedSender<PoolRequest>,
    vectors: Arc<VectorCache>,
}

/// The runners by model. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

impl Pool {
    /// A pool over `store`; starts its eviction tasks (needs a tokio runtime).
    pub fn new(store: Store, config: PoolConfig, runner_cfg: RunnerConfig) -> Pool {
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = PoolInner {
            store,
            vectors: Arc::new(VectorCache::new(config.vector_cache_bytes, config.vector_disk.clone())),
            config,
            runner_cfg,
            entries: Mutex::new(HashMap::new()),
            creating: tokio::sync::Mutex::new(()),
            requests: tx,
        };
        let pool = Pool { inner: Arc::new(inner) };
        tokio::spawn(pool.clone().serve_requests(rx));
        tokio::spawn(pool.clone().sweep_idle());
        pool
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The embedding cache (`vector_cache.rs`).
    pub fn vectors(&self) -> &Arc<VectorCache> {
        &self.inner.vectors
    }

    /// The entry for `requested` (a store name or `org/name` repo id), creating its
    /// runner on first use.
    pub async fn get(&self, requested: &str) -> Result<Arc<ModelEntry>, EntryError> {
        let dir = self.inner.store.find(requested).ok_or(EntryError::NotFound)?;
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or(requested).to_owned();
        if let Some(e) = self.entry(&name) {
            return Ok(e);
        }
        let _creating = self.inner.creating.lock().await;
        if let Some(e) = self.entry(&name) {
            return Ok(e);
        }
        let load_dir = dir.clone();
        let (facts, tokenizer, static_query) = tokio::task::spawn_blocking(move || {
            let facts = model_dir::inspect(&load_dir).map_err(|e| e.to_string())?;
            let tokenizer = ModelTokenizer::load(&load_dir, &facts).map_err(|e| e.to_string())?;
            let static_query = StaticQueryEncoder::load(&load_dir, &facts).map_err(|e| e.to_string())?;
            Ok::<_, String>((facts, tokenizer, static_query))
        })
        .await
        .map_err(|e| EntryError::Unusable(e.to_string()))?
        .map_err(|e| EntryError::Unusable(format!("model {name}: {e}")))?;
        let store = &self.inner.store;
        let preload = self.inner.config.preload.iter().any(|p| p == &name || store.find(p).as_ref() == Some(&dir));
        let runner = spawn_runner(
            name.clone(),
            dir.clone(),
            facts.kind,
            preload,
            self.inner.runner_cfg.clone(),
            self.inner.requests.clone(),
        );
        let cache_id = model_identity(&name, &dir).into();
        let tokenizer = Arc::new(tokenizer);
        let static_query = static_query.map(Arc::new);
        let entry = Arc::new(ModelEntry { name: name.clone(), dir, facts, tokenizer, static_query, runner, cache_id });
        self.inner.entries.lock().unwrap().insert(name, entry.clone());
        Ok(entry)
    }

    /// The entry of a model already in use, by store name.
    pub fn entry(&self, name: &str) -> Option<Arc<ModelEntry>> {
        self.inner.entries.lock().unwrap().get(name).cloned()
    }

    /// Entries created so far (loaded or not), sorted by name.
    pub fn entries(&self) -> Vec<Arc<ModelEntry>> {
        let mut v: Vec<_> = self.inner.entries.lock().unwrap().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn runners(&self) -> Vec<RunnerHandle> {
        self.entries().iter().map(|e| e.runner.clone()).collect()
    }

    /// Stops a model's worker and forgets its runner (before its files are removed).
    pub async fn forget(&self, name: &str) {
        let entry = self.inner.entries.lock().unwrap().remove(name);
        // Its vectors go whether or not it was in use: its files are about to change.
        self.inner.vectors.purge_model(name);
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
        for kind in [ModelKind::Embedding, ModelKind::Reranker, ModelKind::Classifier] {
            let n = entries.iter().filter(|e| e.facts.kind == kind && e.runner.is_loaded()).count();
            m.models_loaded.with_label_values(&[kind.as_str()]).set(n as f64);
        }
        m.memory_usage_bytes.with_label_values(&["supervisor", ""]).set(process_rss_bytes() as f64);
        // All models at once: a busy worker answers only after its forward.
        let all = futures_util::future::join_all(entries.iter().map(|e| e.runner.stats_within(STATS_WAIT))).await;
        for (e, stats) in entries.iter().zip(all) {
            let stats = stats.unwrap_or_default();
            m.memory_usage_bytes.with_label_values(&["worker", &e.name]).set(stats.rss_bytes as f64);
            m.memory_usage_bytes.with_label_values(&["device", &e.name]).set(stats.device_bytes.unwrap_or(0) as f64);
            let reserved = stats.driver_reserved_bytes as f64;
            m.memory_usage_bytes.with_label_values(&["driver_reserved", &e.name]).set(reserved);
            let (active, cache) = (stats.mlx_active_bytes, stats.mlx_cache_bytes);
            m.memory_usage_bytes.with_label_values(&["mlx_active", &e.name]).set(active as f64);
            m.memory_usage_bytes.with_label_values(&["mlx_cache", &e.name]).set(cache as f64);
        }
    }

    async fn serve_requests(self, mut rx: mpsc::UnboundedReceiver<PoolRequest>) {
        while let Some(req) = rx.recv().await {
            match req {
                PoolRequest::MakeRoom { kind, name, reply } => {
                    let limit = match kind {
                        ModelKind::Embedding => self.inner.config.cache.max_embedding_models,
                        // Classifiers are cross-encoders too: the same bound, counted apart.
                        ModelKind::Reranker | ModelKind::Classifier => self.inner.config.cache.max_reranker_models,
                    };
                    eviction::make_room(self.runners(), kind, &name, limit).await;
                    let _ = reply.send(());
                }
            }
        }
    }

    async fn sweep_idle(self) {
        let cache = &self.inner.config.cache;
        let ttl = (cache.ttl_seconds > 0).then(|| Duration::from_secs(cache.ttl_seconds));
        let budget = (cache.max_workers_memory_mb > 0).then(|| cache.max_workers_memory_mb.saturating_mul(1 << 20));
        let period = match (ttl, budget) {
            (None, None) => return,
            (Some(ttl), None) => eviction::sweep_period(ttl),
            (ttl, Some(_)) => ttl.map_or(eviction::MEMORY_SWEEP_PERIOD, |t| {
                eviction::sweep_period(t).min(eviction::MEMORY_SWEEP_PERIOD)
            }),
        };
        loop {
            tokio::time::sleep(period).await;
            if let Some(ttl) = ttl {
                eviction::sweep(self.runners(), ttl).await;
            }
            if let Some(budget) = budget {
                eviction::sweep_memory(self.runners(), budget).await;
            }
        }
    }
}
