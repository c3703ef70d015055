//! The forward pass and the input gradient as one parallel gather: every
//! destination pixel sums source pixels times filter taps, with the taps
//! each destination row and column reads given by two axis plans.

use std::mem::MaybeUninit;

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::dense;
use super::plan::AxisPlan;
use super::simd::{gather_run, GatherRun, Isa, Tap};

/// `dst[n, i, j, ch] = Σ src[n, ·, ·, ch] · filt[·, ·, ch]` over the taps of
/// row `i` (`rows`) and column `j` (`cols`); `dst` is
/// `[n, rows.taps.len(), cols.taps.len(), c]`, `src` is `[n, src_hw, c]` and
/// `filt` is `[kh, kw, c]`.
pub(super) struct Gather<'a> {
    pub isa: Isa,
    pub src: &'a [f32],
    pub src_hw: [usize; 2],
    pub filt: &'a [f32],
    pub kw: usize,
    pub c: usize,
    pub rows: &'a AxisPlan,
    pub cols: &'a AxisPlan,
}

impl Gather<'_> {
    /// Writes every element of `dst`, one task per destination row.
    pub(super) fn run(&self, dst: &mut [MaybeUninit<f32>]) {
        let (dh, dw, c) = (self.rows.taps.len(), self.cols.taps.len(), self.c);
        let row_len = dw * c;
        if dst.is_empty() || row_len == 0 || dh == 0 {
            return;
        }
        debug_assert_eq!(dst.len() % (row_len * dh), 0);
        let src_img = self.src_hw[0] * self.src_hw[1] * c;
        let max_row = self.rows.taps.iter().map(Vec::len).max().unwrap_or(0);
        let max_col = self
            .cols
            .runs
            .iter()
            .map(|r| r.taps.len())
            .max()
            .unwrap_or(0);
        let sw = self.src_hw[1];
        #[cfg(target_arch = "x86_64")]
        let blocks = dense::blocks(self.isa, self.rows, self.cols, sw, self.kw, c);
        dst.par_chunks_mut(row_len).enumerate().for_each_init(
            || Vec::with_capacity(max_row * max_col),
            |taps: &mut Vec<Tap>, (idx, row)| {
                let (img, i) = (idx / dh, idx % dh);
                let src = self.src[img * src_img..].as_ptr();
                for (ri, run) in self.cols.runs.iter().enumerate() {
                    let g = GatherRun {
                        dst: row[run.o0 * c..].as_mut_ptr().cast::<f32>(),
                        dst_step: run.o_step * c,
                        src,
                        src_step: run.src_step * c,
                        filt: self.filt.as_ptr(),
                        count: run.count,
                        c,
                    };
                    #[cfg(target_arch = "x86_64")]
                    if let Some((d, shape)) = &blocks[i * self.cols.runs.len() + ri] {
                        // SAFETY: as below; the block holds the same taps;
                        // blocks exist only for the SIMD ISAs, checked by
                        // the caller.
                        unsafe { dense::gather(self.isa, &g, d, *shape) };
                        continue;
                    }
                    taps.clear();
                    for rt in &self.rows.taps[i] {
                        for ct in &run.taps {
                            taps.push(Tap {
                                src: (rt.src * sw + ct.src) * c,
                                filt: (rt.k * self.kw + ct.k) * c,
                            });
                        }
                    }
                    // SAFETY: the plans only list taps inside the source
                    // image and the filter, runs stay inside the row
                    // (plan.rs builds and tests them), `isa` was checked
                    // against the CPU by the caller.
                    unsafe { gather_run(self.isa, &g, taps) }
                }
            },
        );
    }
}
