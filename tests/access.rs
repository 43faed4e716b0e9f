//! Who may talk to the server and what it tells them: the optional API key with the
//! official clients (every route's refusal is checked in-process, daemon/tests/auth.rs);
//! worker sockets never in a folder another user controls; server-side failures answered
//! without internals.
//! Real daemon, real workers, real clients; each test fails on the code before the fix.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlx_serve_tests::cli::{run, Home};
use mlx_serve_tests::raw;
use mlx_serve_tests::server::{binary, model_source, run_client, Server, ServerOptions};
use mlx_serve_tests::tools::missing_tool;
use serde_json::json;

const KEY: &str = "test-key-0123456789";

#[test]
fn official_clients_pass_the_key_and_the_log_never_shows_it() {
    // Every route's 401 and its shapes are checked in-process
    // (supervisor/src/daemon/tests/auth.rs); here the official clients' own way of
    // passing a key, against the real daemon and workers.
    let config = format!("server:\n  api_key: {KEY}\n");
    let server = Server::start(ServerOptions {
        models: vec!["all-MiniLM-L6-v2", "tiny-bert-rerank"],
        config: Some(config),
        ..Default::default()
    });
    let out = run_client("api_key_clients.py", &server, &[KEY, "all-MiniLM-L6-v2", "tiny-bert-rerank"]);
    assert!(out.contains("openai, ollama"), "{out}");
    if !out.contains("cohere") {
        missing_tool("cohere", "the Python package cohere in the test venv (tests/requirements.txt)");
    }
    assert!(!server.log_text().contains(KEY), "the key never reaches the log");
}

#[test]
fn exposed_binds_are_warned_about() {
    // `/metrics` left open beside a key is checked in-process (daemon/tests/auth.rs).
    let config = format!("server:\n  api_key: {KEY}\n");
    let server =
        Server::start(ServerOptions { models: vec!["tiny-bert-embed"], config: Some(config), ..Default::default() });
    assert!(!server.log_text().contains("without an API key"), "a key is set: no warning");
    drop(server);
    let server = Server::start(ServerOptions {
        models: vec!["tiny-bert-embed"],
        args: vec!["--host".into(), "0.0.0.0".into()],
        ..Default::default()
    });
    assert!(server.log_text().contains("without an API key"), "{}", server.log_text());
}

#[test]
fn the_cli_passes_the_key_on_without_showing_it() {
    let home = Home::new(&["tiny-bert-embed"]);
    let out = home.run(&["start", "--port", "0", "--api-key", KEY]);
    assert!(out.ok(), "{}", out.text());
    let started = mlx_serve_tests::cli::parse_started(&out);
    let (port, pid) = (started.port, started.pid);
    let cmdline = mlx_serve_tests::process::command_line(pid as u32);
    assert!(!cmdline.is_empty(), "no command line for the daemon {pid}");
    assert!(!cmdline.iter().any(|a| a.contains(KEY)), "the daemon's command line shows the key: {cmdline:?}");
    assert_eq!(raw::request(port, "GET /v1/models HTTP/1.1", b"").status, 401);
    let ok = raw::request(port, &format!("GET /v1/models HTTP/1.1\r\nAuthorization: Bearer {KEY}"), b"");
    assert_eq!(ok.status, 200, "{ok:?}");
    // ctl and status use the control socket (mode 0600), which the key does not guard.
    let workers = home.run(&["ctl", "workers", "--port", &port.to_string()]);
    assert!(workers.ok(), "{}", workers.text());
    let config = home.run_env(&["config"], &[("MLX_SERVE_API_KEY", KEY)], Duration::from_secs(30));
    assert!(config.stdout.contains("server.api_key") && !config.stdout.contains(KEY), "{}", config.text());
}

/// Pre-creates `dir` as another user's (uid 65534, `nobody` on Linux): mode 0777 when
/// `open`. Giving a folder away needs root, or `sudo -n` (GitHub's macOS runners have
/// it); without either the tool `chown` is missing (tests/common/tools.rs) and this
/// returns false.
fn foreign_dir(dir: &Path, mode: u32) -> bool {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
    let nobody = (nix::unistd::Uid::from_raw(65534), nix::unistd::Gid::from_raw(65534));
    if nix::unistd::chown(dir, Some(nobody.0), Some(nobody.1)).is_ok() {
        return true;
    }
    let sudo = std::process::Command::new("sudo")
        .args(["-n", "chown", "65534:65534"])
        .arg(dir)
        .stderr(std::process::Stdio::null())
        .status();
    if sudo.is_ok_and(|s| s.success()) {
        return true;
    }
    missing_tool("chown", "giving a folder to another user needs root or passwordless sudo");
    false
}

