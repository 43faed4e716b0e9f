//! The Homebrew formula's build steps, run the way `brew install` runs them, as far as
//! Linux allows (tests/formula.rs only checks the formula under a DSL stub, which never
//! runs a step).
//!
//! 1. A release tree: `git archive` of this checkout (tracked and untracked, not ignored,
//!    files, through a throwaway index), unpacked; no `.git`, like the release tarball.
//! 2. The formula's `install`, run for real by Formula/test/brew_build.rb inside that tree
//!    with Homebrew's environment (HOME inside the build path, a plain Rust toolchain with
//!    no rustup): `scripts/setup --mlx-sys-only`, the version pin check, the resources
//!    staged as `(sources/name).install resource(name)` stages them, the toolchain file.
//!    `cargo install` (a Metal build) and `xcrun` are recorded, not run: only a Mac can.
//! 3. mlx-c configured the way mlx-sys' build script configures it on macOS (its defines,
//!    CMAKE_TOOLCHAIN_FILE from the environment as the `cmake` crate passes it), with the
//!    network cut off (a new network namespace holding only `lo`) and a FetchContent
//!    provider that refuses every download, as Homebrew installs one: the configure
//!    passes only if every FetchContent source comes from a staged resource.
//!
//! The resource archives: no registry reachable here carries MLX 0.32.2's source, json
//! 3.11.3, fmt 12.1.0 or the gguf-tools commit, so they are built from
//! Formula/test/standin/ (MLX's FetchContent calls, repeated with MLX 0.32.2's names and
//! URLs) plus MLX 0.32.2's own headers from the mlx-cpu wheel scripts/setup unpacked, each
//! packed like the published archive (format, one top-level folder). Checksums are not
//! checked; `brew fetch` on the release runner checks the real ones.
//! Cargo reads crates from this machine's CARGO_HOME instead of downloading them again.
#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mlx_serve_tests::cli::run;
use mlx_serve_tests::fixtures::repo_root;
use serde_json::Value;

/// The resources and how each is published: (name, top-level folder, archive extension).
const RESOURCES: &[(&str, &str, &str)] = &[
    ("mlx", "mlx-0.32.2", "tar.gz"),
    ("metal_cpp", "metal-cpp", "zip"),
    ("json", "json", "tar.xz"),
    ("fmt", "fmt-12.1.0", "tar.gz"),
    ("gguflib", "gguf-tools-8fa6eb65236618e28fd7710a0fba565f7faa1848", "tar.gz"),
];

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Unpacks `git archive` of the checkout as it stands into `dir`; returns the build path.
fn release_tree(dir: &Path) -> PathBuf {
    let root = repo_root();
    let git = |args: &[&str]| {
        sh(Command::new("git").arg("-C").arg(&root).args(args).env("GIT_INDEX_FILE", dir.join("index")))
    };
    git(&["read-tree", "HEAD"]);
    git(&["add", "-A"]);
    let tree = git(&["write-tree"]);
    let tarball = dir.join("mlx-serve-0.1.0.tar.gz");
    git(&["archive", "--format=tar.gz", "--prefix=mlx-serve-0.1.0/", "-o", tarball.to_str().unwrap(), &tree]);
    let unpack = dir.join("unpack");
    std::fs::create_dir_all(&unpack).unwrap();
    sh(Command::new("tar").arg("-xzf").arg(&tarball).arg("-C").arg(&unpack));
    let buildpath = unpack.join("mlx-serve-0.1.0");
    assert!(buildpath.join("Formula/mlx-serve.rb").is_file());
    assert!(!buildpath.join(".git").exists(), "a release tree has no .git");
    buildpath
}

/// The resource archives, one per resource, in `dir/mirror`.
fn resource_mirror(dir: &Path) -> PathBuf {
    let mirror = dir.join("mirror");
    let headers = repo_root().join(".deps/mlx-cpu/mlx/include/mlx");
    assert!(headers.join("array.h").is_file(), "{} missing: run scripts/setup", headers.display());
    for (name, top, ext) in RESOURCES {
        let src = dir.join("mirror-src").join(name);
        std::fs::create_dir_all(&src).unwrap();
        sh(Command::new("cp").arg("-r").arg(repo_root().join("Formula/test/standin").join(name)).arg(src.join(top)));
        if *name == "mlx" {
            sh(Command::new("cp").arg("-r").arg(&headers).arg(src.join(top).join("mlx")));
        }
        std::fs::create_dir_all(&mirror).unwrap();
        let archive = mirror.join(format!("{name}.{ext}"));
        let mut pack = match *ext {
            "zip" => {
                // Python's zipfile: `zip` itself is not among the packages setup installs.
                let mut c = Command::new("python3");
                c.args(["-m", "zipfile", "-c"]).arg(&archive).arg(top);
                c
            }
            _ => {
                let mut c = Command::new("tar");
                c.arg(if *ext == "tar.xz" { "-cJf" } else { "-czf" }).arg(&archive).arg(top);
                c
            }
        };
        sh(pack.current_dir(&src));
    }
    mirror
}

