//! Element-wise ops with NumPy/TensorFlow broadcasting.
//! Binary ops take f32, f64, i32 and i64 (same dtype on both sides).

use crate::{Result, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    /// `RealDiv` (for integers: truncating division, an error on zero).
    Div,
    Maximum,
    Minimum,
    /// `SquaredDifference`: (a − b)².
    SquaredDifference,
}

/// The broadcast shape of two shapes, or an error naming both.
pub fn broadcast_shape(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    todo!("{op} {a:?} {b:?}")
}

pub fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    todo!("{op:?} {:?} {:?}", a.shape(), b.shape())
}

/// `AddN`: the sum of tensors of one shape and dtype.
pub fn add_n(inputs: &[&Tensor]) -> Result<Tensor> {
    todo!("{}", inputs.len())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryOp {
    Neg,
    Square,
    Sqrt,
    Rsqrt,
    Exp,
    Log,
    Abs,
    Reciprocal,
}

pub fn unary(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    todo!("{op:?} {:?}", x.shape())
}

/// Sums `grad` (of the broadcast shape) down to `shape`: the gradient of a
/// broadcasting binary op w.r.t. an input of that shape.
pub fn reduce_to_shape(grad: &Tensor, shape: &[usize]) -> Result<Tensor> {
    todo!("{:?} {shape:?}", grad.shape())
}
