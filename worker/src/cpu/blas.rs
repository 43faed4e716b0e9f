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

/// The provider, and OpenBLAS's kernels when it is OpenBLAS: `…/libopenblas.so.0 (SkylakeX
/// kernels)` (`ModelInfo::blas`, shown to the operator).
pub fn describe() -> String {
    let provider = sgemm_provider();
    match openblas_core() {
        Some(core) => format!("{provider} ({core} kernels)"),
        None => provider,
    }
}

/// Logs the provider to stderr, loudly when it is the slow reference BLAS.
pub fn report() -> String {
    let provider = sgemm_provider();
    if is_fast(&provider) {
        eprintln!("mlx-serve-worker: BLAS: {}", describe());
    } else {
        eprintln!(
            "mlx-serve-worker: WARNING: cblas_sgemm comes from {provider}, not OpenBLAS: fp32 matmul will be ~30x slower. Install libopenblas0-pthread and rebuild (scripts/setup)."
        );
    }
    provider
}

/// The name of the kernels OpenBLAS chose for this CPU (`Haswell`, `SkylakeX`, ...), when
/// the provider is OpenBLAS.
pub fn openblas_core() -> Option<String> {
    #[cfg(unix)]
    {
        let name = std::ffi::CString::new("openblas_get_corename").unwrap();
        // SAFETY: dlsym with RTLD_DEFAULT only reads the loader's tables; OpenBLAS's
        // `char *openblas_get_corename(void)` returns a static string (openblas_config.h).
        unsafe {
            let sym = libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr());
            if sym.is_null() {
                return None;
            }
            let get: unsafe extern "C" fn() -> *const libc::c_char = std::mem::transmute(sym);
            let core = get();
            (!core.is_null()).then(|| std::ffi::CStr::from_ptr(core).to_string_lossy().into_owned())
        }
    }
    #[cfg(not(unix))]
    None
}

/// OpenBLAS's kernels older than AVX2 (its `corename` names, lowercased).
const PRE_AVX2_CORES: [&str; 17] = [
    "prescott",
    "core2",
    "penryn",
    "dunnington",
    "nehalem",
    "sandybridge",
    "atom",
    "katmai",
    "coppermine",
    "northwood",
    "banias",
    "opteron",
    "barcelona",
    "bobcat",
    "bulldozer",
    "piledriver",
    "steamroller",
];

/// The kernels OpenBLAS should have chosen, when it took this CPU for an older one.
///
/// A dynamic-arch OpenBLAS picks its kernels when it loads, from the CPU's family and
/// model; a model newer than its release gets its generic SSE3 kernels. Debian 12's 0.3.21
/// takes an Intel Xeon of family 6, model 207 (Emerald Rapids) for a Prescott, and the
/// GEMMs ran at a third of the speed: `mlx-serve-worker bench-forward --batch 4 --seq 64` on
/// the nomic-embed-text-v2-moe shape, 242 tokens/s, against 687 with `OPENBLAS_CORETYPE`
/// naming its kernels (2026-12-08, docs/cpu-backend.md). So: `SkylakeX` where the CPU has
/// AVX-512 (F, BW, DQ, VL), `Haswell` where it has AVX2 and FMA, when OpenBLAS chose
/// kernels without AVX2; None otherwise (and off x86-64).
pub fn better_openblas_core() -> Option<&'static str> {
    let chosen = openblas_core()?.to_ascii_lowercase();
    if !PRE_AVX2_CORES.contains(&chosen.as_str()) {
        return None;
    }
    // The widest SIMD level the CPU has, as the host kernels detect it (`cpu_kernels/simd.rs`).
    match crate::cpu_kernels::simd_levels().last() {
        Some(crate::cpu_kernels::SimdLevel::Avx512) => Some("SkylakeX"),
        Some(crate::cpu_kernels::SimdLevel::Avx2) => Some("Haswell"),
        _ => None,
    }
}

