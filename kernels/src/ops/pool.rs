//! AvgPool, MaxPool (NHWC) and their gradients. AvgPool divides by the
//! number of in-bounds elements of each window, as TensorFlow.

use crate::{Padding, Result, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolParams {
    /// `[kh, kw]` (TensorFlow's ksize without the batch and channel 1s).
    pub ksize: [usize; 2],
    pub strides: [usize; 2],
    pub padding: Padding,
}

pub fn avg_pool(x: &Tensor, p: &PoolParams) -> Result<Tensor> {
    todo!("{:?} {p:?}", x.shape())
}

/// `AvgPoolGrad(orig_input_shape, grad)`.
pub fn avg_pool_grad(
    orig_input_shape: [usize; 4],
    grad: &Tensor,
    p: &PoolParams,
) -> Result<Tensor> {
    todo!("{orig_input_shape:?} {:?} {p:?}", grad.shape())
}

pub fn max_pool(x: &Tensor, p: &PoolParams) -> Result<Tensor> {
    todo!("{:?} {p:?}", x.shape())
}

/// `MaxPoolGrad(orig_input, orig_output, grad)`: the gradient goes to the
/// first maximum of each window, as TensorFlow's CPU kernel.
pub fn max_pool_grad(
    orig_input: &Tensor,
    orig_output: &Tensor,
    grad: &Tensor,
    p: &PoolParams,
) -> Result<Tensor> {
    todo!(
        "{:?} {:?} {:?} {p:?}",
        orig_input.shape(),
        orig_output.shape(),
        grad.shape()
    )
}
