//! Ops that move or make data without arithmetic. All take any dtype.

use crate::{DType, Result, Tensor};

/// `Pad` / `PadV2`: `paddings[i] = (before, after)` for each axis; the value
/// is 0 unless given (a scalar of the input's dtype).
pub fn pad(x: &Tensor, paddings: &[(usize, usize)], value: Option<&Tensor>) -> Result<Tensor> {
    todo!(
        "{:?} {paddings:?} {:?}",
        x.shape(),
        value.map(|v| v.shape().to_vec())
    )
}

/// The attributes of `StridedSlice`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StridedSliceMasks {
    pub begin_mask: i64,
    pub end_mask: i64,
    pub ellipsis_mask: i64,
    pub new_axis_mask: i64,
    pub shrink_axis_mask: i64,
}

/// `StridedSlice` with TensorFlow's full semantics (negative indices and
/// strides, all five masks).
pub fn strided_slice(
    x: &Tensor,
    begin: &[i64],
    end: &[i64],
    strides: &[i64],
    masks: &StridedSliceMasks,
) -> Result<Tensor> {
    todo!("{:?} {begin:?} {end:?} {strides:?} {masks:?}", x.shape())
}

/// `Pack`: stacks tensors of one shape along a new `axis`.
pub fn pack(inputs: &[&Tensor], axis: i64) -> Result<Tensor> {
    todo!("{} {axis}", inputs.len())
}

/// `ConcatV2`: joins tensors along an existing `axis`.
pub fn concat(inputs: &[&Tensor], axis: i64) -> Result<Tensor> {
    todo!("{} {axis}", inputs.len())
}

/// `Fill(dims, value)`.
pub fn fill(dims: &[usize], value: &Tensor) -> Result<Tensor> {
    todo!("{dims:?} {:?}", value.shape())
}

/// `Cast` to `dtype` (float → int truncates toward zero, as TensorFlow).
pub fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    todo!("{:?} {dtype}", x.shape())
}

/// `Transpose` by a permutation of the axes.
pub fn transpose(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    todo!("{:?} {perm:?}", x.shape())
}

/// `Slice(begin, size)`; a size of -1 means "to the end".
pub fn slice(x: &Tensor, begin: &[i64], size: &[i64]) -> Result<Tensor> {
    todo!("{:?} {begin:?} {size:?}", x.shape())
}
