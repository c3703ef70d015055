//! `psflow bench …`: measurements printed as a table for people or JSON
//! for programs (the peer comparisons in `benchmarks/peers/` read the JSON).

pub mod cuda;
pub mod kernels;
pub mod machine;
pub mod profile;
pub mod train;
pub mod transfer;

use std::time::{Duration, Instant};

/// Runs `f` `warmup` times untimed, then `repeats` times, and returns the
/// median duration.
pub fn median_time(warmup: usize, repeats: usize, mut f: impl FnMut()) -> Duration {
    for _ in 0..warmup {
        f();
    }
    let mut times: Vec<Duration> = (0..repeats.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}
