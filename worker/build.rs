//! Link-time wiring for the worker binary (Linux CPU backend):
//! - an rpath to the MLX runtime so the binary runs without LD_LIBRARY_PATH: first
//!   `$ORIGIN/../lib/mlx-serve/mlx/lib` (a relocatable install, see Makefile), then the
//!   runtime the build used (`DEP_MLX_LIBDIR`, published by our patched mlx-sys);
//! - OpenBLAS placed first in the symbol scope. The MLX wheel bundles the reference BLAS,
//!   which makes fp32 matmul ~30x slower; a DT_NEEDED entry on the executable is searched
//!   before libmlx's own dependencies, so `cblas_sgemm` binds to OpenBLAS. Debian's
//!   pthread OpenBLAS measured best against BLIS, MKL and PyPI's newer OpenBLAS at the
//!   worker's shapes (`bench/blas_libraries.sh`, docs/cpu-backend.md).
use std::{env, path::Path};

const OPENBLAS_DIRS: &[&str] =
    &["/usr/lib/x86_64-linux-gnu/openblas-pthread", "/usr/lib/aarch64-linux-gnu/openblas-pthread"];

fn main() {
    println!("cargo:rerun-if-env-changed=MLX_SERVE_NO_OPENBLAS");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-rpath,$ORIGIN/../lib/mlx-serve/mlx/lib");
    if let Ok(libdir) = env::var("DEP_MLX_LIBDIR") {
        println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{libdir}");
        println!("cargo:rustc-env=MLX_SERVE_BUILD_MLX_LIBDIR={libdir}");
    }
    if env::var_os("MLX_SERVE_NO_OPENBLAS").is_some() {
        return;
    }
    match OPENBLAS_DIRS.iter().find(|d| Path::new(d).join("libopenblas.so.0").exists()) {
        Some(dir) => {
            println!("cargo:rustc-link-search=native={dir}");
            println!("cargo:rustc-link-arg-bins=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg-bins=-l:libopenblas.so.0");
            println!("cargo:rustc-link-arg-bins=-Wl,--as-needed");
        }
        None => println!(
            "cargo:warning=OpenBLAS not found (apt-get install libopenblas0-pthread): fp32 matmul will use MLX's slow reference BLAS"
        ),
    }
}