#[test]
fn worker_sockets_stay_out_of_folders_others_control() {
    // Another user created this machine's shared socket folder first, wide open.
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join(format!("mlx-serve-{}", nix::unistd::getuid()));
    if !foreign_dir(&shared, 0o777) {
        return;
    }
    // Watch it for sockets while a worker starts (each start binds one for a moment).
    let seen = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (seen, stop, shared) = (seen.clone(), stop.clone(), shared.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if std::fs::read_dir(&shared).map(|d| d.count() > 0).unwrap_or(false) {
                    seen.store(true, Ordering::SeqCst);
                }
                // Polling a folder: the sockets live for the whole model load (100s of ms).
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let server = Server::start(ServerOptions {
        models: vec!["tiny-bert-embed"],
        env: vec![("TMPDIR".into(), tmp.path().to_string_lossy().into_owned())],
        ..Default::default()
    });
    assert_eq!(server.post("/v1/embeddings", &json!({"model": "tiny-bert-embed", "input": "hi"})).0, 200);
    stop.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    assert!(
        !seen.load(Ordering::SeqCst),
        "a worker socket appeared in {}, a folder another user owns",
        shared.display()
    );
    let run_dir = std::fs::symlink_metadata(server.home.path().join("run")).unwrap();
    assert_eq!((run_dir.mode() & 0o777, run_dir.uid()), (0o700, nix::unistd::getuid().as_raw()));
}

/// Starts `mlx-serve start --foreground` on `home` and returns its exit code and stderr;
/// it must exit by itself.
fn start_must_fail(home: &Path) -> (Option<i32>, String) {
    let mut cmd = std::process::Command::new(binary("mlx-serve"));
    cmd.args(["start", "--foreground", "--port", "0"])
        .env("MLX_SERVE_HOME", home)
        .env("MLX_SERVE_WORKER_BIN", binary("mlx-serve-worker"))
        .env_remove("MLX_SERVE_CONFIG");
    let out = run(cmd, Duration::from_secs(30));
    (out.code, out.stderr)
}

#[test]
fn a_run_folder_of_another_user_or_a_link_is_refused() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join("models")).unwrap();
    if foreign_dir(&home.path().join("run"), 0o700) {
        let (code, stderr) = start_must_fail(home.path());
        assert_ne!(code, Some(0));
        assert!(stderr.contains("belongs to uid 65534"), "{stderr}");
    }

    let home = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::set_permissions(elsewhere.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), home.path().join("run")).unwrap();
    let (code, stderr) = start_must_fail(home.path());
    assert_ne!(code, Some(0));
    assert!(stderr.contains("symbolic link"), "{stderr}");
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0, "nothing was created through the link");
}

#[test]
fn failures_are_answered_without_internals() {
    // A model whose weights are garbage: the worker fails to load it.
    let server = Server::start(ServerOptions {
        models: vec!["tiny-bert-embed"],
        env: vec![("RUST_BACKTRACE".into(), "full".into())],
        ..Default::default()
    });
    // Its sentence-transformers module folders too: a folder without them is refused
    // before any worker starts (a Pooling module without its config).
    let broken = server.home.path().join("models/broken");
    mlx_serve_tests::fixtures::copy_dir(&model_source("tiny-bert-embed"), &broken);
    std::fs::write(broken.join("model.safetensors"), b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": garbage}").unwrap();
    let home = server.home.path().to_string_lossy().into_owned();
    for (path, body) in [
        ("/v1/embeddings", json!({"model": "broken", "input": "hi"})),
        ("/api/embed", json!({"model": "broken", "input": "hi"})),
    ] {
        let (status, v) = server.post(path, &body);
        assert!(status >= 500, "{path}: {status} {v}");
        let message = if path.starts_with("/api/") { v["error"].as_str() } else { v["error"]["message"].as_str() };
        let message = message.unwrap_or_else(|| panic!("{path}: no message in {v}"));
        // The reason stays (the file of the user's model and what is wrong with it); the
        // server's paths, panics and backtraces do not.
        for internal in [home.as_str(), "/models/", "panicked", "backtrace", ".rs:", "\n"] {
            assert!(!message.contains(internal), "{path}: {internal:?} in {message:?}");
        }
        assert!(message.contains("broken"), "{path}: the message names the model: {message}");
        assert!(message.contains("corrupt"), "{path}: the message says why: {message}");
    }
    // The operator still finds the reason in the log.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.log_text().contains("worker failed to start") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50)); // polling interval of a condition wait (bounded by its deadline)
    }
    assert!(server.log_text().contains("worker failed to start"), "{}", server.log_text());
}