/// A plain toolchain bin directory (cargo, rustc), as Homebrew's `rust` provides: rustup's
/// proxies would look for their settings in the build's HOME.
fn rust_bin() -> PathBuf {
    PathBuf::from(sh(Command::new("rustc").args(["--print", "sysroot"]))).join("bin")
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"))
}

struct Install {
    buildpath: PathBuf,
    ok: bool,
    log: String,
    report: Value,
}

/// Formula/test/brew_build.rb on `formula` inside a fresh release tree in `dir`.
fn formula_install(dir: &Path, formula: Option<&Path>) -> Install {
    let buildpath = release_tree(dir);
    let mirror = resource_mirror(dir);
    let report = dir.join("install.json");
    let formula = formula.map(Path::to_path_buf).unwrap_or_else(|| buildpath.join("Formula/mlx-serve.rb"));
    let path = format!("{}:{}", rust_bin().display(), std::env::var("PATH").unwrap());
    let mut cmd = Command::new("ruby");
    cmd.arg(buildpath.join("Formula/test/brew_build.rb"))
        .arg(&formula)
        .arg(&mirror)
        .arg(&report)
        .current_dir(&buildpath)
        .env("PATH", path)
        .env("CARGO_HOME", cargo_home())
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("MLX_SERVE_DEV_CACHE")
        .env_remove("CMAKE_TOOLCHAIN_FILE");
    let out = run(cmd, Duration::from_secs(600));
    let report = std::fs::read_to_string(&report).map(|t| serde_json::from_str(&t).unwrap()).unwrap_or(Value::Null);
    Install { buildpath, ok: out.ok(), log: out.text(), report }
}

/// The command prefix that runs a program without network: a new network namespace.
fn offline() -> Vec<&'static str> {
    for prefix in [vec!["unshare", "-n"], vec!["unshare", "-rn"]] {
        let ok = Command::new(prefix[0]).args(&prefix[1..]).arg("true").status().is_ok_and(|s| s.success());
        if ok {
            // Only the loopback interface exists in there.
            let dev = sh(Command::new(prefix[0]).args(&prefix[1..]).args(["cat", "/proc/net/dev"]));
            let interfaces: Vec<&str> =
                dev.lines().skip(2).filter_map(|l| l.split(':').next()).map(str::trim).collect();
            assert_eq!(interfaces, ["lo"], "network namespace is not empty:\n{dev}");
            return prefix;
        }
    }
    panic!("cannot cut the network off: neither `unshare -n` nor `unshare -rn` works here");
}

/// mlx-c configured as mlx-sys 0.7.0's build.rs (`build_and_link_mlx_c`, the macOS path)
/// configures it, without Metal and Accelerate (macOS-only), offline, in `dir/mlx-c-build`.
fn configure_mlx_c(dir: &Path, install: &Install) -> mlx_serve_tests::cli::Output {
    let env = install.report["cargo_env"].as_object().expect("the formula reached cargo install");
    let toolchain = env["CMAKE_TOOLCHAIN_FILE"].as_str().expect("CMAKE_TOOLCHAIN_FILE set for cargo");
    let offline = offline();
    let mut cmd = Command::new(offline[0]);
    cmd.args(&offline[1..])
        .arg("cmake")
        .arg("-S")
        .arg(install.buildpath.join(".deps/mlx-sys/src/mlx-c"))
        .arg("-B")
        .arg(dir.join("mlx-c-build"))
        // The `cmake` crate (0.1.58, src/lib.rs) turns the CMAKE_TOOLCHAIN_FILE environment
        // variable into this define.
        .arg(format!("-DCMAKE_TOOLCHAIN_FILE={toolchain}"))
        .arg(format!(
            "-DCMAKE_PROJECT_TOP_LEVEL_INCLUDES={}",
            repo_root().join("Formula/test/trap_fetchcontent.cmake").display()
        ))
        .args([
            "-DCMAKE_INSTALL_PREFIX=.",
            "-DCMAKE_C_COMPILER=/usr/bin/cc",
            "-DCMAKE_CXX_COMPILER=/usr/bin/c++",
            "-DCMAKE_BUILD_TYPE=Release",
            "-DMLX_BUILD_METAL=OFF",
            "-DMLX_BUILD_ACCELERATE=OFF",
        ])
        .current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v.as_str().unwrap());
    }
    run(cmd, Duration::from_secs(300))
}

