//! The specialised AVX-512 loops for runs whose taps form a dense block of
//! at most 3×3 (every 3×3 depthwise convolution, strides 1 and 2, forward
//! and both gradients, interior and border alike): the taps of one 16-channel
//! block stay in registers while the run is walked four pixels at a time,
//! and neighbouring pixels share their source loads, so the loop issues
//! about one load per two FMAs instead of two loads per FMA.
//!
//! Tap `(r, j)` reads source column `j` of source row `r` (columns
//! consecutive, `j = 0` lowest); consecutive pixels of a run move `S`
//! source pixels. The filter (or accumulator) offset of each tap is free,
//! which covers the flipped taps of the input gradient.

use std::arch::x86_64::*;

use super::plan::AxisTap;
use super::simd::{GatherRun, ReduceRun};

/// The tap block of one run: `R` rows of `K` consecutive source columns.
#[derive(Clone, Copy, Debug)]
pub(super) struct Dense {
    /// Offset of each row's lowest source column for the first pixel.
    pub src_row: [usize; 3],
    /// Filter (gather) or accumulator (reduce) offset of tap `(r, j)`.
    pub filt: [[usize; 3]; 3],
}

fn mask(c: usize, cb: usize) -> __mmask16 {
    if c - cb >= 16 {
        0xffff
    } else {
        (1u16 << (c - cb)) - 1
    }
}

/// Pixels per group.
const P: usize = 4;

/// Calls `$f::<R, K, S>` for runtime `(r, k, s)` in `1..=3 × 1..=3 × 1..=2`.
macro_rules! dispatch {
    ($f:ident, $r:expr, $k:expr, $s:expr, ($($arg:expr),*)) => {
        match ($r, $k, $s) {
            (1, 1, 1) => $f::<1, 1, 1>($($arg),*),
            (1, 2, 1) => $f::<1, 2, 1>($($arg),*),
            (1, 3, 1) => $f::<1, 3, 1>($($arg),*),
            (2, 1, 1) => $f::<2, 1, 1>($($arg),*),
            (2, 2, 1) => $f::<2, 2, 1>($($arg),*),
            (2, 3, 1) => $f::<2, 3, 1>($($arg),*),
            (3, 1, 1) => $f::<3, 1, 1>($($arg),*),
            (3, 2, 1) => $f::<3, 2, 1>($($arg),*),
            (3, 3, 1) => $f::<3, 3, 1>($($arg),*),
            (1, 1, 2) => $f::<1, 1, 2>($($arg),*),
            (1, 2, 2) => $f::<1, 2, 2>($($arg),*),
            (1, 3, 2) => $f::<1, 3, 2>($($arg),*),
            (2, 1, 2) => $f::<2, 1, 2>($($arg),*),
            (2, 2, 2) => $f::<2, 2, 2>($($arg),*),
            (2, 3, 2) => $f::<2, 3, 2>($($arg),*),
            (3, 1, 2) => $f::<3, 1, 2>($($arg),*),
            (3, 2, 2) => $f::<3, 2, 2>($($arg),*),
            (3, 3, 2) => $f::<3, 3, 2>($($arg),*),
            _ => unreachable!("dense tap block {:?}", ($r, $k, $s)),
        }
    };
}

/// # Safety
/// AVX-512F present; `rows`, `cols` in 1..=3 and `src_step` in 1..=2 (as
/// [`blocks`] gives them); the run's pixels
/// and taps inside their buffers (as for `simd::gather_run`), `r.src_step`
/// equal to `src_step · r.c`.
pub(super) unsafe fn gather(r: &GatherRun, d: &Dense, rows: usize, cols: usize, src_step: usize) {
    dispatch!(gather_rks, rows, cols, src_step, (r, d))
}

/// # Safety
/// As [`gather`], for a reduce run (`r.x_step` equal to `src_step · r.c`).
pub(super) unsafe fn reduce(r: &ReduceRun, d: &Dense, rows: usize, cols: usize, src_step: usize) {
    dispatch!(reduce_rks, rows, cols, src_step, (r, d))
}

#[target_feature(enable = "avx512f")]
unsafe fn gather_rks<const R: usize, const K: usize, const S: usize>(r: &GatherRun, d: &Dense) {
    let c = r.c;
    let mut cb = 0;
    while cb < c {
        let m = mask(c, cb);
        let mut f = [[_mm512_setzero_ps(); 3]; 3];
        for (row, fr) in f.iter_mut().enumerate().take(R) {
            for (j, fv) in fr.iter_mut().enumerate().take(K) {
                *fv = _mm512_maskz_loadu_ps(m, r.filt.add(d.filt[row][j] + cb));
            }
        }
        let mut t = 0;
        while t + P <= r.count {
            gather_pixels::<R, K, S, P>(r, d, &f, t, cb, m);
            t += P;
        }
        while t < r.count {
            gather_pixels::<R, K, S, 1>(r, d, &f, t, cb, m);
            t += 1;
        }
        cb += 16;
    }
}

