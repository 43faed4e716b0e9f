//! The disk tier of the embedding cache: vectors kept in one redb file per daemon, under
//! the in-memory LRU (`vector_cache.rs`), so they survive a restart. docs/cache.md says
//! why redb, what is acknowledged when, and how the budget is kept.
//!
//! - Reads run on the caller's thread in a read transaction (redb's readers never wait
//!   for the writer).
//! - Writes go through a bounded channel to one writer thread that puts everything queued
//!   into one write transaction; a full channel drops the write (counted). An entry is
//!   acknowledged when its transaction commits (redb fsyncs on commit).
//! - Eviction is in insertion order, in the same transaction as the inserts: reads do not
//!   write, so a hit does not make an entry younger.
//! - Each value carries the first 8 bytes of the SHA-256 of the rest of it (dimension,
//!   token and window counts, sequence number, the floats); a value that fails the check
//!   is never served, it is deleted and counted.

// redb's error type is 160 bytes; it travels only on the failure paths, once per batch.
#![allow(clippy::result_large_err)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, RwLock};

use redb::{Database, DatabaseError, ReadableTable, ReadableTableMetadata, TableDefinition};
use ring::digest::{digest, SHA256};
use serde::{Deserialize, Serialize};

use super::cached_vector::{Cached, Key};
use crate::metrics::metrics;

/// key (32 bytes) → value (see [`encode`]).
const VECTORS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("vectors");
/// insertion sequence number → key: the eviction order, oldest first.
const ORDER: TableDefinition<u64, &[u8]> = TableDefinition::new("order");
/// "seq" (the next sequence number) and "bytes" (the entries' bytes as the budget counts).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Bytes counted per entry beside its value: its key in two tables, the order row, and a
/// share of the B-tree pages' headers, rounded up.
pub const ENTRY_OVERHEAD: u64 = 128;

/// The entries' bytes start under this share of the budget: copy-on-write B-trees hold
/// pages freed by the last transactions and partly filled pages beside the live data,
/// an empty file takes about 1.5 MiB, and the file grows by doubling
/// (`Writer::keep_file_within_budget` lowers the share when the file does not fit).
const LIVE_SHARE: f64 = 0.3;

/// A compacted file should take at most this share of the budget, so that it can grow
/// (by doubling) and reuse freed pages for a while before the next compaction.
const COMPACTED_SHARE: f64 = 0.45;

/// Writes waiting for the writer thread; past this a write is dropped and counted.
const QUEUE: usize = 4096;
/// The most writes put into one transaction.
const BATCH: usize = 1024;

/// Header: checksum (8), dimension (4), tokens (4), chunks (4), sequence number (8).
const HEADER: usize = 28;

/// What `mlx-serve cache stats` shows of the disk tier.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskStats {
    pub path: String,
    /// Committed entries and their bytes as the budget counts them.
    pub entries: u64,
    pub bytes: u64,
    pub budget_bytes: u64,
    /// The file's size on disk.
    pub file_bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub dropped_writes: u64,
    pub corrupt: u64,
}

/// Why the disk tier could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "the embedding cache file {0} is in use by another mlx-serve daemon; give this one another \
         embedding_cache.disk_path (or MLX_SERVE_EMBEDDING_CACHE_DISK_PATH) or set embedding_cache.disk_mb to 0"
    )]
    InUse(PathBuf),
    #[error("cannot open the embedding cache file {path}: {cause}")]
    Failed { path: PathBuf, cause: String },
}

enum Write {
    Put(Key, Vec<u8>),
    Delete(Key),
    Clear(std::sync::mpsc::Sender<(u64, u64)>),
    /// Answered once everything queued before it is committed.
    Flush(std::sync::mpsc::Sender<(u64, u64)>),
    /// Ends the writer thread (the cache is dropped) after what was queued before it.
    Stop,
}

#[derive(Default)]
struct Counters {
    entries: AtomicU64,
    bytes: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    dropped: AtomicU64,
    corrupt: AtomicU64,
}

