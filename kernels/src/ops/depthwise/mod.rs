//! DepthwiseConv2dNative and its two gradients: input `[n, h, w, c]`, filter
//! `[kh, kw, c, m]` (m = channel multiplier) → `[n, oh, ow, c·m]`, output
//! channel `ci·m + mi`, as TensorFlow.
//!
//! Layout of the implementation:
//! * `plan`: which filter taps each row/column reads (TensorFlow's window
//!   geometry from [`crate::window_2d`], borders included), grouped in runs;
//! * `gather`: forward pass and input gradient, parallel over (group of
//!   images, output row) tasks;
//! * `filter_grad`: filter gradient, per-split partial sums then one add;
//! * `simd`: the general channel-innermost inner loops (AVX-512, AVX2+FMA,
//!   scalar) for any filter size;
//! * `dense`: the specialised loops for tap blocks up to 3×3 at strides 1
//!   and 2 (AVX-512, AVX2+FMA), taps held in registers.
//!
//! The instruction set is detected at run time ([`Isa::detect`]); the
//! `*_isa` variants let tests force a lower one (the scalar path included).
//! The fused depthwise + batch norm + ReLU6 kernel can build on
//! `forward_into` (crate-internal), which writes into caller memory.
//!
//! A multiplier `m > 1` is brought back to `m = 1` over `c·m` channels: the
//! input is repeated `m` times along channels (`x'[.., ci·m + mi] = x[.., ci]`),
//! and the input gradient sums the `m` copies back.

#[cfg(target_arch = "x86_64")]
mod dense;
mod filter_grad;
mod gather;
mod plan;
mod simd;

use std::mem::MaybeUninit;

pub use simd::Isa;

use crate::{nhwc, window_2d, Conv2dParams, DType, Error, Result, Tensor, Window2d};
use filter_grad::FilterGrad;
use gather::Gather;

const FORWARD: &str = "DepthwiseConv2dNative";
const BACKPROP_INPUT: &str = "DepthwiseConv2dNativeBackpropInput";
const BACKPROP_FILTER: &str = "DepthwiseConv2dNativeBackpropFilter";

/// `DepthwiseConv2dNative`.
pub fn depthwise_conv2d(input: &Tensor, filter: &Tensor, p: &Conv2dParams) -> Result<Tensor> {
    depthwise_conv2d_isa(input, filter, p, Isa::detect())
}

/// `DepthwiseConv2dNativeBackpropInput`.
pub fn depthwise_conv2d_backprop_input(
    input_sizes: [usize; 4],
    filter: &Tensor,
    out_backprop: &Tensor,
    p: &Conv2dParams,
) -> Result<Tensor> {
    depthwise_conv2d_backprop_input_isa(input_sizes, filter, out_backprop, p, Isa::detect())
}

/// `DepthwiseConv2dNativeBackpropFilter`.
pub fn depthwise_conv2d_backprop_filter(
    input: &Tensor,
    filter_sizes: [usize; 4],
    out_backprop: &Tensor,
    p: &Conv2dParams,
) -> Result<Tensor> {
    depthwise_conv2d_backprop_filter_isa(input, filter_sizes, out_backprop, p, Isa::detect())
}

/// [`depthwise_conv2d`] with the inner loops of `isa` (capped at what the
/// CPU runs): lets tests cover the scalar and AVX2 paths on any machine.
#[doc(hidden)]
pub fn depthwise_conv2d_isa(
    input: &Tensor,
    filter: &Tensor,
    p: &Conv2dParams,
    isa: Isa,
) -> Result<Tensor> {
    let x = f32s(FORWARD, "input", input)?;
    let f = f32s(FORWARD, "filter", filter)?;
    let g = Geometry::new(
        FORWARD,
        nhwc(FORWARD, "input", input)?,
        filter_dims(FORWARD, "filter", filter.shape())?,
        p,
    )?;
    let mut out = Vec::with_capacity(g.out_len());
    forward_into(&g, x, f, isa, &mut out.spare_capacity_mut()[..g.out_len()]);
    // SAFETY: `forward_into` wrote every one of the `out_len` elements.
    unsafe { out.set_len(g.out_len()) };
    Tensor::new(g.out_shape(), out)
}

