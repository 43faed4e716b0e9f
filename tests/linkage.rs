//! What the binaries link: the supervisor never links MLX; the worker links libmlx and,
//! on Linux, OpenBLAS ahead of the wheel's slow reference BLAS (and says so at start-up).

use std::process::Command;

use mlx_serve_tests::server::binary;

fn ldd(name: &str) -> String {
    let out = Command::new("ldd").arg(binary(name)).output().expect("ldd");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[cfg(target_os = "linux")]
fn supervisor_does_not_link_mlx() {
    let libs = ldd("mlx-serve");
    assert!(!libs.contains("libmlx"), "{libs}");
    assert!(!libs.contains("blas"), "{libs}");
}

#[test]
#[cfg(target_os = "linux")]
fn worker_links_mlx_and_openblas_first() {
    let libs = ldd("mlx-serve-worker");
    assert!(libs.contains("libmlx.so =>") && !libs.contains("libmlx.so => not found"), "{libs}");
    assert!(libs.contains("libopenblas.so.0 =>"), "{libs}");
    // The worker checks at start-up which library answers cblas_sgemm.
    let out =
        Command::new(binary("mlx-serve-worker")).args(["bench-matmul", "--n", "64", "--iters", "1"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("BLAS:") && stderr.contains("openblas"), "{stderr}");
    assert!(!stderr.contains("WARNING"), "{stderr}");
}

#[test]
fn both_binaries_report_their_version() {
    for name in ["mlx-serve", "mlx-serve-worker"] {
        let out = Command::new(binary(name)).arg("--version").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains(env!("CARGO_PKG_VERSION")), "{name}: {text}");
    }
}
