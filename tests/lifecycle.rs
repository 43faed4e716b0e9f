//! The server's lifecycle through the real `mlx-serve` binary: background start / status /
//! stop (one, --all, --force), stale PID files, busy ports, every `ctl` command against a
//! live server with real workers, the request log, the launchd/systemd files that
//! `service install` writes, and what `service start/stop` ask of the service manager.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mlx_serve_tests::cli::{
    candidate_port, parse_started, process_alive, retry_on_port_clash, wait_gone, Home, Started,
};
use mlx_serve_tests::server::{python_command, Server, ServerOptions};
use mlx_serve_tests::tools::missing_tool;
use serde_json::{json, Value};

/// `mlx-serve start --port PORT ARGS`; `Err` with the output when it fails (a port another
/// process took first says "already in use": see `retry_on_port_clash`).
fn start_on(home: &Home, port: u16, args: &[&str]) -> Result<Started, String> {
    let port_s = port.to_string();
    let mut all = vec!["start", "--port", &port_s];
    all.extend_from_slice(args);
    let out = home.run_env(&all, &[], Duration::from_secs(90));
    if !out.ok() {
        return Err(out.text());
    }
    let started = parse_started(&out);
    assert_eq!(started.port, port, "{}", out.text());
    check_pid_file(home, &started);
    Ok(started)
}

/// `mlx-serve start --port 0 ARGS`: the OS picks a free port, `start` prints it.
fn start(home: &Home, args: &[&str]) -> Started {
    let mut all = vec!["start", "--port", "0"];
    all.extend_from_slice(args);
    let out = home.run_env(&all, &[], Duration::from_secs(90));
    assert!(out.ok(), "{}", out.text());
    let started = parse_started(&out);
    assert_ne!(started.port, 0, "{}", out.text());
    check_pid_file(home, &started);
    started
}

/// The PID file of the port `start` printed names the pid it printed.
fn check_pid_file(home: &Home, s: &Started) {
    let pid: i32 = std::fs::read_to_string(home.pid_file(s.port)).unwrap().trim().parse().unwrap();
    assert_eq!(pid, s.pid, "{}", s.output);
}

fn get(port: u16, path: &str) -> u16 {
    match ureq::get(&format!("http://127.0.0.1:{port}{path}")).timeout(Duration::from_secs(10)).call() {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(_) => 0,
    }
}

fn status_json(home: &Home) -> (Option<i32>, Vec<Value>) {
    let out = home.run(&["status", "--json"]);
    (out.code, serde_json::from_str::<Vec<Value>>(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.text())))
}

#[test]
fn start_status_stop() {
    let home = Home::new(&[]);
    // A port of our own (this test checks the files named by it), retried on a clash.
    let started = retry_on_port_clash(|| start_on(&home, candidate_port(), &[]));
    let (port, pid) = (started.port, started.pid);
    assert_eq!(started.log, home.path().join(format!("logs/mlx-serve-{port}.log")));
    assert!(process_alive(pid));
    assert_eq!(get(port, "/ready"), 200);
    assert!(home.path().join(format!("logs/mlx-serve-{port}.log")).is_file());

    // status: pid, port, uptime, version, models, as text and JSON.
    let out = home.run(&["status"]);
    assert!(out.ok(), "{}", out.text());
    for want in [
        format!("running at http://127.0.0.1:{port}"),
        format!("pid      {pid}"),
        "uptime".into(),
        env!("CARGO_PKG_VERSION").into(),
        "(none loaded)".into(),
    ] {
        assert!(out.stdout.contains(&want), "no {want:?} in:\n{}", out.stdout);
    }
    let (code, list) = status_json(&home);
    assert_eq!(code, Some(0));
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["pid"], json!(pid));
    assert_eq!(list[0]["port"], json!(port));
    assert_eq!(list[0]["ready"], json!(true));
    assert_eq!(list[0]["version"], json!(env!("CARGO_PKG_VERSION")));

    // A second start on the same port is refused, naming the running server.
    let again = home.run(&["start", "--port", &port.to_string()]);
    assert!(!again.ok(), "{}", again.text());
    assert!(again.stderr.contains("already running") && again.stderr.contains(&pid.to_string()), "{}", again.text());

    // stop: graceful, PID file and socket removed, port free again.
    let out = home.run(&["stop", "--port", &port.to_string()]);
    assert!(out.ok() && out.stdout.contains("stopped"), "{}", out.text());
    assert!(wait_gone(pid, Duration::from_secs(5)), "pid {pid} still alive after stop");
    assert!(!home.pid_file(port).exists());
    assert!(!home.path().join(format!("run/mlx-serve-{port}.sock")).exists());
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(), "port {port} still taken");
    let log = std::fs::read_to_string(home.path().join(format!("logs/mlx-serve-{port}.log"))).unwrap();
    assert!(log.contains("SIGTERM: shutting down") && log.contains("stopped"), "{log}");

    // Nothing runs: status exits 3, stop is a no-op that says so.
    let out = home.run(&["status"]);
    assert_eq!(out.code, Some(3), "{}", out.text());
    assert!(out.stdout.contains("not running"), "{}", out.text());
    let out = home.run(&["stop"]);
    assert!(out.ok() && out.stdout.contains("not running"), "{}", out.text());
}

