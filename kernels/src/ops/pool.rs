//! AvgPool, MaxPool (NHWC) and their gradients. AvgPool divides by the
//! number of in-bounds elements of each window, as TensorFlow.
//!
//! Channels are innermost, so every window step is a contiguous run of `c`
//! floats; images (backward) or output rows (forward) are split over rayon.

use std::ops::Range;

use rayon::prelude::*;

use crate::{nhwc, window_2d, Error, Padding, Result, Tensor, Window2d};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolParams {
    /// `[kh, kw]` (TensorFlow's ksize without the batch and channel 1s).
    pub ksize: [usize; 2],
    pub strides: [usize; 2],
    pub padding: Padding,
}

fn geometry(op: &'static str, shape: [usize; 4], p: &PoolParams) -> Result<Window2d> {
    window_2d(op, [shape[1], shape[2]], p.ksize, p.strides, p.padding)
}

/// In-bounds input rows (or columns) of output index `o` along one axis.
fn span(o: usize, stride: usize, pad_before: usize, k: usize, size: usize) -> Range<usize> {
    let start = (o * stride) as isize - pad_before as isize;
    let lo = start.max(0) as usize;
    let hi = ((start + k as isize).max(0) as usize).min(size);
    lo..hi.max(lo)
}

struct Geo {
    h: usize,
    w: usize,
    c: usize,
    oh: usize,
    ow: usize,
    g: Window2d,
    p: PoolParams,
}

impl Geo {
    fn rows(&self, o: usize) -> Range<usize> {
        span(
            o,
            self.p.strides[0],
            self.g.rows.pad_before,
            self.p.ksize[0],
            self.h,
        )
    }
    fn cols(&self, o: usize) -> Range<usize> {
        span(
            o,
            self.p.strides[1],
            self.g.cols.pad_before,
            self.p.ksize[1],
            self.w,
        )
    }
}

fn setup(op: &'static str, shape: [usize; 4], p: &PoolParams) -> Result<Geo> {
    let g = geometry(op, shape, p)?;
    Ok(Geo {
        h: shape[1],
        w: shape[2],
        c: shape[3],
        oh: g.rows.out,
        ow: g.cols.out,
        g,
        p: *p,
    })
}

/// Forward pooling: `reduce(acc, input_pixel)` over each window, then
/// `finish(acc, count)`; output rows in parallel.
fn pool_forward(
    op: &'static str,
    x: &Tensor,
    p: &PoolParams,
    first: fn(&mut [f32], &[f32]),
    step: fn(&mut [f32], &[f32]),
    finish: fn(&mut [f32], usize),
) -> Result<Tensor> {
    let shape = nhwc(op, "input", x)?;
    let xv = x.f32s(op)?;
    let geo = setup(op, shape, p)?;
    let (h, w, c, oh, ow) = (geo.h, geo.w, geo.c, geo.oh, geo.ow);
    let mut out = vec![0f32; shape[0] * oh * ow * c];
    if !out.is_empty() {
        out.par_chunks_mut(ow * c)
            .enumerate()
            .for_each(|(row, orow)| {
                let (b, y) = (row / oh, row % oh);
                let img = &xv[b * h * w * c..(b + 1) * h * w * c];
                for (x_, px) in orow.chunks_exact_mut(c).enumerate() {
                    let mut n = 0;
                    for iy in geo.rows(y) {
                        for ix in geo.cols(x_) {
                            let src = &img[(iy * w + ix) * c..(iy * w + ix + 1) * c];
                            if n == 0 {
                                first(px, src)
                            } else {
                                step(px, src)
                            }
                            n += 1;
                        }
                    }
                    finish(px, n);
                }
            });
    }
    Tensor::new(vec![shape[0], oh, ow, c], out)
}

pub fn avg_pool(x: &Tensor, p: &PoolParams) -> Result<Tensor> {
    pool_forward(
        "AvgPool",
        x,
        p,
        |acc, v| acc.copy_from_slice(v),
        |acc, v| acc.iter_mut().zip(v).for_each(|(a, &v)| *a += v),
        |acc, n| {
            let inv = 1.0 / n.max(1) as f32;
            acc.iter_mut().for_each(|a| *a *= inv)
        },
    )
}

