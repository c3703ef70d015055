//! The specialised loops (AVX-512 and AVX2+FMA) for runs whose taps form a
//! dense block of at most 3×3 (every 3×3 depthwise convolution, strides 1
//! and 2, forward and both gradients, interior and border alike): the taps
//! of one channel block stay in registers while the run is walked four
//! pixels at a time,
//! and neighbouring pixels share their source loads, so the loop issues
//! about one load per two FMAs instead of two loads per FMA.
//!
//! Tap `(r, j)` reads source column `j` of source row `r` (columns
//! consecutive, `j = 0` lowest); consecutive pixels of a run move `S`
//! source pixels. The filter (or accumulator) offset of each tap is free,
//! which covers the flipped taps of the input gradient.

use std::arch::x86_64::*;

use super::plan::AxisTap;
use super::simd::{GatherRun, Isa, ReduceRun};

/// The tap block of one run: `R` rows of `K` consecutive source columns.
#[derive(Clone, Copy, Debug)]
pub(super) struct Dense {
    /// Offset of each row's lowest source column for the first pixel.
    pub src_row: [usize; 3],
    /// Filter (gather) or accumulator (reduce) offset of tap `(r, j)`.
    pub filt: [[usize; 3]; 3],
}

/// One SIMD register of f32 lanes and its tail mask: the dense loops are
/// written once over this and instantiated per instruction set.
trait Lanes: Copy {
    const N: usize;
    type Mask: Copy;
    /// Mask of the first `min(rem, N)` lanes.
    unsafe fn mask(rem: usize) -> Self::Mask;
    unsafe fn zero() -> Self;
    unsafe fn load(p: *const f32, m: Self::Mask) -> Self;
    unsafe fn store(p: *mut f32, m: Self::Mask, v: Self);
    /// `a · b + c`.
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self;
    unsafe fn add(a: Self, b: Self) -> Self;
}

