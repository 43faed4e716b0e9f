//! The embedding cache: vectors already computed, kept in memory under a byte budget and
//! dropped least recently used first, so re-embedding text that did not change skips
//! tokenization and the worker.
//!
//! Content-addressed: the key is the SHA-256 of the model's identity (store name,
//! revision and quantization from its metadata, and the generation of its pool entry,
//! which is new whenever the model is forgotten — removed, deleted, pulled again — and
//! loaded anew), what is done to over-long input (truncated, refused, or chunked and with
//! which overlap: docs/long-documents.md), and the bytes the tokenizer sees
//! (the text with the model's prompt or instruction already in front). Anything that
//! changes the vector changes the key. A model that is forgotten also has its entries
//! dropped at once (`Pool::forget`), so they stop holding memory.
//!
//! Only text input is cached (token-id input is already the cheap part). The budget,
//! `embedding_cache.memory_mb`, counts each entry's vector plus [`ENTRY_OVERHEAD`].

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

use crate::metrics::metrics;
use crate::store::metadata::ModelMetadata;
use crate::tokenize::LongInput;

/// Bytes counted per entry beside its vector: the key, the bookkeeping of the two maps
/// (hash table slot, B-tree node share) and the allocation headers, rounded up.
pub const ENTRY_OVERHEAD: usize = 160;

pub type Key = [u8; 32];

/// A cached vector, the tokens its input had (for `usage`) and the windows it was
/// pooled from (1 unless chunked).
#[derive(Debug, Clone)]
pub struct Cached {
    pub row: Arc<[f32]>,
    pub tokens: u32,
    pub chunks: u32,
}

/// What `mlx-serve cache stats` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheStats {
    pub entries: usize,
    pub bytes: usize,
    pub budget_bytes: usize,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

struct Node {
    model: Arc<str>,
    value: Cached,
    tick: u64,
}

#[derive(Default)]
struct Lru {
    map: HashMap<Key, Node>,
    /// Use order: tick → key; the smallest tick is the least recently used.
    order: BTreeMap<u64, Key>,
    tick: u64,
    bytes: usize,
    hits: u64,
    misses: u64,
    evictions: u64,
}

fn size_of(value: &Cached) -> usize {
    value.row.len() * 4 + ENTRY_OVERHEAD
}

impl Lru {
    fn touch(&mut self, key: &Key) -> Option<Cached> {
        self.tick += 1;
        let tick = self.tick;
        let node = self.map.get_mut(key)?;
        self.order.remove(&node.tick);
        node.tick = tick;
        self.order.insert(tick, *key);
        Some(node.value.clone())
    }

    fn remove(&mut self, key: &Key) {
        if let Some(node) = self.map.remove(key) {
            self.order.remove(&node.tick);
            self.bytes -= size_of(&node.value);
        }
    }
}

/// The cache. Cheap to share (`Arc`); a budget of 0 turns it off.
pub struct VectorCache {
    budget: usize,
    lru: Mutex<Lru>,
}

/// Generations of pool entries: a model loaded again after it was forgotten gets a new
/// one, so no key of its former files can match.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// The identity of a model's vectors, computed when its pool entry is created.
pub fn model_identity(name: &str, dir: &Path) -> String {
    let meta = ModelMetadata::read(dir);
    let revision = meta.as_ref().and_then(|m| m.revision.clone()).unwrap_or_default();
    let quantization = meta.as_ref().and_then(|m| m.quantization.clone()).unwrap_or_default();
    let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
    format!("{name}\u{0}{revision}\u{0}{quantization}\u{0}{generation}")
}

