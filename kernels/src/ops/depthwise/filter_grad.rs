//! The filter gradient: a reduction over batch and output pixels. Each rayon
//! split (a range of (image group, row) items) accumulates into its own
//! `[kh, kw, c]` partial sum (no sharing, no atomics); the partials are
//! added at the end.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::dense;
use super::gather::group_size;
use super::plan::AxisPlan;
use super::simd::{reduce_run, Isa, ReduceRun, Tap};

/// `df[ki, kj, ch] = Σ_{n, i, j} x[n, i·sh − pt + ki, j·sw − pl + kj, ch] · dy[n, i, j, ch]`
/// with the forward taps of each output row and column in `rows`/`cols`.
pub(super) struct FilterGrad<'a> {
    pub isa: Isa,
    pub x: &'a [f32],
    pub x_hw: [usize; 2],
    pub dy: &'a [f32],
    pub n: usize,
    pub k_hw: [usize; 2],
    pub c: usize,
    pub rows: &'a AxisPlan,
    pub cols: &'a AxisPlan,
}

/// Dense tap blocks per (output row, column run) where the ISA has them.
#[cfg(target_arch = "x86_64")]
type Blocks = Vec<Option<dense::Block>>;
#[cfg(not(target_arch = "x86_64"))]
type Blocks = ();

impl FilterGrad<'_> {
    pub(super) fn run(&self) -> Vec<f32> {
        let [kh, kw] = self.k_hw;
        let len = kh * kw * self.c;
        let oh = self.rows.taps.len();
        if self.n * oh * self.cols.taps.len() * self.c == 0 {
            return vec![0.0; len];
        }
        let max_taps = self.rows.taps.iter().map(Vec::len).max().unwrap_or(0)
            * self
                .cols
                .runs
                .iter()
                .map(|r| r.taps.len())
                .max()
                .unwrap_or(0);
        #[cfg(target_arch = "x86_64")]
        let blocks = dense::blocks(self.isa, self.rows, self.cols, self.x_hw[1], kw, self.c);
        #[cfg(not(target_arch = "x86_64"))]
        let blocks = ();
        let img_bytes = 4 * self.c * (self.x_hw[0] * self.x_hw[1] + oh * self.cols.taps.len());
        let group = group_size(self.n, img_bytes, oh);
        // One item per (group of images, output row), so that small images
        // give long runs and a batch of one still splits over the threads.
        // The items are cut into a fixed number of contiguous tasks, each
        // with its own partial sum, and the partials are added in task
        // order: the result does not depend on rayon's scheduling.
        let items = self.n.div_ceil(group) * oh;
        let tasks = (crate::threads::current() * 4).clamp(1, items.max(1));
        let per_task = items.div_ceil(tasks);
        let partials: Vec<Vec<f32>> = (0..tasks)
            .into_par_iter()
            .map(|t| {
                let mut acc = vec![0f32; len];
                let mut taps = Vec::with_capacity(max_taps);
                for idx in t * per_task..((t + 1) * per_task).min(items) {
                    let first = (idx / oh) * group;
                    let lines = group.min(self.n - first);
                    self.row(&mut acc, &mut taps, &blocks, (first, lines), idx % oh);
                }
                acc
            })
            .collect();
        let mut sum = vec![0f32; len];
        for part in &partials {
            sum.iter_mut().zip(part).for_each(|(a, b)| *a += b);
        }
        sum
    }

    /// Adds the products of output row `i` of images `first..first + lines`
    /// into `acc`.
    fn row(
        &self,
        acc: &mut [f32],
        taps: &mut Vec<Tap>,
        blocks: &Blocks,
        (first, lines): (usize, usize),
        i: usize,
    ) {
        let c = self.c;
        let (xw, kw) = (self.x_hw[1], self.k_hw[1]);
        let ow = self.cols.taps.len();
        let x_img = self.x_hw[0] * xw * c;
        let dy_img = self.rows.taps.len() * ow * c;
        let x = self.x[first * x_img..].as_ptr();
        let dy_row = &self.dy[first * dy_img + i * ow * c..];
        let row_taps = &self.rows.taps[i];
        for (ri, run) in self.cols.runs.iter().enumerate() {
            let r = ReduceRun {
                acc: acc.as_mut_ptr(),
                x,
                x_step: run.src_step * c,
                dy: dy_row[run.o0 * c..].as_ptr(),
                dy_step: run.o_step * c,
                count: run.count,
                c,
                lines,
                x_line: x_img,
                dy_line: dy_img,
            };
            #[cfg(target_arch = "x86_64")]
            if let Some((d, shape)) = &blocks[i * self.cols.runs.len() + ri] {
                // SAFETY: as below; the block holds the same taps, blocks
                // exist only for the SIMD ISAs (checked by the caller).
                unsafe { dense::reduce(self.isa, &r, d, *shape) };
                continue;
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (blocks, ri);
            taps.clear();
            for rt in row_taps {
                for ct in &run.taps {
                    taps.push(Tap {
                        src: (rt.src * xw + ct.src) * c,
                        filt: (rt.k * kw + ct.k) * c,
                    });
                }
            }
            // SAFETY: taps lie inside the input image and the `[kh, kw, c]`
            // accumulator, the run inside the output row (plan.rs), the
            // `lines` images exist; `isa` was checked by the caller.
            unsafe { reduce_run(self.isa, &r, taps) }
        }
    }
}
