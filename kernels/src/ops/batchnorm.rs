//! FusedBatchNormV3 and FusedBatchNormGradV3 over the channel (last) axis of
//! NHWC, plus the fused batch norm + ReLU6 pair the training step uses.

use crate::{Result, Tensor};

/// Attributes of `FusedBatchNormV3`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNormParams {
    pub epsilon: f32,
    /// Weight of the new batch statistics in the running averages that the
    /// op returns in training mode (1.0: return the batch statistics).
    pub exponential_avg_factor: f32,
    pub is_training: bool,
}

/// The six outputs of `FusedBatchNormV3`, as TensorFlow's CPU kernel returns
/// them: `y`; `batch_mean`/`batch_variance` (in training the running
/// averages updated with the batch's mean and Bessel-corrected variance, in
/// inference the given mean/variance); `reserve_space_1`/`_2`, the batch mean
/// and biased variance that the gradient needs; `reserve_space_3` empty.
#[derive(Debug, Clone)]
pub struct BatchNormOutput {
    pub y: Tensor,
    pub batch_mean: Tensor,
    pub batch_variance: Tensor,
    pub reserve_space_1: Tensor,
    pub reserve_space_2: Tensor,
    pub reserve_space_3: Tensor,
}

/// `FusedBatchNormV3`: x `[n, h, w, c]` (any rank ≥ 1, channels last),
/// scale/offset/mean/variance `[c]` (mean/variance may be empty in training).
pub fn fused_batch_norm(
    x: &Tensor,
    scale: &Tensor,
    offset: &Tensor,
    mean: &Tensor,
    variance: &Tensor,
    p: &BatchNormParams,
) -> Result<BatchNormOutput> {
    todo!(
        "{:?} {:?} {:?} {:?} {:?} {p:?}",
        x.shape(),
        scale.shape(),
        offset.shape(),
        mean.shape(),
        variance.shape()
    )
}

/// The outputs of `FusedBatchNormGradV3` that carry values:
/// `(x_backprop, scale_backprop, offset_backprop)`.
#[derive(Debug, Clone)]
pub struct BatchNormGrad {
    pub dx: Tensor,
    pub dscale: Tensor,
    pub doffset: Tensor,
}

/// `FusedBatchNormGradV3`: `reserve_space_1/2` are the saved mean and
/// variance (batch statistics in training, population ones in inference).
pub fn fused_batch_norm_grad(
    dy: &Tensor,
    x: &Tensor,
    scale: &Tensor,
    reserve_space_1: &Tensor,
    reserve_space_2: &Tensor,
    epsilon: f32,
    is_training: bool,
) -> Result<BatchNormGrad> {
    todo!(
        "{:?} {:?} {:?} {:?} {:?} {epsilon} {is_training}",
        dy.shape(),
        x.shape(),
        scale.shape(),
        reserve_space_1.shape(),
        reserve_space_2.shape()
    )
}

/// Training-mode batch norm followed by ReLU6 in one pass over memory:
/// the same outputs as `fused_batch_norm` with `y = relu6(bn(x))`.
pub fn fused_batch_norm_relu6(
    x: &Tensor,
    scale: &Tensor,
    offset: &Tensor,
    mean: &Tensor,
    variance: &Tensor,
    p: &BatchNormParams,
) -> Result<BatchNormOutput> {
    todo!(
        "{:?} {:?} {:?} {:?} {:?} {p:?}",
        x.shape(),
        scale.shape(),
        offset.shape(),
        mean.shape(),
        variance.shape()
    )
}

/// Gradient of `relu6(fused_batch_norm(x))`: `y` is the forward's output
/// (after ReLU6), `dy` the gradient w.r.t. it. Equal to `Relu6Grad` followed
/// by `FusedBatchNormGradV3`, in one pass.
#[allow(clippy::too_many_arguments)]
pub fn fused_batch_norm_relu6_grad(
    dy: &Tensor,
    y: &Tensor,
    x: &Tensor,
    scale: &Tensor,
    reserve_space_1: &Tensor,
    reserve_space_2: &Tensor,
    epsilon: f32,
    is_training: bool,
) -> Result<BatchNormGrad> {
    todo!(
        "{:?} {:?} {:?} {:?} {:?} {:?} {epsilon} {is_training}",
        dy.shape(),
        y.shape(),
        x.shape(),
        scale.shape(),
        reserve_space_1.shape(),
        reserve_space_2.shape()
    )
}
