//! Prometheus metrics (`GET /metrics`, text exposition format).
//!
//! Names follow the seed design (`mlx_serve_*`). Label values are bounded: `endpoint` is a
//! route template, `model` an installed model name, `type` embedding|reranker, `status` an
//! HTTP status code — never raw paths or user strings. Requests that match no route share
//! the one label `endpoint="unmatched"`; a model's series are removed when it is deleted.
//!
//! `metrics.port` (off by default) serves the same text on a second listener. It has no
//! default of 9090 because 9090 is Prometheus' own listen port (`--web.listen-address`
//! default), so a Prometheus on the same Mac would collide with us. docs/metrics.md lists
//! every metric with example PromQL.

use std::sync::OnceLock;

use prometheus::{
    register_gauge_vec_with_registry, register_gauge_with_registry, register_histogram_vec_with_registry,
    register_int_counter_vec_with_registry, register_int_counter_with_registry, Encoder, Gauge, GaugeVec, HistogramVec,
    IntCounter, IntCounterVec, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub requests_total: IntCounterVec,
    pub request_duration_seconds: HistogramVec,
    pub request_size_bytes: HistogramVec,
    pub model_load_seconds: HistogramVec,
    pub model_inference_seconds: HistogramVec,
    pub worker_forward_seconds: HistogramVec,
    pub models_loaded: GaugeVec,
    pub cache_hits_total: IntCounterVec,
    pub cache_misses_total: IntCounterVec,
    pub cache_evictions_total: IntCounterVec,
    pub memory_usage_bytes: GaugeVec,
    pub batch_size: HistogramVec,
    pub queue_depth: GaugeVec,
    pub queue_depth_by_priority: GaugeVec,
    pub embedding_cache_hits_total: IntCounter,
    pub embedding_cache_misses_total: IntCounter,
    pub embedding_cache_evictions_total: IntCounter,
    pub embedding_cache_bytes: Gauge,
    pub embedding_cache_entries: Gauge,
    pub embedding_cache_budget_bytes: Gauge,
    pub embedding_cache_disk_hits_total: IntCounter,
    pub embedding_cache_disk_misses_total: IntCounter,
    pub embedding_cache_disk_evictions_total: IntCounter,
    pub embedding_cache_disk_dropped_writes_total: IntCounter,
    pub embedding_cache_disk_corrupt_total: IntCounter,
    pub embedding_cache_disk_bytes: Gauge,
    pub embedding_cache_disk_entries: Gauge,
    pub embedding_cache_disk_budget_bytes: Gauge,
    pub queue_wait_seconds: HistogramVec,
    /// Priorities that have a series per model, so `forget_model` can drop them.
    priorities_seen: std::sync::Mutex<std::collections::BTreeMap<String, std::collections::BTreeSet<i32>>>,
    pub worker_restarts_total: IntCounterVec,
    pub tokens_total: IntCounterVec,
    pub padded_tokens_total: IntCounterVec,
    pub worker_state: GaugeVec,
    pub uptime_seconds: Gauge,
}

