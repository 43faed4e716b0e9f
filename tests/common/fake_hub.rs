//! A Hugging Face–compatible hub on loopback, serving what `hf-hub` 0.4 asks for
//! (hf-hub-0.4.3/src/api/tokio.rs):
//!
//! - `GET /api/models/{owner}/{name}/revision/{rev}[?blobs=true]` → `{sha, siblings:
//!   [{rfilename, size, lfs: {sha256, size}}], tags}` of that revision: `main`, a name given to
//!   [`FakeHub::add_revision`], or a commit. An unknown repo answers as the Hub does
//!   (huggingface_hub `utils/_http.py`, `hf_raise_for_status`): 401 with `X-Error-Code:
//!   RepoNotFound` without a token (the Hub will not say whether a private repo exists),
//!   404 with one; an unknown revision 404 with `X-Error-Code: RevisionNotFound`.
//! - `GET /{owner}/{name}/resolve/{rev}/{file}` with `Range`: small files answer 206 with
//!   `ETag`, `X-Repo-Commit` and `Content-Range`; weight files (the hub's LFS files) answer
//!   302 to a second listener (another origin, like the hub's CDN) with `X-Linked-Etag`
//!   (the sha256), `X-Linked-Size` and `X-Repo-Commit`. hf-hub reads the commit and etag
//!   from the 302 and follows it for `Content-Range` and the bytes.
//!
//! - `GET /api/models?search=S&sort=downloads&limit=N&expand=P...` → the model search
//!   (huggingface_hub `HfApi.list_models`): repos whose id contains S (ignoring case), most
//!   downloaded first, at most N; with `expand` (also `expand[]`) only `_id`, `id` and the
//!   listed properties (`downloads`, `gated`, `config` with `architectures` and
//!   `model_type` from the repo's config.json, `siblings` as `[{rfilename}]`), otherwise
//!   the Hub's default fields.
//! - A gated repo ([`FakeHub::gate`]) answers its info and files as the Hub does: 401 with
//!   `X-Error-Code: GatedRepo` without `Authorization: Bearer …`, 403 with a token that
//!   has not been granted access, the files with the granted one.
//!
//! Test knobs: drop the connection once in the middle of a file, slow every body down,
//! answer the next requests to a path with a transient error, and a log of every request
//! (path and range; the token and query in [`FakeHub::log`]).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::cli::{self, Output};
use crate::server::binary;

#[derive(Clone)]
struct HubFile {
    path: String,
    data: Arc<Vec<u8>>,
    sha256: String,
    /// Served the way the hub serves LFS files (redirect to the CDN).
    lfs: bool,
}

struct HubRepo {
    /// `main`'s commit and files.
    commit: String,
    files: Vec<HubFile>,
    /// Other revisions: (name, commit, files).
    revisions: Vec<(String, String, Vec<HubFile>)>,
    downloads: u64,
    /// The token granted access to this gated repo.
    gated: Option<String>,
    /// The model card's tags, answered with the file list and by the search.
    tags: Vec<String>,
}

/// One request as the hub saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub path: String,
    pub query: String,
    pub range: Option<String>,
    /// The bearer token sent, if any.
    pub token: Option<String>,
}

/// The next `times` requests whose path contains `path` answer `status`.
struct Failing {
    path: String,
    status: u16,
    times: usize,
    retry_after: Option<u64>,
}

#[derive(Default)]
struct Shared {
    repos: HashMap<String, HubRepo>,
    /// (file name, byte offset): the next body of that file that crosses the offset is cut there.
    drop_once: Option<(String, u64)>,
    /// Pause before each chunk of 1 MiB of body.
    slow: Option<Duration>,
    failing: Vec<Failing>,
    requests: Vec<String>,
    log: Vec<Logged>,
}

pub struct FakeHub {
    pub port: u16,
    cdn_port: u16,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
}

/// Files as the hub serves them: weight files (`*.safetensors`, `*.bin`, …) through LFS.
fn hub_files(files: Vec<(String, Vec<u8>)>) -> Vec<HubFile> {
    files
        .into_iter()
        .map(|(path, data)| {
            let lfs = [".safetensors", ".bin", ".onnx", ".pt"].iter().any(|e| path.ends_with(e));
            HubFile { sha256: sha256_hex(&data), path, data: Arc::new(data), lfs }
        })
        .collect()
}