#[test]
fn stop_all_stops_every_server() {
    let home = Home::new(&[]);
    let pid1 = start(&home, &[]).pid;
    let pid2 = start(&home, &[]).pid;
    let (_, list) = status_json(&home);
    assert_eq!(list.len(), 2, "{list:?}");
    // Without --port and with two servers, `ctl` asks which one.
    let out = home.run(&["ctl", "workers"]);
    assert!(!out.ok() && out.stderr.contains("--port"), "{}", out.text());

    let out = home.run(&["stop", "--all"]);
    assert!(out.ok(), "{}", out.text());
    assert!(wait_gone(pid1, Duration::from_secs(5)) && wait_gone(pid2, Duration::from_secs(5)));
    assert!(home.recorded_pids().is_empty());
    assert_eq!(status_json(&home).1.len(), 0);
}

#[test]
fn stale_pid_file_is_cleaned() {
    let home = Home::new(&[]);
    // The pid of a process that has exited: what a crash or a reboot leaves behind.
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    std::fs::create_dir_all(home.path().join("run")).unwrap();
    // status only reads PID files: any port number will do.
    std::fs::write(home.pid_file(1), format!("{}\n", gone.id())).unwrap();
    let out = home.run(&["status"]);
    assert_eq!(out.code, Some(3), "{}", out.text());
    assert!(!home.pid_file(1).exists(), "status left the stale PID file");

    // start on a port whose PID file is stale replaces it (the port must be ours to bind).
    let started = retry_on_port_clash(|| {
        let port = candidate_port();
        std::fs::write(home.pid_file(port), format!("{}\n", gone.id())).unwrap();
        let out = home.run(&["start", "--port", &port.to_string()]);
        if !out.ok() {
            let _ = std::fs::remove_file(home.pid_file(port));
            return Err(out.text());
        }
        assert!(out.stderr.contains("stale PID file"), "{}", out.text());
        Ok(parse_started(&out))
    });
    let pid: i32 = std::fs::read_to_string(home.pid_file(started.port)).unwrap().trim().parse().unwrap();
    assert_eq!(pid, started.pid);
    assert_ne!(pid, gone.id() as i32);

    // A stale file for another port is reported by stop too (no server: nothing binds).
    let other = started.port.wrapping_add(1).max(2);
    std::fs::write(home.pid_file(other), format!("{}\n", gone.id())).unwrap();
    let out = home.run(&["stop", "--port", &other.to_string()]);
    assert!(out.ok() && out.stdout.contains("stale"), "{}", out.text());
    assert!(!home.pid_file(other).exists());
}

