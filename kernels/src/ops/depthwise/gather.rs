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

/// Images handled together by one task: as many as fit ~256 KiB of source
/// and destination (so the inner loops walk one tap pattern over all of
/// them while they stay in L2), fewer when that would leave too few tasks
/// (`rows` tasks per group) to share over the threads.
pub(super) fn group_size(n: usize, img_bytes: usize, rows: usize) -> usize {
    let tasks_wanted = 8 * rayon::current_num_threads();
    let mut g = (256 * 1024 / img_bytes.max(1)).clamp(1, n.max(1));
    while g > 1 && n.div_ceil(g) * rows < tasks_wanted {
        g = g.div_ceil(2);
    }
    g
}

/// The destination buffer, shared by tasks that write disjoint rows.
#[derive(Clone, Copy)]
struct DstPtr(*mut f32);
// SAFETY: tasks write disjoint (image, row) slices of the buffer, and
// `Gather::run` outlives them all (rayon joins before returning).
unsafe impl Send for DstPtr {}
unsafe impl Sync for DstPtr {}

impl DstPtr {
    /// A method, so closures capture the whole (Sync) wrapper rather than
    /// the raw pointer field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

impl Gather<'_> {
    /// Writes every element of `dst`; one task per (group of images,
    /// destination row).
    pub(super) fn run(&self, dst: &mut [MaybeUninit<f32>]) {
        let (dh, dw, c) = (self.rows.taps.len(), self.cols.taps.len(), self.c);
        let row_len = dw * c;
        if dst.is_empty() || row_len == 0 || dh == 0 {
            return;
        }
        let dst_img = dh * row_len;
        debug_assert_eq!(dst.len() % dst_img, 0);
        let n = dst.len() / dst_img;
        let src_img = self.src_hw[0] * self.src_hw[1] * c;
        let group = group_size(n, 4 * (src_img + dst_img), dh);
        let max_row = self.rows.taps.iter().map(Vec::len).max().unwrap_or(0);
        let max_col = self.cols.runs.iter().map(|r| r.taps.len()).max();
        let sw = self.src_hw[1];
        #[cfg(target_arch = "x86_64")]
        let blocks = dense::blocks(self.isa, self.rows, self.cols, sw, self.kw, c);
        let dst = DstPtr(dst.as_mut_ptr().cast::<f32>());
        (0..n.div_ceil(group) * dh).into_par_iter().for_each_init(
            || Vec::with_capacity(max_row * max_col.unwrap_or(0)),
            |taps: &mut Vec<Tap>, idx| {
                let (first, i) = ((idx / dh) * group, idx % dh);
                let lines = group.min(n - first);
                let src = self.src[first * src_img..].as_ptr();
                for (ri, run) in self.cols.runs.iter().enumerate() {
                    let g = GatherRun {
                        // SAFETY: inside `dst`: image `first`, row `i`,
                        // column `run.o0 < dw`.
                        dst: unsafe { dst.get().add(first * dst_img + i * row_len + run.o0 * c) },
                        dst_step: run.o_step * c,
                        src,
                        src_step: run.src_step * c,
                        filt: self.filt.as_ptr(),
                        count: run.count,
                        c,
                        lines,
                        dst_line: dst_img,
                        src_line: src_img,
                    };
                    #[cfg(target_arch = "x86_64")]
                    if let Some((d, shape)) = &blocks[i * self.cols.runs.len() + ri] {
                        // SAFETY: as below; the block holds the same taps;
                        // blocks exist only for the SIMD ISAs, checked by
                        // the caller.
                        unsafe { dense::gather(self.isa, &g, d, *shape) };
                        continue;
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    let _ = ri;
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
                    // (plan.rs builds and tests them), the `lines` images
                    // exist in both buffers, and `isa` was checked against
                    // the CPU by the caller.
                    unsafe { gather_run(self.isa, &g, taps) }
                }
            },
        );
    }
}
