//! The embedding cache's disk tier (docs/cache.md) through real daemons and a real MiniLM
//! worker: vectors survive a restart and are served without the worker, byte for byte; a
//! second daemon on the same file is refused; SIGKILL during a stream of writes loses no
//! committed entry and serves no torn one; flipped bytes in values and a garbage file are
//! refused, never served; the file stays within `disk_mb`; a model removed and pulled
//! again does not get its old vectors.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mlx_serve_tests::base64;
use mlx_serve_tests::server::{model_source, signal, Server, ServerOptions};
use serde_json::{json, Value};

const MINILM: &str = "all-MiniLM-L6-v2";

fn texts(tag: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range
        .map(|i| format!("{tag} sentence {i} about the river and the {} hills", ["green", "far", "quiet"][i % 3]))
        .collect()
}

fn options(cache_file: &Path, disk_mb: u64) -> ServerOptions {
    ServerOptions {
        models: vec![MINILM],
        config: Some(format!(
            "embedding_cache:\n  memory_mb: 64\n  disk_mb: {disk_mb}\n  disk_path: {}\n",
            cache_file.display()
        )),
        ..Default::default()
    }
}

fn embed_model(server: &Server, model: &str, input: &[String]) -> Value {
    let body = json!({"model": model, "input": input, "encoding_format": "base64"});
    let resp = ureq::post(&server.url("/v1/embeddings"))
        .timeout(Duration::from_secs(60))
        .send_json(body)
        .unwrap_or_else(|e| panic!("embeddings: {e}"));
    resp.into_json().unwrap()
}

fn embed(server: &Server, input: &[String]) -> Vec<String> {
    rows(&embed_model(server, MINILM, input))
}

fn rows(resp: &Value) -> Vec<String> {
    resp["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{resp}"))
        .iter()
        .map(|d| d["embedding"].as_str().unwrap().to_owned())
        .collect()
}

fn stats(server: &Server) -> Value {
    let out = server.cli(&["cache", "stats", "--json", "--port", &server.port.to_string()]);
    assert!(out.ok(), "{}", out.text());
    serde_json::from_str(&out.stdout).unwrap()
}

fn disk(server: &Server, field: &str) -> u64 {
    let s = stats(server);
    s["disk"][field].as_u64().unwrap_or_else(|| panic!("no disk.{field}: {s}"))
}

/// Waits until the disk tier has committed `n` entries.
fn wait_committed(server: &Server, n: u64) {
    server.wait_for(&format!("{n} committed disk entries"), Duration::from_secs(30), || disk(server, "entries") >= n);
}

fn batches(server: &Server) -> f64 {
    server.metric("mlx_serve_batch_size_count", &[("endpoint", "embed")])
}

/// The two rows are the same vector up to the last bits a batch's composition changes.
fn assert_same_vector(a: &str, b: &str, what: &str) {
    let (x, y) = (base64::floats(a), base64::floats(b));
    assert_eq!(x.len(), y.len(), "{what}");
    let cos: f32 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
    assert!(cos > 0.99999, "{what}: cosine {cos}");
}

fn cache_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("embeddings.redb");
    (dir, file)
}

#[test]
fn vectors_survive_a_restart_and_are_served_without_the_worker() {
    let (_dir, file) = cache_file();
    let first = Server::start(options(&file, 16));
    let a = texts("restart", 0..60);
    let computed = embed(&first, &a);
    wait_committed(&first, 60);
    let s = stats(&first);
    assert_eq!(s["disk"]["budget_bytes"], 16 << 20, "{s}");
    assert!(s["disk"]["file_bytes"].as_u64().unwrap() <= 16 << 20, "{s}");

    // A second daemon on the same file is refused with a clear error.
    let refused = Server::try_start(options(&file, 16)).err().expect("a second daemon on the same cache file started");
    assert!(refused.contains("is in use by another mlx-serve daemon"), "{refused}");
    first.stop();

    let second = Server::start(options(&file, 16));
    assert_eq!(disk(&second, "entries"), 60, "the committed entries are there after the restart");
    let served = embed(&second, &a);
    assert_eq!(served, computed, "vectors from disk are the computed ones, byte for byte");
    assert_eq!(batches(&second), 0.0, "no batch went to a worker");
    assert!(second.worker_pids().is_empty(), "no worker was started");
    assert_eq!(second.metric("mlx_serve_embedding_cache_disk_hits_total", &[]), 60.0);
    // Promoted to memory: the next lookup does not reach the disk.
    assert_eq!(embed(&second, &a), computed);
    assert_eq!(second.metric("mlx_serve_embedding_cache_disk_hits_total", &[]), 60.0);
    assert_eq!(second.metric("mlx_serve_embedding_cache_hits_total", &[]), 60.0);
    let shown = second.cli(&["cache", "stats", "--port", &second.port.to_string()]);
    assert!(shown.stdout.contains("entries  60") && shown.stdout.contains("hits     60"), "{}", shown.text());

    // `cache clear` clears both tiers.
    let cleared = second.cli(&["cache", "clear", "--port", &second.port.to_string()]);
    assert!(cleared.ok() && cleared.stdout.contains("cleared 60 vectors on disk"), "{}", cleared.text());
    assert_eq!(disk(&second, "entries"), 0);
    embed(&second, &a[..5]);
    assert!(batches(&second) > 0.0, "after clear the worker computes again");
}