#[test]
fn busy_port_is_refused() {
    let home = Home::new(&[]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = home.run(&["start", "--port", &port.to_string()]);
    assert!(!out.ok(), "{}", out.text());
    assert!(out.stderr.contains(&format!("port {port}")) && out.stderr.contains("already in use"), "{}", out.text());
    assert!(home.recorded_pids().is_empty());
    // The foreground daemon says the same and exits non-zero.
    let out = home.run(&["start", "--foreground", "--port", &port.to_string()]);
    assert!(!out.ok() && out.stderr.contains("already in use"), "{}", out.text());
}

#[test]
fn stop_times_out_then_force_kills() {
    let home = Home::new(&[]);
    let Started { port, pid, .. } = start(&home, &[]);
    // A stopped process cannot handle SIGTERM: the graceful path must time out.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGSTOP).unwrap();
    let out = home.run(&["stop", "--port", &port.to_string(), "--timeout", "1"]);
    assert!(!out.ok() && out.stderr.contains("--force"), "{}", out.text());
    assert!(process_alive(pid));
    let out = home.run(&["stop", "--port", &port.to_string(), "--timeout", "1", "--force"]);
    assert!(out.ok() && out.stdout.contains("killed"), "{}", out.text());
    assert!(wait_gone(pid, Duration::from_secs(5)));
    assert!(!home.pid_file(port).exists());
}

/// The `ctl workers --json` row for `model`.
fn worker_row(home: &Home, model: &str) -> Value {
    let out = home.run(&["ctl", "workers", "--json"]);
    assert!(out.ok(), "{}", out.text());
    let rows: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    rows.into_iter().find(|r| r["model"] == model).unwrap_or_else(|| panic!("no {model} in {}", out.stdout))
}

#[test]
fn ctl_commands_against_a_live_server() {
    let model = "tiny-bert-embed";
    let home = Home::new(&[model, "tiny-bert-rerank"]);
    let Started { port, pid: daemon, .. } = start(&home, &[]);

    // The control socket is private.
    let run = home.path().join("run");
    assert_eq!(std::fs::metadata(&run).unwrap().permissions().mode() & 0o777, 0o700);
    let sock = run.join(format!("mlx-serve-{port}.sock"));
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);

    let out = home.run(&["ctl", "workers"]);
    assert!(out.ok(), "{}", out.text());
    let header: Vec<&str> = out.stdout.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["MODEL", "TYPE", "PID", "STATE", "UPTIME", "RESTARTS", "QUEUE", "BATCHES", "MEMORY", "GPU-MEMORY"]
    );

    // load: a real worker process, child of the daemon.
    let out = home.run(&["ctl", "load", model]);
    assert!(out.ok() && out.stdout.contains(&format!("loaded {model}")), "{}", out.text());
    let row = worker_row(&home, model);
    assert_eq!(row["state"], "ready");
    let worker = row["pid"].as_i64().unwrap() as i32;
    assert!(process_alive(worker));
    assert_eq!(parent_of(worker), Some(daemon));
    assert!(row["memory_bytes"].as_u64().unwrap() > 0, "{row}");

    // Work shows up in the batch counter; the text table has the row.
    let (code, _) = post_embeddings(port, model);
    assert_eq!(code, 200);
    let row = worker_row(&home, model);
    assert!(row["batches"].as_u64().unwrap() >= 1, "{row}");
    let out = home.run(&["ctl", "workers"]);
    let line = out.stdout.lines().find(|l| l.starts_with(model)).unwrap_or_else(|| panic!("{}", out.stdout));
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!((cells[1], cells[2], cells[3]), ("embedding", worker.to_string().as_str(), "ready"), "{line}");
    let status = home.run(&["status"]);
    assert!(status.stdout.contains(model), "{}", status.text());

    // restart: a new worker replaces the old one.
    let out = home.run(&["ctl", "restart", model]);
    assert!(out.ok() && out.stdout.contains("restarted"), "{}", out.text());
    let row = worker_row(&home, model);
    let new_worker = row["pid"].as_i64().unwrap() as i32;
    assert_ne!(new_worker, worker);
    assert!(wait_gone(worker, Duration::from_secs(10)), "old worker {worker} still alive");
    assert_eq!(row["state"], "ready");
    assert_eq!(post_embeddings(port, model).0, 200);

    // evict: the worker stops, the model stays known.
    let out = home.run(&["ctl", "evict", model, "--json"]);
    assert!(out.ok(), "{}", out.text());
    assert_eq!(serde_json::from_str::<Value>(&out.stdout).unwrap()["model"], model);
    assert!(wait_gone(new_worker, Duration::from_secs(10)));
    let row = worker_row(&home, model);
    assert_eq!(row["state"], "stopped");
    assert_eq!(row["pid"], Value::Null);

    // Errors are clear and exit non-zero.
    let out = home.run(&["ctl", "evict", model]);
    assert!(!out.ok() && out.stderr.contains("not loaded"), "{}", out.text());
    let out = home.run(&["ctl", "load", "no-such-model"]);
    assert!(!out.ok() && out.stderr.contains("no-such-model"), "{}", out.text());

    // A reranker through ctl too, with --port given explicitly.
    let out = home.run(&["ctl", "load", "tiny-bert-rerank", "--port", &port.to_string()]);
    assert!(out.ok(), "{}", out.text());
    assert_eq!(worker_row(&home, "tiny-bert-rerank")["kind"], "reranker");

    // No server on a port: ctl says so.
    let out = home.run(&["ctl", "workers", "--port", &port.wrapping_add(1).max(2).to_string()]);
    assert!(!out.ok() && out.stderr.contains("control socket"), "{}", out.text());
}