impl HubRepo {
    /// The commit and files of revision `rev`: `main`, a revision's name, or a commit.
    fn at(&self, rev: &str) -> Option<(&str, &[HubFile])> {
        if rev == "main" || rev == self.commit {
            return Some((&self.commit, &self.files));
        }
        self.revisions
            .iter()
            .find(|(name, commit, _)| name == rev || commit == rev)
            .map(|(_, c, f)| (c.as_str(), f.as_slice()))
    }
}

fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The one error line of a failed `mlx-serve` command: exactly one `error:` line, the last
/// on stderr (progress lines such as `pulling manifest` may come before it), and no stack
/// trace or panic anywhere, whatever `RUST_BACKTRACE` says.
pub fn error_line(out: &Output) -> &str {
    assert!(!out.ok(), "the command succeeded: {}", out.text());
    let errors: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{}", out.text());
    assert_eq!(out.stderr.trim_end().lines().last(), Some(errors[0]), "{}", out.text());
    let lower = out.stderr.to_lowercase();
    assert!(!lower.contains("backtrace") && !lower.contains("panicked"), "{}", out.text());
    errors[0]
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

    /// `mlx-serve ARGS` with `home` as its home, this hub as `HF_ENDPOINT`, a Hugging Face
    /// cache under the home, no `HF_TOKEN` and `RUST_BACKTRACE=1` (errors must stay one
    /// line even so) unless `env` sets them; killed after 180 s.
    pub fn mlx_serve(&self, home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = std::process::Command::new(binary("mlx-serve"));
        cmd.args(args)
            .env("MLX_SERVE_HOME", home)
            .env("MLX_SERVE_WORKER_BIN", binary("mlx-serve-worker"))
            .env("HF_ENDPOINT", self.endpoint())
            .env("HF_HOME", home.join("hf"))
            .env("RUST_BACKTRACE", "1")
            .env_remove("MLX_SERVE_CONFIG")
            .env_remove("MLX_SERVE_MODELS_DIR")
            .env_remove("HF_TOKEN")
            .stdin(std::process::Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cli::run(cmd, Duration::from_secs(180))
    }

    /// Environment for a server that downloads from this hub into `hf_home`.
    pub fn server_env(&self, hf_home: &Path) -> Vec<(String, String)> {
        vec![("HF_ENDPOINT".into(), self.endpoint()), ("HF_HOME".into(), hf_home.display().to_string())]
    }

    /// Adds a repo (its `main`); `*.safetensors`, `*.bin` and other weight files are served
    /// as LFS files. Returns `main`'s commit.
    pub fn add_repo(&self, repo_id: &str, files: Vec<(String, Vec<u8>)>) -> String {
        let commit = sha256_hex(repo_id.as_bytes())[..40].to_owned();
        let repo = HubRepo {
            commit: commit.clone(),
            files: hub_files(files),
            revisions: Vec::new(),
            downloads: 0,
            gated: None,
            tags: Vec::new(),
        };
        self.shared.lock().unwrap().repos.insert(repo_id.to_owned(), repo);
        commit
    }

    /// Adds a revision (a branch or tag) named `name` to a repo, with files of its own.
    /// Returns its commit.
    pub fn add_revision(&self, repo_id: &str, name: &str, files: Vec<(String, Vec<u8>)>) -> String {
        let commit = sha256_hex(format!("{repo_id}@{name}").as_bytes())[..40].to_owned();
        let mut s = self.shared.lock().unwrap();
        let repo = s.repos.get_mut(repo_id).expect("add_repo first");
        repo.revisions.push((name.to_owned(), commit.clone(), hub_files(files)));
        commit
    }

    /// The repo's download count, as the search reports it.
    pub fn set_downloads(&self, repo_id: &str, downloads: u64) {
        self.shared.lock().unwrap().repos.get_mut(repo_id).expect("add_repo first").downloads = downloads;
    }

    /// The repo's model-card tags (`loss:MatryoshkaLoss`, ...).
    pub fn set_tags(&self, repo_id: &str, tags: &[&str]) {
        self.shared.lock().unwrap().repos.get_mut(repo_id).expect("add_repo first").tags =
            tags.iter().map(|t| t.to_string()).collect();
    }

    /// Makes the repo gated: only requests with `Authorization: Bearer {token}` get it.
    pub fn gate(&self, repo_id: &str, token: &str) {
        self.shared.lock().unwrap().repos.get_mut(repo_id).expect("add_repo first").gated = Some(token.to_owned());
    }

    /// The next `times` requests whose path contains `path` answer `status` (with
    /// `Retry-After` when given), as a hub under load does.
    pub fn fail_next(&self, path: &str, status: u16, times: usize, retry_after: Option<u64>) {
        self.shared.lock().unwrap().failing.push(Failing { path: path.to_owned(), status, times, retry_after });
    }

    /// Every request so far, with its query and token.
    pub fn log(&self) -> Vec<Logged> {
        self.shared.lock().unwrap().log.clone()
    }

    /// The queries of the model searches so far.
    pub fn searches(&self) -> Vec<String> {
        self.log().into_iter().filter(|l| l.path == "/api/models").map(|l| l.query).collect()
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
        let mut s = self.shared.lock().unwrap();
        s.requests.clear();
        s.log.clear();
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

/// An unknown repo, as the Hub answers it: without a token it does not say whether a
/// private repo of that name exists (401), with one it does (404); both `RepoNotFound`.
fn repo_not_found(conn: &mut TcpStream, token: Option<&str>) -> std::io::Result<()> {
    if token.is_some() {
        return not_found(conn, "RepoNotFound", "Repository not found");
    }
    let body = json!({"error": "Invalid username or password."}).to_string();
    let headers = [("Content-Type".into(), "application/json".into()), ("X-Error-Code".into(), "RepoNotFound".into())];
    respond(conn, "401 Unauthorized", &headers, body.as_bytes())
}

/// How the Hub refuses a gated repo: 401 without a token, 403 with one that was not
/// granted access (both with `X-Error-Code: GatedRepo`).
fn gate_refusal(repo: &HubRepo, repo_id: &str, token: Option<&str>) -> Option<(&'static str, String)> {
    let granted = repo.gated.as_deref()?;
    match token {
        Some(t) if t == granted => None,
        Some(_) => Some(("403 Forbidden", format!("Access to model {repo_id} is restricted and you are not in the authorized list."))),
        None => Some(("401 Unauthorized", format!("Access to model {repo_id} is restricted. You must have access to it and be authenticated to access it."))),
    }
}

fn refuse(conn: &mut TcpStream, (status, message): (&str, String)) -> std::io::Result<()> {
    let body = json!({"error": message}).to_string();
    let headers = [("Content-Type".into(), "application/json".into()), ("X-Error-Code".into(), "GatedRepo".into())];
    respond(conn, status, &headers, body.as_bytes())
}

/// `%XX` and `+` decoding of one query value.
fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The model search (see the module docs).
fn search(s: &Shared, query: &str) -> String {
    let params: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (url_decode(k), url_decode(v))
        })
        .collect();
    let get = |k: &str| params.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let needle = get("search").unwrap_or_default().to_lowercase();
    let expand: Vec<String> =
        params.iter().filter(|(k, _)| k == "expand" || k == "expand[]").map(|(_, v)| v.clone()).collect();
    let mut found: Vec<(&String, &HubRepo)> =
        s.repos.iter().filter(|(id, _)| id.to_lowercase().contains(&needle)).collect();
    found.sort_by(|a, b| a.0.cmp(b.0));
    if get("sort").as_deref() == Some("downloads") {
        found.sort_by_key(|r| std::cmp::Reverse(r.1.downloads));
    }
    if let Some(limit) = get("limit").and_then(|l| l.parse::<usize>().ok()) {
        found.truncate(limit);
    }
    let results: Vec<serde_json::Value> = found
        .into_iter()
        .map(|(id, repo)| {
            let object_id = &sha256_hex(id.as_bytes())[..24];
            let mut v = json!({"_id": object_id, "id": id});
            let config = repo
                .files
                .iter()
                .find(|f| f.path == "config.json")
                .and_then(|f| serde_json::from_slice::<serde_json::Value>(&f.data).ok());
            let property = |name: &str| -> serde_json::Value {
                match name {
                    "downloads" => json!(repo.downloads),
                    "gated" => {
                        if repo.gated.is_some() {
                            json!("manual")
                        } else {
                            json!(false)
                        }
                    }
                    "config" => match &config {
                        Some(c) => json!({"architectures": c["architectures"], "model_type": c["model_type"]}),
                        None => serde_json::Value::Null,
                    },
                    "siblings" => json!(repo.files.iter().map(|f| json!({"rfilename": f.path})).collect::<Vec<_>>()),
                    "likes" => json!(0),
                    "private" => json!(false),
                    "tags" => json!(repo.tags),
                    "createdAt" => json!("2022-03-02T23:29:04.000Z"),
                    _ => serde_json::Value::Null,
                }
            };
            if expand.is_empty() {
                for name in ["likes", "private", "downloads", "tags", "createdAt"] {
                    v[name] = property(name);
                }
                v["modelId"] = json!(id);
            } else {
                for name in &expand {
                    let value = property(name);
                    if !value.is_null() {
                        v[name.as_str()] = value;
                    }
                }
            }
            v
        })
        .collect();
    serde_json::Value::Array(results).to_string()
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
            return respond(
                conn,
                "416 Range Not Satisfiable",
                &[("Content-Range".into(), format!("bytes */{len}"))],
                b"",
            )
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
            std::thread::sleep(p); // pacing: the hub serves slowly on purpose
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
    let mut token = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_owned());
            }
            if k.trim().eq_ignore_ascii_case("authorization") {
                token = v.trim().strip_prefix("Bearer ").map(str::to_owned);
            }
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let failing = {
        let mut s = shared.lock().unwrap();
        s.requests.push(format!("{path} {}", range.as_deref().unwrap_or("-")));
        s.log.push(Logged {
            path: path.to_owned(),
            query: query.to_owned(),
            range: range.clone(),
            token: token.clone(),
        });
        match s.failing.iter_mut().find(|f| f.times > 0 && path.contains(&f.path)) {
            Some(f) => {
                f.times -= 1;
                Some((f.status, f.retry_after))
            }
            None => None,
        }
    };
    if let Some((status, retry_after)) = failing {
        let headers: Vec<(String, String)> =
            retry_after.map(|s| ("Retry-After".into(), s.to_string())).into_iter().collect();
        return respond(&mut conn, &format!("{status} Transient"), &headers, b"{\"error\": \"try again\"}");
    }
    if path == "/api/models" {
        let body = search(&shared.lock().unwrap(), query);
        return respond(&mut conn, "200 OK", &[("Content-Type".into(), "application/json".into())], body.as_bytes());
    }

    // The CDN: /cdn/{sha256}
    if let Some(sha) = path.strip_prefix("/cdn/") {
        let file = shared
            .lock()
            .unwrap()
            .repos
            .values()
            .flat_map(|r| r.files.iter().chain(r.revisions.iter().flat_map(|rev| rev.2.iter())))
            .find(|f| f.sha256 == sha)
            .cloned();
        return match file {
            Some(f) => {
                send_file(&mut conn, shared, &f, range.as_deref(), vec![("ETag".into(), format!("\"{}\"", f.sha256))])
            }
            None => not_found(&mut conn, "EntryNotFound", "no such blob"),
        };
    }
    // Repo info.
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let Some((repo_id, rev)) = rest.split_once("/revision/") else {
            return not_found(&mut conn, "RepoNotFound", "Repository not found");
        };
        let rev = url_decode(rev);
        let s = shared.lock().unwrap();
        let Some(repo) = s.repos.get(repo_id) else {
            drop(s);
            return repo_not_found(&mut conn, token.as_deref());
        };
        if let Some(refusal) = gate_refusal(repo, repo_id, token.as_deref()) {
            drop(s);
            return refuse(&mut conn, refusal);
        }
        let Some((commit, files)) = repo.at(&rev) else {
            drop(s);
            return not_found(&mut conn, "RevisionNotFound", &format!("Invalid rev id: {rev}"));
        };
        let blobs = query.contains("blobs=true");
        let siblings: Vec<_> = files
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
        let body = json!({"id": repo_id, "modelId": repo_id, "sha": commit, "siblings": siblings, "tags": repo.tags})
            .to_string();
        drop(s);
        return respond(&mut conn, "200 OK", &[("Content-Type".into(), "application/json".into())], body.as_bytes());
    }
    // /{owner}/{name}/resolve/{rev}/{file...}
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    if parts.len() == 5 && parts[2] == "resolve" {
        let repo_id = format!("{}/{}", parts[0], parts[1]);
        let rev = url_decode(parts[3]);
        let file_path = parts[4];
        let s = shared.lock().unwrap();
        let Some(repo) = s.repos.get(&repo_id) else {
            drop(s);
            return repo_not_found(&mut conn, token.as_deref());
        };
        if let Some(refusal) = gate_refusal(repo, &repo_id, token.as_deref()) {
            drop(s);
            return refuse(&mut conn, refusal);
        }
        let Some((commit, files)) = repo.at(&rev) else {
            drop(s);
            return not_found(&mut conn, "RevisionNotFound", &format!("Invalid rev id: {rev}"));
        };
        let commit = commit.to_owned();
        let Some(file) = files.iter().find(|f| f.path == file_path).cloned() else {
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