#[test]
fn sigkill_during_writes_loses_no_committed_entry_and_serves_no_torn_one() {
    let (_dir, file) = cache_file();
    let first = Server::start(options(&file, 64));
    let a = texts("committed", 0..100);
    let computed_a = embed(&first, &a);
    wait_committed(&first, 100);

    // A stream of distinct texts, killed mid-stream.
    let answered: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let url = first.url("/v1/embeddings");
    let stream = {
        let answered = answered.clone();
        std::thread::spawn(move || {
            for r in 0..200 {
                let input = texts(&format!("stream{r}"), 0..16);
                let body = json!({"model": MINILM, "input": input, "encoding_format": "base64"});
                let Ok(resp) = ureq::post(&url).timeout(Duration::from_secs(30)).send_json(body) else { return };
                let Ok(v) = resp.into_json::<Value>() else { return };
                let got = rows(&v);
                answered.lock().unwrap().extend(input.into_iter().zip(got));
            }
        })
    };
    let start = Instant::now();
    while answered.lock().unwrap().len() < 160 && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let reported = disk(&first, "entries");
    assert!(reported > 100, "stream entries were committed before the kill ({reported})");
    signal(first.pid(), nix::sys::signal::Signal::SIGKILL);
    stream.join().unwrap();
    let answered = answered.lock().unwrap().clone();
    first.wait_exit();

    let second = Server::start(options(&file, 64));
    let after = disk(&second, "entries");
    eprintln!("{reported} entries reported committed before SIGKILL, {after} after the restart");
    assert!(after >= reported, "{after} entries after the restart, {reported} reported committed before the kill");
    assert_eq!(embed(&second, &a), computed_a, "the entries committed first are served byte for byte");
    assert_eq!(batches(&second), 0.0);
    // Every streamed text: from disk or computed again, never a torn vector.
    let (inputs, before): (Vec<String>, Vec<String>) = answered.into_iter().unzip();
    let served = embed(&second, &inputs);
    let from_disk = second.metric("mlx_serve_embedding_cache_disk_hits_total", &[]) - 100.0;
    assert!(from_disk >= (reported - 100) as f64, "{from_disk} stream texts from disk, {reported} committed");
    for (i, (b, s)) in before.iter().zip(&served).enumerate() {
        assert_same_vector(b, s, &format!("streamed text {i}"));
    }
    assert_eq!(second.metric("mlx_serve_embedding_cache_disk_corrupt_total", &[]), 0.0);
}

/// Flips one byte in every copy of each row's first 16 bytes found in `file` (the store
/// keeps older copies of pages until they are reused); returns how many copies.
fn flip_rows(file: &Path, rows: &[String]) -> usize {
    let mut bytes = std::fs::read(file).unwrap();
    let mut flipped = 0;
    for row in rows {
        let needle = &base64::bytes(row)[..16];
        let mut at = 0;
        while let Some(pos) = bytes[at..].windows(16).position(|w| w == needle) {
            bytes[at + pos + 7] ^= 0x40; // the second float's exponent
            flipped += 1;
            at += pos + 16;
        }
    }
    std::fs::write(file, bytes).unwrap();
    flipped
}

