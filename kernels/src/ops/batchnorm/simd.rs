//! The inner loops of batch norm: each walks a block of rows (`x.len() / c`
//! rows of `c` channels) and works over the channels of a row with SIMD.
//!
//! Every loop has a portable scalar version (the oracle, and what runs on
//! machines without AVX2) and AVX2+FMA / AVX-512 versions; [`Level::detect`]
//! picks the best one the CPU has at run time.

use std::mem::MaybeUninit;

/// The instruction set an inner loop runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Scalar,
    Avx2,
    Avx512,
}

impl Level {
    /// The best level this CPU supports.
    pub fn detect() -> Level {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return Level::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Level::Avx2;
            }
        }
        Level::Scalar
    }

    /// Every level this CPU can run (always includes `Scalar`).
    pub fn available() -> Vec<Level> {
        let best = Level::detect();
        [Level::Scalar, Level::Avx2, Level::Avx512]
            .into_iter()
            .filter(|l| *l <= best)
            .collect()
    }
}

impl PartialOrd for Level {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some((*self as u8).cmp(&(*other as u8)))
    }
}

/// Which rows of the block a parallel driver hands to a loop, as slices of
/// whole rows; the per-channel arrays all have length `c`.
///
/// `stats`: `s[j] += x − shift[j]`, `q[j] += (x − shift[j])²`.
pub fn stats(level: Level, x: &[f32], c: usize, shift: &[f32], s: &mut [f32], q: &mut [f32]) {
    assert!(shift.len() == c && s.len() == c && q.len() == c && x.len().is_multiple_of(c));
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is only ever at most what `detect` found, and the
        // slice lengths were checked above.
        Level::Avx512 => unsafe { x86::stats_avx512(x, c, shift, s, q) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Level::Avx2 => unsafe { x86::stats_avx2(x, c, shift, s, q) },
        _ => stats_scalar(x, c, shift, s, q),
    }
}

/// `y = (x − m[j])·a[j] + b[j]`, clamped to `[0, 6]` when `relu6`.
#[allow(clippy::too_many_arguments)]
pub fn normalize(
    level: Level,
    x: &[f32],
    c: usize,
    m: &[f32],
    a: &[f32],
    b: &[f32],
    y: &mut [MaybeUninit<f32>],
    relu6: bool,
) {
    assert!(m.len() == c && a.len() == c && b.len() == c);
    assert!(x.len().is_multiple_of(c) && y.len() == x.len());
    match (level, relu6) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: level checked by `detect`, lengths above.
        (Level::Avx512, true) => unsafe { x86::normalize_avx512::<true>(x, c, m, a, b, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Level::Avx512, false) => unsafe { x86::normalize_avx512::<false>(x, c, m, a, b, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Level::Avx2, true) => unsafe { x86::normalize_avx2::<true>(x, c, m, a, b, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Level::Avx2, false) => unsafe { x86::normalize_avx2::<false>(x, c, m, a, b, y) },
        (_, true) => normalize_scalar::<true>(x, c, m, a, b, y),
        (_, false) => normalize_scalar::<false>(x, c, m, a, b, y),
    }
}

/// With `g = dy` masked to where `0 < y < 6` (when `y` is given):
/// `s[j] += g`, `p[j] += g·(x − m[j])`.
#[allow(clippy::too_many_arguments)]
pub fn grad_stats(
    level: Level,
    dy: &[f32],
    y: Option<&[f32]>,
    x: &[f32],
    c: usize,
    m: &[f32],
    s: &mut [f32],
    p: &mut [f32],
) {
    assert!(m.len() == c && s.len() == c && p.len() == c);
    assert!(x.len().is_multiple_of(c) && dy.len() == x.len());
    assert!(y.is_none_or(|y| y.len() == x.len()));
    let yv = y.unwrap_or(&[]);
    match (level, y.is_some()) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: level checked by `detect`, lengths above.
        (Level::Avx512, true) => unsafe { x86::grad_stats_avx512::<true>(dy, yv, x, c, m, s, p) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Level::Avx512, false) => unsafe { x86::grad_stats_avx512::<false>(dy, yv, x, c, m, s, p) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Level::Avx2, true) => unsafe { x86::grad_stats_avx2::<true>(dy, yv, x, c, m, s, p) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Level::Avx2, false) => unsafe { x86::grad_stats_avx2::<false>(dy, yv, x, c, m, s, p) },
        (_, true) => grad_stats_scalar::<true>(dy, yv, x, c, m, s, p),
        (_, false) => grad_stats_scalar::<false>(dy, yv, x, c, m, s, p),
    }
}

/// The per-channel coefficients of the gradient's second pass:
/// `dx = k1·g + k2·(x − m) + k3` with `g` as in [`grad_stats`].
#[derive(Debug, Clone, Copy)]
pub struct GradCoeffs<'a> {
    pub m: &'a [f32],
    pub k1: &'a [f32],
    pub k2: &'a [f32],
    pub k3: &'a [f32],
}

