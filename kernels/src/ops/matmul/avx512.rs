//! An AVX-512 SGEMM tuned for the shapes convolutions produce: a long `m`
//! (pixels) against a small weight matrix, or a long depth (pixels again)
//! for the filter gradient.
//!
//! Register tile: up to `MR = 14` rows × `NR = 32` columns (28 zmm
//! accumulators, 2 for `b`, 1 broadcast).
//! `b` is packed per depth block into `NR`-wide panels (zero-padded), `a`
//! is read in place through its strides and broadcast, so the big operand
//! (the activations) is never copied. Two drivers split the work over the
//! threads: by rows when `m` is long, by depth when the output is small and
//! the depth long (each thread a private partial, added at the end).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use rayon::prelude::*;

use super::gemm::MatRef;

pub(crate) const MR: usize = 14;
pub(crate) const NR: usize = 32;
/// Depth block: a packed `KC×NR` panel is 32 KiB, it stays in L1.
const KC: usize = 128;
/// Row block walked for one packed panel (its `a` rows stay in L2).
const MC: usize = MR * 8;
/// Per-core L2 to plan for (2 MiB on the Sapphire Rapids this was tuned on).
const L2_BYTES: usize = 2 << 20;
/// Depth block of the depth-split driver: its `a` block (read in place, one
/// cache line per depth step) and the `b` panel then share L1.
const KD: usize = 128;

/// Largest packing buffer kept between calls (16 MiB).
const MAX_KEPT: usize = 1 << 22;

thread_local! {
    static PACKED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether this CPU runs the kernel.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A raw pointer that may cross to rayon workers; every use writes a
/// disjoint region (see the SAFETY notes at the uses).
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Offsets the pointer (a method, so closures capture the whole `SendPtr`).
    unsafe fn add(self, offset: usize) -> SendPtr {
        SendPtr(self.0.add(offset))
    }
}

/// Packs `b[p0..p0+kc, 0..n]` into `ceil(n/NR)` panels of `kc×NR`,
/// zero-padded on the right.
fn pack_b(b: MatRef<'_>, p0: usize, kc: usize, n: usize, dst: &mut [f32]) {
    let panels = n.div_ceil(NR);
    for jp in 0..panels {
        let j0 = jp * NR;
        let w = NR.min(n - j0);
        let panel = &mut dst[jp * kc * NR..(jp + 1) * kc * NR];
        if b.cs == 1 {
            for p in 0..kc {
                let row = &mut panel[p * NR..(p + 1) * NR];
                let base = (p0 + p) * b.rs + j0;
                row[..w].copy_from_slice(&b.data[base..base + w]);
                row[w..].fill(0.0);
            }
        } else {
            // `b` transposed: read each column as a contiguous run (a
            // row-wise gather would hit one L1 set with a power-of-two stride).
            for cc in 0..NR {
                if cc < w {
                    let base = p0 * b.rs + (j0 + cc) * b.cs;
                    for p in 0..kc {
                        panel[p * NR + cc] = b.data[base + p * b.rs];
                    }
                } else {
                    for p in 0..kc {
                        panel[p * NR + cc] = 0.0;
                    }
                }
            }
        }
    }
}

