//! Run-time choice of the instruction set the host kernels are compiled for.
//!
//! Each kernel body is written once as plain loops over `#[inline(always)]` helpers and
//! [`simd_dispatch!`] instantiates it per level: the baseline target (SSE2 on x86-64,
//! NEON on arm64), AVX2 + FMA (8 lanes) and AVX-512 (16 lanes), picked at run time with
//! `is_x86_feature_detected!`, so one binary runs on any x86-64 and uses the widest
//! vectors the CPU has. The compiler vectorizes the loops; no intrinsics, so every level
//! computes the same operations in the same order (float addition is never reassociated
//! and never fused into FMA without `fast-math`), and the results are bit-identical
//! across levels; the tests in `tests.rs` check that, and check each level against a
//! scalar reference on lengths with tails.

use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set level a kernel can run at. Only [`level`] and [`available`] hand
/// them out, and both only return levels this CPU supports (the kernels rely on it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// The compile target's baseline: SSE2 on x86-64, NEON on arm64.
    Baseline,
    /// AVX2 + FMA (x86-64 since Haswell / Zen 1).
    Avx2,
    /// AVX-512 F/BW/DQ/VL (Skylake-SP and later Xeons, Zen 4).
    Avx512,
}

impl Level {
    fn supported(self) -> bool {
        match self {
            Level::Baseline => true,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => {
                Level::Avx2.supported()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512vl")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Baseline => "baseline",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }
}

/// The levels this CPU supports, narrowest first.
pub fn available() -> Vec<Level> {
    LEVELS.into_iter().filter(|l| l.supported()).collect()
}

static LEVEL: AtomicU8 = AtomicU8::new(u8::MAX);
const LEVELS: [Level; 3] = [Level::Baseline, Level::Avx2, Level::Avx512];

/// The level the kernels run at: the widest this CPU supports unless `MLX_SERVE_CPU_SIMD`
/// (`knobs.rs`) names another supported one, so a benchmark can time one binary at each
/// level. Detected once.
#[inline]
pub fn level() -> Level {
    match LEVEL.load(Ordering::Relaxed) {
        u8::MAX => {
            let all = available();
            let wanted = crate::knobs::cpu_simd();
            let chosen = all.iter().copied().find(|l| wanted.as_deref() == Some(l.name()));
            let chosen = chosen.unwrap_or(*all.last().unwrap_or(&Level::Baseline));
            LEVEL.store(chosen as u8, Ordering::Relaxed);
            chosen
        }
        v => LEVELS[v as usize],
    }
}

/// `simd_dispatch! { fn name(args) { body } }` defines `fn name(args)`, which runs the body
/// compiled for [`level()`], and `mod name` with `at(level, args)` for tests and benchmarks.
macro_rules! simd_dispatch {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        fn $name($($arg: $ty),*) {
            $name::at($crate::cpu_kernels::simd::level(), $($arg),*)
        }

        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use $crate::cpu_kernels::simd::Level;

            #[inline(always)]
            fn generic($($arg: $ty),*) $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) {
                generic($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
            unsafe fn avx512($($arg: $ty),*) {
                generic($($arg),*)
            }

            /// Runs the body compiled for `level`, which must come from `simd::level()` or
            /// `simd::available()` (both only return levels this CPU supports).
            #[allow(clippy::too_many_arguments)]
            pub(in $crate::cpu_kernels) fn at(level: Level, $($arg: $ty),*) {
                // SAFETY: `level` is one the CPU supports (see above), and these
                // functions only need the target features of their level.
                #[cfg(target_arch = "x86_64")]
                match level {
                    Level::Avx512 => return unsafe { avx512($($arg),*) },
                    Level::Avx2 => return unsafe { avx2($($arg),*) },
                    Level::Baseline => {}
                }
                let _ = level; // Baseline here (the only level off x86-64)
                generic($($arg),*)
            }
        }
    };
}
pub(crate) use simd_dispatch;