pub fn grad_apply(
    level: Level,
    dy: &[f32],
    y: Option<&[f32]>,
    x: &[f32],
    c: usize,
    k: GradCoeffs<'_>,
    dx: &mut [MaybeUninit<f32>],
) {
    assert!(k.m.len() == c && k.k1.len() == c && k.k2.len() == c && k.k3.len() == c);
    assert!(x.len().is_multiple_of(c) && dy.len() == x.len() && dx.len() == x.len());
    assert!(y.is_none_or(|y| y.len() == x.len()));
    let yv = y.unwrap_or(&[]);
    match (level, y.is_some()) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: level checked by `detect`, lengths above.
        (Level::Avx512, true) => unsafe { x86::grad_apply_avx512::<true>(dy, yv, x, c, k, dx) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Level::Avx512, false) => unsafe { x86::grad_apply_avx512::<false>(dy, yv, x, c, k, dx) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Level::Avx2, true) => unsafe { x86::grad_apply_avx2::<true>(dy, yv, x, c, k, dx) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Level::Avx2, false) => unsafe { x86::grad_apply_avx2::<false>(dy, yv, x, c, k, dx) },
        (_, true) => grad_apply_scalar::<true>(dy, yv, x, c, k, dx),
        (_, false) => grad_apply_scalar::<false>(dy, yv, x, c, k, dx),
    }
}

#[inline(always)]
fn clamp6(v: f32) -> f32 {
    // Same NaN behaviour as maxps/minps with the constant second.
    let v = if v > 0.0 { v } else { 0.0 };
    if v < 6.0 {
        v
    } else {
        6.0
    }
}

#[inline(always)]
fn mask6(g: f32, y: f32) -> f32 {
    if y > 0.0 && y < 6.0 {
        g
    } else {
        0.0
    }
}

fn stats_scalar(x: &[f32], c: usize, shift: &[f32], s: &mut [f32], q: &mut [f32]) {
    for row in x.chunks_exact(c) {
        for j in 0..c {
            let d = row[j] - shift[j];
            s[j] += d;
            q[j] += d * d;
        }
    }
}

fn normalize_scalar<const R6: bool>(
    x: &[f32],
    c: usize,
    m: &[f32],
    a: &[f32],
    b: &[f32],
    y: &mut [MaybeUninit<f32>],
) {
    for (xr, yr) in x.chunks_exact(c).zip(y.chunks_exact_mut(c)) {
        for j in 0..c {
            let v = (xr[j] - m[j]) * a[j] + b[j];
            yr[j].write(if R6 { clamp6(v) } else { v });
        }
    }
}

fn grad_stats_scalar<const R6: bool>(
    dy: &[f32],
    y: &[f32],
    x: &[f32],
    c: usize,
    m: &[f32],
    s: &mut [f32],
    p: &mut [f32],
) {
    for (r, (xr, dyr)) in x.chunks_exact(c).zip(dy.chunks_exact(c)).enumerate() {
        for j in 0..c {
            let g = if R6 {
                mask6(dyr[j], y[r * c + j])
            } else {
                dyr[j]
            };
            s[j] += g;
            p[j] += g * (xr[j] - m[j]);
        }
    }
}

