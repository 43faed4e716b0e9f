//! The embedding cache: vectors already computed, kept in memory under a byte budget and
//! dropped least recently used first, so re-embedding text that did not change skips
//! tokenization and the worker.
//!
//! Content-addressed: the key is the SHA-256 of the model's identity (store name,
//! revision and quantization from its metadata, and a fingerprint of its files — names,
//! sizes, modification times, inodes — which changes when the model is removed and
//! pulled again or its files are replaced, and survives a restart, so the disk tier
//! `disk_cache.rs` can use the same keys), what is done to over-long input (truncated, refused, or chunked and with
//! which overlap: docs/long-documents.md), and the bytes the tokenizer sees
//! (the text with the model's prompt or instruction already in front). Anything that
//! changes the vector changes the key. A model that is forgotten also has its entries
//! dropped at once (`Pool::forget`), so they stop holding memory.
//!
//! Only text input is cached (token-id input is already the cheap part). The budget,
//! `embedding_cache.memory_mb`, counts each entry's vector plus [`ENTRY_OVERHEAD`].
//!
//! With `embedding_cache.disk_mb` set, a memory miss is looked up on disk and a hit there
//! is promoted to memory; every computed vector is also queued for the disk.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

pub use super::cached_vector::{Cached, Key};
use super::disk_cache::{DiskCache, DiskStats};
use crate::metrics::metrics;
use crate::store::metadata::ModelMetadata;
use crate::tokenize::LongInput;

/// Bytes counted per entry beside its vector: the key, the bookkeeping of the two maps
/// (hash table slot, B-tree node share) and the allocation headers, rounded up.
pub const ENTRY_OVERHEAD: usize = 160;

/// What `mlx-serve cache stats` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheStats {
    pub entries: usize,
    pub bytes: usize,
    pub budget_bytes: usize,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    /// The disk tier, when `embedding_cache.disk_mb` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskStats>,
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
    disk: Option<Arc<DiskCache>>,
}

/// The identity of a model's vectors, computed when its pool entry is created.
pub fn model_identity(name: &str, dir: &Path) -> String {
    let meta = ModelMetadata::read(dir);
    let revision = meta.as_ref().and_then(|m| m.revision.clone()).unwrap_or_default();
    let quantization = meta.as_ref().and_then(|m| m.quantization.clone()).unwrap_or_default();
    let files = files_fingerprint(dir);
    format!("{name}\u{0}{revision}\u{0}{quantization}\u{0}{files}")
}

