//! `make install` on Linux gives a relocatable install: both binaries plus the MLX runtime
//! under one prefix, found through `$ORIGIN`, nothing pointing back at this checkout.
//!
//! The test installs into a temporary prefix, then moves the whole prefix elsewhere (so no
//! path written at install time can still be right), and checks three ways that the
//! checkout's MLX (.deps/mlx-cpu) is out of reach without touching the shared tree:
//! the worker's RUNPATH is the `$ORIGIN` entry alone, `ldd` resolves libmlx and its
//! bundled libraries inside the moved prefix, and the worker that served a real request
//! mapped libmlx from the moved prefix (/proc/<pid>/maps). The request is a real
//! all-MiniLM-L6-v2 embedding, compared with sentence-transformers' output.
#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::Command;

use mlx_serve_tests::fixtures::{cosine, embed_reference, repo_root};
use mlx_serve_tests::server::{binary, Server, ServerOptions};
use serde_json::json;

const RUNPATH: &str = "$ORIGIN/../lib/mlx-serve/mlx/lib";

/// `make install NO_BUILD=1 PREFIX=<prefix>` from the already built binaries.
fn make_install(prefix: &Path) {
    let bin_dir = binary("mlx-serve").parent().unwrap().to_path_buf();
    let out = Command::new("make")
        .arg("-C")
        .arg(repo_root())
        .args(["install", "NO_BUILD=1"])
        .arg(format!("PREFIX={}", prefix.display()))
        .arg(format!("TARGET_DIR={}", bin_dir.display()))
        .output()
        .expect("run make");
    assert!(
        out.status.success(),
        "make install failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `name => path` pairs from `ldd`, run with no LD_LIBRARY_PATH.
fn ldd(binary: &Path) -> Vec<(String, String)> {
    let out = Command::new("ldd").arg(binary).env_remove("LD_LIBRARY_PATH").output().expect("run ldd");
    assert!(out.status.success(), "ldd {}: {}", binary.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().split_once(" => ")?;
            Some((name.to_string(), rest.split(" (").next().unwrap_or("").to_string()))
        })
        .collect()
}

/// Paths that would mean the install still depends on this checkout.
fn checkout_paths() -> Vec<PathBuf> {
    let root = repo_root();
    let mut paths = vec![root.clone()];
    if let Ok(real) = root.join(".deps/mlx-cpu").canonicalize() {
        paths.push(real);
    }
    paths
}

fn under_checkout(path: &str) -> bool {
    let resolved = Path::new(path).canonicalize().unwrap_or_else(|_| PathBuf::from(path));
    checkout_paths().iter().any(|c| resolved.starts_with(c) || Path::new(path).starts_with(c))
}

#[test]
fn installed_copy_serves_after_being_moved_and_never_loads_the_checkouts_mlx() {
    let tmp = tempfile::tempdir().unwrap();
    let installed = tmp.path().join("installed");
    make_install(&installed);
    let moved = tmp.path().join("moved-elsewhere");
    std::fs::rename(&installed, &moved).unwrap();
    let worker = moved.join("bin/mlx-serve-worker");
    let libmlx = moved.join("lib/mlx-serve/mlx/lib/libmlx.so");
    assert!(moved.join("bin/mlx-serve").is_file() && worker.is_file() && libmlx.is_file());

    // 1. RUNPATH: only the relative entry; the build-time absolute one is gone.
    let out = Command::new("patchelf").arg("--print-rpath").arg(&worker).output().expect("run patchelf");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), RUNPATH);

    // 2. The dynamic linker resolves MLX and its bundled libraries inside the moved prefix.
    let libs = ldd(&worker);
    let resolved = |name: &str| libs.iter().find(|(n, _)| n == name).map(|(_, p)| p.clone());
    let mlx = resolved("libmlx.so").expect("libmlx.so in ldd output");
    assert_eq!(Path::new(&mlx).canonicalize().unwrap(), libmlx.canonicalize().unwrap(), "libmlx.so => {mlx}");
    for (name, path) in &libs {
        assert!(path != "not found", "{name} not found: {libs:?}");
        assert!(!under_checkout(path), "{name} resolves into the checkout: {path}");
        if path.contains("mlx_cpu.libs") {
            assert!(Path::new(path).canonicalize().unwrap().starts_with(moved.canonicalize().unwrap()), "{path}");
        }
    }
    for name in ["mlx-serve", "mlx-serve-worker"] {
        let out = Command::new(moved.join("bin").join(name)).arg("--version").output().unwrap();
        assert!(out.status.success(), "{name} --version: {}", String::from_utf8_lossy(&out.stderr));
    }

    // 3. The installed daemon (finding its worker beside itself) serves a real request.
    let server = Server::start(ServerOptions {
        models: vec!["all-MiniLM-L6-v2"],
        bin_dir: Some(moved.join("bin")),
        env: vec![("LD_LIBRARY_PATH".into(), String::new())],
        ..Default::default()
    });
    let reference = embed_reference("all-MiniLM-L6-v2").unwrap();
    let case = reference.cases.iter().find(|c| c.texts.iter().all(|t| !t.is_empty())).expect("a case");
    let (status, body) = server.post("/v1/embeddings", &json!({"model": "all-MiniLM-L6-v2", "input": case.texts}));
    assert_eq!(status, 200, "{body}\n{}", server.log_text());
    let rows = body["data"].as_array().unwrap();
    assert_eq!(rows.len(), case.texts.len());
    for (row, want) in rows.iter().zip(&case.embeddings) {
        let got: Vec<f32> = row["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        assert_eq!(got.len(), 384);
        let c = cosine(&got, want);
        assert!(c > 0.9999, "cosine {c} to sentence-transformers");
    }

    // The worker that answered is the installed one, with the installed libmlx mapped.
    let pids = server.worker_pids();
    assert_eq!(pids.len(), 1, "one worker: {pids:?}");
    let exe = std::fs::read_link(format!("/proc/{}/exe", pids[0])).unwrap();
    assert_eq!(exe, worker.canonicalize().unwrap());
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", pids[0])).unwrap();
    let mapped: Vec<&str> =
        maps.lines().filter_map(|l| l.split_whitespace().nth(5)).filter(|p| p.contains(".so")).collect();
    let libmlx_real = libmlx.canonicalize().unwrap();
    assert!(mapped.iter().any(|p| Path::new(p) == libmlx_real), "libmlx not mapped from the prefix: {mapped:?}");
    let leaked: Vec<&&str> = mapped.iter().filter(|p| under_checkout(p)).collect();
    assert!(leaked.is_empty(), "worker mapped libraries from the checkout: {leaked:?}");
    assert_eq!(server.stop(), Some(0));
}
