//! A Hugging Face–compatible hub on loopback, serving what `hf-hub` 0.4 asks for
//! (hf-hub-0.4.3/src/api/tokio.rs):
//!
//! - `GET /api/models/{owner}/{name}/revision/{rev}[?blobs=true]` → `{sha, siblings:
//!   [{rfilename, size, lfs: {sha256, size}}]}` (404 for an unknown repo, as the hub does).
//! - `GET /{owner}/{name}/resolve/{rev}/{file}` with `Range`: small files answer 206 with
//!   `ETag`, `X-Repo-Commit` and `Content-Range`; weight files (the hub's LFS files) answer
//!   302 to a second listener (another origin, like the hub's CDN) with `X-Linked-Etag`
//!   (the sha256), `X-Linked-Size` and `X-Repo-Commit`. hf-hub reads the commit and etag
//!   from the 302 and follows it for `Content-Range` and the bytes.
//!
//! Test knobs: drop the connection once in the middle of a file, slow every body down,
//! and a log of every request (path and range).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

#[derive(Clone)]
struct HubFile {
    path: String,
    data: Arc<Vec<u8>>,
    sha256: String,
    /// Served the way the hub serves LFS files (redirect to the CDN).
    lfs: bool,
}

struct HubRepo {
    commit: String,
    files: Vec<HubFile>,
}

#[derive(Default)]
struct Shared {
    repos: HashMap<String, HubRepo>,
    /// (file name, byte offset): the next body of that file that crosses the offset is cut there.
    drop_once: Option<(String, u64)>,
    /// Pause before each chunk of 1 MiB of body.
    slow: Option<Duration>,
    requests: Vec<String>,
}

pub struct FakeHub {
    pub port: u16,
    cdn_port: u16,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
}

fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Every file of a folder (recursively), paths relative to it; dot files skipped.
pub fn folder_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let rel = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
            if e.path().is_dir() {
                stack.push((e.path(), rel));
            } else {
                out.push((rel, std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

impl FakeHub {
    pub fn start() -> FakeHub {
        let main = TcpListener::bind("127.0.0.1:0").unwrap();
        let cdn = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = main.local_addr().unwrap().port();
        let cdn_port = cdn.local_addr().unwrap().port();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        for listener in [main, cdn] {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let shared = shared.clone();
                    std::thread::spawn(move || {
                        let _ = handle(conn, &shared, cdn_port);
                    });
                }
            });
        }
        FakeHub { port, cdn_port, shared, stop }
    }

    /// `HF_ENDPOINT` for this hub.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Adds a repo; `*.safetensors`, `*.bin` and other weight files are served as LFS files.
    pub fn add_repo(&self, repo_id: &str, files: Vec<(String, Vec<u8>)>) -> String {
        let commit = sha256_hex(repo_id.as_bytes())[..40].to_owned();
        let files = files
            .into_iter()
            .map(|(path, data)| {
                let lfs = [".safetensors", ".bin", ".onnx", ".pt"].iter().any(|e| path.ends_with(e));
                HubFile { sha256: sha256_hex(&data), path, data: Arc::new(data), lfs }
            })
            .collect();
        self.shared.lock().unwrap().repos.insert(repo_id.to_owned(), HubRepo { commit: commit.clone(), files });
        commit
    }

    /// The next body of `file` that crosses byte `offset` stops there and the connection closes.
    pub fn drop_connection_once(&self, file: &str, offset: u64) {
        self.shared.lock().unwrap().drop_once = Some((file.to_owned(), offset));
    }

    /// Sleeps `pause` before every MiB of every body (to watch a download in progress).
    pub fn slow_down(&self, pause: Option<Duration>) {
        self.shared.lock().unwrap().slow = pause;
    }

    /// Every request so far: "PATH RANGE".
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().unwrap().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.shared.lock().unwrap().requests.clear();
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake both accept loops so they see the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        let _ = TcpStream::connect(("127.0.0.1", self.cdn_port));
    }
}

fn respond(conn: &mut TcpStream, status: &str, headers: &[(String, String)], body: &[u8]) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)?;
    conn.flush()
}

fn not_found(conn: &mut TcpStream, code: &str, message: &str) -> std::io::Result<()> {
    let body = json!({"error": message}).to_string();
    respond(
        conn,
        "404 Not Found",
        &[("Content-Type".into(), "application/json".into()), ("X-Error-Code".into(), code.into())],
        body.as_bytes(),
    )
}

/// `bytes=a-b` (inclusive; `b` may lie past the end, as hf-hub's last chunk does) → a..=b clamped.
fn parse_range(range: Option<&str>, len: u64) -> Option<(u64, u64)> {
    let spec = range?.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let a: u64 = a.trim().parse().ok()?;
    let b: u64 = if b.trim().is_empty() { len.saturating_sub(1) } else { b.trim().parse().ok()? };
    Some((a, b.min(len.saturating_sub(1))))
}