fn exponential(start: f64, factor: f64, count: usize) -> Vec<f64> {
    prometheus::exponential_buckets(start, factor, count).expect("valid buckets")
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        let m = Metrics {
            requests_total: register_int_counter_vec_with_registry!(
                "mlx_serve_requests_total",
                "HTTP requests answered, by route template and status code",
                &["endpoint", "status"],
                r
            )
            .unwrap(),
            request_duration_seconds: register_histogram_vec_with_registry!(
                "mlx_serve_request_duration_seconds",
                "Time from request to response, by route template",
                &["endpoint"],
                exponential(0.0005, 2.0, 18),
                r
            )
            .unwrap(),
            request_size_bytes: register_histogram_vec_with_registry!(
                "mlx_serve_request_size_bytes",
                "Request body size, by route template",
                &["endpoint"],
                exponential(64.0, 4.0, 10),
                r
            )
            .unwrap(),
            model_load_seconds: register_histogram_vec_with_registry!(
                "mlx_serve_model_load_seconds",
                "Time for a worker to start and load its model",
                &["model"],
                exponential(0.05, 2.0, 12),
                r
            )
            .unwrap(),
            model_inference_seconds: register_histogram_vec_with_registry!(
                "mlx_serve_model_inference_seconds",
                "Time a batch spent in the worker (send to answer)",
                &["model"],
                exponential(0.0005, 2.0, 16),
                r
            )
            .unwrap(),
            worker_forward_seconds: register_histogram_vec_with_registry!(
                "mlx_serve_worker_forward_seconds",
                "Time the worker computed one batch (its forward pass, as it reports it)",
                &["model"],
                exponential(0.0005, 2.0, 16),
                r
            )
            .unwrap(),
            models_loaded: register_gauge_vec_with_registry!(
                "mlx_serve_models_loaded",
                "Models with a running worker, by type",
                &["type"],
                r
            )
            .unwrap(),
            cache_hits_total: register_int_counter_vec_with_registry!(
                "mlx_serve_cache_hits_total",
                "Requests that found their model's worker already loaded",
                &["type"],
                r
            )
            .unwrap(),
            cache_misses_total: register_int_counter_vec_with_registry!(
                "mlx_serve_cache_misses_total",
                "Requests that had to start their model's worker",
                &["type"],
                r
            )
            .unwrap(),
            cache_evictions_total: register_int_counter_vec_with_registry!(
                "mlx_serve_cache_evictions_total",
                "Workers stopped to give memory back (TTL, LRU, ctl)",
                &["type"],
                r
            )
            .unwrap(),
            memory_usage_bytes: register_gauge_vec_with_registry!(
                "mlx_serve_memory_usage_bytes",
                "Memory: component=supervisor (RSS) or, per model, worker (RSS), device (accelerator memory as the driver counts it), driver_reserved (CUDA pools), mlx_active, mlx_cache",
                &["component", "model"],
                r
            )
            .unwrap(),
            batch_size: register_histogram_vec_with_registry!(
                "mlx_serve_batch_size",
                "Sequences per batch sent to a worker",
                &["endpoint"],
                exponential(1.0, 2.0, 12),
                r
            )
            .unwrap(),
            queue_depth: register_gauge_vec_with_registry!(
                "mlx_serve_queue_depth",
                "Inputs waiting for a worker, per model",
                &["model"],
                r
            )
            .unwrap(),
            queue_depth_by_priority: register_gauge_vec_with_registry!(
                "mlx_serve_queue_depth_by_priority",
                "Inputs waiting for a worker, per model and request priority (lower runs first)",
                &["model", "priority"],
                r
            )
            .unwrap(),
            queue_wait_seconds: register_histogram_vec_with_registry!(
                "mlx_serve_queue_wait_seconds",
                "Time an input waited in its model's queue before its batch was sent, per request priority",
                &["model", "priority"],
                exponential(0.001, 2.0, 16),
                r
            )
            .unwrap(),
            priorities_seen: Default::default(),
            embedding_cache_hits_total: register_int_counter_with_registry!(
                "mlx_serve_embedding_cache_hits_total",
                "Texts whose vector came from the embedding cache (no tokenization, no worker)",
                r
            )
            .unwrap(),
            embedding_cache_misses_total: register_int_counter_with_registry!(
                "mlx_serve_embedding_cache_misses_total",
                "Texts looked up in the embedding cache and not found",
                r
            )
            .unwrap(),
            embedding_cache_evictions_total: register_int_counter_with_registry!(
                "mlx_serve_embedding_cache_evictions_total",
                "Vectors dropped from the embedding cache to stay within its budget",
                r
            )
            .unwrap(),
            embedding_cache_bytes: register_gauge_with_registry!(
                "mlx_serve_embedding_cache_bytes",
                "Bytes the embedding cache holds (vectors plus a fixed overhead per entry)",
                r
            )
            .unwrap(),
            embedding_cache_entries: register_gauge_with_registry!(
                "mlx_serve_embedding_cache_entries",
                "Vectors the embedding cache holds",
                r
            )
            .unwrap(),
            embedding_cache_budget_bytes: register_gauge_with_registry!(
                "mlx_serve_embedding_cache_budget_bytes",
                "The embedding cache's byte budget (embedding_cache.memory_mb; 0: off)",
                r
            )
            .unwrap(),
            embedding_cache_disk_hits_total: register_int_counter_with_registry!(
                "mlx_serve_embedding_cache_disk_hits_total",
                "Texts missed in memory and found in the embedding cache's disk tier",
                r
            )
            .unwrap(),
            embedding_cache_disk_misses_total: register_int_counter_with_registry!(
                "mlx_serve_embedding_cache_disk_misses_total",
                "Texts looked up in the embedding cache's disk tier and not found (or refused as corrupt)",
                r
            )
            .unwrap(),
            embedding_cache_disk_evictions_total: register_int_counter_with_registry!(
                "mlx_serve_embedding_cache_disk_evictions_total",
                "Vectors dropped from the disk tier to stay within its budget (oldest written first)",
                r
            )
            .unwrap(),
            embedding_cache_disk_dropped_writes_total: register_int_counter_with_registry!(
                "mlx_serve_embedding_cache_disk_dropped_writes_total",
                "Vectors not written to the disk tier because its write queue was full",
                r
            )
            .unwrap(),
            embedding_cache_disk_corrupt_total: register_int_counter_with_registry!(
                "mlx_serve_embedding_cache_disk_corrupt_total",
                "Disk-tier entries that failed their checksum: deleted, never served",
                r
            )
            .unwrap(),
            embedding_cache_disk_bytes: register_gauge_with_registry!(
                "mlx_serve_embedding_cache_disk_bytes",
                "Bytes of committed disk-tier entries, as its budget counts them",
                r
            )
            .unwrap(),
            embedding_cache_disk_entries: register_gauge_with_registry!(
                "mlx_serve_embedding_cache_disk_entries",
                "Committed vectors in the disk tier",
                r
            )
            .unwrap(),
            embedding_cache_disk_budget_bytes: register_gauge_with_registry!(
                "mlx_serve_embedding_cache_disk_budget_bytes",
                "The disk tier's budget for its file (embedding_cache.disk_mb; 0: off)",
                r
            )
            .unwrap(),
            worker_restarts_total: register_int_counter_vec_with_registry!(
                "mlx_serve_worker_restarts_total",
                "Workers restarted after a crash",
                &["model"],
                r
            )
            .unwrap(),
            tokens_total: register_int_counter_vec_with_registry!(
                "mlx_serve_tokens_total",
                "Real (unpadded) tokens sent to workers",
                &["model"],
                r
            )
            .unwrap(),
            padded_tokens_total: register_int_counter_vec_with_registry!(
                "mlx_serve_padded_tokens_total",
                "Tokens including padding sent to workers (padding ratio = 1 - tokens/padded)",
                &["model"],
                r
            )
            .unwrap(),
            worker_state: register_gauge_vec_with_registry!(
                "mlx_serve_worker_state",
                "1 for the state each model's worker is in",
                &["model", "state"],
                r
            )
            .unwrap(),
            uptime_seconds: register_gauge_with_registry!(
                "mlx_serve_uptime_seconds",
                "Seconds since the supervisor started",
                r
            )
            .unwrap(),
            registry: r,
        };
        // Series whose label values are known up front start at 0, so rate() and
        // "hits / (hits + misses)" work from the first scrape instead of appearing later.
        for kind in ["embedding", "reranker"] {
            for counter in [&m.cache_hits_total, &m.cache_misses_total, &m.cache_evictions_total] {
                counter.with_label_values(&[kind]);
            }
            m.models_loaded.with_label_values(&[kind]);
        }
        m
    }

    /// Drops every series labelled with `model` (it was deleted from the store), so the
    /// label set stays the set of installed models.
    pub fn forget_model(&self, model: &str) {
        for v in [&self.model_load_seconds, &self.model_inference_seconds, &self.worker_forward_seconds] {
            let _ = v.remove_label_values(&[model]);
        }
        for v in [&self.worker_restarts_total, &self.tokens_total, &self.padded_tokens_total] {
            let _ = v.remove_label_values(&[model]);
        }
        let _ = self.queue_depth.remove_label_values(&[model]);
        for p in self.priorities_seen.lock().unwrap().remove(model).unwrap_or_default() {
            let p = p.to_string();
            let _ = self.queue_depth_by_priority.remove_label_values(&[model, &p]);
            let _ = self.queue_wait_seconds.remove_label_values(&[model, &p]);
        }
        for component in ["worker", "device", "driver_reserved", "mlx_active", "mlx_cache"] {
            let _ = self.memory_usage_bytes.remove_label_values(&[component, model]);
        }
        for state in crate::worker::WorkerState::ALL {
            let _ = self.worker_state.remove_label_values(&[model, state.as_str()]);
        }
    }

    /// Sets `model`'s queue depth per priority; a priority no longer queued reads 0.
    pub fn set_queue_by_priority(&self, model: &str, depth: &std::collections::BTreeMap<i32, usize>) {
        let mut seen = self.priorities_seen.lock().unwrap();
        let known = seen.entry(model.to_owned()).or_default();
        known.extend(depth.keys().copied());
        for p in known.iter() {
            let n = depth.get(p).copied().unwrap_or(0);
            self.queue_depth_by_priority.with_label_values(&[model, &p.to_string()]).set(n as f64);
        }
    }

    /// Records how long an input of `priority` waited in `model`'s queue.
    pub fn observe_queue_wait(&self, model: &str, priority: i32, waited: f64) {
        self.priorities_seen.lock().unwrap().entry(model.to_owned()).or_default().insert(priority);
        self.queue_wait_seconds.with_label_values(&[model, &priority.to_string()]).observe(waited);
    }

    /// Text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding");
        String::from_utf8(buf).expect("utf-8")
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Resident set size of this process: VmRSS from /proc/self/status on Linux (see proc(5));
/// elsewhere getrusage's `ru_maxrss`, which macOS reports in bytes but as the peak, not
/// the current size.
pub fn process_rss_bytes() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        // "VmRSS:     11232 kB"
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
        if let Some(kib) = kib {
            return kib * 1024;
        }
    }
    match nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) {
        Ok(u) => u.max_rss() as u64,
        Err(_) => 0,
    }
}
