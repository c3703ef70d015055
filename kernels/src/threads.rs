//! The worker threads kernels split their work over: rayon's global pool,
//! sized once per process.

use std::sync::OnceLock;

static CONFIGURED: OnceLock<usize> = OnceLock::new();

/// Sizes the kernel thread pool (0: one thread per core). Only the first
/// call has effect; returns the size in force.
pub fn init(threads: usize) -> usize {
    *CONFIGURED.get_or_init(|| {
        let mut builder = rayon::ThreadPoolBuilder::new();
        if threads > 0 {
            builder = builder.num_threads(threads);
        }
        // An error means the global pool already exists (someone used rayon
        // first); its size is then what it is.
        let _ = builder.build_global();
        rayon::current_num_threads()
    })
}

/// Number of threads the kernels use.
pub fn current() -> usize {
    rayon::current_num_threads()
}
