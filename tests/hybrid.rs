//! bge-m3's lexical (sparse) and multi-vector (ColBERT) heads end to end: `pull` converts
//! the heads shipped as `torch.save` files without running pickle code, and refuses a
//! hostile one; the fixture is `tests/fixtures/make_bge_m3.py`'s.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use mlx_serve_tests::cli::{self, Output};
use mlx_serve_tests::fake_hub::{error_line, folder_files, FakeHub};
use mlx_serve_tests::fixtures::{copy_dir, model_dir, read_safetensors, repo_root};
use mlx_serve_tests::server::binary;
use serde_json::Value;

const MARKER: &str = "pwned-by-pickle";

fn reference() -> Value {
    let path = repo_root().join("tests/fixtures/reference/tiny-bge-m3.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `mlx-serve ARGS` with its own home, the fake hub, and `cwd` as its working folder (where
/// a hostile pickle's `touch` would land).
fn mlx_serve(home: &Path, hub: &FakeHub, cwd: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(binary("mlx-serve"));
    cmd.args(args)
        .current_dir(cwd)
        .env("MLX_SERVE_HOME", home)
        .env("MLX_SERVE_WORKER_BIN", binary("mlx-serve-worker"))
        .env("HF_ENDPOINT", hub.endpoint())
        .env("HF_HOME", home.join("hf"))
        .env_remove("MLX_SERVE_CONFIG")
        .env_remove("MLX_SERVE_MODELS_DIR")
        .env_remove("HF_TOKEN")
        .stdin(Stdio::null());
    cli::run(cmd, Duration::from_secs(180))
}

fn floats(dtype: &str, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        "F32" => bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        "F16" => bytes.chunks_exact(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(),
        other => panic!("unexpected dtype {other}"),
    }
}

/// IEEE half → float (every half is exact in float).
fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f32;
    sign * match exp {
        0 => frac * 2f32.powi(-24),
        31 => f32::INFINITY,
        e => (1.0 + frac / 1024.0) * 2f32.powi(e - 15),
    }
}

/// The converted heads of the installed model `name` hold exactly the tensors torch saved.
fn assert_heads_converted(home: &Path, name: &str) {
    let dir = home.join("models").join(name);
    let reference = reference();
    for stem in ["sparse_linear", "colbert_linear"] {
        assert!(!dir.join(format!("{stem}.pt")).exists(), "the pickle itself must not be stored");
        let tensors = read_safetensors(&dir.join("heads").join(format!("{stem}.safetensors"))).unwrap();
        let want = reference["heads"][stem].as_object().unwrap();
        assert_eq!(tensors.len(), want.len(), "{stem}");
        for (tname, dtype, shape, data) in tensors {
            let w = &want[&tname];
            assert_eq!(dtype, w["dtype"].as_str().unwrap(), "{stem}.{tname}");
            let wshape: Vec<u64> = w["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
            assert_eq!(shape, wshape, "{stem}.{tname}");
            let wvals: Vec<f32> = w["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            assert_eq!(floats(&dtype, &data), wvals, "{stem}.{tname}");
        }
    }
}

#[test]
fn pull_converts_bge_m3_heads_from_a_folder_and_from_the_hub() {
    let hub = FakeHub::start();
    let home = tempfile::tempdir().unwrap();
    let src = model_dir("tiny-bge-m3");
    let out = mlx_serve(home.path(), &hub, home.path(), &["pull", src.to_str().unwrap(), "--name", "m3-local"]);
    assert!(out.ok(), "{}", out.text());
    assert_heads_converted(home.path(), "m3-local");

    hub.add_repo("BAAI/tiny-bge-m3", folder_files(&src));
    let out = mlx_serve(home.path(), &hub, home.path(), &["pull", "BAAI/tiny-bge-m3", "--name", "m3-hub"]);
    assert!(out.ok(), "{}", out.text());
    assert_heads_converted(home.path(), "m3-hub");
}

#[test]
fn hostile_pt_files_are_refused_at_pull_and_nothing_runs() {
    let hostile = repo_root().join("tests/fixtures/hostile-pt");
    for (file, as_head, names) in
        [("os_system.pt", "sparse_linear.pt", "os.system"), ("numpy_global.pt", "colbert_linear.pt", "numpy")]
    {
        let hub = FakeHub::start();
        let home = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let folder = work.path().join("bge-m3");
        copy_dir(&model_dir("tiny-bge-m3"), &folder);
        std::fs::copy(hostile.join(file), folder.join(as_head)).unwrap();

        let out = mlx_serve(home.path(), &hub, work.path(), &["pull", folder.to_str().unwrap(), "--name", "m3"]);
        let line = error_line(&out);
        assert!(line.contains(as_head) && line.contains(names) && line.contains("without running"), "{line}");
        assert!(!home.path().join("models/m3").exists(), "{file}: nothing may be installed");

        hub.add_repo("acme/hostile-m3", folder_files(&folder));
        let out = mlx_serve(home.path(), &hub, work.path(), &["pull", "acme/hostile-m3"]);
        let line = error_line(&out);
        assert!(line.contains(as_head) && line.contains(names), "{line}");

        // Where `touch` would have written: the working folder, the home, the source folder.
        for dir in [work.path(), home.path(), folder.as_path()] {
            assert!(!dir.join(MARKER).exists(), "{file}: the pickle's command ran");
        }
        let listed = mlx_serve(home.path(), &hub, work.path(), &["list"]);
        assert!(!listed.stdout.contains("m3"), "{}", listed.text());
    }
}