fn send_file(
    conn: &mut TcpStream,
    shared: &Mutex<Shared>,
    file: &HubFile,
    range: Option<&str>,
    mut headers: Vec<(String, String)>,
) -> std::io::Result<()> {
    let len = file.data.len() as u64;
    let (status, start, end) = match parse_range(range, len) {
        Some((a, _)) if a >= len => {
            return respond(conn, "416 Range Not Satisfiable", &[("Content-Range".into(), format!("bytes */{len}"))], b"")
        }
        Some((a, b)) => ("206 Partial Content", a, b),
        None => ("200 OK", 0, len.saturating_sub(1)),
    };
    if status.starts_with("206") {
        headers.push(("Content-Range".into(), format!("bytes {start}-{end}/{len}")));
    }
    headers.push(("Accept-Ranges".into(), "bytes".into()));
    let body = &file.data[start as usize..=end as usize];
    let name = file.path.rsplit('/').next().unwrap_or(&file.path).to_owned();
    let (cut, slow) = {
        let mut s = shared.lock().unwrap();
        let cut = match &s.drop_once {
            Some((f, off)) if *f == name && *off > start && *off <= end => {
                let at = (*off - start) as usize;
                s.drop_once = None;
                Some(at)
            }
            _ => None,
        };
        (cut, s.slow)
    };
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in &headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    let upto = cut.unwrap_or(body.len());
    for chunk in body[..upto].chunks(1 << 20) {
        if let Some(p) = slow {
            std::thread::sleep(p);
        }
        conn.write_all(chunk)?;
    }
    conn.flush()?;
    if cut.is_some() {
        // The "network" fails mid-file: fewer bytes than Content-Length, then EOF.
        let _ = conn.shutdown(Shutdown::Both);
    }
    Ok(())
}

fn handle(mut conn: TcpStream, shared: &Mutex<Shared>, cdn_port: u16) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_owned());
            }
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    shared.lock().unwrap().requests.push(format!("{path} {}", range.as_deref().unwrap_or("-")));

    // The CDN: /cdn/{sha256}
    if let Some(sha) = path.strip_prefix("/cdn/") {
        let file = shared.lock().unwrap().repos.values().flat_map(|r| r.files.iter()).find(|f| f.sha256 == sha).cloned();
        return match file {
            Some(f) => send_file(&mut conn, shared, &f, range.as_deref(), vec![("ETag".into(), format!("\"{}\"", f.sha256))]),
            None => not_found(&mut conn, "EntryNotFound", "no such blob"),
        };
    }
    // Repo info.
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let Some((repo_id, _rev)) = rest.split_once("/revision/") else {
            return not_found(&mut conn, "RepoNotFound", "Repository not found");
        };
        let s = shared.lock().unwrap();
        let Some(repo) = s.repos.get(repo_id) else {
            drop(s);
            return not_found(&mut conn, "RepoNotFound", "Repository not found");
        };
        let blobs = query.contains("blobs=true");
        let siblings: Vec<_> = repo
            .files
            .iter()
            .map(|f| {
                let mut v = json!({"rfilename": f.path});
                if blobs {
                    v["size"] = json!(f.data.len());
                    if f.lfs {
                        v["lfs"] = json!({"sha256": f.sha256, "size": f.data.len(), "pointerSize": 134});
                    }
                }
                v
            })
            .collect();
        let body = json!({"id": repo_id, "modelId": repo_id, "sha": repo.commit, "siblings": siblings}).to_string();
        drop(s);
        return respond(&mut conn, "200 OK", &[("Content-Type".into(), "application/json".into())], body.as_bytes());
    }
    // /{owner}/{name}/resolve/{rev}/{file...}
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    if parts.len() == 5 && parts[2] == "resolve" {
        let repo_id = format!("{}/{}", parts[0], parts[1]);
        let file_path = parts[4];
        let s = shared.lock().unwrap();
        let Some(repo) = s.repos.get(&repo_id) else {
            drop(s);
            return not_found(&mut conn, "RepoNotFound", "Repository not found");
        };
        let commit = repo.commit.clone();
        let Some(file) = repo.files.iter().find(|f| f.path == file_path).cloned() else {
            drop(s);
            return not_found(&mut conn, "EntryNotFound", "Entry not found");
        };
        drop(s);
        if file.lfs {
            let headers = vec![
                ("Location".into(), format!("http://127.0.0.1:{cdn_port}/cdn/{}", file.sha256)),
                ("X-Repo-Commit".into(), commit),
                ("X-Linked-Etag".into(), format!("\"{}\"", file.sha256)),
                ("X-Linked-Size".into(), file.data.len().to_string()),
                ("ETag".into(), "\"pointer-etag\"".into()),
            ];
            return respond(&mut conn, "302 Found", &headers, b"");
        }
        let headers = vec![
            ("X-Repo-Commit".into(), commit),
            // The hub's ETag for a git file is its blob sha1; any stable opaque value works.
            ("ETag".into(), format!("\"{}\"", &file.sha256[..40])),
        ];
        return send_file(&mut conn, shared, &file, range.as_deref(), headers);
    }
    not_found(&mut conn, "NotFound", "no route")
}