#[test]
fn workers_over_the_memory_budget_are_stopped_when_idle() {
    let model = "tiny-bert-embed";
    let home = Home::new(&[model]);
    // 1 MiB: any real worker is over it, so it goes as soon as it is idle.
    home.write_config("cache:\n  max_workers_memory_mb: 1\n");
    let Started { port, .. } = start(&home, &[]);
    let (code, _) = post_embeddings(port, model);
    assert_eq!(code, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while worker_row(&home, model)["state"] != "stopped" {
        assert!(std::time::Instant::now() < deadline, "the worker over the budget is still running");
        std::thread::sleep(Duration::from_millis(200));
    }
    let metrics = ureq::get(&format!("http://127.0.0.1:{port}/metrics")).call().unwrap().into_string().unwrap();
    assert!(metrics.contains(r#"mlx_serve_cache_evictions_total{type="embedding"} 1"#), "{metrics}");
    // The model stays served: the next request starts a worker again.
    assert_eq!(post_embeddings(port, model).0, 200);
    home.run(&["stop", "--port", &port.to_string()]);
}

fn post_embeddings(port: u16, model: &str) -> (u16, Value) {
    let body = json!({"model": model, "input": ["hello world", "a second input"]});
    match ureq::post(&format!("http://127.0.0.1:{port}/v1/embeddings")).timeout(Duration::from_secs(60)).send_json(body)
    {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("{e}"),
    }
}

fn parent_of(pid: i32) -> Option<i32> {
    mlx_serve_tests::process::parent_of(pid as u32).map(|p| p as i32)
}

#[test]
fn request_log_has_one_json_line_per_request() {
    let model = "tiny-bert-embed";
    let home = Home::new(&[model]);
    home.write_config("logging:\n  format: json\n  level: info\n");
    let Started { port, log: log_path, .. } = start(&home, &[]);
    assert_eq!(post_embeddings(port, model).0, 200);
    let body = json!({"model": "missing-model", "input": "x"});
    let _ = ureq::post(&format!("http://127.0.0.1:{port}/v1/embeddings")).send_json(body);
    let out = home.run(&["stop", "--port", &port.to_string()]);
    assert!(out.ok(), "{}", out.text());

    let log = std::fs::read_to_string(&log_path).unwrap();
    let requests: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|v| v["target"] == "request")
        .collect();
    assert_eq!(requests.len(), 2, "{log}");
    let ok = &requests[0];
    assert_eq!(ok["model"], model);
    assert_eq!(ok["inputs"], 2);
    assert!(ok["tokens"].as_u64().unwrap() >= 4, "{ok}");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["endpoint"], "/v1/embeddings");
    assert!(ok["ms"].as_str().unwrap().parse::<f64>().unwrap() > 0.0, "{ok}");
    assert_eq!(requests[1]["status"], 404);
    assert_ne!(ok["id"], requests[1]["id"]);
}

#[test]
fn foreground_server_is_seen_by_status_and_stop() {
    // What launchd/systemd run: `start --foreground` writes the same PID file.
    let server = Server::start(ServerOptions::default());
    let home = server.home.path().to_owned();
    let cli = |args: &[&str]| {
        let mut cmd = Command::new(mlx_serve_tests::server::binary("mlx-serve"));
        cmd.args(args).env("MLX_SERVE_HOME", &home).env("RUST_BACKTRACE", "0").env_remove("MLX_SERVE_PORT");
        mlx_serve_tests::cli::run(cmd, Duration::from_secs(60))
    };
    let out = cli(&["status", "--json"]);
    let list: Vec<Value> = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.text()));
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["port"], json!(server.port));
    assert_eq!(list[0]["pid"], json!(server.pid()));
    let out = cli(&["stop"]);
    assert!(out.ok() && out.stdout.contains("stopped"), "{}", out.text());
    // (Until the harness reaps it, the exited daemon is a zombie, which counts as gone.)
    assert!(wait_gone(server.pid() as i32, Duration::from_secs(10)));
}

