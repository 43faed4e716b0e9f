//! A fault-injecting stand-in for `mlx-serve-worker`, for the supervisor's crash-recovery
//! tests (tests/batching.rs): a poison input must fail alone, as an MLX abort on a bad
//! input would make it. The production worker has no such hook; this wraps the real one.
//!
//! The supervisor starts this binary as its worker (`MLX_SERVE_WORKER_BIN`). It starts the
//! real worker (`POISON_WORKER_REAL`) on a socket of its own, connects to the supervisor's,
//! and passes the conversation through: the worker's frames byte for byte, the
//! supervisor's frame by frame. A batch holding the token `POISON_WORKER_TOKEN` makes it
//! abort, so the supervisor sees its worker process die by SIGABRT with that batch in
//! flight; the real worker then reads the end of its stream and exits.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use mlx_serve_protocol::{codec, SupervisorMessage, TokenBatch};

fn main() {
    let real = std::env::var_os("POISON_WORKER_REAL").expect("POISON_WORKER_REAL: the real worker binary");
    let token: u32 = std::env::var("POISON_WORKER_TOKEN")
        .ok()
        .and_then(|t| t.parse().ok())
        .expect("POISON_WORKER_TOKEN: a token id");
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let at = args.iter().position(|a| a == "--socket").expect("--socket PATH") + 1;
    let supervisor_socket = PathBuf::from(&args[at]);

    // A short path of our own: Unix socket paths are limited to about 100 bytes.
    let dir = tempfile::Builder::new().prefix("pw").tempdir_in("/tmp").expect("a socket directory");
    let inner = dir.path().join("s");
    let listener = UnixListener::bind(&inner).expect("binding the inner socket");
    args[at] = inner.clone().into_os_string();
    let mut child = Command::new(real).args(&args).spawn().expect("starting the real worker");
    let worker = accept(&listener, &mut child);
    drop(listener);
    drop(dir);
    let supervisor = UnixStream::connect(&supervisor_socket).expect("connecting to the supervisor");

    // Worker to supervisor, unchanged. Its end is the worker's: exit as it did.
    let (mut from_worker, mut to_supervisor) = (worker.try_clone().unwrap(), supervisor.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_worker, &mut to_supervisor);
        let _ = to_supervisor.shutdown(std::net::Shutdown::Both);
        let code = child.wait().ok().and_then(|s| s.code()).unwrap_or(1);
        std::process::exit(code);
    });

    // Supervisor to worker, frame by frame, looking into each batch.
    let (mut from_supervisor, mut to_worker) = (supervisor, worker);
    // Until the supervisor's end (or a broken stream): then pass the end on and wait for
    // the worker's (the thread above exits).
    while let Ok(Some(msg)) = codec::read::<SupervisorMessage, _>(&mut from_supervisor) {
        if batch(&msg).is_some_and(|b| b.tokens.contains(&token)) {
            eprintln!("poison-worker: token {token} found in a batch; aborting");
            std::process::abort();
        }
        if codec::write(&mut to_worker, &msg).is_err() {
            break;
        }
    }
    let _ = to_worker.flush();
    let _ = to_worker.shutdown(std::net::Shutdown::Write);
    std::thread::sleep(Duration::from_secs(60));
}

/// The real worker's connection; exits as the worker did if it dies before connecting.
fn accept(listener: &UnixListener, child: &mut Child) -> UnixStream {
    listener.set_nonblocking(true).unwrap();
    let started = Instant::now();
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                return stream;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accepting the real worker: {e}"),
        }
        if let Ok(Some(status)) = child.try_wait() {
            std::process::exit(status.code().unwrap_or(1));
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the real worker never connected");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The token batch a message carries, if it carries one.
fn batch(msg: &SupervisorMessage) -> Option<&TokenBatch> {
    match msg.unwrapped() {
        SupervisorMessage::Embed { batch, .. }
        | SupervisorMessage::Score { batch, .. }
        | SupervisorMessage::Classify { batch, .. }
        | SupervisorMessage::EmbedTokens { batch, .. }
        | SupervisorMessage::EmbedPooled { batch, .. } => Some(batch),
        _ => None,
    }
}
