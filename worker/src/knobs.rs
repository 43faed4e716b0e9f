//! The worker's environment switches, all read here. None is needed in normal operation:
//! each times one implementation choice against another on the same binary (benchmarks,
//! `bench/gpu/diag.py`). docs/worker.md ("Switches") lists them with what each choice
//! measured.

use anyhow::{bail, Result};

/// `exact` or `ladder`: attention shapes per batch (`packing.rs`; default: a ladder on a
/// GPU, exact on the CPU).
pub const ATTENTION_SHAPES: &str = "MLX_SERVE_ATTENTION_SHAPES";
/// `kernel` or `dequantize`: how a quantized layer multiplies (`layers.rs`; default:
/// dequantize on CUDA, MLX's quantized kernel elsewhere).
pub const QUANTIZED_MATMUL: &str = "MLX_SERVE_QUANTIZED_MATMUL";
/// `baseline`, `avx2` or `avx512`: the SIMD level of the CPU kernels (`cpu_kernels/simd.rs`;
/// default: the widest this CPU has; a level it lacks is ignored).
pub const CPU_SIMD: &str = "MLX_SERVE_CPU_SIMD";

fn value(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// [`ATTENTION_SHAPES`]: Some(true) for the ladder, Some(false) for exact, None unset.
pub fn attention_ladder() -> Result<Option<bool>> {
    Ok(match value(ATTENTION_SHAPES).as_deref() {
        None => None,
        Some("ladder") => Some(true),
        Some("exact") => Some(false),
        Some(other) => bail!("{ATTENTION_SHAPES}={other:?}: expected exact or ladder"),
    })
}

/// [`QUANTIZED_MATMUL`]: Some(true) to dequantize first, Some(false) for the kernel, None
/// unset (or another value).
pub fn dequantize_first() -> Option<bool> {
    match value(QUANTIZED_MATMUL).as_deref() {
        Some("dequantize") => Some(true),
        Some("kernel") => Some(false),
        _ => None,
    }
}

/// [`CPU_SIMD`]: the level's name, when set.
pub fn cpu_simd() -> Option<String> {
    value(CPU_SIMD)
}