/// [`depthwise_conv2d_backprop_input`] with the inner loops of `isa`.
#[doc(hidden)]
pub fn depthwise_conv2d_backprop_input_isa(
    input_sizes: [usize; 4],
    filter: &Tensor,
    out_backprop: &Tensor,
    p: &Conv2dParams,
    isa: Isa,
) -> Result<Tensor> {
    let op = BACKPROP_INPUT;
    let f = f32s(op, "filter", filter)?;
    let dy = f32s(op, "out_backprop", out_backprop)?;
    let g = Geometry::new(
        op,
        input_sizes,
        filter_dims(op, "filter", filter.shape())?,
        p,
    )?;
    g.check_out_backprop(op, out_backprop)?;
    if g.m == 0 {
        // No output channels: nothing flows back.
        return Ok(Tensor::zeros(DType::F32, input_sizes.to_vec()));
    }
    let isa = isa.min(Isa::detect());
    let rows = plan::backward_axis(g.h, g.oh, g.kh, g.strides[0], g.win.rows.pad_before);
    let cols = plan::backward_axis(g.w, g.ow, g.kw, g.strides[1], g.win.cols.pad_before);
    let cm = g.c * g.m;
    let gather = Gather {
        isa,
        src: dy,
        src_hw: [g.oh, g.ow],
        filt: f,
        kw: g.kw,
        c: cm,
        rows: &rows,
        cols: &cols,
    };
    let len = g.n * g.h * g.w * cm;
    let mut dx = Vec::with_capacity(len);
    gather.run(&mut dx.spare_capacity_mut()[..len]);
    // SAFETY: the gather writes every destination element (pixels without
    // taps get zeros).
    unsafe { dx.set_len(len) };
    if g.m > 1 {
        dx = dx
            .chunks_exact(g.m)
            .map(|copies| copies.iter().sum())
            .collect();
    }
    Tensor::new(input_sizes.to_vec(), dx)
}

/// [`depthwise_conv2d_backprop_filter`] with the inner loops of `isa`.
#[doc(hidden)]
pub fn depthwise_conv2d_backprop_filter_isa(
    input: &Tensor,
    filter_sizes: [usize; 4],
    out_backprop: &Tensor,
    p: &Conv2dParams,
    isa: Isa,
) -> Result<Tensor> {
    let op = BACKPROP_FILTER;
    let x = f32s(op, "input", input)?;
    let dy = f32s(op, "out_backprop", out_backprop)?;
    let g = Geometry::new(
        op,
        nhwc(op, "input", input)?,
        filter_dims(op, "filter_sizes", &filter_sizes)?,
        p,
    )?;
    g.check_out_backprop(op, out_backprop)?;
    let isa = isa.min(Isa::detect());
    let expanded;
    let x = if g.m == 1 {
        x
    } else {
        expanded = repeat_channels(x, g.m);
        &expanded[..]
    };
    let rows = plan::forward_axis(g.oh, g.h, g.kh, g.strides[0], g.win.rows.pad_before);
    let cols = plan::forward_axis(g.ow, g.w, g.kw, g.strides[1], g.win.cols.pad_before);
    let df = FilterGrad {
        isa,
        x,
        x_hw: [g.h, g.w],
        dy,
        n: g.n,
        k_hw: [g.kh, g.kw],
        c: g.c * g.m,
        rows: &rows,
        cols: &cols,
    }
    .run();
    Tensor::new(filter_sizes.to_vec(), df)
}

