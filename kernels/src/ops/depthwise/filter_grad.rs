//! The filter gradient: a reduction over batch and output pixels. Each rayon
//! split accumulates into its own `[kh, kw, c]` partial sum (no sharing, no
//! atomics); the partials are added at the end.

use rayon::prelude::*;

use super::plan::AxisPlan;
#[cfg(target_arch = "x86_64")]
use super::dense;
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

impl FilterGrad<'_> {
    pub(super) fn run(&self) -> Vec<f32> {
        let [kh, kw] = self.k_hw;
        let c = self.c;
        let len = kh * kw * c;
        let (oh, ow) = (self.rows.taps.len(), self.cols.taps.len());
        if self.n * oh * ow * c == 0 {
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
        let x_img = self.x_hw[0] * self.x_hw[1] * c;
        let dy_img = oh * ow * c;
        let xw = self.x_hw[1];
        #[cfg(target_arch = "x86_64")]
        let blocks = dense::blocks(self.isa, self.rows, self.cols, xw, kw, c);
        (0..self.n)
            .into_par_iter()
            .fold(
                || (vec![0f32; len], Vec::with_capacity(max_taps)),
                |(mut acc, mut taps): (Vec<f32>, Vec<Tap>), img| {
                    let x = self.x[img * x_img..].as_ptr();
                    for (i, row_taps) in self.rows.taps.iter().enumerate() {
                        let dy_row = &self.dy[img * dy_img + i * ow * c..];
                        for (ri, run) in self.cols.runs.iter().enumerate() {
                            let r = ReduceRun {
                                acc: acc.as_mut_ptr(),
                                x,
                                x_step: run.src_step * c,
                                dy: dy_row[run.o0 * c..].as_ptr(),
                                dy_step: run.o_step * c,
                                count: run.count,
                                c,
                            };
                            #[cfg(target_arch = "x86_64")]
                            if let Some((d, nr, nc, s)) = &blocks[i * self.cols.runs.len() + ri] {
                                // SAFETY: as below; the block holds the same
                                // taps, blocks exist only for AVX-512.
                                unsafe { dense::reduce(&r, d, *nr, *nc, *s) };
                                continue;
                            }
                            taps.clear();
                            for rt in row_taps {
                                for ct in &run.taps {
                                    taps.push(Tap {
                                        src: (rt.src * xw + ct.src) * c,
                                        filt: (rt.k * kw + ct.k) * c,
                                    });
                                }
                            }
                            // SAFETY: taps lie inside the input image and the
                            // `[kh, kw, c]` accumulator, the run inside the
                            // output row (plan.rs); `isa` was checked by the
                            // caller.
                            unsafe { reduce_run(self.isa, &r, &taps) }
                        }
                    }
                    (acc, taps)
                },
            )
            .map(|(acc, _)| acc)
            .reduce_with(|mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            })
            .unwrap_or_else(|| vec![0.0; len])
    }
}
