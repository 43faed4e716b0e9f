//! Worker faults end to end: a real daemon, real MiniLM workers,
//! real HTTP clients, and real signals on the worker processes — SIGSTOP (a worker stuck in
//! a driver, swapping, deadlocked) and `kill -9` twice, a second apart (an operator, the OOM
//! killer). The runner's rules behind them are unit-tested with a fake worker
//! (`supervisor/src/runner/tests/faults.rs`); these prove the real process, its exit status
//! and the control socket behave the same.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlx_serve_tests::cli::Output;
use mlx_serve_tests::process;
use mlx_serve_tests::server::{signal, Server, ServerOptions};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

const MINILM: &str = "all-MiniLM-L6-v2";

/// `mlx-serve ctl ARGS` against `server` (its home, its port).
fn ctl(server: &Server, args: &[&str]) -> Output {
    let port = server.port.to_string();
    server.cli(&[&["ctl"], args, &["--port", &port]].concat())
}

/// The `ctl workers --json` row of MiniLM.
fn worker_row(server: &Server) -> Value {
    server.worker_row(MINILM)
}

/// The one worker's pid, once there is exactly one and it is not `old`.
fn wait_for_worker(server: &Server, old: Option<u32>, within: Duration) -> u32 {
    let start = Instant::now();
    loop {
        let pids = server.worker_pids();
        if let [pid] = pids[..] {
            if Some(pid) != old {
                return pid;
            }
        }
        assert!(start.elapsed() < within, "no new worker within {within:?} (pids {pids:?}):\n{}", server.log_text());
        std::thread::sleep(Duration::from_millis(20)); // polling interval of a condition wait (bounded by its deadline)
    }
}

/// True once `pid`, a worker of `server`, has exited and been reaped: a zombie would still
/// name the server as its parent.
fn gone(server: &Server, pid: u32) -> bool {
    process::parent_of(pid) != Some(server.pid())
}

fn wait_gone(server: &Server, pid: u32, within: Duration) -> bool {
    let start = Instant::now();
    while !gone(server, pid) {
        if start.elapsed() > within {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20)); // polling interval of a condition wait (bounded by its deadline)
    }
    true
}

/// Waits until the runner has a batch in flight (state busy), as the premise of a test
/// that needs the stopped worker to hold work.
fn wait_busy(server: &Server) {
    let start = Instant::now();
    while worker_row(server)["state"] != "busy" {
        assert!(start.elapsed() < Duration::from_secs(60), "the worker never got the request: {}", worker_row(server));
        std::thread::sleep(Duration::from_millis(20)); // polling interval of a condition wait (bounded by its deadline)
    }
}

/// `clients` threads each sending one-text requests until `stop`; each returns how many
/// it sent and every failure it saw.
fn load(
    server: &Arc<Server>,
    clients: usize,
    stop: &Arc<AtomicBool>,
    done: &Arc<AtomicUsize>,
) -> Vec<std::thread::JoinHandle<Vec<String>>> {
    (0..clients)
        .map(|c| {
            let (server, stop, done) = (server.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                let mut k = 0;
                while !stop.load(Ordering::SeqCst) {
                    let text = format!("client {c} request {k}: {}", "a few more words ".repeat(k % 7));
                    let (status, resp) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": text}));
                    if status != 200 {
                        failures.push(format!("{status}: {resp}"));
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                    k += 1;
                }
                failures
            })
        })
        .collect()
}

fn wait_done(done: &AtomicUsize, at_least: usize) {
    let start = Instant::now();
    while done.load(Ordering::SeqCst) < at_least {
        assert!(start.elapsed() < Duration::from_secs(120), "clients stalled at {}", done.load(Ordering::SeqCst));
        std::thread::sleep(Duration::from_millis(10)); // polling interval of a condition wait (bounded by its deadline)
    }
}

fn join_all(handles: Vec<std::thread::JoinHandle<Vec<String>>>) -> Vec<String> {
    handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
}

#[test]
fn a_stopped_worker_is_killed_by_the_watchdog_and_no_request_fails() {
    let server = Arc::new(Server::start(ServerOptions {
        models: vec![MINILM],
        config: Some("limits:\n  hung_worker_seconds: 1\n".into()),
        ..Default::default()
    }));
    // Timed batches first: the watchdog then knows the model's pace.
    for _ in 0..3 {
        assert_eq!(server.post("/v1/embeddings", &json!({"model": MINILM, "input": "warm up"})).0, 200);
    }
    let stopped = server.worker_pids()[0];
    let (stop, done) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let clients = load(&server, 8, &stop, &done);
    wait_done(&done, 16);
    signal(stopped, Signal::SIGSTOP);
    let t0 = Instant::now();
    let at_stop = done.load(Ordering::SeqCst);
    // The watchdog kills the stopped worker, a new one takes the retried inputs.
    let fresh = wait_for_worker(&server, Some(stopped), Duration::from_secs(60));
    wait_done(&done, at_stop + 32);
    let recovered = t0.elapsed();
    stop.store(true, Ordering::SeqCst);
    let failures = join_all(clients);
    assert!(failures.is_empty(), "requests failed across a stopped worker: {failures:?}");
    assert!(
        wait_gone(&server, stopped, Duration::from_secs(10)),
        "the stopped worker {stopped} was not killed and reaped"
    );
    assert_ne!(fresh, stopped);
    // The log arrives through a pipe read by another thread: wait for the line.
    server.wait_for("the death in the log", Duration::from_secs(10), || {
        server.log_text().contains("worker died: stopped (SIGSTOP) during a batch")
    });
    let log = server.log_text();
    assert!(log.contains("implicates_input=false"), "a stopped worker is not its input's fault:\n{log}");
    println!("stopped worker replaced and 32 more requests answered {:.1} s after SIGSTOP", recovered.as_secs_f64());
}