/// Multiplies rows `rows` of `a` (all columns of the depth block `p0..p0+kc`)
/// by the packed panels into `c` (row `i` of the block at `c[(i - rows.start)·ldc]`).
/// `overwrite`: store instead of accumulate.
#[allow(clippy::too_many_arguments)]
fn block(
    a: MatRef<'_>,
    rows: std::ops::Range<usize>,
    p0: usize,
    kc: usize,
    packed: &[f32],
    n: usize,
    panels: std::ops::Range<usize>,
    c: SendPtr,
    ldc: usize,
    alpha: f32,
    overwrite: bool,
) {
    let mut i0 = rows.start;
    while i0 < rows.end {
        let mc = MC.min(rows.end - i0);
        for jp in panels.clone() {
            let j0 = jp * NR;
            let w = NR.min(n - j0);
            let bp = &packed[jp * kc * NR..(jp + 1) * kc * NR];
            // Tiles of balanced heights (≤ MR): 64 rows are 5 tiles of
            // 12-13, not 5×12 + a thin, latency-bound 4.
            let tiles = mc.div_ceil(MR);
            let mut i = i0;
            for t in 0..tiles {
                let mr = mc / tiles + usize::from(t < mc % tiles);
                let a_off = i * a.rs + p0 * a.cs;
                debug_assert!(a.data.len() > a_off + (mr - 1) * a.rs + (kc - 1) * a.cs);
                // SAFETY: `a_off` and the strides address rows i..i+mr,
                // depth p0..p0+kc of `a`, inside `a.data` (checked by the
                // caller's extent assert); `bp` holds kc·NR values; the C
                // tile rows i..i+mr, columns j0..j0+w lie in the caller's
                // region of `c`, which no other thread touches.
                unsafe {
                    let ap = a.data.as_ptr().add(a_off);
                    let cp = c.0.add((i - rows.start) * ldc + j0);
                    tile_dispatch(
                        mr,
                        kc,
                        ap,
                        a.rs,
                        a.cs,
                        bp.as_ptr(),
                        cp,
                        ldc,
                        w,
                        alpha,
                        overwrite,
                    );
                }
                i += mr;
            }
        }
        i0 += mc;
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn tile_dispatch(
    mr: usize,
    kc: usize,
    a: *const f32,
    rs: usize,
    cs: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    w: usize,
    alpha: f32,
    overwrite: bool,
) {
    macro_rules! go {
        ($($m:literal)*) => {
            match mr {
                $($m => tile::<$m>(kc, a, rs, cs, b, c, ldc, w, alpha, overwrite),)*
                _ => unreachable!(),
            }
        };
    }
    go!(1 2 3 4 5 6 7 8 9 10 11 12 13 14)
}

/// The register tile: `c[0..R, 0..w] (+)= alpha · a[0..R, 0..kc] · b`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize>(
    kc: usize,
    a: *const f32,
    rs: usize,
    cs: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    w: usize,
    alpha: f32,
    overwrite: bool,
) {
    let mut acc0 = [_mm512_setzero_ps(); R];
    let mut acc1 = [_mm512_setzero_ps(); R];
    if cs == 1 {
        // a row-major: each row is its own stream.
        let mut rows = [a; R];
        for (r, p) in rows.iter_mut().enumerate() {
            *p = a.add(r * rs);
        }
        for p in 0..kc {
            let b0 = _mm512_loadu_ps(b.add(p * NR));
            let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
            for r in 0..R {
                let av = _mm512_set1_ps(*rows[r].add(p));
                acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
                acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
            }
        }
    } else {
        // a column-major (rs = 1 typically): one stream, rows adjacent.
        for p in 0..kc {
            let b0 = _mm512_loadu_ps(b.add(p * NR));
            let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
            let ap = a.add(p * cs);
            for r in 0..R {
                let av = _mm512_set1_ps(*ap.add(r * rs));
                acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
                acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
            }
        }
    }
    let m0: __mmask16 = if w >= 16 {
        0xffff
    } else {
        (1u32 << w) as u16 - 1
    };
    let m1: __mmask16 = if w >= 32 {
        0xffff
    } else if w <= 16 {
        0
    } else {
        (1u32 << (w - 16)) as u16 - 1
    };
    let al = _mm512_set1_ps(alpha);
    for r in 0..R {
        let cp = c.add(r * ldc);
        let mut v0 = _mm512_mul_ps(acc0[r], al);
        let mut v1 = _mm512_mul_ps(acc1[r], al);
        if !overwrite {
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, cp));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, cp.add(16)));
        }
        _mm512_mask_storeu_ps(cp, m0, v0);
        _mm512_mask_storeu_ps(cp.add(16), m1, v1);
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize>(
    _: usize,
    _: *const f32,
    _: usize,
    _: usize,
    _: *const f32,
    _: *mut f32,
    _: usize,
    _: usize,
    _: f32,
    _: bool,
) {
    unreachable!("the AVX-512 kernel runs only where `available()` said so")
}