/// Runs this program again with `OPENBLAS_CORETYPE` naming the kernels OpenBLAS should use
/// ([`better_openblas_core`]), when it chose older ones and the environment names none:
/// OpenBLAS reads that variable once, when it loads, before `main`. Returns only when
/// nothing is to be done or the exec failed (said on stderr; the slower kernels then serve).
#[cfg(unix)]
pub fn reexec_with_better_openblas_core() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("OPENBLAS_CORETYPE").is_some() {
        return;
    }
    let Some(core) = better_openblas_core() else { return };
    let chosen = openblas_core().unwrap_or_default();
    eprintln!("mlx-serve-worker: OpenBLAS took this CPU for a {chosen}; starting again with its {core} kernels");
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    // The file itself, not /proc/self/exe: the process is named after what exec is given
    // (`exe` for that link), and people (ps, pgrep) and tests find workers by name.
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            return eprintln!("mlx-serve-worker: could not find this program ({e}); going on with the {chosen} kernels")
        }
    };
    let err = std::process::Command::new(exe).arg0(argv0).args(args).env("OPENBLAS_CORETYPE", core).exec();
    eprintln!("mlx-serve-worker: could not start again ({err}); going on with the {chosen} kernels");
}

#[cfg(not(unix))]
pub fn reexec_with_better_openblas_core() {}

/// OpenBLAS held at one thread while this lives, restored on drop.
///
/// The pthread build of OpenBLAS (0.3.21 here) shares one thread pool between all callers:
/// when several of our threads each call `cblas_sgemm` at once (attention runs one task per
/// sequence and head on every core), each call also splits itself over the pool, and the
/// callers spin in `exec_blas_async`/`sched_yield` waiting for it. perf on a distilbert-size
/// forward (16 × 128 tokens, 2 cores) put 62% of the time there and 22% in the GEMM kernel
/// (docs/cpu-backend.md). Calls made while a guard lives run on the caller's thread alone;
/// the large GEMMs of the projections (MLX's, one caller) keep the whole pool.
///
/// A no-op where the provider has no `openblas_set_num_threads` (Accelerate, MKL, the
/// reference BLAS): looked up at run time so nothing links against OpenBLAS by name.
pub struct OneBlasThread {
    restore: Option<(SetThreads, i32)>,
}

type SetThreads = unsafe extern "C" fn(i32);
type GetThreads = unsafe extern "C" fn() -> i32;

impl OneBlasThread {
    /// Must be taken while no other thread is inside a BLAS call (the setting is global).
    pub fn hold() -> Self {
        let Some((get, set)) = openblas_thread_control() else { return Self { restore: None } };
        // SAFETY: OpenBLAS's own exported setters, called between BLAS calls.
        let before = unsafe { get() };
        if before <= 1 {
            return Self { restore: None };
        }
        unsafe { set(1) };
        Self { restore: Some((set, before)) }
    }
}

impl Drop for OneBlasThread {
    fn drop(&mut self) {
        if let Some((set, before)) = self.restore {
            // SAFETY: as in `hold`; the threads that called BLAS under the guard have joined.
            unsafe { set(before) };
        }
    }
}

#[cfg(unix)]
fn openblas_thread_control() -> Option<(GetThreads, SetThreads)> {
    use std::sync::OnceLock;
    static CONTROL: OnceLock<Option<(usize, usize)>> = OnceLock::new();
    let (get, set) = (*CONTROL.get_or_init(|| {
        // SAFETY: dlsym with RTLD_DEFAULT only reads the loader's tables.
        let lookup = |name: &str| {
            let name = std::ffi::CString::new(name).unwrap();
            let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
            (!sym.is_null()).then_some(sym as usize)
        };
        Some((lookup("openblas_get_num_threads")?, lookup("openblas_set_num_threads")?))
    }))?;
    // SAFETY: both symbols are OpenBLAS's, with these C signatures (openblas_config.h).
    unsafe { Some((std::mem::transmute::<usize, GetThreads>(get), std::mem::transmute::<usize, SetThreads>(set))) }
}

#[cfg(not(unix))]
fn openblas_thread_control() -> Option<(GetThreads, SetThreads)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guard holds OpenBLAS at one thread and gives back the count it found; a build
    /// whose BLAS is not OpenBLAS has nothing to hold (and says so here by skipping).
    #[test]
    fn one_blas_thread_holds_and_restores() {
        let Some((get, set)) = openblas_thread_control() else {
            assert!(!sgemm_provider().to_ascii_lowercase().contains("openblas"), "OpenBLAS without its thread setters");
            return;
        };
        // SAFETY: OpenBLAS's setters, no BLAS call in flight in this test.
        unsafe { set(2) };
        {
            let _one = OneBlasThread::hold();
            assert_eq!(unsafe { get() }, 1);
        }
        assert_eq!(unsafe { get() }, 2);
    }
}
