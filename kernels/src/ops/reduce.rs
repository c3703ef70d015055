//! Reductions over axes (negative axes count from the end, as TensorFlow).

use crate::{Result, Tensor};

/// `Sum` over `axes` (f32, f64, i32, i64).
pub fn sum(x: &Tensor, axes: &[i64], keep_dims: bool) -> Result<Tensor> {
    todo!("{:?} {axes:?} {keep_dims}", x.shape())
}

/// `Mean` over `axes` (f32, f64; integers truncate as TensorFlow).
pub fn mean(x: &Tensor, axes: &[i64], keep_dims: bool) -> Result<Tensor> {
    todo!("{:?} {axes:?} {keep_dims}", x.shape())
}

/// `Max` over `axes`.
pub fn max(x: &Tensor, axes: &[i64], keep_dims: bool) -> Result<Tensor> {
    todo!("{:?} {axes:?} {keep_dims}", x.shape())
}

/// `ArgMax` along one axis, int64 indices.
pub fn arg_max(x: &Tensor, axis: i64) -> Result<Tensor> {
    todo!("{:?} {axis}", x.shape())
}