/// `c = alpha·a·b + beta·c`, split over rows: `b` (the small operand) is
/// packed once, each thread walks its own rows. Requires `available()`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_rows(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: &mut [f32],
    ldc: usize,
    alpha: f32,
    beta: f32,
    threads: usize,
) {
    let panels = n.div_ceil(NR);
    let kblocks: Vec<(usize, usize)> = (0..k).step_by(KC).map(|p0| (p0, KC.min(k - p0))).collect();
    // All of b, packed: block kb starts at p0·panels·NR. The buffer is the
    // calling thread's, kept between calls (up to 2 MiB are packed per
    // pointwise layer; a fresh zeroed one would fault its pages in again).
    let mut packed = PACKED.with(|p| std::mem::take(&mut *p.borrow_mut()));
    if packed.len() < k * panels * NR {
        packed = vec![0f32; k * panels * NR];
    }
    {
        let mut rest = &mut packed[..k * panels * NR];
        let mut parts = Vec::with_capacity(kblocks.len());
        for &(p0, kc) in &kblocks {
            let (head, tail) = rest.split_at_mut(kc * panels * NR);
            parts.push((p0, kc, head));
            rest = tail;
        }
        parts
            .into_par_iter()
            .for_each(|(p0, kc, dst)| pack_b(b, p0, kc, n, dst));
    }
    if beta != 0.0 && beta != 1.0 {
        c.par_chunks_mut(ldc).take(m).for_each(|row| {
            row[..n].iter_mut().for_each(|x| *x *= beta);
        });
    }
    // Tasks: chunks of whole MR tiles, a few per thread for balance. When
    // the packed `b` outgrows a core's L2, each thread takes a group of
    // column panels instead of streaming all of `b` for every row chunk.
    let groups = if k * panels * NR * 4 > L2_BYTES / 2 {
        threads.min(panels).max(1)
    } else {
        1
    };
    let row_tasks = (threads * 4).div_ceil(groups).max(1);
    let chunk = m.div_ceil(row_tasks).div_ceil(MR).max(1) * MR;
    let row_chunks = m.div_ceil(chunk);
    let per_group = panels.div_ceil(groups);
    let cptr = SendPtr(c.as_mut_ptr());
    let packed_ref = &packed;
    (0..row_chunks * groups).into_par_iter().for_each(|t| {
        let (g, r) = (t / row_chunks, t % row_chunks);
        let rows = r * chunk..((r + 1) * chunk).min(m);
        let cols = (g * per_group).min(panels)..((g + 1) * per_group).min(panels);
        // SAFETY: (row range, panel range) pairs of different tasks are
        // disjoint, so are the C regions they write.
        let c_rows = unsafe { cptr.add(rows.start * ldc) };
        for &(p0, kc) in &kblocks {
            let bp = &packed_ref[p0 * panels * NR..(p0 + kc) * panels * NR];
            let overwrite = p0 == 0 && beta == 0.0;
            block(
                a,
                rows.clone(),
                p0,
                kc,
                bp,
                n,
                cols.clone(),
                c_rows,
                ldc,
                alpha,
                overwrite,
            );
        }
    });
    PACKED.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < packed.len() && packed.len() <= MAX_KEPT {
            *p = packed;
        }
    });
}

/// `c = alpha·a·b + beta·c`, split over the depth: each thread multiplies
/// its slab of the depth into a private `m×n` partial, packing its own `b`
/// blocks; the partials are added into `c`. Requires `available()`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_depth(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: &mut [f32],
    ldc: usize,
    alpha: f32,
    beta: f32,
    threads: usize,
) {
    let panels = n.div_ceil(NR);
    // A few slabs per thread, so that a thread slowed down by a neighbour
    // does not hold the whole product up (rayon balances the slabs).
    let parts = (threads * 4).min(k.div_ceil(2 * KD)).max(1);
    let slab = k.div_ceil(parts).div_ceil(KD) * KD;
    let partials: Vec<Vec<f32>> = (0..parts)
        .into_par_iter()
        .map(|t| {
            let k0 = (t * slab).min(k);
            let k1 = ((t + 1) * slab).min(k);
            let mut acc = vec![0f32; m * n];
            let mut packed = vec![0f32; KD * panels * NR];
            let mut p0 = k0;
            while p0 < k1 {
                let kc = KD.min(k1 - p0);
                pack_b(b, p0, kc, n, &mut packed);
                let cp = SendPtr(acc.as_mut_ptr());
                block(
                    a,
                    0..m,
                    p0,
                    kc,
                    &packed,
                    n,
                    0..panels,
                    cp,
                    n,
                    alpha,
                    p0 == k0,
                );
                p0 += kc;
            }
            acc
        })
        .collect();
    c.par_chunks_mut(ldc.max(1))
        .take(m)
        .enumerate()
        .for_each(|(i, row)| {
            let row = &mut row[..n];
            if beta == 0.0 {
                row.fill(0.0);
            } else if beta != 1.0 {
                row.iter_mut().for_each(|x| *x *= beta);
            }
            for part in &partials {
                for (d, s) in row.iter_mut().zip(&part[i * n..(i + 1) * n]) {
                    *d += *s;
                }
            }
        });
}
