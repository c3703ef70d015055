//! DepthwiseConv2dNative and its two gradients: input `[n, h, w, c]`, filter
//! `[kh, kw, c, m]` (m = channel multiplier) → `[n, oh, ow, c·m]`, output
//! channel `ci·m + mi`, as TensorFlow.

use crate::{Conv2dParams, Result, Tensor};

pub fn depthwise_conv2d(input: &Tensor, filter: &Tensor, p: &Conv2dParams) -> Result<Tensor> {
    todo!("{:?} {:?} {p:?}", input.shape(), filter.shape())
}

/// `DepthwiseConv2dNativeBackpropInput`.
pub fn depthwise_conv2d_backprop_input(
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

/// `DepthwiseConv2dNativeBackpropFilter`.
pub fn depthwise_conv2d_backprop_filter(
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