pub fn max_pool(x: &Tensor, p: &PoolParams) -> Result<Tensor> {
    pool_forward(
        "MaxPool",
        x,
        p,
        |acc, v| acc.copy_from_slice(v),
        |acc, v| {
            acc.iter_mut()
                .zip(v)
                .for_each(|(a, &v)| *a = if v > *a { v } else { *a })
        },
        |_, _| {},
    )
}

fn check_grad_shape(op: &'static str, grad: &Tensor, want: [usize; 4]) -> Result<()> {
    if grad.shape() != want {
        return Err(Error::shape(
            op,
            format!(
                "grad has shape {:?} but the pooling output has shape {want:?}",
                grad.shape()
            ),
        ));
    }
    Ok(())
}

/// `AvgPoolGrad(orig_input_shape, grad)`.
pub fn avg_pool_grad(
    orig_input_shape: [usize; 4],
    grad: &Tensor,
    p: &PoolParams,
) -> Result<Tensor> {
    let op = "AvgPoolGrad";
    let gv = grad.f32s(op)?;
    let geo = setup(op, orig_input_shape, p)?;
    let (n, h, w, c, oh, ow) = (orig_input_shape[0], geo.h, geo.w, geo.c, geo.oh, geo.ow);
    check_grad_shape(op, grad, [n, oh, ow, c])?;
    let mut dx = vec![0f32; n * h * w * c];
    if !dx.is_empty() {
        dx.par_chunks_mut(h * w * c)
            .enumerate()
            .for_each(|(b, img)| {
                for y in 0..oh {
                    for x_ in 0..ow {
                        let (rows, cols) = (geo.rows(y), geo.cols(x_));
                        let count = rows.len() * cols.len();
                        if count == 0 {
                            continue;
                        }
                        let inv = 1.0 / count as f32;
                        let g = &gv[((b * oh + y) * ow + x_) * c..][..c];
                        for iy in rows {
                            for ix in cols.clone() {
                                let dst = &mut img[(iy * w + ix) * c..][..c];
                                dst.iter_mut().zip(g).for_each(|(d, &g)| *d += g * inv);
                            }
                        }
                    }
                }
            });
    }
    Tensor::new(orig_input_shape.to_vec(), dx)
}

/// `MaxPoolGrad(orig_input, orig_output, grad)`: the gradient goes to the
/// first maximum of each window, as TensorFlow's CPU kernel.
pub fn max_pool_grad(
    orig_input: &Tensor,
    orig_output: &Tensor,
    grad: &Tensor,
    p: &PoolParams,
) -> Result<Tensor> {
    let op = "MaxPoolGrad";
    let shape = nhwc(op, "orig_input", orig_input)?;
    let xv = orig_input.f32s(op)?;
    let gv = grad.f32s(op)?;
    orig_output.f32s(op)?;
    let geo = setup(op, shape, p)?;
    let (n, h, w, c, oh, ow) = (shape[0], geo.h, geo.w, geo.c, geo.oh, geo.ow);
    if orig_output.shape() != [n, oh, ow, c] {
        return Err(Error::shape(
            op,
            format!(
                "orig_output has shape {:?} but pooling {:?} gives {:?}",
                orig_output.shape(),
                shape,
                [n, oh, ow, c]
            ),
        ));
    }
    check_grad_shape(op, grad, [n, oh, ow, c])?;
    let mut dx = vec![0f32; n * h * w * c];
    if !dx.is_empty() {
        dx.par_chunks_mut(h * w * c)
            .enumerate()
            .for_each(|(b, img)| {
                let src = &xv[b * h * w * c..(b + 1) * h * w * c];
                let mut best = vec![0f32; c];
                let mut at = vec![0usize; c];
                for y in 0..oh {
                    for x_ in 0..ow {
                        let mut first = true;
                        // Row-major window order with a strict comparison keeps
                        // the first maximum.
                        for iy in geo.rows(y) {
                            for ix in geo.cols(x_) {
                                let pix = iy * w + ix;
                                let v = &src[pix * c..][..c];
                                for k in 0..c {
                                    if first || v[k] > best[k] {
                                        best[k] = v[k];
                                        at[k] = pix;
                                    }
                                }
                                first = false;
                            }
                        }
                        if first {
                            continue;
                        }
                        let g = &gv[((b * oh + y) * ow + x_) * c..][..c];
                        for k in 0..c {
                            img[at[k] * c + k] += g[k];
                        }
                    }
                }
            });
    }
    Tensor::new(shape.to_vec(), dx)
}