/// The forward pass into caller-provided memory (every element of `out`,
/// `[n, oh, ow, c·m]`, is written): the entry a fused depthwise + batch
/// norm + activation kernel builds on.
pub(crate) fn forward_into(
    g: &Geometry,
    x: &[f32],
    filter: &[f32],
    isa: Isa,
    out: &mut [MaybeUninit<f32>],
) {
    assert_eq!(out.len(), g.out_len(), "{FORWARD}: output buffer size");
    let isa = isa.min(Isa::detect());
    let expanded;
    let x = if g.m == 1 {
        x
    } else {
        expanded = repeat_channels(x, g.m);
        &expanded[..]
    };
    let rows = plan::forward_axis(g.oh, g.h, g.kh, g.strides[0], g.win.rows.pad_before);
    let cols = plan::forward_axis(g.ow, g.w, g.kw, g.strides[1], g.win.cols.pad_before);
    Gather {
        isa,
        src: x,
        src_hw: [g.h, g.w],
        filt: filter,
        kw: g.kw,
        c: g.c * g.m,
        rows: &rows,
        cols: &cols,
    }
    .run(out);
}

/// Validated sizes of one depthwise convolution.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub kh: usize,
    pub kw: usize,
    pub m: usize,
    pub oh: usize,
    pub ow: usize,
    pub strides: [usize; 2],
    pub win: Window2d,
}

impl Geometry {
    pub(crate) fn new(
        op: &'static str,
        [n, h, w, c]: [usize; 4],
        [kh, kw, fc, m]: [usize; 4],
        p: &Conv2dParams,
    ) -> Result<Geometry> {
        if fc != c {
            return Err(Error::shape(
                op,
                format!(
                    "filter [{kh}, {kw}, {fc}, {m}] has {fc} input channels but the input has {c}"
                ),
            ));
        }
        let win = window_2d(op, [h, w], [kh, kw], p.strides, p.padding)?;
        Ok(Geometry {
            n,
            h,
            w,
            c,
            kh,
            kw,
            m,
            oh: win.rows.out,
            ow: win.cols.out,
            strides: p.strides,
            win,
        })
    }

    pub(crate) fn out_shape(&self) -> Vec<usize> {
        vec![self.n, self.oh, self.ow, self.c * self.m]
    }

    pub(crate) fn out_len(&self) -> usize {
        self.n * self.oh * self.ow * self.c * self.m
    }

    fn check_out_backprop(&self, op: &'static str, dy: &Tensor) -> Result<()> {
        let want = self.out_shape();
        if dy.shape() != want.as_slice() {
            return Err(Error::shape(
                op,
                format!(
                    "out_backprop has shape {:?}, expected {want:?} from input [{}, {}, {}, {}], \
                     filter [{}, {}, {}, {}], strides {:?} and padding {:?}",
                    dy.shape(),
                    self.n,
                    self.h,
                    self.w,
                    self.c,
                    self.kh,
                    self.kw,
                    self.c,
                    self.m,
                    self.strides,
                    self.win
                ),
            ));
        }
        Ok(())
    }
}

fn filter_dims(op: &'static str, what: &str, shape: &[usize]) -> Result<[usize; 4]> {
    match *shape {
        [kh, kw, c, m] => Ok([kh, kw, c, m]),
        _ => Err(Error::shape(
            op,
            format!("{what} must be 4-D [kh, kw, in_channels, multiplier], got {shape:?}"),
        )),
    }
}

fn f32s<'a>(op: &'static str, what: &'static str, t: &'a Tensor) -> Result<&'a [f32]> {
    t.f32s(op).map_err(|_| Error::DType {
        op,
        what,
        expected: DType::F32,
        got: t.dtype(),
    })
}

/// `x'[.., ci·m + mi] = x[.., ci]`.
fn repeat_channels(x: &[f32], m: usize) -> Vec<f32> {
    x.iter().flat_map(|&v| std::iter::repeat_n(v, m)).collect()
}