fn plist(path: &Path) -> Value {
    let script = "import json, plistlib, sys; print(json.dumps(plistlib.load(open(sys.argv[1], 'rb'))))";
    let out = python_command().args(["-c", script]).arg(path).output().expect("python");
    assert!(out.status.success(), "plistlib: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn launchd_agent_parses_back_with_its_keys() {
    let home = Home::new(&[]);
    home.write_config("service:\n  auto_start: false\n  restart_on_failure: true\n  restart_delay: 7\n");
    let out = home.run(&["service", "install", "--manager", "launchd"]);
    assert!(out.ok(), "{}", out.text());
    let file = home.user_home.join("Library/LaunchAgents/com.mlx-serve.server.plist");
    let p = plist(&file);
    let exe = mlx_serve_tests::server::binary("mlx-serve").canonicalize().unwrap();
    assert_eq!(p["Label"], "com.mlx-serve.server");
    assert_eq!(p["ProgramArguments"], json!([exe.to_str().unwrap(), "start", "--foreground"]));
    assert_eq!(p["RunAtLoad"], false);
    assert_eq!(p["KeepAlive"], json!({"SuccessfulExit": false}));
    assert_eq!(p["ThrottleInterval"], 7);
    let logs = home.path().join("logs").display().to_string();
    assert!(p["StandardOutPath"].as_str().unwrap().starts_with(&logs), "{p}");
    assert!(p["StandardErrorPath"].as_str().unwrap().starts_with(&logs), "{p}");
    assert_eq!(p["EnvironmentVariables"]["MLX_SERVE_HOME"], home.path().to_str().unwrap());
    assert_eq!(p["WorkingDirectory"], home.path().to_str().unwrap());

    // Other settings change the keys; --print shows the same file without writing.
    home.write_config("service:\n  auto_start: true\n  restart_on_failure: false\n");
    let out = home.run(&["service", "install", "--manager", "launchd", "--print"]);
    assert!(out.ok(), "{}", out.text());
    let printed = home.path().join("printed.plist");
    std::fs::write(&printed, &out.stdout).unwrap();
    let p = plist(&printed);
    assert_eq!(p["RunAtLoad"], true);
    assert_eq!(p["KeepAlive"], false);
    assert_eq!(p["ThrottleInterval"], 5);

    let out = home.run(&["service", "uninstall", "--manager", "launchd"]);
    assert!(out.ok(), "{}", out.text());
    assert!(!file.exists());

    // brew services' own agent: refuse and explain.
    let agents = home.user_home.join("Library/LaunchAgents");
    std::fs::write(agents.join("homebrew.mxcl.mlx-serve.plist"), "<plist/>").unwrap();
    let out = home.run(&["service", "install", "--manager", "launchd"]);
    assert!(!out.ok() && out.stderr.contains("brew services"), "{}", out.text());
    assert!(!file.exists());
}

#[test]
fn systemd_unit_is_valid() {
    let home = Home::new(&[]);
    home.write_config("service:\n  restart_delay: 3\n");
    let out = home.run(&["service", "install", "--manager", "systemd"]);
    assert!(out.ok(), "{}", out.text());
    let unit_path = home.user_home.join(".config/systemd/user/mlx-serve.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    let exe = mlx_serve_tests::server::binary("mlx-serve").canonicalize().unwrap();
    for line in [
        format!("ExecStart={} start --foreground", exe.display()),
        "Restart=on-failure".into(),
        "RestartSec=3".into(),
        format!("Environment=MLX_SERVE_HOME={}", home.path().display()),
        "WantedBy=default.target".into(),
    ] {
        assert!(unit.lines().any(|l| l == line), "no {line:?} in:\n{unit}");
    }

    // systemd's own checker (Debian package systemd; no Mac has it).
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        missing_tool("systemd-analyze", "Debian's package systemd checks the unit");
    } else {
        let out = Command::new("systemd-analyze").args(["verify"]).arg(&unit_path).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "systemd-analyze verify:\n{text}\n{unit}");
        assert!(!text.contains("mlx-serve.service"), "systemd-analyze warns:\n{text}");
        // The checker does reject a broken unit (so the check above means something).
        let broken = home.path().join("broken.service");
        std::fs::write(&broken, unit.replace("ExecStart=", "ExecStart=/nonexistent/")).unwrap();
        let out = Command::new("systemd-analyze").args(["verify"]).arg(&broken).output().unwrap();
        assert!(!out.status.success(), "systemd-analyze accepted a missing binary");
    }

    // start/stop go through systemctl --user; without a user manager they fail clearly.
    let out = home.run(&["service", "status", "--manager", "systemd"]);
    assert!(out.stdout.contains("installed"), "{}", out.text());
    let out = home.run(&["service", "uninstall", "--manager", "systemd"]);
    assert!(out.ok(), "{}", out.text());
    assert!(!unit_path.exists());

    // brew services' unit: refuse and explain.
    std::fs::create_dir_all(unit_path.parent().unwrap()).unwrap();
    std::fs::write(unit_path.parent().unwrap().join("homebrew.mlx-serve.service"), "[Service]\n").unwrap();
    let out = home.run(&["service", "install", "--manager", "systemd"]);
    assert!(!out.ok() && out.stderr.contains("brew services"), "{}", out.text());
    assert!(!unit_path.exists());
}

