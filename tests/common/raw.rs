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