#[inline(always)]
unsafe fn gather_pixels<const R: usize, const K: usize, const S: usize, const N: usize>(
    r: &GatherRun,
    d: &Dense,
    f: &[[__m512; 3]; 3],
    t: usize,
    cb: usize,
    m: __mmask16,
) {
    // Opaque per group: keeps LLVM from turning every tap address into its
    // own induction variable (18+ of them, spilled to the stack); the
    // column offsets are then a few `lea`s off one row pointer.
    let c = std::hint::black_box(r.c);
    let mut acc = [_mm512_setzero_ps(); P];
    for row in 0..R {
        let base = r.src.add(d.src_row[row] + t * r.src_step + cb);
        // Source columns of N pixels: (N − 1)·S + K of them (≤ 9).
        let mut v = [_mm512_setzero_ps(); 3 * 2 + 3];
        for (q, vq) in v.iter_mut().enumerate().take((N - 1) * S + K) {
            *vq = _mm512_maskz_loadu_ps(m, base.add(q * c));
        }
        for (p, a) in acc.iter_mut().enumerate().take(N) {
            for j in 0..K {
                *a = _mm512_fmadd_ps(v[p * S + j], f[row][j], *a);
            }
        }
    }
    for (p, a) in acc.iter().enumerate().take(N) {
        _mm512_mask_storeu_ps(r.dst.add((t + p) * r.dst_step + cb), m, *a);
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn reduce_rks<const R: usize, const K: usize, const S: usize>(r: &ReduceRun, d: &Dense) {
    let c = r.c;
    let mut cb = 0;
    while cb < c {
        let m = mask(c, cb);
        let mut acc = [[_mm512_setzero_ps(); 3]; 3];
        let mut t = 0;
        while t + P <= r.count {
            reduce_pixels::<R, K, S, P>(r, d, &mut acc, t, cb, m);
            t += P;
        }
        while t < r.count {
            reduce_pixels::<R, K, S, 1>(r, d, &mut acc, t, cb, m);
            t += 1;
        }
        for (row, ar) in acc.iter().enumerate().take(R) {
            for (j, a) in ar.iter().enumerate().take(K) {
                let p = r.acc.add(d.filt[row][j] + cb);
                _mm512_mask_storeu_ps(p, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, p), *a));
            }
        }
        cb += 16;
    }
}

#[inline(always)]
unsafe fn reduce_pixels<const R: usize, const K: usize, const S: usize, const N: usize>(
    r: &ReduceRun,
    d: &Dense,
    acc: &mut [[__m512; 3]; 3],
    t: usize,
    cb: usize,
    m: __mmask16,
) {
    let c = std::hint::black_box(r.c);
    let mut g = [_mm512_setzero_ps(); P];
    for (p, gp) in g.iter_mut().enumerate().take(N) {
        *gp = _mm512_maskz_loadu_ps(m, r.dy.add((t + p) * r.dy_step + cb));
    }
    for row in 0..R {
        let base = r.x.add(d.src_row[row] + t * r.x_step + cb);
        let mut v = [_mm512_setzero_ps(); 3 * 2 + 3];
        for (q, vq) in v.iter_mut().enumerate().take((N - 1) * S + K) {
            *vq = _mm512_maskz_loadu_ps(m, base.add(q * c));
        }
        for (p, gp) in g.iter().enumerate().take(N) {
            for j in 0..K {
                acc[row][j] = _mm512_fmadd_ps(v[p * S + j], *gp, acc[row][j]);
            }
        }
    }
}

/// The dense block of a run, when its taps form one: `rows` (source row,
/// filter row) pairs times column taps covering consecutive source columns.
/// Offsets are in elements of images `sw` pixels wide with `c` channels and
/// filters `kw` wide. Returns the block and `(rows, cols)`.
pub(super) fn block(
    rows: &[AxisTap],
    cols: &[AxisTap],
    sw: usize,
    kw: usize,
    c: usize,
) -> Option<(Dense, usize, usize)> {
    if !(1..=3).contains(&rows.len()) || !(1..=3).contains(&cols.len()) {
        return None;
    }
    let lo = cols.iter().map(|t| t.src).min()?;
    let mut d = Dense {
        src_row: [0; 3],
        filt: [[0; 3]; 3],
    };
    let mut seen = [false; 3];
    for ct in cols {
        let j = ct.src - lo;
        if j >= cols.len() || seen[j] {
            return None;
        }
        seen[j] = true;
    }
    for (r, rt) in rows.iter().enumerate() {
        d.src_row[r] = (rt.src * sw + lo) * c;
        for ct in cols {
            d.filt[r][ct.src - lo] = (rt.k * kw + ct.k) * c;
        }
    }
    Some((d, rows.len(), cols.len()))
}

/// A [`Dense`] block with its shape `(rows, cols)` and source step.
pub(super) type Block = (Dense, usize, usize, usize);

/// The dense block of every (destination row, column run) pair, row-major;
/// `None` where a run has no specialised loop (or not on AVX-512).
pub(super) fn blocks(
    isa: super::Isa,
    rows: &super::plan::AxisPlan,
    cols: &super::plan::AxisPlan,
    sw: usize,
    kw: usize,
    c: usize,
) -> Vec<Option<Block>> {
    let mut out = Vec::with_capacity(rows.taps.len() * cols.runs.len());
    for row_taps in &rows.taps {
        for run in &cols.runs {
            out.push(
                (isa == super::Isa::Avx512 && (1..=2).contains(&run.src_step))
                    .then(|| block(row_taps, &run.taps, sw, kw, c))
                    .flatten()
                    .map(|(d, nr, nc)| (d, nr, nc, run.src_step)),
            );
        }
    }
    out
}
