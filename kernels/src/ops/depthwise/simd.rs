//! The inner loops: channels innermost, one instruction set each (AVX-512,
//! AVX2+FMA, portable scalar), chosen at run time by [`Isa`].
//!
//! Two loops serve every depthwise op with multiplier 1 (larger multipliers
//! are brought back to 1 by the callers):
//! * [`gather_run`]: `dst[t][ch] = Σ_tap src[tap.src + t·src_step + ch] · filt[tap.filt + ch]`
//!   (forward pass and input gradient),
//! * [`reduce_run`]: `acc[tap.filt + ch] += Σ_t x[tap.src + t·x_step + ch] · dy[t·dy_step + ch]`
//!   (filter gradient).

/// Instruction set of the inner loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512,
}

impl Isa {
    /// The best instruction set this CPU runs.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            // Every level includes the one below (AVX-512 CPUs all have
            // AVX2 and FMA), so tests can run each level up to the best.
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    return Isa::Avx512;
                }
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// Every instruction set this CPU runs (for tests that cover each).
    pub fn available() -> Vec<Isa> {
        let best = Isa::detect();
        [Isa::Scalar, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|&i| i <= best)
            .collect()
    }
}

impl PartialOrd for Isa {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Isa {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self as u8).cmp(&(*other as u8))
    }
}

/// One tap of a 2-D pattern: source offset and filter (or accumulator)
/// offset, both in elements.
#[derive(Clone, Copy, Debug)]
pub(super) struct Tap {
    pub src: usize,
    pub filt: usize,
}

/// A run of `count` destination pixels of `c` channels sharing one tap
/// pattern, repeated over `lines` images (`dst_line`/`src_line` apart) so
/// that small images still give the loops long runs.
#[derive(Clone, Copy)]
pub(super) struct GatherRun {
    pub dst: *mut f32,
    pub dst_step: usize,
    pub src: *const f32,
    pub src_step: usize,
    pub filt: *const f32,
    pub count: usize,
    pub c: usize,
    pub lines: usize,
    pub dst_line: usize,
    pub src_line: usize,
}

/// A run of `count` output-gradient pixels whose products with the input
/// accumulate into `acc` (one `[c]` slice per tap), repeated over `lines`
/// images.
#[derive(Clone, Copy)]
pub(super) struct ReduceRun {
    pub acc: *mut f32,
    pub x: *const f32,
    pub x_step: usize,
    pub dy: *const f32,
    pub dy_step: usize,
    pub count: usize,
    pub c: usize,
    pub lines: usize,
    pub x_line: usize,
    pub dy_line: usize,
}

/// # Safety
/// Every address `r.src + l·r.src_line + tap.src + t·r.src_step + ch` and
/// `r.filt + tap.filt + ch` (for `l < r.lines`, `t < r.count`, `ch < r.c`)
/// must be readable and every `r.dst + l·r.dst_line + t·r.dst_step + ch`
/// writable, and `isa` supported.
pub(super) unsafe fn gather_run(isa: Isa, r: &GatherRun, taps: &[Tap]) {
    for l in 0..r.lines {
        let r = &GatherRun {
            dst: r.dst.add(l * r.dst_line),
            src: r.src.add(l * r.src_line),
            ..*r
        };
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => x86::gather_avx512(r, taps),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86::gather_avx2(r, taps),
            _ => gather_scalar(r, taps),
        }
    }
}

/// # Safety
/// As [`gather_run`], with `x`/`dy` read and `acc + tap.filt + ch` read and
/// written.
pub(super) unsafe fn reduce_run(isa: Isa, r: &ReduceRun, taps: &[Tap]) {
    for l in 0..r.lines {
        let r = &ReduceRun {
            x: r.x.add(l * r.x_line),
            dy: r.dy.add(l * r.dy_line),
            ..*r
        };
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => x86::reduce_avx512(r, taps),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86::reduce_avx2(r, taps),
            _ => reduce_scalar(r, taps),
        }
    }
}

unsafe fn gather_scalar(r: &GatherRun, taps: &[Tap]) {
    for t in 0..r.count {
        let dst = std::slice::from_raw_parts_mut(r.dst.add(t * r.dst_step), r.c);
        dst.fill(0.0);
        let src = r.src.add(t * r.src_step);
        for tap in taps {
            let s = std::slice::from_raw_parts(src.add(tap.src), r.c);
            let f = std::slice::from_raw_parts(r.filt.add(tap.filt), r.c);
            for ((d, &s), &f) in dst.iter_mut().zip(s).zip(f) {
                *d += s * f;
            }
        }
    }
}