/// The key of `text` (as the tokenizer sees it) embedded by the model `identity`, with
/// over-long input treated as `long` says.
pub fn key(identity: &str, long: LongInput, text: &[u8]) -> Key {
    let mut ctx = Context::new(&SHA256);
    // Length prefixes keep the parts apart (no concatenation of two parts equals another).
    ctx.update(&(identity.len() as u64).to_le_bytes());
    ctx.update(identity.as_bytes());
    // Refuse and Truncate hash as the bool `truncate` did before chunking existed.
    match long {
        LongInput::Refuse => ctx.update(&[0]),
        LongInput::Truncate => ctx.update(&[1]),
        LongInput::Chunk { overlap } => {
            ctx.update(&[2]);
            ctx.update(&(overlap as u64).to_le_bytes());
        }
    }
    ctx.update(&(text.len() as u64).to_le_bytes());
    ctx.update(text);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl VectorCache {
    pub fn new(budget_bytes: usize) -> VectorCache {
        metrics().embedding_cache_budget_bytes.set(budget_bytes as f64);
        VectorCache { budget: budget_bytes, lru: Mutex::default() }
    }

    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    /// Looks every key up (a hit becomes the most recently used).
    pub fn get_many(&self, keys: &[Key]) -> Vec<Option<Cached>> {
        if !self.enabled() {
            return vec![None; keys.len()];
        }
        let mut lru = self.lru.lock().unwrap();
        let found: Vec<Option<Cached>> = keys.iter().map(|k| lru.touch(k)).collect();
        let hits = found.iter().filter(|f| f.is_some()).count() as u64;
        let misses = keys.len() as u64 - hits;
        lru.hits += hits;
        lru.misses += misses;
        drop(lru);
        let m = metrics();
        m.embedding_cache_hits_total.inc_by(hits);
        m.embedding_cache_misses_total.inc_by(misses);
        found
    }

    /// Stores a vector computed for `model`, dropping the least recently used entries
    /// past the budget. A vector larger than the whole budget is not kept.
    pub fn insert(&self, model: &str, key: Key, row: &[f32], tokens: u32, chunks: u32) {
        let value = Cached { row: row.into(), tokens, chunks };
        let size = size_of(&value);
        if size > self.budget {
            return;
        }
        let mut lru = self.lru.lock().unwrap();
        lru.remove(&key);
        let mut evicted = 0;
        while lru.bytes + size > self.budget {
            let Some((_, oldest)) = lru.order.pop_first() else { break };
            let node = lru.map.remove(&oldest).expect("order and map agree");
            lru.bytes -= size_of(&node.value);
            evicted += 1;
        }
        lru.evictions += evicted;
        lru.tick += 1;
        let tick = lru.tick;
        lru.order.insert(tick, key);
        lru.map.insert(key, Node { model: Arc::from(model), value, tick });
        lru.bytes += size;
        self.publish(&lru);
        metrics().embedding_cache_evictions_total.inc_by(evicted);
    }

    /// Drops every entry of `model` (it was removed, deleted or replaced).
    pub fn purge_model(&self, model: &str) -> usize {
        let mut lru = self.lru.lock().unwrap();
        let keys: Vec<Key> = lru.map.iter().filter(|(_, n)| &*n.model == model).map(|(k, _)| *k).collect();
        for k in &keys {
            lru.remove(k);
        }
        self.publish(&lru);
        keys.len()
    }

    /// Drops everything; returns the stats from before.
    pub fn clear(&self) -> CacheStats {
        let mut lru = self.lru.lock().unwrap();
        let before = self.stats_of(&lru);
        lru.map.clear();
        lru.order.clear();
        lru.bytes = 0;
        self.publish(&lru);
        before
    }

    pub fn stats(&self) -> CacheStats {
        self.stats_of(&self.lru.lock().unwrap())
    }

    fn stats_of(&self, lru: &Lru) -> CacheStats {
        CacheStats {
            entries: lru.map.len(),
            bytes: lru.bytes,
            budget_bytes: self.budget,
            hits: lru.hits,
            misses: lru.misses,
            evictions: lru.evictions,
        }
    }

    fn publish(&self, lru: &Lru) {
        let m = metrics();
        m.embedding_cache_bytes.set(lru.bytes as f64);
        m.embedding_cache_entries.set(lru.map.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str) -> &str {
        name
    }

    #[test]
    fn keys_differ_by_model_long_input_and_text() {
        let m = "m\u{0}r\u{0}\u{0}1";
        let k = key(m, LongInput::Truncate, b"hello");
        assert_eq!(k, key(m, LongInput::Truncate, b"hello"));
        assert_ne!(k, key("m\u{0}r\u{0}\u{0}2", LongInput::Truncate, b"hello"), "another generation of the model");
        assert_ne!(k, key(m, LongInput::Refuse, b"hello"));
        assert_ne!(k, key(m, LongInput::Truncate, b"hello "));
        let chunked = key(m, LongInput::Chunk { overlap: 0 }, b"hello");
        assert!(chunked != k && chunked != key(m, LongInput::Refuse, b"hello"));
        assert_ne!(chunked, key(m, LongInput::Chunk { overlap: 1 }, b"hello"), "another overlap");
    }

    #[test]
    fn least_recently_used_goes_first_and_the_budget_holds() {
        let entry = 4 * 4 + ENTRY_OVERHEAD;
        let cache = VectorCache::new(3 * entry);
        let m = model("m");
        for i in 0..3u8 {
            cache.insert(m, [i; 32], &[i as f32; 4], 1, 1);
        }
        assert!(cache.get_many(&[[0; 32]])[0].is_some(), "0 is now the most recently used");
        cache.insert(m, [3; 32], &[3.0; 4], 1, 1);
        let found = cache.get_many(&[[0; 32], [1; 32], [2; 32], [3; 32]]);
        assert_eq!(found.iter().map(Option::is_some).collect::<Vec<_>>(), vec![true, false, true, true]);
        let s = cache.stats();
        assert_eq!((s.entries, s.bytes, s.evictions), (3, 3 * entry, 1));
        assert!(s.bytes <= s.budget_bytes);
    }

    #[test]
    fn purge_and_clear() {
        let cache = VectorCache::new(1 << 20);
        cache.insert(model("a"), [1; 32], &[1.0; 8], 3, 1);
        cache.insert(model("b"), [2; 32], &[2.0; 8], 3, 1);
        assert_eq!(cache.purge_model("a"), 1);
        assert!(cache.get_many(&[[1; 32]])[0].is_none());
        assert_eq!(cache.get_many(&[[2; 32]])[0].as_ref().unwrap().tokens, 3);
        assert_eq!(cache.clear().entries, 1);
        assert_eq!(cache.stats().entries, 0);
        assert_eq!(cache.stats().bytes, 0);
    }

    #[test]
    fn a_zero_budget_keeps_nothing() {
        let cache = VectorCache::new(0);
        cache.insert(model("a"), [1; 32], &[1.0; 8], 3, 1);
        assert!(!cache.enabled());
        assert!(cache.get_many(&[[1; 32]])[0].is_none());
    }
}
