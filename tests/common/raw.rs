//! Raw sockets and process figures for the hostile-client tests: HTTP/1.1 exchanges written
//! by hand (a client that sends what no library would: partial headers, short bodies,
//! one byte a second), and the memory of a process from /proc (Linux).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

/// An answer read off a socket.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// A header's value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// Raises this test process's soft limit on open files to the hard limit (1,024 by default
/// for a user on Linux, 256 on macOS), for tests that hold thousands of sockets.
pub fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    // macOS refuses a soft limit above OPEN_MAX (10,240) whatever the hard limit.
    for want in [hard, hard.min(10_240)] {
        if want <= soft || setrlimit(Resource::RLIMIT_NOFILE, want, hard).is_ok() {
            return;
        }
    }
}

/// Connects to the server on `port` with a read timeout.
pub fn connect(port: u16, read_timeout: Duration) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(read_timeout)).unwrap();
    s
}

/// Reads one response (status line, headers, a Content-Length body) from `s`.
pub fn read_answer(s: &mut TcpStream) -> std::io::Result<Answer> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before a response"));
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let answer = Answer { status, head, body: String::new() };
    let len: usize = answer.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok(Answer { body: String::from_utf8_lossy(&body).into_owned(), ..answer })
}

/// One request on a new connection: `head` is the request line and headers without the
/// blank line; Content-Length is added for `body`.
pub fn request(port: u16, head: &str, body: &[u8]) -> Answer {
    let mut s = connect(port, Duration::from_secs(120));
    let mut msg = format!("{head}\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    msg.extend_from_slice(body);
    s.write_all(&msg).expect("send request");
    read_answer(&mut s).expect("read answer")
}

/// POSTs JSON with optional extra header lines.
pub fn post_json(port: u16, path: &str, headers: &[&str], body: &Value) -> Answer {
    let mut head = format!("POST {path} HTTP/1.1\r\nContent-Type: application/json");
    for h in headers {
        head.push_str("\r\n");
        head.push_str(h);
    }
    request(port, &head, &serde_json::to_vec(body).unwrap())
}

/// True when the server has closed `s` (EOF or reset), waiting up to its read timeout.
pub fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // a response (408) before the close
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// A `/proc/<pid>/status` figure in KiB (`VmRSS`, `VmHWM` — the peak). Linux only.
#[cfg(target_os = "linux")]
pub fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.trim_start_matches(':').split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The peak memory of process `pid` while `send` runs, above its memory just before, in
/// bytes. Linux only: writing 5 to `clear_refs` resets the high-water mark `VmHWM`
/// (Linux ≥ 4.0), so only `send` counts.
#[cfg(target_os = "linux")]
pub fn peak_growth(pid: u32, send: impl FnOnce()) -> u64 {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset VmHWM");
    let before = proc_kib(pid, "VmRSS");
    send();
    proc_kib(pid, "VmHWM").saturating_sub(before) * 1024
}

/// A connection that has sent `POST path` with `body` as JSON and `Connection: close`.
fn send_json_closing(port: u16, path: &str, body: &Value) -> TcpStream {
    let body = serde_json::to_vec(body).unwrap();
    let mut s = connect(port, Duration::from_secs(600));
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body).unwrap();
    s
}

/// Sends a request and reads its answer's head and as much body as `keep` says to, keeping
/// none of it: returns the status and the body bytes read, and whether the body ended
/// with HTTP/1.1's last chunk (a response aborted by the server ends without it).
pub fn stream_body(port: u16, path: &str, body: &Value, mut keep: impl FnMut(&[u8]) -> bool) -> (u16, usize, bool) {
    let mut s = send_json_closing(port, path, body);
    let mut buf = vec![0u8; 1 << 16];
    let (mut seen, mut tail, mut status) = (0usize, Vec::new(), 0u16);
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if status == 0 {
            status = std::str::from_utf8(&buf[9..12.min(n)]).ok().and_then(|t| t.parse().ok()).unwrap_or(0);
        }
        seen += n;
        tail.extend_from_slice(&buf[..n]);
        let cut = tail.len().saturating_sub(16);
        tail.drain(..cut);
        if !keep(&buf[..n]) {
            break;
        }
    }
    (status, seen, tail.ends_with(b"\r\n0\r\n\r\n"))
}

/// POSTs JSON with `Connection: close` and reads the answer to the connection's end:
/// its status, head, and body (a chunked one joined), or `None` for a chunked body the
/// server ended before its last chunk.
pub fn post_to_end(port: u16, path: &str, body: &Value) -> (u16, String, Option<Vec<u8>>) {
    let mut s = send_json_closing(port, path, body);
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").map_or(all.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let rest = &all[split..];
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return (status, head, Some(rest.to_vec()));
    }
    (status, head, dechunk(rest))
}

/// A chunked body's data, or `None` when it lacks its last (empty) chunk.
fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line = rest.windows(2).position(|w| w == b"\r\n")?;
        let n = usize::from_str_radix(std::str::from_utf8(&rest[..line]).ok()?.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        let data = rest.get(line + 2..line + 2 + n)?;
        out.extend_from_slice(data);
        rest = rest.get(line + 4 + n..)?;
    }
}
