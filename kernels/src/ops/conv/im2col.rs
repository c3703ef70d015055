//! Patch matrices: im2col (input → `[pixels, kh·kw·c]`) and its adjoint
//! col2im. For one output pixel and one filter row `dy`, the taps that fall
//! inside the image are a contiguous run of `x`'s row (NHWC keeps the
//! channels of neighbouring pixels together), so both move whole runs.

use rayon::prelude::*;

use super::Geom;

/// The columns `dx_lo..dx_hi` of filter taps that land inside the image for
/// output column `ox`, and the input column of tap 0 (may be negative).
#[inline]
fn tap_run(g: &Geom, ox: usize) -> (isize, usize, usize) {
    let ix0 = (ox * g.sw) as isize - g.pl as isize;
    let lo = (-ix0).clamp(0, g.kw as isize) as usize;
    let hi = (g.w as isize - ix0).clamp(lo as isize, g.kw as isize) as usize;
    (ix0, lo, hi)
}

/// The input row of filter row `dy` for output row `oy`, if inside.
#[inline]
fn tap_row(g: &Geom, oy: usize, dy: usize) -> Option<usize> {
    let iy = (oy * g.sh + dy) as isize - g.pt as isize;
    (0..g.h as isize).contains(&iy).then_some(iy as usize)
}

/// Fills `col` (`nb·oh·ow` rows of `kh·kw·c`) with the patches of images
/// `b0..b0+nb` of `x`; taps in the padding are zero.
pub(super) fn im2col(g: &Geom, x: &[f32], b0: usize, nb: usize, col: &mut [f32]) {
    let taps = g.kh * g.kw * g.c;
    let run = g.kw * g.c;
    if taps == 0 || g.ow == 0 {
        return;
    }
    debug_assert_eq!(col.len(), nb * g.oh * g.ow * taps);
    col.par_chunks_mut(g.ow * taps)
        .enumerate()
        .for_each(|(r, out_row)| {
            let b = b0 + r / g.oh;
            let oy = r % g.oh;
            let image = &x[b * g.h * g.w * g.c..(b + 1) * g.h * g.w * g.c];
            for ox in 0..g.ow {
                let (ix0, lo, hi) = tap_run(g, ox);
                let patch = &mut out_row[ox * taps..(ox + 1) * taps];
                for (dy, seg) in patch.chunks_exact_mut(run).enumerate() {
                    match tap_row(g, oy, dy) {
                        Some(iy) if lo < hi => {
                            seg[..lo * g.c].fill(0.0);
                            let src0 = (iy * g.w + (ix0 + lo as isize) as usize) * g.c;
                            seg[lo * g.c..hi * g.c]
                                .copy_from_slice(&image[src0..src0 + (hi - lo) * g.c]);
                            seg[hi * g.c..].fill(0.0);
                        }
                        _ => seg.fill(0.0),
                    }
                }
            }
        });
}

/// Adds the patch gradients `col` (`nb·oh·ow` rows of `kh·kw·c`) into `dx`
/// (`nb` images, zeroed by the caller) — the adjoint of [`im2col`]. Each
/// input row gathers from the output rows whose windows cover it, so rows
/// are independent and split over the threads.
pub(super) fn col2im(g: &Geom, col: &[f32], dx: &mut [f32]) {
    let taps = g.kh * g.kw * g.c;
    let run = g.kw * g.c;
    let row_len = g.w * g.c;
    if taps == 0 || row_len == 0 || g.h == 0 {
        return;
    }
    dx.par_chunks_mut(row_len)
        .enumerate()
        .for_each(|(r, dx_row)| {
            let b = r / g.h;
            let iy = r % g.h;
            for dy in 0..g.kh {
                // oy·sh + dy − pt = iy
                let t = iy as isize + g.pt as isize - dy as isize;
                if t < 0 {
                    continue;
                }
                let oy = t as usize / g.sh;
                if oy * g.sh != t as usize || oy >= g.oh {
                    continue;
                }
                let out_row = (b * g.oh + oy) * g.ow;
                for ox in 0..g.ow {
                    let (ix0, lo, hi) = tap_run(g, ox);
                    if lo >= hi {
                        continue;
                    }
                    let src = &col[(out_row + ox) * taps + dy * run..][lo * g.c..hi * g.c];
                    let dst0 = (ix0 + lo as isize) as usize * g.c;
                    for (d, s) in dx_row[dst0..dst0 + (hi - lo) * g.c].iter_mut().zip(src) {
                        *d += *s;
                    }
                }
            }
        });
}
