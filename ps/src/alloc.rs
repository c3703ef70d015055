//! Keeping freed memory in the process. A PS receives and frees tens of
//! MiB per push; glibc's malloc returns such memory to the kernel (large
//! blocks are mmapped, the heap top is trimmed) and every push then pays a
//! page fault and a zeroing per 4 KiB page — a quarter of the transfer
//! benchmark's time in a profile. [`keep_freed_memory`] raises glibc's mmap
//! and trim thresholds so freed buffers are reused instead.

/// Raises glibc malloc's mmap threshold to 32 MiB (its maximum) and trim
/// threshold to 1 GiB. `psflow` calls it at start for every command: every
/// role and the trainers free and reallocate the same large tensors each
/// step. Does nothing on other C libraries.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: mallopt only sets allocator parameters; it is safe to
        // call at any time, from any thread.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}
