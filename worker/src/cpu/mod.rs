//! The CPU backend in one place: the host kernels for elementwise steps
//! (`cpu_kernels.rs`, SIMD levels in `cpu_kernels/simd.rs`), attention on the host
//! (`cpu_attention.rs`) and the BLAS check at start-up (`blas.rs`). docs/cpu-backend.md
//! says what each does and what it measured. The crate root re-exports the three
//! modules under their own names (`crate::cpu_kernels`, …), which the model files use.

pub mod blas;
pub mod cpu_attention;
pub mod cpu_kernels;