/// The SHA-256 (hex) of every file's path, size, modification time and inode under `dir`
/// (two levels: pooling configs live in subfolders), in name order. A model removed and
/// pulled again, re-quantized or edited gets new files, so another fingerprint; a
/// restart keeps it. Links are followed (a store entry may be a link to a folder).
pub fn files_fingerprint(dir: &Path) -> String {
    fn walk(dir: &Path, rel: &str, depth: u32, out: &mut Vec<String>) {
        let Ok(read) = std::fs::read_dir(dir) else { return };
        for e in read.flatten() {
            let name = format!("{rel}{}", e.file_name().to_string_lossy());
            let Ok(meta) = std::fs::metadata(e.path()) else { continue };
            if meta.is_dir() {
                if depth > 0 {
                    walk(&e.path(), &format!("{name}/"), depth - 1, out);
                }
                continue;
            }
            let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
            #[cfg(unix)]
            let inode = std::os::unix::fs::MetadataExt::ino(&meta);
            #[cfg(not(unix))]
            let inode = 0u64;
            out.push(format!("{name}\u{0}{}\u{0}{}\u{0}{inode}", meta.len(), mtime.map_or(0, |d| d.as_nanos())));
        }
    }
    let mut lines = Vec::new();
    walk(dir, "", 1, &mut lines);
    lines.sort();
    let sum = ring::digest::digest(&SHA256, lines.join("\n").as_bytes());
    sum.as_ref().iter().take(16).map(|b| format!("{b:02x}")).collect()
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
    pub fn new(budget_bytes: usize, disk: Option<Arc<DiskCache>>) -> VectorCache {
        metrics().embedding_cache_budget_bytes.set(budget_bytes as f64);
        VectorCache { budget: budget_bytes, lru: Mutex::default(), disk }
    }

    pub fn enabled(&self) -> bool {
        self.budget > 0 || self.disk.is_some()
    }

    /// Looks every key up in memory (a hit becomes the most recently used), then what is
    /// missing on disk (a hit there is promoted to memory).
    pub fn get_many(&self, model: &str, keys: &[Key]) -> Vec<Option<Cached>> {
        if !self.enabled() {
            return vec![None; keys.len()];
        }
        let mut found = self.get_memory(keys);
        if let Some(disk) = &self.disk {
            let missing: Vec<usize> = (0..keys.len()).filter(|&i| found[i].is_none()).collect();
            if !missing.is_empty() {
                let missing_keys: Vec<Key> = missing.iter().map(|&i| keys[i]).collect();
                for (i, hit) in missing.into_iter().zip(disk.get_many(&missing_keys)) {
                    if let Some(hit) = hit {
                        self.insert_memory_of(model, keys[i], hit.clone());
                        found[i] = Some(hit);
                    }
                }
            }
        }
        found
    }

    fn get_memory(&self, keys: &[Key]) -> Vec<Option<Cached>> {
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
    /// past the budget, and queues it for the disk tier. A vector larger than the whole
    /// budget is not kept in memory.
    pub fn insert(&self, model: &str, key: Key, row: &[f32], tokens: u32, chunks: u32) {
        if let Some(disk) = &self.disk {
            disk.put(key, row, tokens, chunks);
        }
        self.insert_memory_of(model, key, Cached { row: row.into(), tokens, chunks });
    }

    fn insert_memory_of(&self, model: &str, key: Key, value: Cached) {
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

    /// Drops everything, in memory and on disk; returns the stats from before (the
    /// disk's entries and bytes from just before its clearing transaction). Blocks until
    /// the disk's writes queued before it are committed.
    pub fn clear(&self) -> CacheStats {
        let mut lru = self.lru.lock().unwrap();
        let mut before = self.stats_of(&lru);
        lru.map.clear();
        lru.order.clear();
        lru.bytes = 0;
        self.publish(&lru);
        drop(lru);
        if let (Some(disk), Some(stats)) = (&self.disk, before.disk.as_mut()) {
            (stats.entries, stats.bytes) = disk.clear();
        }
        before
    }

    pub fn stats(&self) -> CacheStats {
        self.stats_of(&self.lru.lock().unwrap())
    }

    /// The disk tier, if on.
    pub fn disk(&self) -> Option<&Arc<DiskCache>> {
        self.disk.as_ref()
    }

    fn stats_of(&self, lru: &Lru) -> CacheStats {
        CacheStats {
            entries: lru.map.len(),
            bytes: lru.bytes,
            budget_bytes: self.budget,
            hits: lru.hits,
            misses: lru.misses,
            evictions: lru.evictions,
            disk: self.disk.as_ref().map(|d| d.stats()),
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
        assert_ne!(
            k,
            key("m\u{0}r\u{0}\u{0}2", LongInput::Truncate, b"hello"),
            "another fingerprint of the model's files"
        );
        assert_ne!(k, key(m, LongInput::Refuse, b"hello"));
        assert_ne!(k, key(m, LongInput::Truncate, b"hello "));
        let chunked = key(m, LongInput::Chunk { overlap: 0 }, b"hello");
        assert!(chunked != k && chunked != key(m, LongInput::Refuse, b"hello"));
        assert_ne!(chunked, key(m, LongInput::Chunk { overlap: 1 }, b"hello"), "another overlap");
    }

    #[test]
    fn least_recently_used_goes_first_and_the_budget_holds() {
        let entry = 4 * 4 + ENTRY_OVERHEAD;
        let cache = VectorCache::new(3 * entry, None);
        let m = model("m");
        for i in 0..3u8 {
            cache.insert(m, [i; 32], &[i as f32; 4], 1, 1);
        }
        assert!(cache.get_many("m", &[[0; 32]])[0].is_some(), "0 is now the most recently used");
        cache.insert(m, [3; 32], &[3.0; 4], 1, 1);
        let found = cache.get_many("m", &[[0; 32], [1; 32], [2; 32], [3; 32]]);
        assert_eq!(found.iter().map(Option::is_some).collect::<Vec<_>>(), vec![true, false, true, true]);
        let s = cache.stats();
        assert_eq!((s.entries, s.bytes, s.evictions), (3, 3 * entry, 1));
        assert!(s.bytes <= s.budget_bytes);
    }

    #[test]
    fn purge_and_clear() {
        let cache = VectorCache::new(1 << 20, None);
        cache.insert(model("a"), [1; 32], &[1.0; 8], 3, 1);
        cache.insert(model("b"), [2; 32], &[2.0; 8], 3, 1);
        assert_eq!(cache.purge_model("a"), 1);
        assert!(cache.get_many("m", &[[1; 32]])[0].is_none());
        assert_eq!(cache.get_many("m", &[[2; 32]])[0].as_ref().unwrap().tokens, 3);
        assert_eq!(cache.clear().entries, 1);
        assert_eq!(cache.stats().entries, 0);
        assert_eq!(cache.stats().bytes, 0);
    }

    #[test]
    fn a_zero_budget_keeps_nothing() {
        let cache = VectorCache::new(0, None);
        cache.insert(model("a"), [1; 32], &[1.0; 8], 3, 1);
        assert!(!cache.enabled());
        assert!(cache.get_many("m", &[[1; 32]])[0].is_none());
    }
}