/// A stand-in for a service manager's command line tool (`systemctl`, `launchctl`) in a
/// folder of its own: it appends its arguments to `calls`, keeps "loaded" in `state` (set
/// by `bootstrap`, cleared by `bootout`; `print` fails while unloaded, as launchctl's does)
/// and exits `$FAKE_EXIT` (default 0) with a message. Shell builtins only: the commands
/// under test run with this folder alone on PATH.
struct FakeManager {
    dir: tempfile::TempDir,
}

impl FakeManager {
    fn new(tool: &str) -> FakeManager {
        let dir = tempfile::tempdir().unwrap();
        let (calls, state) = (dir.path().join("calls"), dir.path().join("state"));
        let script = format!(
            "#!/bin/sh\n\
             echo \"$*\" >> '{calls}'\n\
             case \"$1\" in\n\
             \x20 print) [ -s '{state}' ] || exit 113 ;;\n\
             \x20 bootstrap) echo loaded > '{state}' ;;\n\
             \x20 bootout) : > '{state}' ;;\n\
             esac\n\
             if [ \"${{FAKE_EXIT:-0}}\" != 0 ]; then echo 'Failed to connect to bus: No medium found' >&2; fi\n\
             exit \"${{FAKE_EXIT:-0}}\"\n",
            calls = calls.display(),
            state = state.display()
        );
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(bin.join(tool), script).unwrap();
        std::fs::set_permissions(bin.join(tool), std::fs::Permissions::from_mode(0o755)).unwrap();
        FakeManager { dir }
    }

    fn path(&self) -> String {
        self.dir.path().join("bin").display().to_string()
    }

    /// The calls since the last look, one line each.
    fn calls(&self) -> Vec<String> {
        let file = self.dir.path().join("calls");
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let _ = std::fs::remove_file(&file);
        text.lines().map(str::to_owned).collect()
    }
}

