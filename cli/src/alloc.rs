//! The process's allocator. A training step frees and re-allocates the
//! same large buffers (activations, pulled variables, gradients on the
//! wire) every few milliseconds, from several threads. glibc's malloc gave
//! that memory back to the kernel and faulted it in again — about 600 page
//! faults a step in the cluster even with its mmap and trim thresholds
//! raised — and a PS pays the same per push. mimalloc, with purging off,
//! keeps it: +24 % images/s in one process and +18 % for 1 worker + 1 PS
//! on the 2-core machine (docs/performance.md). The price is that a
//! process keeps the peak of what it has allocated.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (its `mimalloc.h`,
/// v2 and v3): milliseconds before freed memory goes back to the OS (v3's
/// default: 1000); -1 never.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Turns mimalloc's purging off: freed memory stays in the process for
/// the next step. `psflow` calls it first thing, for every command.
pub fn keep_freed_memory() {
    // SAFETY: sets a plain integer option, which mimalloc reads when it
    // considers purging; any thread may call it at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    debug_assert_eq!(
        // SAFETY: reads the option back.
        unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) },
        -1
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_15_is_the_purge_delay() {
        // mimalloc v3's default purge delay is 1000 ms, and no other of
        // its options defaults to 1000 (unless the environment sets it).
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: reads an integer option.
            let default = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
            assert_eq!(default, 1000);
        }
        keep_freed_memory();
        // SAFETY: as above.
        assert_eq!(
            unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) },
            -1
        );
    }
}