/// The disk tier. `Arc`-shared; the writer thread ends when the last handle is dropped.
pub struct DiskCache {
    path: PathBuf,
    budget: u64,
    /// Readers and the writer share it; compaction (which needs no live transaction)
    /// takes it exclusively.
    db: Arc<RwLock<Database>>,
    counters: Arc<Counters>,
    writes: SyncSender<Write>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for DiskCache {
    /// Commits what is queued and closes the file before returning, so the file can be
    /// opened again at once.
    fn drop(&mut self) {
        let _ = self.writes.send(Write::Stop);
        if let Some(t) = self.writer.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache").field("path", &self.path).field("budget", &self.budget).finish()
    }
}

fn open_db(path: &Path) -> Result<Database, OpenError> {
    let failed = |cause: String| OpenError::Failed { path: path.to_owned(), cause };
    // redb can panic on a file whose pages are garbage; that is a corrupt file too.
    let opened = std::panic::catch_unwind(|| Database::create(path));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(DatabaseError::DatabaseAlreadyOpen)) => Err(OpenError::InUse(path.to_owned())),
        Ok(Err(e)) => Err(failed(e.to_string())),
        Err(_) => Err(failed("the file is not a readable cache store".into())),
    }
}

impl DiskCache {
    /// Opens (or creates) the store at `path` with a budget of `budget_bytes` for the
    /// file. A file that cannot be read as a store (corrupt, or another format) is moved
    /// aside to `<path>.corrupt` and a new one is created, with a log line; a file another
    /// daemon holds is an error.
    pub fn open(path: &Path, budget_bytes: u64) -> Result<Arc<DiskCache>, OpenError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| OpenError::Failed { path: path.to_owned(), cause: e.to_string() })?;
        }
        let db = match open_db(path) {
            Err(OpenError::Failed { cause, .. }) if path.exists() => {
                let aside = path.with_extension("redb.corrupt");
                tracing::error!(
                    path = %path.display(), aside = %aside.display(), %cause,
                    "embedding cache file unreadable; moved aside, starting an empty one"
                );
                std::fs::rename(path, &aside)
                    .map_err(|e| OpenError::Failed { path: path.to_owned(), cause: e.to_string() })?;
                open_db(path)?
            }
            other => other?,
        };
        let counters = Arc::new(Counters::default());
        let (entries, bytes) =
            totals(&db).map_err(|e| OpenError::Failed { path: path.to_owned(), cause: e.to_string() })?;
        counters.entries.store(entries, Ordering::Relaxed);
        counters.bytes.store(bytes, Ordering::Relaxed);
        let db = Arc::new(RwLock::new(db));
        let (tx, rx) = sync_channel(QUEUE);
        let live_target = (budget_bytes as f64 * LIVE_SHARE) as u64;
        let writer = Writer {
            path: path.to_owned(),
            budget: budget_bytes,
            db: db.clone(),
            counters: counters.clone(),
            live_target,
        };
        let writer = std::thread::Builder::new()
            .name("embedding-disk-cache".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| OpenError::Failed { path: path.to_owned(), cause: e.to_string() })?;
        let cache =
            DiskCache { path: path.to_owned(), budget: budget_bytes, db, counters, writes: tx, writer: Some(writer) };
        cache.publish();
        metrics().embedding_cache_disk_budget_bytes.set(budget_bytes as f64);
        tracing::info!(path = %path.display(), entries, bytes, budget = budget_bytes, "embedding cache disk tier open");
        Ok(Arc::new(cache))
    }

    /// Looks every key up; a value that fails its checksum is a miss, deleted and counted.
    pub fn get_many(&self, keys: &[Key]) -> Vec<Option<Cached>> {
        let looked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.read(keys)));
        let (found, corrupt) = match looked {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "embedding cache disk read failed; computing instead");
                (vec![None; keys.len()], Vec::new())
            }
            Err(_) => {
                tracing::error!("embedding cache disk read hit an unreadable page; computing instead");
                (vec![None; keys.len()], Vec::new())
            }
        };
        for key in &corrupt {
            tracing::error!(key = %hex(key), "embedding cache entry failed its checksum; deleted, not served");
            let _ = self.writes.try_send(Write::Delete(*key));
        }
        let hits = found.iter().filter(|f| f.is_some()).count() as u64;
        let misses = keys.len() as u64 - hits;
        let c = &self.counters;
        c.hits.fetch_add(hits, Ordering::Relaxed);
        c.misses.fetch_add(misses, Ordering::Relaxed);
        c.corrupt.fetch_add(corrupt.len() as u64, Ordering::Relaxed);
        let m = metrics();
        m.embedding_cache_disk_hits_total.inc_by(hits);
        m.embedding_cache_disk_misses_total.inc_by(misses);
        m.embedding_cache_disk_corrupt_total.inc_by(corrupt.len() as u64);
        found
    }

    #[allow(clippy::type_complexity)]
    fn read(&self, keys: &[Key]) -> Result<(Vec<Option<Cached>>, Vec<Key>), redb::Error> {
        let db = self.db.read().unwrap();
        let txn = db.begin_read()?;
        let table = match txn.open_table(VECTORS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok((vec![None; keys.len()], Vec::new())),
            Err(e) => return Err(e.into()),
        };
        let mut found = Vec::with_capacity(keys.len());
        let mut corrupt = Vec::new();
        for key in keys {
            let hit = match table.get(&key[..])? {
                Some(v) => match decode(v.value()) {
                    Some((cached, _)) => Some(cached),
                    None => {
                        corrupt.push(*key);
                        None
                    }
                },
                None => None,
            };
            found.push(hit);
        }
        Ok((found, corrupt))
    }

    /// Queues a vector for the writer; drops it (counted) when the queue is full.
    pub fn put(&self, key: Key, row: &[f32], tokens: u32, chunks: u32) {
        match self.writes.try_send(Write::Put(key, encode(row, tokens, chunks, 0))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                metrics().embedding_cache_disk_dropped_writes_total.inc();
            }
        }
    }

    /// Deletes every entry (after the writes queued before it); returns the entries and
    /// bytes from before.
    pub fn clear(&self) -> (u64, u64) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.writes.send(Write::Clear(tx)).is_err() {
            return (0, 0);
        }
        rx.recv().unwrap_or((0, 0))
    }

    /// Waits until every write queued before it is committed (or dropped).
    pub fn flush(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.writes.send(Write::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    pub fn stats(&self) -> DiskStats {
        let c = &self.counters;
        DiskStats {
            path: self.path.display().to_string(),
            entries: c.entries.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            budget_bytes: self.budget,
            file_bytes: std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0),
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            dropped_writes: c.dropped.load(Ordering::Relaxed),
            corrupt: c.corrupt.load(Ordering::Relaxed),
        }
    }

    fn publish(&self) {
        publish(&self.counters);
    }
}