fn grad_apply_scalar<const R6: bool>(
    dy: &[f32],
    y: &[f32],
    x: &[f32],
    c: usize,
    k: GradCoeffs<'_>,
    dx: &mut [MaybeUninit<f32>],
) {
    for (r, ((xr, dyr), dxr)) in x
        .chunks_exact(c)
        .zip(dy.chunks_exact(c))
        .zip(dx.chunks_exact_mut(c))
        .enumerate()
    {
        for j in 0..c {
            let g = if R6 {
                mask6(dyr[j], y[r * c + j])
            } else {
                dyr[j]
            };
            dxr[j].write(k.k1[j] * g + k.k2[j] * (xr[j] - k.m[j]) + k.k3[j]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! All functions here require the caller to have checked the CPU
    //! features (via `Level::detect`) and that every per-channel array has
    //! `c` elements and every row block a multiple of `c`; with that, every
    //! pointer offset stays inside its slice (full vectors cover
    //! `[0, c / W · W)`, the tail is masked or done one element at a time).

    use super::{clamp6, mask6, GradCoeffs};
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    #[inline(always)]
    fn tail_mask(tail: usize) -> __mmask16 {
        ((1u32 << tail) - 1) as __mmask16
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn stats_avx512(x: &[f32], c: usize, shift: &[f32], s: &mut [f32], q: &mut [f32]) {
        let full = c / 16 * 16;
        let tm = tail_mask(c - full);
        let (sh, sp, qp) = (shift.as_ptr(), s.as_mut_ptr(), q.as_mut_ptr());
        for row in x.chunks_exact(c) {
            let xp = row.as_ptr();
            let mut j = 0;
            while j < full {
                let d = _mm512_sub_ps(_mm512_loadu_ps(xp.add(j)), _mm512_loadu_ps(sh.add(j)));
                _mm512_storeu_ps(sp.add(j), _mm512_add_ps(_mm512_loadu_ps(sp.add(j)), d));
                _mm512_storeu_ps(qp.add(j), _mm512_fmadd_ps(d, d, _mm512_loadu_ps(qp.add(j))));
                j += 16;
            }
            if tm != 0 {
                let d = _mm512_sub_ps(
                    _mm512_maskz_loadu_ps(tm, xp.add(j)),
                    _mm512_maskz_loadu_ps(tm, sh.add(j)),
                );
                let sv = _mm512_maskz_loadu_ps(tm, sp.add(j));
                let qv = _mm512_maskz_loadu_ps(tm, qp.add(j));
                _mm512_mask_storeu_ps(sp.add(j), tm, _mm512_add_ps(sv, d));
                _mm512_mask_storeu_ps(qp.add(j), tm, _mm512_fmadd_ps(d, d, qv));
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn stats_avx2(x: &[f32], c: usize, shift: &[f32], s: &mut [f32], q: &mut [f32]) {
        let full = c / 8 * 8;
        let (sh, sp, qp) = (shift.as_ptr(), s.as_mut_ptr(), q.as_mut_ptr());
        for row in x.chunks_exact(c) {
            let xp = row.as_ptr();
            let mut j = 0;
            while j < full {
                let d = _mm256_sub_ps(_mm256_loadu_ps(xp.add(j)), _mm256_loadu_ps(sh.add(j)));
                _mm256_storeu_ps(sp.add(j), _mm256_add_ps(_mm256_loadu_ps(sp.add(j)), d));
                _mm256_storeu_ps(qp.add(j), _mm256_fmadd_ps(d, d, _mm256_loadu_ps(qp.add(j))));
                j += 8;
            }
            for j in full..c {
                let d = row[j] - shift[j];
                s[j] += d;
                q[j] += d * d;
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn normalize_avx512<const R6: bool>(
        x: &[f32],
        c: usize,
        m: &[f32],
        a: &[f32],
        b: &[f32],
        y: &mut [MaybeUninit<f32>],
    ) {
        let full = c / 16 * 16;
        let tm = tail_mask(c - full);
        let (mp, ap, bp) = (m.as_ptr(), a.as_ptr(), b.as_ptr());
        let zero = _mm512_setzero_ps();
        let six = _mm512_set1_ps(6.0);
        let yp0 = y.as_mut_ptr() as *mut f32;
        for (r, row) in x.chunks_exact(c).enumerate() {
            let xp = row.as_ptr();
            let yp = yp0.add(r * c);
            let mut j = 0;
            while j < full {
                let d = _mm512_sub_ps(_mm512_loadu_ps(xp.add(j)), _mm512_loadu_ps(mp.add(j)));
                let mut v =
                    _mm512_fmadd_ps(d, _mm512_loadu_ps(ap.add(j)), _mm512_loadu_ps(bp.add(j)));
                if R6 {
                    v = _mm512_min_ps(_mm512_max_ps(v, zero), six);
                }
                _mm512_storeu_ps(yp.add(j), v);
                j += 16;
            }
            if tm != 0 {
                let d = _mm512_sub_ps(
                    _mm512_maskz_loadu_ps(tm, xp.add(j)),
                    _mm512_maskz_loadu_ps(tm, mp.add(j)),
                );
                let mut v = _mm512_fmadd_ps(
                    d,
                    _mm512_maskz_loadu_ps(tm, ap.add(j)),
                    _mm512_maskz_loadu_ps(tm, bp.add(j)),
                );
                if R6 {
                    v = _mm512_min_ps(_mm512_max_ps(v, zero), six);
                }
                _mm512_mask_storeu_ps(yp.add(j), tm, v);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn normalize_avx2<const R6: bool>(
        x: &[f32],
        c: usize,
        m: &[f32],
        a: &[f32],
        b: &[f32],
        y: &mut [MaybeUninit<f32>],
    ) {
        let full = c / 8 * 8;
        let (mp, ap, bp) = (m.as_ptr(), a.as_ptr(), b.as_ptr());
        let zero = _mm256_setzero_ps();
        let six = _mm256_set1_ps(6.0);
        let yp0 = y.as_mut_ptr() as *mut f32;
        for (r, row) in x.chunks_exact(c).enumerate() {
            let xp = row.as_ptr();
            let yp = yp0.add(r * c);
            let mut j = 0;
            while j < full {
                let d = _mm256_sub_ps(_mm256_loadu_ps(xp.add(j)), _mm256_loadu_ps(mp.add(j)));
                let mut v =
                    _mm256_fmadd_ps(d, _mm256_loadu_ps(ap.add(j)), _mm256_loadu_ps(bp.add(j)));
                if R6 {
                    v = _mm256_min_ps(_mm256_max_ps(v, zero), six);
                }
                _mm256_storeu_ps(yp.add(j), v);
                j += 8;
            }
            for j in full..c {
                let v = (row[j] - m[j]).mul_add(a[j], b[j]);
                *yp.add(j) = if R6 { clamp6(v) } else { v };
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn grad_stats_avx512<const R6: bool>(
        dy: &[f32],
        y: &[f32],
        x: &[f32],
        c: usize,
        m: &[f32],
        s: &mut [f32],
        p: &mut [f32],
    ) {
        let full = c / 16 * 16;
        let tm = tail_mask(c - full);
        let (mp, sp, pp) = (m.as_ptr(), s.as_mut_ptr(), p.as_mut_ptr());
        let zero = _mm512_setzero_ps();
        let six = _mm512_set1_ps(6.0);
        let rows = x.len() / c;
        for r in 0..rows {
            let o = r * c;
            let (xp, dyp) = (x.as_ptr().add(o), dy.as_ptr().add(o));
            let yp = if R6 { y.as_ptr().add(o) } else { dyp };
            let mut j = 0;
            while j < c {
                let lm = if j < full { 0xffff } else { tm };
                let mut g = _mm512_maskz_loadu_ps(lm, dyp.add(j));
                if R6 {
                    let yv = _mm512_maskz_loadu_ps(lm, yp.add(j));
                    let k = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(yv, zero)
                        & _mm512_cmp_ps_mask::<_CMP_LT_OQ>(yv, six);
                    g = _mm512_maskz_mov_ps(k, g);
                }
                let d = _mm512_sub_ps(
                    _mm512_maskz_loadu_ps(lm, xp.add(j)),
                    _mm512_maskz_loadu_ps(lm, mp.add(j)),
                );
                let sv = _mm512_maskz_loadu_ps(lm, sp.add(j));
                let pv = _mm512_maskz_loadu_ps(lm, pp.add(j));
                _mm512_mask_storeu_ps(sp.add(j), lm, _mm512_add_ps(sv, g));
                _mm512_mask_storeu_ps(pp.add(j), lm, _mm512_fmadd_ps(g, d, pv));
                j += 16;
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn grad_stats_avx2<const R6: bool>(
        dy: &[f32],
        y: &[f32],
        x: &[f32],
        c: usize,
        m: &[f32],
        s: &mut [f32],
        p: &mut [f32],
    ) {
        let full = c / 8 * 8;
        let (mp, sp, pp) = (m.as_ptr(), s.as_mut_ptr(), p.as_mut_ptr());
        let zero = _mm256_setzero_ps();
        let six = _mm256_set1_ps(6.0);
        let rows = x.len() / c;
        for r in 0..rows {
            let o = r * c;
            let (xp, dyp) = (x.as_ptr().add(o), dy.as_ptr().add(o));
            let mut j = 0;
            while j < full {
                let mut g = _mm256_loadu_ps(dyp.add(j));
                if R6 {
                    let yv = _mm256_loadu_ps(y.as_ptr().add(o + j));
                    let k = _mm256_and_ps(
                        _mm256_cmp_ps::<_CMP_GT_OQ>(yv, zero),
                        _mm256_cmp_ps::<_CMP_LT_OQ>(yv, six),
                    );
                    g = _mm256_and_ps(k, g);
                }
                let d = _mm256_sub_ps(_mm256_loadu_ps(xp.add(j)), _mm256_loadu_ps(mp.add(j)));
                _mm256_storeu_ps(sp.add(j), _mm256_add_ps(_mm256_loadu_ps(sp.add(j)), g));
                _mm256_storeu_ps(pp.add(j), _mm256_fmadd_ps(g, d, _mm256_loadu_ps(pp.add(j))));
                j += 8;
            }
            for j in full..c {
                let g = if R6 {
                    mask6(dy[o + j], y[o + j])
                } else {
                    dy[o + j]
                };
                s[j] += g;
                p[j] += g * (x[o + j] - m[j]);
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn grad_apply_avx512<const R6: bool>(
        dy: &[f32],
        y: &[f32],
        x: &[f32],
        c: usize,
        k: GradCoeffs<'_>,
        dx: &mut [MaybeUninit<f32>],
    ) {
        let full = c / 16 * 16;
        let tm = tail_mask(c - full);
        let (mp, k1p, k2p, k3p) = (k.m.as_ptr(), k.k1.as_ptr(), k.k2.as_ptr(), k.k3.as_ptr());
        let zero = _mm512_setzero_ps();
        let six = _mm512_set1_ps(6.0);
        let dxp0 = dx.as_mut_ptr() as *mut f32;
        let rows = x.len() / c;
        for r in 0..rows {
            let o = r * c;
            let (xp, dyp, dxp) = (x.as_ptr().add(o), dy.as_ptr().add(o), dxp0.add(o));
            let yp = if R6 { y.as_ptr().add(o) } else { dyp };
            let mut j = 0;
            while j < c {
                let lm = if j < full { 0xffff } else { tm };
                let mut g = _mm512_maskz_loadu_ps(lm, dyp.add(j));
                if R6 {
                    let yv = _mm512_maskz_loadu_ps(lm, yp.add(j));
                    let kk = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(yv, zero)
                        & _mm512_cmp_ps_mask::<_CMP_LT_OQ>(yv, six);
                    g = _mm512_maskz_mov_ps(kk, g);
                }
                let d = _mm512_sub_ps(
                    _mm512_maskz_loadu_ps(lm, xp.add(j)),
                    _mm512_maskz_loadu_ps(lm, mp.add(j)),
                );
                let v = _mm512_fmadd_ps(
                    d,
                    _mm512_maskz_loadu_ps(lm, k2p.add(j)),
                    _mm512_maskz_loadu_ps(lm, k3p.add(j)),
                );
                let v = _mm512_fmadd_ps(g, _mm512_maskz_loadu_ps(lm, k1p.add(j)), v);
                _mm512_mask_storeu_ps(dxp.add(j), lm, v);
                j += 16;
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn grad_apply_avx2<const R6: bool>(
        dy: &[f32],
        y: &[f32],
        x: &[f32],
        c: usize,
        k: GradCoeffs<'_>,
        dx: &mut [MaybeUninit<f32>],
    ) {
        let full = c / 8 * 8;
        let (mp, k1p, k2p, k3p) = (k.m.as_ptr(), k.k1.as_ptr(), k.k2.as_ptr(), k.k3.as_ptr());
        let zero = _mm256_setzero_ps();
        let six = _mm256_set1_ps(6.0);
        let dxp0 = dx.as_mut_ptr() as *mut f32;
        let rows = x.len() / c;
        for r in 0..rows {
            let o = r * c;
            let (xp, dyp, dxp) = (x.as_ptr().add(o), dy.as_ptr().add(o), dxp0.add(o));
            let mut j = 0;
            while j < full {
                let mut g = _mm256_loadu_ps(dyp.add(j));
                if R6 {
                    let yv = _mm256_loadu_ps(y.as_ptr().add(o + j));
                    let kk = _mm256_and_ps(
                        _mm256_cmp_ps::<_CMP_GT_OQ>(yv, zero),
                        _mm256_cmp_ps::<_CMP_LT_OQ>(yv, six),
                    );
                    g = _mm256_and_ps(kk, g);
                }
                let d = _mm256_sub_ps(_mm256_loadu_ps(xp.add(j)), _mm256_loadu_ps(mp.add(j)));
                let v =
                    _mm256_fmadd_ps(d, _mm256_loadu_ps(k2p.add(j)), _mm256_loadu_ps(k3p.add(j)));
                let v = _mm256_fmadd_ps(g, _mm256_loadu_ps(k1p.add(j)), v);
                _mm256_storeu_ps(dxp.add(j), v);
                j += 8;
            }
            for j in full..c {
                let g = if R6 {
                    mask6(dy[o + j], y[o + j])
                } else {
                    dy[o + j]
                };
                let v = (x[o + j] - k.m[j]).mul_add(k.k2[j], k.k3[j]);
                *dxp.add(j) = g.mul_add(k.k1[j], v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 1.0
    }

    fn vals(n: usize, seed: &mut u64) -> Vec<f32> {
        (0..n).map(|_| lcg(seed)).collect()
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{i}: {x} vs {y}");
        }
    }

    fn init(v: Vec<MaybeUninit<f32>>) -> Vec<f32> {
        // SAFETY: every caller fills all elements before this.
        v.into_iter().map(|e| unsafe { e.assume_init() }).collect()
    }

    /// Every level agrees with the scalar loops for channel counts that
    /// exercise full vectors, masked/scalar tails and rows shorter than one
    /// vector.
    #[test]
    fn levels_agree_with_scalar() {
        let mut seed = 7;
        for &c in &[1usize, 3, 7, 8, 9, 15, 16, 17, 24, 33, 64, 100] {
            for &rows in &[1usize, 2, 5] {
                let n = rows * c;
                let (x, dy, y) = (vals(n, &mut seed), vals(n, &mut seed), vals(n, &mut seed));
                let (m, a, b) = (vals(c, &mut seed), vals(c, &mut seed), vals(c, &mut seed));
                let (k2, k3) = (vals(c, &mut seed), vals(c, &mut seed));
                let run = |level: Level| {
                    let (mut s, mut q) = (vec![0.5f32; c], vec![0.25f32; c]);
                    stats(level, &x, c, &m, &mut s, &mut q);
                    let mut out = Vec::new();
                    for relu6 in [false, true] {
                        let mut yv = vec![MaybeUninit::uninit(); n];
                        normalize(level, &x, c, &m, &a, &b, &mut yv, relu6);
                        out.push(init(yv));
                    }
                    let mut gs = Vec::new();
                    for yy in [None, Some(&y[..])] {
                        let (mut s2, mut p2) = (vec![0f32; c], vec![1f32; c]);
                        grad_stats(level, &dy, yy, &x, c, &m, &mut s2, &mut p2);
                        gs.push((s2, p2));
                        let mut dx = vec![MaybeUninit::uninit(); n];
                        let k = GradCoeffs {
                            m: &m,
                            k1: &a,
                            k2: &k2,
                            k3: &k3,
                        };
                        grad_apply(level, &dy, yy, &x, c, k, &mut dx);
                        out.push(init(dx));
                    }
                    (s, q, out, gs)
                };
                let want = run(Level::Scalar);
                for level in Level::available() {
                    let got = run(level);
                    close(&got.0, &want.0, 1e-5);
                    close(&got.1, &want.1, 1e-5);
                    for (g, w) in got.2.iter().zip(&want.2) {
                        close(g, w, 1e-5);
                    }
                    for (g, w) in got.3.iter().zip(&want.3) {
                        close(&g.0, &w.0, 1e-5);
                        close(&g.1, &w.1, 1e-5);
                    }
                }
            }
        }
    }
}