#[test]
fn timed_out_requests_leave_the_queue_and_evict_force_stops_a_stopped_worker() {
    // No watchdog here: what a hung worker does to the queue, and the operator's way out.
    let server = Server::start(ServerOptions {
        models: vec![MINILM],
        config: Some(
            "batch:\n  max_queue_size: 4\nlimits:\n  hung_worker_seconds: 0\n  request_timeout_seconds: 1\n".into(),
        ),
        ..Default::default()
    });
    assert_eq!(server.post("/v1/embeddings", &json!({"model": MINILM, "input": "warm up"})).0, 200);
    let stopped = server.worker_pids()[0];
    signal(stopped, Signal::SIGSTOP);
    // Each request times out (504); its inputs must stop counting toward the bound of 4,
    // or the third request would get 429.
    for round in 0..6 {
        let input = [format!("round {round} first"), format!("round {round} second")];
        let (status, resp) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": input}));
        assert_eq!(status, 504, "round {round}: {resp}");
    }
    let out = ctl(&server, &["evict", MINILM]);
    assert!(
        !out.ok() && out.stderr.contains("--force"),
        "a busy worker is not evicted without --force: {}",
        out.text()
    );
    let t0 = Instant::now();
    let out = ctl(&server, &["evict", MINILM, "--force"]);
    assert!(out.ok(), "{}", out.text());
    assert!(t0.elapsed() < Duration::from_secs(10), "evict --force took {:?}", t0.elapsed());
    assert!(wait_gone(&server, stopped, Duration::from_secs(10)), "the stopped worker {stopped} is still there");
    assert_eq!(worker_row(&server)["state"], "stopped");
    // The next request starts a new worker.
    assert_eq!(server.post("/v1/embeddings", &json!({"model": MINILM, "input": "after evict"})).0, 200);
    assert_ne!(server.worker_pids(), [stopped]);
}

#[test]
fn restart_replaces_a_stopped_worker_and_retries_its_work() {
    let server = Arc::new(Server::start(ServerOptions {
        models: vec![MINILM],
        config: Some("limits:\n  hung_worker_seconds: 0\n".into()),
        ..Default::default()
    }));
    assert_eq!(server.post("/v1/embeddings", &json!({"model": MINILM, "input": "warm up"})).0, 200);
    let stopped = server.worker_pids()[0];
    signal(stopped, Signal::SIGSTOP);
    let waiting = {
        let server = server.clone();
        std::thread::spawn(move || {
            server.post("/v1/embeddings", &json!({"model": MINILM, "input": "held by a stopped worker"}))
        })
    };
    wait_busy(&server);
    let t0 = Instant::now();
    let out = ctl(&server, &["restart", MINILM]);
    assert!(out.ok() && out.stdout.contains("restarted"), "{}", out.text());
    // The grace for in-flight work (5 s), a kill, a load.
    assert!(t0.elapsed() < Duration::from_secs(60), "restart took {:?}", t0.elapsed());
    let (status, resp) = waiting.join().unwrap();
    assert_eq!(status, 200, "the request held by the stopped worker was retried on the new one: {resp}");
    assert!(wait_gone(&server, stopped, Duration::from_secs(10)));
    assert_eq!(worker_row(&server)["restarts"], 0, "an operator's restart is not a crash");
}

#[test]
fn two_kills_a_second_apart_fail_no_request() {
    let server = Arc::new(Server::start(ServerOptions { models: vec![MINILM], ..Default::default() }));
    assert_eq!(server.post("/v1/embeddings", &json!({"model": MINILM, "input": "warm up"})).0, 200);
    let first = server.worker_pids()[0];
    let (stop, done) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let clients = load(&server, 32, &stop, &done);
    wait_done(&done, 64);
    signal(first, Signal::SIGKILL);
    let killed_at = Instant::now();
    // The second kill must find the new worker computing the first one's survivors: wait
    // for it to exist and to answer something, and at least the second the issue names.
    let second = wait_for_worker(&server, Some(first), Duration::from_secs(60));
    let answered = done.load(Ordering::SeqCst);
    wait_done(&done, answered + 1);
    if let Some(rest) = Duration::from_secs(1).checked_sub(killed_at.elapsed()) {
        // Only spaces the kills as the reproduction did; nothing waits on it.
        std::thread::sleep(rest);
    }
    assert_eq!(server.worker_pids(), [second], "the second worker is the one to kill");
    signal(second, Signal::SIGKILL);
    let third = wait_for_worker(&server, Some(second), Duration::from_secs(60));
    let answered = done.load(Ordering::SeqCst);
    wait_done(&done, answered + 64);
    stop.store(true, Ordering::SeqCst);
    let failures = join_all(clients);
    assert!(failures.is_empty(), "requests failed across two kills: {failures:?}");
    assert_ne!(third, first);
    server.wait_for("both deaths in the log", Duration::from_secs(10), || {
        server.log_text().matches("worker died: killed by SIGKILL").count() >= 2
    });
    let log = server.log_text();
    assert_eq!(log.matches("worker died: killed by SIGKILL").count(), 2, "{log}");
    assert!(!log.contains("implicates_input=true"), "a kill from outside is not the input's fault:\n{log}");
}
