//! Which BLAS answers `cblas_sgemm` in this process.
//!
//! On Linux the MLX CPU wheel bundles the reference BLAS; fp32 matmul through it is ~30x
//! slower than OpenBLAS (docs/worker.md, "Backends"). build.rs links OpenBLAS first in the
//! symbol scope; this checks at start-up that it worked, because a wrong link order fails
//! silently (only slowly).

/// Path of the shared object that defines `cblas_sgemm`, or a short reason.
#[cfg(target_os = "linux")]
pub fn sgemm_provider() -> String {
    use std::ffi::{CStr, CString};
    let name = CString::new("cblas_sgemm").unwrap();
    // SAFETY: dlsym/dladdr with RTLD_DEFAULT only read the loader's tables; the returned
    // file name points into the loader's memory and is copied before use.
    unsafe {
        let sym = libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr());
        if sym.is_null() {
            return "none (cblas_sgemm not found)".into();
        }
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(sym, &mut info) == 0 || info.dli_fname.is_null() {
            return "unknown".into();
        }
        CStr::from_ptr(info.dli_fname).to_string_lossy().into_owned()
    }
}

#[cfg(target_os = "macos")]
pub fn sgemm_provider() -> String {
    "Accelerate".into()
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub fn sgemm_provider() -> String {
    "unknown".into()
}

/// True when the provider is a known fast BLAS.
pub fn is_fast(provider: &str) -> bool {
    let p = provider.to_ascii_lowercase();
    ["openblas", "accelerate", "mkl", "blis"].iter().any(|n| p.contains(n))
}

/// Logs the provider to stderr, loudly when it is the slow reference BLAS.
pub fn report() -> String {
    let provider = sgemm_provider();
    if is_fast(&provider) {
        eprintln!("mlx-serve-worker: BLAS: {provider}");
    } else {
        eprintln!(
            "mlx-serve-worker: WARNING: cblas_sgemm comes from {provider}, not OpenBLAS: fp32 matmul will be ~30x slower. Install libopenblas0-pthread and rebuild (scripts/setup)."
        );
    }
    provider
}