unsafe fn reduce_scalar(r: &ReduceRun, taps: &[Tap]) {
    for tap in taps {
        let acc = std::slice::from_raw_parts_mut(r.acc.add(tap.filt), r.c);
        for t in 0..r.count {
            let x = std::slice::from_raw_parts(r.x.add(tap.src + t * r.x_step), r.c);
            let dy = std::slice::from_raw_parts(r.dy.add(t * r.dy_step), r.c);
            for ((a, &x), &g) in acc.iter_mut().zip(x).zip(dy) {
                *a += x * g;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{GatherRun, ReduceRun, Tap};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gather_avx512(r: &GatherRun, taps: &[Tap]) {
        let c = r.c;
        for t in 0..r.count {
            let dst = r.dst.add(t * r.dst_step);
            let src = r.src.add(t * r.src_step);
            let mut cc = 0;
            while cc + 64 <= c {
                let mut a0 = _mm512_setzero_ps();
                let mut a1 = _mm512_setzero_ps();
                let mut a2 = _mm512_setzero_ps();
                let mut a3 = _mm512_setzero_ps();
                for tap in taps {
                    let s = src.add(tap.src + cc);
                    let f = r.filt.add(tap.filt + cc);
                    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(s), _mm512_loadu_ps(f), a0);
                    a1 =
                        _mm512_fmadd_ps(_mm512_loadu_ps(s.add(16)), _mm512_loadu_ps(f.add(16)), a1);
                    a2 =
                        _mm512_fmadd_ps(_mm512_loadu_ps(s.add(32)), _mm512_loadu_ps(f.add(32)), a2);
                    a3 =
                        _mm512_fmadd_ps(_mm512_loadu_ps(s.add(48)), _mm512_loadu_ps(f.add(48)), a3);
                }
                _mm512_storeu_ps(dst.add(cc), a0);
                _mm512_storeu_ps(dst.add(cc + 16), a1);
                _mm512_storeu_ps(dst.add(cc + 32), a2);
                _mm512_storeu_ps(dst.add(cc + 48), a3);
                cc += 64;
            }
            while cc < c {
                let m: __mmask16 = if c - cc >= 16 {
                    0xffff
                } else {
                    (1u16 << (c - cc)) - 1
                };
                let mut a = _mm512_setzero_ps();
                for tap in taps {
                    let s = _mm512_maskz_loadu_ps(m, src.add(tap.src + cc));
                    let f = _mm512_maskz_loadu_ps(m, r.filt.add(tap.filt + cc));
                    a = _mm512_fmadd_ps(s, f, a);
                }
                _mm512_mask_storeu_ps(dst.add(cc), m, a);
                cc += 16;
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn reduce_avx512(r: &ReduceRun, taps: &[Tap]) {
        let c = r.c;
        let mut cc = 0;
        while cc + 64 <= c {
            for tap in taps {
                let acc = r.acc.add(tap.filt + cc);
                let mut a0 = _mm512_loadu_ps(acc);
                let mut a1 = _mm512_loadu_ps(acc.add(16));
                let mut a2 = _mm512_loadu_ps(acc.add(32));
                let mut a3 = _mm512_loadu_ps(acc.add(48));
                for t in 0..r.count {
                    let x = r.x.add(tap.src + t * r.x_step + cc);
                    let g = r.dy.add(t * r.dy_step + cc);
                    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x), _mm512_loadu_ps(g), a0);
                    a1 =
                        _mm512_fmadd_ps(_mm512_loadu_ps(x.add(16)), _mm512_loadu_ps(g.add(16)), a1);
                    a2 =
                        _mm512_fmadd_ps(_mm512_loadu_ps(x.add(32)), _mm512_loadu_ps(g.add(32)), a2);
                    a3 =
                        _mm512_fmadd_ps(_mm512_loadu_ps(x.add(48)), _mm512_loadu_ps(g.add(48)), a3);
                }
                _mm512_storeu_ps(acc, a0);
                _mm512_storeu_ps(acc.add(16), a1);
                _mm512_storeu_ps(acc.add(32), a2);
                _mm512_storeu_ps(acc.add(48), a3);
            }
            cc += 64;
        }
        while cc < c {
            let m: __mmask16 = if c - cc >= 16 {
                0xffff
            } else {
                (1u16 << (c - cc)) - 1
            };
            for tap in taps {
                let acc = r.acc.add(tap.filt + cc);
                let mut a = _mm512_maskz_loadu_ps(m, acc);
                for t in 0..r.count {
                    let x = _mm512_maskz_loadu_ps(m, r.x.add(tap.src + t * r.x_step + cc));
                    let g = _mm512_maskz_loadu_ps(m, r.dy.add(t * r.dy_step + cc));
                    a = _mm512_fmadd_ps(x, g, a);
                }
                _mm512_mask_storeu_ps(acc, m, a);
            }
            cc += 16;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gather_avx2(r: &GatherRun, taps: &[Tap]) {
        let c = r.c;
        for t in 0..r.count {
            let dst = r.dst.add(t * r.dst_step);
            let src = r.src.add(t * r.src_step);
            let mut cc = 0;
            while cc + 32 <= c {
                let mut a0 = _mm256_setzero_ps();
                let mut a1 = _mm256_setzero_ps();
                let mut a2 = _mm256_setzero_ps();
                let mut a3 = _mm256_setzero_ps();
                for tap in taps {
                    let s = src.add(tap.src + cc);
                    let f = r.filt.add(tap.filt + cc);
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(s), _mm256_loadu_ps(f), a0);
                    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(s.add(8)), _mm256_loadu_ps(f.add(8)), a1);
                    a2 =
                        _mm256_fmadd_ps(_mm256_loadu_ps(s.add(16)), _mm256_loadu_ps(f.add(16)), a2);
                    a3 =
                        _mm256_fmadd_ps(_mm256_loadu_ps(s.add(24)), _mm256_loadu_ps(f.add(24)), a3);
                }
                _mm256_storeu_ps(dst.add(cc), a0);
                _mm256_storeu_ps(dst.add(cc + 8), a1);
                _mm256_storeu_ps(dst.add(cc + 16), a2);
                _mm256_storeu_ps(dst.add(cc + 24), a3);
                cc += 32;
            }
            while cc + 8 <= c {
                let mut a = _mm256_setzero_ps();
                for tap in taps {
                    let s = _mm256_loadu_ps(src.add(tap.src + cc));
                    let f = _mm256_loadu_ps(r.filt.add(tap.filt + cc));
                    a = _mm256_fmadd_ps(s, f, a);
                }
                _mm256_storeu_ps(dst.add(cc), a);
                cc += 8;
            }
            while cc < c {
                let mut a = 0f32;
                for tap in taps {
                    a = (*src.add(tap.src + cc)).mul_add(*r.filt.add(tap.filt + cc), a);
                }
                *dst.add(cc) = a;
                cc += 1;
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn reduce_avx2(r: &ReduceRun, taps: &[Tap]) {
        let c = r.c;
        let mut cc = 0;
        while cc + 32 <= c {
            for tap in taps {
                let acc = r.acc.add(tap.filt + cc);
                let mut a0 = _mm256_loadu_ps(acc);
                let mut a1 = _mm256_loadu_ps(acc.add(8));
                let mut a2 = _mm256_loadu_ps(acc.add(16));
                let mut a3 = _mm256_loadu_ps(acc.add(24));
                for t in 0..r.count {
                    let x = r.x.add(tap.src + t * r.x_step + cc);
                    let g = r.dy.add(t * r.dy_step + cc);
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x), _mm256_loadu_ps(g), a0);
                    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(8)), _mm256_loadu_ps(g.add(8)), a1);
                    a2 =
                        _mm256_fmadd_ps(_mm256_loadu_ps(x.add(16)), _mm256_loadu_ps(g.add(16)), a2);
                    a3 =
                        _mm256_fmadd_ps(_mm256_loadu_ps(x.add(24)), _mm256_loadu_ps(g.add(24)), a3);
                }
                _mm256_storeu_ps(acc, a0);
                _mm256_storeu_ps(acc.add(8), a1);
                _mm256_storeu_ps(acc.add(16), a2);
                _mm256_storeu_ps(acc.add(24), a3);
            }
            cc += 32;
        }
        while cc + 8 <= c {
            for tap in taps {
                let acc = r.acc.add(tap.filt + cc);
                let mut a = _mm256_loadu_ps(acc);
                for t in 0..r.count {
                    let x = _mm256_loadu_ps(r.x.add(tap.src + t * r.x_step + cc));
                    let g = _mm256_loadu_ps(r.dy.add(t * r.dy_step + cc));
                    a = _mm256_fmadd_ps(x, g, a);
                }
                _mm256_storeu_ps(acc, a);
            }
            cc += 8;
        }
        while cc < c {
            for tap in taps {
                let acc = r.acc.add(tap.filt + cc);
                let mut a = *acc;
                for t in 0..r.count {
                    a = (*r.x.add(tap.src + t * r.x_step + cc))
                        .mul_add(*r.dy.add(t * r.dy_step + cc), a);
                }
                *acc = a;
            }
            cc += 1;
        }
    }
}