impl Lanes for __m512 {
    const N: usize = 16;
    type Mask = __mmask16;
    #[inline(always)]
    unsafe fn mask(rem: usize) -> __mmask16 {
        if rem >= 16 {
            0xffff
        } else {
            (1u16 << rem) - 1
        }
    }
    #[inline(always)]
    unsafe fn zero() -> Self {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(p: *const f32, m: __mmask16) -> Self {
        _mm512_maskz_loadu_ps(m, p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, m: __mmask16, v: Self) {
        _mm512_mask_storeu_ps(p, m, v)
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        _mm512_add_ps(a, b)
    }
}

/// AVX2 has masked loads only through a lane-mask vector, slower than plain
/// ones: full blocks (`None`) use plain loads, the tail block the mask.
impl Lanes for __m256 {
    const N: usize = 8;
    type Mask = Option<__m256i>;
    #[inline(always)]
    unsafe fn mask(rem: usize) -> Option<__m256i> {
        (rem < 8).then(|| {
            let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            _mm256_cmpgt_epi32(_mm256_set1_epi32(rem as i32), lane)
        })
    }
    #[inline(always)]
    unsafe fn zero() -> Self {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(p: *const f32, m: Option<__m256i>) -> Self {
        match m {
            None => _mm256_loadu_ps(p),
            Some(m) => _mm256_maskload_ps(p, m),
        }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, m: Option<__m256i>, v: Self) {
        match m {
            None => _mm256_storeu_ps(p, v),
            Some(m) => _mm256_maskstore_ps(p, m, v),
        }
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        _mm256_add_ps(a, b)
    }
}

/// Pixels per group (four accumulator chains; eight measured no faster).
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
/// `isa` (AVX-512 or AVX2) present; `rows`, `cols` in 1..=3 and `src_step`
/// in 1..=2 (as [`blocks`] gives them); the run's pixels and taps inside
/// their buffers (as for `simd::gather_run`), `r.src_step` equal to
/// `src_step · r.c`.
pub(super) unsafe fn gather(isa: Isa, r: &GatherRun, d: &Dense, block: (usize, usize, usize)) {
    let (rows, cols, src_step) = block;
    match isa {
        Isa::Avx512 => dispatch!(gather_avx512, rows, cols, src_step, (r, d)),
        _ => dispatch!(gather_avx2, rows, cols, src_step, (r, d)),
    }
}

/// # Safety
/// As [`gather`], for a reduce run (`r.x_step` equal to `src_step · r.c`).
pub(super) unsafe fn reduce(isa: Isa, r: &ReduceRun, d: &Dense, block: (usize, usize, usize)) {
    let (rows, cols, src_step) = block;
    match isa {
        Isa::Avx512 => dispatch!(reduce_avx512, rows, cols, src_step, (r, d)),
        _ => dispatch!(reduce_avx2, rows, cols, src_step, (r, d)),
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn gather_avx512<const R: usize, const K: usize, const S: usize>(r: &GatherRun, d: &Dense) {
    gather_rks::<__m512, R, K, S>(r, d)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn gather_avx2<const R: usize, const K: usize, const S: usize>(r: &GatherRun, d: &Dense) {
    gather_rks::<__m256, R, K, S>(r, d)
}

#[target_feature(enable = "avx512f")]
unsafe fn reduce_avx512<const R: usize, const K: usize, const S: usize>(r: &ReduceRun, d: &Dense) {
    reduce_rks::<__m512, R, K, S>(r, d)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn reduce_avx2<const R: usize, const K: usize, const S: usize>(r: &ReduceRun, d: &Dense) {
    reduce_rks::<__m256, R, K, S>(r, d)
}

#[inline(always)]
unsafe fn gather_rks<V: Lanes, const R: usize, const K: usize, const S: usize>(
    r: &GatherRun,
    d: &Dense,
) {
    let c = r.c;
    // Images outer, channel blocks inner: each image's pixels are read and
    // written front to back (prefetch-friendly); the taps are reloaded per
    // image from L1, a few loads per block.
    for l in 0..r.lines {
        let mut cb = 0;
        while cb < c {
            let m = V::mask(c - cb);
            let mut f = [[V::zero(); 3]; 3];
            for (row, fr) in f.iter_mut().enumerate().take(R) {
                for (j, fv) in fr.iter_mut().enumerate().take(K) {
                    *fv = V::load(r.filt.add(d.filt[row][j] + cb), m);
                }
            }
            let line = (l * r.src_line + cb, l * r.dst_line + cb);
            let mut t = 0;
            while t + P <= r.count {
                gather_pixels::<V, R, K, S, P>(r, d, &f, t, line, m);
                t += P;
            }
            while t < r.count {
                gather_pixels::<V, R, K, S, 1>(r, d, &f, t, line, m);
                t += 1;
            }
            cb += V::N;
        }
    }
}

#[inline(always)]
unsafe fn gather_pixels<
    V: Lanes,
    const R: usize,
    const K: usize,
    const S: usize,
    const N: usize,
>(
    r: &GatherRun,
    d: &Dense,
    f: &[[V; 3]; 3],
    t: usize,
    (src_off, dst_off): (usize, usize),
    m: V::Mask,
) {
    // Opaque per group: keeps LLVM from turning every tap address into its
    // own induction variable (18+ of them, spilled to the stack); the
    // column offsets are then a few `lea`s off one row pointer.
    let c = std::hint::black_box(r.c);
    let mut acc = [V::zero(); P];
    for (fr, &src_row) in f.iter().zip(&d.src_row).take(R) {
        let base = r.src.add(src_off + src_row + t * r.src_step);
        // Source columns of N pixels: (N − 1)·S + K of them (≤ 9).
        let mut v = [V::zero(); 3 * 2 + 3];
        for (q, vq) in v.iter_mut().enumerate().take((N - 1) * S + K) {
            *vq = V::load(base.add(q * c), m);
        }
        for (p, a) in acc.iter_mut().enumerate().take(N) {
            for j in 0..K {
                *a = V::fmadd(v[p * S + j], fr[j], *a);
            }
        }
    }
    for (p, a) in acc.iter().enumerate().take(N) {
        V::store(r.dst.add(dst_off + (t + p) * r.dst_step), m, *a);
    }
}

#[inline(always)]
unsafe fn reduce_rks<V: Lanes, const R: usize, const K: usize, const S: usize>(
    r: &ReduceRun,
    d: &Dense,
) {
    let c = r.c;
    let mut cb = 0;
    while cb < c {
        let m = V::mask(c - cb);
        let mut acc = [[V::zero(); 3]; 3];
        for l in 0..r.lines {
            let line = (l * r.x_line + cb, l * r.dy_line + cb);
            let mut t = 0;
            while t + P <= r.count {
                reduce_pixels::<V, R, K, S, P>(r, d, &mut acc, t, line, m);
                t += P;
            }
            while t < r.count {
                reduce_pixels::<V, R, K, S, 1>(r, d, &mut acc, t, line, m);
                t += 1;
            }
        }
        for (row, ar) in acc.iter().enumerate().take(R) {
            for (j, a) in ar.iter().enumerate().take(K) {
                let p = r.acc.add(d.filt[row][j] + cb);
                V::store(p, m, V::add(V::load(p, m), *a));
            }
        }
        cb += V::N;
    }
}

#[inline(always)]
unsafe fn reduce_pixels<
    V: Lanes,
    const R: usize,
    const K: usize,
    const S: usize,
    const N: usize,
>(
    r: &ReduceRun,
    d: &Dense,
    acc: &mut [[V; 3]; 3],
    t: usize,
    (x_off, dy_off): (usize, usize),
    m: V::Mask,
) {
    let c = std::hint::black_box(r.c);
    let mut g = [V::zero(); P];
    for (p, gp) in g.iter_mut().enumerate().take(N) {
        *gp = V::load(r.dy.add(dy_off + (t + p) * r.dy_step), m);
    }
    for (ar, &src_row) in acc.iter_mut().zip(&d.src_row).take(R) {
        let base = r.x.add(x_off + src_row + t * r.x_step);
        let mut v = [V::zero(); 3 * 2 + 3];
        for (q, vq) in v.iter_mut().enumerate().take((N - 1) * S + K) {
            *vq = V::load(base.add(q * c), m);
        }
        for (p, gp) in g.iter().enumerate().take(N) {
            for j in 0..K {
                ar[j] = V::fmadd(v[p * S + j], *gp, ar[j]);
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

/// A [`Dense`] block with its shape and source step `(rows, cols, step)`.
pub(super) type Block = (Dense, (usize, usize, usize));

/// The dense block of every (destination row, column run) pair, row-major;
/// `None` where a run has no specialised loop (or the ISA has none).
pub(super) fn blocks(
    isa: Isa,
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
                (isa != Isa::Scalar && (1..=2).contains(&run.src_step))
                    .then(|| block(row_taps, &run.taps, sw, kw, c))
                    .flatten()
                    .map(|(d, nr, nc)| (d, (nr, nc, run.src_step))),
            );
        }
    }
    out
}
