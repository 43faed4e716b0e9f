//! The few CUDA driver calls the worker makes itself: how much device memory the driver's
//! pools hold for this process, and trimming them when the worker goes idle.
//!
//! MLX's CUDA allocator frees buffers with `cudaFreeAsync` into the device's default memory
//! pool. A pool keeps freed memory reserved until a synchronize finds it above the pool's
//! release threshold, and memory that CUDA graphs allocated stays with the graph allocator
//! until `cuDeviceGraphMemTrim`; neither shows in MLX's own counters (active, cache).
//! Emptying MLX's cache is therefore not enough to give memory back on CUDA:
//! [`trim`] asks the driver too (CUDA Driver API reference, "Stream Ordered Memory
//! Allocator": `cuMemPoolTrimTo`, and "Graph Management": `cuDeviceGraphMemTrim`).
//!
//! The driver library is the one libmlx already loaded (`RTLD_NOLOAD`): on the CPU and
//! Metal builds it is absent and every function here does nothing.

use std::ffi::c_void;
use std::sync::OnceLock;

type CuResult = i32;
type CuDevice = i32;
type CuMemPool = *mut c_void;

/// `CUmemPool_attribute` values (cuda.h).
const MEMPOOL_ATTR_RESERVED_MEM_CURRENT: i32 = 5;
/// `CUgraphMem_attribute` values (cuda.h).
const GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT: i32 = 2;

struct Driver {
    // Kept loaded for the function pointers below.
    _lib: libloading::Library,
    ctx_get_device: unsafe extern "C" fn(*mut CuDevice) -> CuResult,
    ctx_synchronize: unsafe extern "C" fn() -> CuResult,
    default_mem_pool: unsafe extern "C" fn(*mut CuMemPool, CuDevice) -> CuResult,
    pool_trim_to: unsafe extern "C" fn(CuMemPool, usize) -> CuResult,
    pool_attribute: unsafe extern "C" fn(CuMemPool, i32, *mut c_void) -> CuResult,
    graph_mem_trim: unsafe extern "C" fn(CuDevice) -> CuResult,
    graph_mem_attribute: unsafe extern "C" fn(CuDevice, i32, *mut c_void) -> CuResult,
}

// SAFETY: the driver API is thread-safe; the struct holds only function pointers and the
// library handle that keeps them valid.
unsafe impl Send for Driver {}
unsafe impl Sync for Driver {}

fn driver() -> Option<&'static Driver> {
    static DRIVER: OnceLock<Option<Driver>> = OnceLock::new();
    DRIVER.get_or_init(load).as_ref()
}

#[cfg(target_os = "linux")]
fn load() -> Option<Driver> {
    use libloading::os::unix::{Library, RTLD_LAZY};
    // SAFETY: RTLD_NOLOAD only returns a library this process already loaded (libmlx's
    // dependency); no initialiser runs. The symbols are resolved with the signatures of
    // cuda.h for these entry points.
    unsafe {
        let lib: libloading::Library = Library::open(Some("libcuda.so.1"), RTLD_LAZY | libc::RTLD_NOLOAD).ok()?.into();
        Some(Driver {
            ctx_get_device: *lib.get(b"cuCtxGetDevice\0").ok()?,
            ctx_synchronize: *lib.get(b"cuCtxSynchronize\0").ok()?,
            default_mem_pool: *lib.get(b"cuDeviceGetDefaultMemPool\0").ok()?,
            pool_trim_to: *lib.get(b"cuMemPoolTrimTo\0").ok()?,
            pool_attribute: *lib.get(b"cuMemPoolGetAttribute\0").ok()?,
            graph_mem_trim: *lib.get(b"cuDeviceGraphMemTrim\0").ok()?,
            graph_mem_attribute: *lib.get(b"cuDeviceGetGraphMemAttribute\0").ok()?,
            _lib: lib,
        })
    }
}

#[cfg(not(target_os = "linux"))]
fn load() -> Option<Driver> {
    None
}

/// The device of the calling thread's current context (MLX's thread has one once MLX ran).
fn current_device(d: &Driver) -> Option<CuDevice> {
    let mut dev = 0;
    // SAFETY: writes one int through a pointer we own.
    (unsafe { (d.ctx_get_device)(&mut dev) } == 0).then_some(dev)
}

/// Bytes the driver holds for this process outside MLX's counters: the default pool's
/// reserved memory plus the graph allocator's. `None` off CUDA.
pub fn reserved_bytes() -> Option<u64> {
    let d = driver()?;
    let dev = current_device(d)?;
    let mut pool: CuMemPool = std::ptr::null_mut();
    let (mut pooled, mut graphs) = (0u64, 0u64);
    // SAFETY: each call writes one value of the documented type through a pointer we own.
    unsafe {
        if (d.default_mem_pool)(&mut pool, dev) == 0 {
            (d.pool_attribute)(pool, MEMPOOL_ATTR_RESERVED_MEM_CURRENT, (&mut pooled as *mut u64).cast());
        }
        (d.graph_mem_attribute)(dev, GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT, (&mut graphs as *mut u64).cast());
    }
    Some(pooled + graphs)
}

/// Returns the default pool's reserved memory above `keep` bytes to the driver, without
/// waiting for queued work (memory behind frees still pending stays). Cheap enough to call
/// after every batch: two driver calls when under `keep`.
pub fn trim_pool_above(keep: usize) {
    let Some(d) = driver() else { return };
    let Some(dev) = current_device(d) else { return };
    let mut pool: CuMemPool = std::ptr::null_mut();
    let mut reserved = 0u64;
    // SAFETY: as in `reserved_bytes` and `trim`.
    unsafe {
        if (d.default_mem_pool)(&mut pool, dev) != 0 {
            return;
        }
        (d.pool_attribute)(pool, MEMPOOL_ATTR_RESERVED_MEM_CURRENT, (&mut reserved as *mut u64).cast());
        if reserved > keep as u64 {
            (d.pool_trim_to)(pool, keep);
        }
    }
}

/// Waits for queued work, then returns every unused byte of the default pool and of the
/// graph allocator to the driver. Call from the thread MLX computes on, when idle.
pub fn trim() {
    let Some(d) = driver() else { return };
    let Some(dev) = current_device(d) else { return };
    let mut pool: CuMemPool = std::ptr::null_mut();
    // SAFETY: plain driver calls on the current context; frees queued with cudaFreeAsync
    // complete at the synchronize, so the trims see them.
    unsafe {
        (d.ctx_synchronize)();
        if (d.default_mem_pool)(&mut pool, dev) == 0 {
            (d.pool_trim_to)(pool, 0);
        }
        (d.graph_mem_trim)(dev);
    }
}