#[test]
fn corrupt_values_and_a_garbage_file_are_refused_never_served() {
    let (_dir, file) = cache_file();
    let first = Server::start(options(&file, 16));
    let a = texts("corrupt", 0..50);
    let computed = embed(&first, &a);
    wait_committed(&first, 50);
    first.stop();

    // Flipped bytes inside ten values: refused (checksum), computed again, deleted.
    assert!(flip_rows(&file, &computed[..10]) >= 10);
    let second = Server::start(options(&file, 16));
    let served = embed(&second, &a);
    for (i, (c, s)) in computed.iter().zip(&served).enumerate() {
        assert_same_vector(c, s, &format!("text {i}"));
    }
    assert_eq!(&served[10..], &computed[10..], "the intact entries come from disk byte for byte");
    assert_eq!(second.metric("mlx_serve_embedding_cache_disk_corrupt_total", &[]), 10.0);
    assert_eq!(second.metric("mlx_serve_embedding_cache_disk_hits_total", &[]), 40.0);
    assert!(second.log_text().contains("failed its checksum"), "{}", second.log_text());
    second.stop();

    // Garbage over the whole file: moved aside, an empty store, correct vectors.
    let len = std::fs::metadata(&file).unwrap().len() as usize;
    std::fs::write(&file, (0..len).map(|i| (i * 7919 % 251) as u8).collect::<Vec<u8>>()).unwrap();
    let third = Server::start(options(&file, 16));
    assert!(third.log_text().contains("embedding cache file unreadable"), "{}", third.log_text());
    assert_eq!(disk(&third, "entries"), 0);
    let served = embed(&third, &a);
    for (i, (c, s)) in computed.iter().zip(&served).enumerate() {
        assert_same_vector(c, s, &format!("text {i} after the garbage file"));
    }
    assert!(batches(&third) > 0.0);
    assert!(file.with_extension("redb.corrupt").exists());
}

#[test]
fn the_file_stays_within_its_budget() {
    let (_dir, file) = cache_file();
    let mut opts = options(&file, 8);
    // Memory small, so the disk tier takes every write.
    opts.config = Some(opts.config.unwrap().replace("memory_mb: 64", "memory_mb: 1"));
    let server = Server::start(opts);
    let budget = 8u64 << 20;
    let mut max_file = 0;
    // 3,000 vectors of 384 floats: about 4.7 MB of values and more in the store's pages.
    for chunk in 0..30 {
        embed(&server, &texts("budget", chunk * 100..(chunk + 1) * 100));
        let size = std::fs::metadata(&file).unwrap().len();
        max_file = max_file.max(size);
        assert!(
            size <= budget,
            "after chunk {chunk}: the file is {size} bytes, the budget {budget}\n{}",
            server.log_text().lines().filter(|l| !l.contains("request")).collect::<Vec<_>>().join("\n")
        );
    }
    server.wait_for("the writer to catch up", Duration::from_secs(30), || {
        let s = stats(&server);
        s["disk"]["evictions"].as_u64().unwrap()
            + s["disk"]["entries"].as_u64().unwrap()
            + s["disk"]["dropped_writes"].as_u64().unwrap()
            >= 3000
    });
    let s = stats(&server);
    let size = std::fs::metadata(&file).unwrap().len();
    eprintln!("disk tier after 3,000 vectors: {s}; largest file seen {max_file} bytes");
    assert!(size <= budget, "the file is {size} bytes, the budget {budget}");
    assert_eq!(s["disk"]["file_bytes"].as_u64().unwrap(), size, "{s}");
    assert!(s["disk"]["evictions"].as_u64().unwrap() > 0, "{s}");
    assert!(s["disk"]["entries"].as_u64().unwrap() > 200, "{s}");
    // Oldest written go first: after a restart (memory empty) the last texts come from
    // disk, the first do not.
    server.stop();
    let mut opts = options(&file, 8);
    opts.config = Some(opts.config.unwrap().replace("memory_mb: 64", "memory_mb: 1"));
    let server = Server::start(opts);
    embed(&server, &texts("budget", 2900..3000));
    assert_eq!(server.metric("mlx_serve_embedding_cache_disk_hits_total", &[]), 100.0, "the newest are kept");
    embed(&server, &texts("budget", 0..100));
    assert_eq!(server.metric("mlx_serve_embedding_cache_disk_hits_total", &[]), 100.0, "the oldest went first");
}

#[test]
fn a_model_removed_and_pulled_again_does_not_get_its_old_vectors() {
    let (_dir, file) = cache_file();
    let mut opts = options(&file, 16);
    opts.models = Vec::new();
    let server = Server::start(opts);
    let folder = model_source(MINILM);
    let pull = || {
        let out = server.cli(&["pull", folder.to_str().unwrap(), "--name", "minilm-local"]);
        assert!(out.ok(), "{}", out.text());
    };
    pull();
    let a = texts("repull", 0..20);
    rows(&embed_model(&server, "minilm-local", &a));
    wait_committed(&server, 20);
    let computed = batches(&server);
    let out = server.cli(&["remove", "minilm-local"]);
    assert!(out.ok(), "{}", out.text());
    pull();
    rows(&embed_model(&server, "minilm-local", &a));
    assert_eq!(server.metric("mlx_serve_embedding_cache_disk_hits_total", &[]), 0.0, "no old vector from disk");
    assert_eq!(server.metric("mlx_serve_embedding_cache_hits_total", &[]), 0.0, "no old vector from memory");
    assert!(batches(&server) > computed, "the pulled model computed its vectors");
    wait_committed(&server, 40);
}
