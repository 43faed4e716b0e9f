//! Which device MLX computes on, asked at run time (not from how the binary was compiled):
//! the worker's one GPU code path serves Metal and CUDA alike, and the few places where
//! MLX's CUDA backend needs something else ask [`on_cuda`].

use mlx_rs::{Device, DeviceType};

/// True when MLX's default device is a GPU (a Metal or CUDA build on a machine that has
/// one); MLX picks it at start-up.
pub fn on_gpu() -> bool {
    Device::try_default().ok().and_then(|d| d.get_type().ok()).is_some_and(|t| matches!(t, DeviceType::Gpu))
}

/// True when that GPU is MLX's CUDA backend.
pub fn on_cuda() -> bool {
    let mut available = false;
    // SAFETY: mlx-c writes one bool through the pointer we own; a nonzero return is an error.
    let status = unsafe { mlx_sys::mlx_cuda_is_available(&mut available) };
    status == 0 && available && on_gpu()
}