#[test]
fn brew_install_steps_run_on_a_release_tree_and_mlx_c_configures_offline_from_the_resources() {
    let dir = tempfile::tempdir().unwrap();
    let install = formula_install(dir.path(), None);
    assert!(install.ok, "the formula's install steps failed:\n{}", install.log);
    let buildpath = &install.buildpath;

    // scripts/setup ran first, for real, and placed the patched mlx-sys.
    let steps = install.report["steps"].as_array().unwrap();
    assert_eq!(steps[0]["args"], serde_json::json!(["scripts/setup", "--mlx-sys-only"]));
    assert_eq!(steps[0]["ran"], true);
    assert!(buildpath.join(".deps/mlx-sys/.stamp").is_file(), "{}", install.log);
    // Only what needs a Mac was left unrun: the Metal toolchain check and the Metal builds.
    let unrun: Vec<String> = steps
        .iter()
        .filter(|s| s["ran"] == false)
        .map(|s| s["args"].as_array().unwrap()[..2].iter().map(|a| a.as_str().unwrap()).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(unrun, ["xcrun -sdk", "cargo install", "cargo install"], "{:#}", install.report);

    // Each resource staged as Homebrew stages it: its archive's top folder stripped.
    for (name, _, _) in RESOURCES {
        let target = buildpath.join("fetchcontent").join(name);
        assert_eq!(install.report["staged"][name], serde_json::json!([target.to_str().unwrap()]));
    }
    for file in [
        "mlx/CMakeLists.txt",
        "mlx/mlx/array.h",
        "metal_cpp/Metal/Metal.hpp",
        "json/single_include/nlohmann/json.hpp",
        "fmt/CMakeLists.txt",
        "gguflib/gguflib.c",
    ] {
        assert!(buildpath.join("fetchcontent").join(file).is_file(), "fetchcontent/{file} not staged");
    }

    let out = configure_mlx_c(dir.path(), &install);
    let log = out.text();
    assert!(out.ok(), "mlx-c's offline configure failed:\n{log}");
    // mlx-c fetched MLX, and MLX fetched json, fmt and gguflib, each from its resource.
    for name in ["mlx", "json", "fmt", "gguflib"] {
        let line = format!("resource {name}: {}", buildpath.join("fetchcontent").join(name).display());
        assert!(log.contains(&line), "missing {line:?} in:\n{log}");
    }
    // Nothing was populated by FetchContent itself (it would have made a sub-build).
    let deps = dir.path().join("mlx-c-build/_deps");
    let populated: Vec<String> = std::fs::read_dir(&deps)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(populated.iter().all(|n| n.ends_with("-build")), "FetchContent populated {populated:?}");
}

#[test]
fn a_fetchcontent_source_without_a_resource_fails_the_offline_configure() {
    let dir = tempfile::tempdir().unwrap();
    let real = std::fs::read_to_string(repo_root().join("Formula/mlx-serve.rb")).unwrap();
    let list = "%w[mlx metal_cpp json fmt gguflib]";
    assert_eq!(real.matches(list).count(), 1, "{list} must occur once in the formula");
    let formula = dir.path().join("mlx-serve.rb");
    std::fs::write(&formula, real.replace(list, "%w[mlx metal_cpp json fmt]")).unwrap();

    let install = formula_install(dir.path(), Some(&formula));
    assert!(install.ok, "the formula's install steps failed:\n{}", install.log);
    let out = configure_mlx_c(dir.path(), &install);
    assert!(!out.ok(), "mlx-c configured without a gguflib resource:\n{}", out.text());
    assert!(out.text().contains("Refusing to populate dependency 'gguflib'"), "{}", out.text());
}
