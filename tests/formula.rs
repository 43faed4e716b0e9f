//! The Homebrew formula, checked without Homebrew: scripts/check-formula (Ruby syntax, the
//! formula under a stub of Homebrew's DSL, rubocop, the release workflow) passes on the
//! real formula, and fails on copies broken the ways that matter (a service flag
//! `mlx-serve start` does not accept, a service that restarts after a clean stop, a
//! release checksum that is not one, a workflow on a Linux runner).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mlx_serve_tests::fixtures::repo_root;
use mlx_serve_tests::server::binary;

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// scripts/check-formula on `formula` (the real one when None).
fn check_formula(formula: Option<&Path>) -> Output {
    let mut cmd = Command::new(repo_root().join("scripts/check-formula"));
    if let Some(f) = formula {
        cmd.arg(f);
    }
    // The formula's test block starts the daemon; it must find the worker beside itself.
    cmd.env("MLX_SERVE_BIN_DIR", binary("mlx-serve").parent().unwrap())
        .env_remove("MLX_SERVE_WORKER_BIN")
        .output()
        .expect("run scripts/check-formula")
}

/// A copy of the formula with `from` replaced by `to` (which must occur once).
fn broken_formula(dir: &Path, from: &str, to: &str) -> PathBuf {
    let real = std::fs::read_to_string(repo_root().join("Formula/mlx-serve.rb")).unwrap();
    assert_eq!(real.matches(from).count(), 1, "{from:?} must occur once in the formula");
    let path = dir.join("mlx-serve.rb");
    std::fs::write(&path, real.replace(from, to)).unwrap();
    path
}

#[test]
fn the_formula_passes_every_check() {
    let out = check_formula(None);
    let log = text(&out);
    assert!(out.status.success(), "scripts/check-formula failed:\n{log}");
    for line in [
        "Syntax OK",
        "ok   install: MLX version skew stops the build with both versions named",
        "ok   service: `mlx-serve start` accepts the service's arguments",
        "ok   test block: passes against the built binaries",
        "formula OK: MlxServe",
        "workflow OK",
    ] {
        assert!(log.contains(line), "missing {line:?} in:\n{log}");
    }
    assert!(!log.contains("FAIL"), "{log}");
}

#[test]
fn a_service_flag_start_does_not_accept_fails_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let formula =
        broken_formula(dir.path(), r#""start", "--foreground"]"#, r#""start", "--foreground", "--daemonize"]"#);
    let out = check_formula(Some(&formula));
    let log = text(&out);
    assert!(!out.status.success(), "a --daemonize service passed:\n{log}");
    assert!(log.contains("FAIL service: `mlx-serve start` accepts") && log.contains("--daemonize"), "{log}");
}

#[test]
fn a_service_that_restarts_after_a_clean_stop_fails_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let formula = broken_formula(dir.path(), "keep_alive crashed: true", "keep_alive true");
    let out = check_formula(Some(&formula));
    let log = text(&out);
    assert!(!out.status.success(), "keep_alive true passed:\n{log}");
    assert!(log.contains("FAIL service: restarts on crash, not after a clean stop"), "{log}");
}

#[test]
fn bump_formula_sets_the_release_and_the_checker_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let formula = dir.path().join("mlx-serve.rb");
    std::fs::copy(repo_root().join("Formula/mlx-serve.rb"), &formula).unwrap();
    let sha = "ab".repeat(32);
    let url = "https://example.invalid/releases/download/v9.8.7/mlx-serve-9.8.7.tar.gz";
    let bump = |sha: &str| {
        Command::new(repo_root().join("scripts/bump-formula")).args([url, sha]).arg(&formula).output().unwrap()
    };
    let refused = bump("not-a-checksum");
    assert!(!refused.status.success(), "bump-formula accepted a bad checksum");

    let out = bump(&sha);
    assert!(out.status.success(), "{}", text(&out));
    let bumped = std::fs::read_to_string(&formula).unwrap();
    assert!(bumped.contains(&format!("  url \"{url}\"\n  sha256 \"{sha}\"\n")), "{bumped}");
    // Resources keep their own checksums.
    assert!(bumped.contains("bf892386ccac1d249acc9da21574fd7b95a995f4c58b03310105fe05f077b175"));

    let out = check_formula(Some(&formula));
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("formula OK: MlxServe 9.8.7"), "{log}");
}

#[test]
fn a_release_workflow_on_a_linux_runner_fails_the_lint() {
    let dir = tempfile::tempdir().unwrap();
    let real = std::fs::read_to_string(repo_root().join(".github/workflows/release.yml")).unwrap();
    assert_eq!(real.matches("runs-on: macos-15").count(), 1);
    let workflow = dir.path().join("release.yml");
    std::fs::write(&workflow, real.replace("runs-on: macos-15", "runs-on: ubuntu-latest")).unwrap();
    let out = Command::new("ruby")
        .arg(repo_root().join("Formula/test/check_workflow.rb"))
        .arg(&workflow)
        .output()
        .expect("run ruby");
    assert!(!out.status.success());
    assert!(text(&out).contains("is not an Apple silicon macOS image"), "{}", text(&out));
}
