//! What this machine can do at most, measured rather than assumed: the f32
//! FMA rate of all threads (the compute roof) and the memory copy rate (the
//! bandwidth roof), so kernel figures can be given as fractions of them.

use rayon::prelude::*;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct MachineRoofs {
    /// f32 FMA throughput of all kernel threads, GFLOP/s (1 FMA = 2 flops).
    pub peak_gflops: f64,
    /// Which instructions reached it (avx512f, avx2+fma, scalar).
    pub isa: &'static str,
    /// Large-buffer (128 MiB) copy over all threads, GB/s counting bytes
    /// read + written: the DRAM roof.
    pub copy_gbps: f64,
    /// The same with 8 MiB in all, the size of the largest MobileNet
    /// activation at batch 128: the roof when the data stay in cache.
    pub copy_8mib_gbps: f64,
}

const CHAINS: usize = 12;

/// Flops done by one call of `fma_loop` with `iters` iterations per lane.
fn fma_flops(lanes: usize, iters: usize) -> f64 {
    2.0 * (lanes * CHAINS * iters) as f64
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_loop_avx512(iters: usize, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(0.999_999);
    let b = _mm512_set1_ps(1e-7);
    let mut acc = [_mm512_set1_ps(seed); CHAINS];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    let mut s = _mm512_setzero_ps();
    for v in acc {
        s = _mm512_add_ps(s, v);
    }
    _mm512_reduce_add_ps(s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_loop_avx2(iters: usize, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(seed); CHAINS];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    let mut s = _mm256_setzero_ps();
    for v in acc {
        s = _mm256_add_ps(s, v);
    }
    let mut out = [0f32; 8];
    _mm256_storeu_ps(out.as_mut_ptr(), s);
    out.iter().sum()
}

fn fma_loop_scalar(iters: usize, seed: f32) -> f32 {
    let mut acc = [seed; CHAINS];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = v.mul_add(0.999_999, 1e-7);
        }
    }
    acc.iter().sum()
}

/// The widest FMA loop this CPU runs: (name, lanes, loop).
fn best_fma() -> (&'static str, usize, fn(usize, f32) -> f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return ("avx512f", 16, |n, s| unsafe { fma_loop_avx512(n, s) });
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return ("avx2+fma", 8, |n, s| unsafe { fma_loop_avx2(n, s) });
        }
    }
    ("scalar", 1, fma_loop_scalar)
}

pub fn measure() -> MachineRoofs {
    let threads = rayon::current_num_threads();
    let (isa, lanes, f) = best_fma();
    let iters = 20_000_000 / lanes.max(1);
    let peak = super::median_time(1, 5, || {
        let s: f32 = (0..threads)
            .into_par_iter()
            .map(|t| f(iters, t as f32 * 1e-3))
            .sum();
        std::hint::black_box(s);
    });
    let peak_gflops = fma_flops(lanes, iters) * threads as f64 / peak.as_secs_f64() / 1e9;

    MachineRoofs {
        peak_gflops,
        isa,
        copy_gbps: copy_rate(128 << 20, threads),
        copy_8mib_gbps: copy_rate(8 << 20, threads),
    }
}

/// GB/s (read + written) of copying `bytes` split over `threads`.
fn copy_rate(bytes: usize, threads: usize) -> f64 {
    let per = bytes / 4 / threads;
    let src = vec![1f32; per * threads];
    let mut dst = vec![0f32; per * threads];
    let t = super::median_time(2, 9, || {
        dst.par_chunks_mut(per)
            .zip(src.par_chunks(per))
            .for_each(|(d, s)| d.copy_from_slice(s));
        std::hint::black_box(&dst);
    });
    2.0 * (src.len() * 4) as f64 / t.as_secs_f64() / 1e9
}