#[test]
fn service_start_and_stop_drive_systemd() {
    let home = Home::new(&[]);
    home.write_config("service:\n  auto_start: false\n");
    let systemctl = FakeManager::new("systemctl");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec![("PATH", systemctl.path())];
        all.extend(env.iter().map(|(k, v)| (*k, v.to_string())));
        let env: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
        home.run_env(args, &env, Duration::from_secs(30))
    };
    // Not installed: said so, and systemd is not asked.
    let out = run(&["service", "start", "--manager", "systemd"], &[]);
    assert!(!out.ok() && out.stderr.contains("not installed"), "{}", out.text());
    assert!(systemctl.calls().is_empty());
    let out = run(&["service", "install", "--manager", "systemd"], &[]);
    assert!(out.ok(), "{}", out.text());
    assert_eq!(systemctl.calls(), ["--user daemon-reload"], "auto_start false: loaded, not started");
    for verb in ["start", "stop"] {
        let out = run(&["service", verb, "--manager", "systemd"], &[]);
        assert!(out.ok() && out.stdout.contains(&format!("mlx-serve.service: {verb} done")), "{}", out.text());
        assert_eq!(systemctl.calls(), [format!("--user {verb} mlx-serve.service")]);
    }
    // systemctl fails (no user session bus): its words in one error line.
    let out = run(&["service", "start", "--manager", "systemd"], &[("FAKE_EXIT", "1")]);
    assert!(!out.ok(), "{}", out.text());
    let line = out.stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("{}", out.text()));
    assert!(line.contains("systemctl --user start failed") && line.contains("Failed to connect to bus"), "{line}");
    assert!(!out.stderr.contains("panicked"), "{}", out.text());
    // No systemd at all.
    let empty = tempfile::tempdir().unwrap();
    let out = home.run_env(
        &["service", "stop", "--manager", "systemd"],
        &[("PATH", empty.path().to_str().unwrap())],
        Duration::from_secs(30),
    );
    assert!(!out.ok() && out.stderr.contains("systemctl not found"), "{}", out.text());
}

#[test]
fn service_start_and_stop_drive_launchd() {
    let home = Home::new(&[]);
    home.write_config("service:\n  auto_start: false\n");
    let launchctl = FakeManager::new("launchctl");
    let env = [("PATH", launchctl.path())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = |args: &[&str]| home.run_env(args, &env, Duration::from_secs(30));
    let uid = nix::unistd::getuid();
    let plist = home.user_home.join("Library/LaunchAgents/com.mlx-serve.server.plist");
    let out = run(&["service", "install", "--manager", "launchd"]);
    assert!(out.ok() && plist.is_file(), "{}", out.text());
    assert_eq!(launchctl.calls(), [format!("print gui/{uid}/com.mlx-serve.server")], "auto_start false: not loaded");
    // start: load the agent, then run it now.
    let out = run(&["service", "start", "--manager", "launchd"]);
    assert!(out.ok() && out.stdout.contains("started"), "{}", out.text());
    assert_eq!(
        launchctl.calls(),
        [
            format!("print gui/{uid}/com.mlx-serve.server"),
            format!("bootstrap gui/{uid} {}", plist.display()),
            format!("kickstart gui/{uid}/com.mlx-serve.server"),
        ]
    );
    // stop: unload it.
    let out = run(&["service", "stop", "--manager", "launchd"]);
    assert!(out.ok() && out.stdout.contains("stopped"), "{}", out.text());
    assert_eq!(
        launchctl.calls(),
        [format!("print gui/{uid}/com.mlx-serve.server"), format!("bootout gui/{uid}/com.mlx-serve.server")]
    );
    // Without launchctl (Linux): a clear refusal.
    let empty = tempfile::tempdir().unwrap();
    let out = home.run_env(
        &["service", "start", "--manager", "launchd"],
        &[("PATH", empty.path().to_str().unwrap())],
        Duration::from_secs(30),
    );
    assert!(!out.ok() && out.stderr.contains("launchctl not found"), "{}", out.text());
}