fn publish(c: &Counters) {
    let m = metrics();
    m.embedding_cache_disk_entries.set(c.entries.load(Ordering::Relaxed) as f64);
    m.embedding_cache_disk_bytes.set(c.bytes.load(Ordering::Relaxed) as f64);
}

fn hex(key: &Key) -> String {
    key.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The committed entries and their bytes.
fn totals(db: &Database) -> Result<(u64, u64), redb::Error> {
    let txn = db.begin_read()?;
    let entries = match txn.open_table(VECTORS) {
        Ok(t) => t.len()?,
        Err(redb::TableError::TableDoesNotExist(_)) => 0,
        Err(e) => return Err(e.into()),
    };
    let bytes = match txn.open_table(META) {
        Ok(t) => t.get("bytes")?.map_or(0, |v| v.value()),
        Err(redb::TableError::TableDoesNotExist(_)) => 0,
        Err(e) => return Err(e.into()),
    };
    Ok((entries, bytes))
}

/// A value: checksum, dimension, tokens, chunks, sequence number, the floats (LE).
fn encode(row: &[f32], tokens: u32, chunks: u32, seq: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + row.len() * 4);
    v.extend_from_slice(&[0; 8]);
    v.extend_from_slice(&(row.len() as u32).to_le_bytes());
    v.extend_from_slice(&tokens.to_le_bytes());
    v.extend_from_slice(&chunks.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    for x in row {
        v.extend_from_slice(&x.to_le_bytes());
    }
    seal(&mut v);
    v
}

/// Writes the checksum of `v[8..]` into `v[..8]`.
fn seal(v: &mut [u8]) {
    let sum = digest(&SHA256, &v[8..]);
    v[..8].copy_from_slice(&sum.as_ref()[..8]);
}

fn u32_at(v: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(v[at..at + 4].try_into().unwrap())
}

/// The cached vector and sequence number of a value; `None` when it fails its checksum
/// or its length does not match its dimension.
fn decode(v: &[u8]) -> Option<(Cached, u64)> {
    if v.len() < HEADER || digest(&SHA256, &v[8..]).as_ref()[..8] != v[..8] {
        return None;
    }
    let dim = u32_at(v, 8) as usize;
    if v.len() != HEADER + dim * 4 {
        return None;
    }
    let seq = u64::from_le_bytes(v[20..28].try_into().unwrap());
    let row: Vec<f32> = v[HEADER..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    Some((Cached { row: row.into(), tokens: u32_at(v, 12), chunks: u32_at(v, 16) }, seq))
}

fn cost(value_len: usize) -> u64 {
    value_len as u64 + ENTRY_OVERHEAD
}

struct Writer {
    path: PathBuf,
    budget: u64,
    db: Arc<RwLock<Database>>,
    counters: Arc<Counters>,
    /// The entries' bytes are kept under this; lowered when the file (measured) still
    /// exceeds the budget after compaction.
    live_target: u64,
}

impl Writer {
    fn run(mut self, rx: Receiver<Write>) {
        // One transaction's inserts are capped in bytes too: copy-on-write holds the pages
        // a transaction replaces until the next one commits.
        let batch_bytes = (self.budget / 64).max(16 << 10);
        while let Ok(first) = rx.recv() {
            if matches!(first, Write::Stop) {
                return;
            }
            let mut batch = vec![first];
            let mut bytes = 0;
            let mut stop = false;
            while batch.len() < BATCH && bytes < batch_bytes {
                match rx.try_recv() {
                    Ok(Write::Stop) => {
                        stop = true;
                        break;
                    }
                    Ok(w) => {
                        if let Write::Put(_, v) = &w {
                            bytes += cost(v.len());
                        }
                        batch.push(w)
                    }
                    Err(_) => break,
                }
            }
            let mut replies = Vec::new();
            let result = self.apply(batch, &mut replies);
            if let Err(e) = &result {
                tracing::error!(error = %e, "embedding cache disk write failed; those vectors were not kept");
            }
            self.keep_file_within_budget();
            publish(&self.counters);
            let before = result.unwrap_or_default();
            for r in replies {
                let _ = r.send(before);
            }
            if stop {
                return;
            }
        }
    }

    /// One transaction for the whole batch. Returns the totals from before a `Clear`.
    fn apply(
        &self,
        batch: Vec<Write>,
        replies: &mut Vec<std::sync::mpsc::Sender<(u64, u64)>>,
    ) -> Result<(u64, u64), redb::Error> {
        let db = self.db.read().unwrap();
        let txn = db.begin_write()?;
        let live_budget = self.live_target;
        let mut before_clear = (0, 0);
        let mut evicted = 0;
        let totals;
        {
            let mut vectors = txn.open_table(VECTORS)?;
            let mut order = txn.open_table(ORDER)?;
            let mut meta = txn.open_table(META)?;
            let mut seq = meta.get("seq")?.map_or(0, |v| v.value());
            let mut bytes = meta.get("bytes")?.map_or(0, |v| v.value());
            for w in batch {
                match w {
                    Write::Put(key, mut value) => {
                        let size = cost(value.len());
                        if size > live_budget || vectors.get(&key[..])?.is_some() {
                            continue;
                        }
                        evicted += evict(&mut vectors, &mut order, &mut bytes, live_budget - size)?;
                        value[20..28].copy_from_slice(&seq.to_le_bytes());
                        seal(&mut value);
                        vectors.insert(&key[..], &value[..])?;
                        order.insert(seq, &key[..])?;
                        seq += 1;
                        bytes += size;
                    }
                    Write::Delete(key) => {
                        bytes = bytes.saturating_sub(remove(&mut vectors, &key)?);
                    }
                    Write::Clear(reply) => {
                        before_clear = (vectors.len()?, bytes);
                        vectors.retain(|_, _| false)?;
                        order.retain(|_, _| false)?;
                        bytes = 0;
                        replies.push(reply);
                    }
                    Write::Flush(reply) => replies.push(reply),
                    Write::Stop => unreachable!("taken out before the batch"),
                }
            }
            // A lowered target applies to what is already there too.
            evicted += evict(&mut vectors, &mut order, &mut bytes, live_budget)?;
            meta.insert("seq", seq)?;
            meta.insert("bytes", bytes)?;
            totals = (vectors.len()?, bytes);
        }
        txn.commit()?;
        // Counted once committed: `cache stats` reports acknowledged entries only.
        self.counters.entries.store(totals.0, Ordering::Relaxed);
        self.counters.bytes.store(totals.1, Ordering::Relaxed);
        self.counters.evictions.fetch_add(evicted, Ordering::Relaxed);
        metrics().embedding_cache_disk_evictions_total.inc_by(evicted);
        Ok(before_clear)
    }

    fn file_size(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// Keeps the file within the budget at every instant. redb grows a file by doubling
    /// its usable part (redb 2.6 `PageManager::grow`), so a file of at most half the
    /// budget cannot outgrow it in one step: past half, compact; still above
    /// [`COMPACTED_SHARE`] after compacting, lower the entries' target by a fifth, evict
    /// down to it and compact again (the headroom keeps compaction rare).
    fn keep_file_within_budget(&mut self) {
        if self.file_size() <= self.budget / 2 {
            return;
        }
        for _ in 0..12 {
            let size = self.file_size();
            let compacted = self.db.write().unwrap().compact();
            let after = self.file_size();
            tracing::info!(before = size, after, budget = self.budget, "embedding cache file compacted");
            if let Err(e) = compacted {
                tracing::warn!(error = %e, "embedding cache file not compacted");
                return;
            }
            if after as f64 <= self.budget as f64 * COMPACTED_SHARE {
                return;
            }
            self.live_target = self.live_target * 4 / 5;
            tracing::info!(
                target = self.live_target,
                "embedding cache disk tier: entries' target lowered to fit the file"
            );
            if let Err(e) = self.apply(Vec::new(), &mut Vec::new()) {
                tracing::error!(error = %e, "embedding cache disk eviction failed");
                return;
            }
        }
    }
}

/// Pops the oldest entries until `bytes` is at most `target`; returns how many went.
fn evict(
    vectors: &mut redb::Table<&[u8], &[u8]>,
    order: &mut redb::Table<u64, &[u8]>,
    bytes: &mut u64,
    target: u64,
) -> Result<u64, redb::Error> {
    let mut evicted = 0;
    while *bytes > target {
        let Some((seq, key)) = order.pop_first()? else { break };
        let (seq, key) = (seq.value(), key.value().to_vec());
        // A key deleted (corrupt) and written again has a newer order row: keep it.
        let current = vectors.get(&key[..])?.map(|v| decode(v.value()).map(|(_, s)| s));
        if matches!(current, Some(Some(s)) if s != seq) {
            continue;
        }
        *bytes = bytes.saturating_sub(remove(vectors, &key)?);
        evicted += 1;
    }
    Ok(evicted)
}

/// Removes `key`'s value (the order row it had is skipped when popped); returns the bytes
/// it counted.
fn remove(vectors: &mut redb::Table<&[u8], &[u8]>, key: &[u8]) -> Result<u64, redb::Error> {
    Ok(vectors.remove(key)?.map_or(0, |v| cost(v.value().len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_round_trips_and_a_flipped_byte_fails_its_check() {
        let v = encode(&[1.0, -2.5, 3.25], 7, 2, 42);
        let (c, seq) = decode(&v).unwrap();
        assert_eq!((&c.row[..], c.tokens, c.chunks, seq), (&[1.0, -2.5, 3.25][..], 7, 2, 42));
        for i in 0..v.len() {
            let mut bad = v.clone();
            bad[i] ^= 0x10;
            assert!(decode(&bad).is_none(), "byte {i} flipped");
        }
        assert!(decode(&v[..v.len() - 4]).is_none(), "a torn value");
    }

    #[test]
    fn entries_survive_reopening_and_the_budget_holds() {
        let dir = std::env::temp_dir().join(format!("mlx-serve-disk-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("c.redb");
        let budget = 8 << 20;
        let cache = DiskCache::open(&path, budget).unwrap();
        assert!(matches!(DiskCache::open(&path, budget), Err(OpenError::InUse(_))), "a second opener is refused");
        for i in 0..6000u32 {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_le_bytes());
            cache.put(key, &[i as f32; 384], 3, 1);
            if i % 100 == 99 {
                cache.flush();
                assert!(cache.stats().file_bytes <= budget, "{:?}", cache.stats());
            }
        }
        cache.flush();
        let s = cache.stats();
        assert!(s.entries > 100 && s.bytes <= s.budget_bytes / 2, "{s:?}");
        assert!(s.file_bytes <= budget, "{s:?}");
        assert!(s.evictions > 0 && s.dropped_writes == 0, "{s:?}");
        let mut last = [0u8; 32];
        last[..4].copy_from_slice(&5999u32.to_le_bytes());
        drop(cache);
        let cache = DiskCache::open(&path, budget).unwrap();
        let found = cache.get_many(&[last, [0xff; 32]]);
        assert_eq!(found[0].as_ref().unwrap().row[0], 5999.0);
        assert!(found[1].is_none());
        assert_eq!(cache.clear().0, s.entries);
        assert_eq!(cache.stats().entries, 0);
        drop(cache);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
