//! This process's accelerator memory the way the system counts it, for `ctl workers`, the
//! metrics and eviction: MLX's own counters miss what the driver holds (CUDA's pools, the
//! context, cuDNN and cuBLAS workspaces), so the figure comes from the OS or the driver.
//!
//! - CUDA (Linux): NVML's per-process figure, the one `nvidia-smi` prints for the process.
//! - Metal (macOS): the process's physical footprint (`proc_pid_rusage`,
//!   `ri_phys_footprint`), the figure Activity Monitor shows as Memory: on unified memory
//!   Metal buffers are part of it.
//! - CPU: none (the resident set is reported already).

/// Bytes of accelerator memory this process holds, or `None` where there is no accelerator
/// or the system does not say.
pub fn process_device_bytes() -> Option<u64> {
    imp::process_device_bytes()
}

#[cfg(target_os = "linux")]
mod imp {
    use nvml_wrapper::enums::device::UsedGpuMemory;
    use nvml_wrapper::Nvml;
    use std::sync::OnceLock;

    pub fn process_device_bytes() -> Option<u64> {
        if !crate::device::on_cuda() {
            return None;
        }
        // NVML is loaded once (libnvidia-ml.so.1 comes with the driver).
        static NVML: OnceLock<Option<Nvml>> = OnceLock::new();
        let nvml = NVML.get_or_init(|| Nvml::init().ok()).as_ref()?;
        let pid = std::process::id();
        let mut total = None;
        for index in 0..nvml.device_count().ok()? {
            let Ok(device) = nvml.device_by_index(index) else { continue };
            for p in device.running_compute_processes().unwrap_or_default() {
                if let (true, UsedGpuMemory::Used(bytes)) = (p.pid == pid, p.used_gpu_memory) {
                    *total.get_or_insert(0) += bytes;
                }
            }
        }
        total
    }
}

#[cfg(target_os = "macos")]
mod imp {
    pub fn process_device_bytes() -> Option<u64> {
        if !crate::device::on_gpu() {
            return None;
        }
        // SAFETY: proc_pid_rusage writes one rusage_info_v2 into the zeroed struct we own.
        let mut info: libc::rusage_info_v2 = unsafe { std::mem::zeroed() };
        let status = unsafe {
            libc::proc_pid_rusage(
                std::process::id() as libc::c_int,
                libc::RUSAGE_INFO_V2,
                (&mut info as *mut libc::rusage_info_v2).cast(),
            )
        };
        (status == 0).then_some(info.ri_phys_footprint)
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
mod imp {
    pub fn process_device_bytes() -> Option<u64> {
        None
    }
}
