//! Conv2D and its two gradients (NHWC input, HWIO filter), TensorFlow's
//! semantics. A 1×1 stride-1 unpadded convolution is a plain GEMM.

use crate::{Padding, Result, Tensor};

/// Attributes of a 2-D convolution (dilations are always 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dParams {
    /// `[stride_h, stride_w]`.
    pub strides: [usize; 2],
    pub padding: Padding,
}

/// `Conv2D`: input `[n, h, w, c]`, filter `[kh, kw, c, o]` → `[n, oh, ow, o]`.
pub fn conv2d(input: &Tensor, filter: &Tensor, p: &Conv2dParams) -> Result<Tensor> {
    todo!("conv2d {:?} {:?} {:?}", input.shape(), filter.shape(), p)
}

/// `Conv2DBackpropInput`: gradient w.r.t. the input of shape `input_sizes`.
pub fn conv2d_backprop_input(
    input_sizes: [usize; 4],
    filter: &Tensor,
    out_backprop: &Tensor,
    p: &Conv2dParams,
) -> Result<Tensor> {
    todo!(
        "{input_sizes:?} {:?} {:?} {p:?}",
        filter.shape(),
        out_backprop.shape()
    )
}

/// `Conv2DBackpropFilter`: gradient w.r.t. the filter of shape `filter_sizes`.
pub fn conv2d_backprop_filter(
    input: &Tensor,
    filter_sizes: [usize; 4],
    out_backprop: &Tensor,
    p: &Conv2dParams,
) -> Result<Tensor> {
    todo!(
        "{:?} {filter_sizes:?} {:?} {p:?}",
        input.shape(),
        out_backprop.shape()
    )
}
