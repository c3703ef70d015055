//! MatMul, BiasAdd and BiasAddGrad; the GEMM under them also serves the
//! pointwise convolutions.

use crate::{Result, Tensor};

/// `MatMul` of rank-2 f32 tensors with TensorFlow's transpose flags.
pub fn matmul(a: &Tensor, b: &Tensor, transpose_a: bool, transpose_b: bool) -> Result<Tensor> {
    todo!(
        "{:?} {:?} {transpose_a} {transpose_b}",
        a.shape(),
        b.shape()
    )
}

/// Row-major single-precision GEMM: `c[m×n] = alpha·op(a)·op(b) + beta·c`,
/// with `op` a transpose when the flag is set (a is m×k after op, b k×n).
/// Uses both cores and the best SIMD the CPU has.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    transpose_a: bool,
    b: &[f32],
    transpose_b: bool,
    c: &mut [f32],
    alpha: f32,
    beta: f32,
) {
    todo!(
        "{m} {n} {k} {} {transpose_a} {} {transpose_b} {} {alpha} {beta}",
        a.len(),
        b.len(),
        c.len()
    )
}

/// `BiasAdd`: adds a `[c]` bias along the last axis.
pub fn bias_add(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    todo!("{:?} {:?}", x.shape(), bias.shape())
}

/// `BiasAddGrad`: sums the gradient over every axis but the last.
pub fn bias_add_grad(dy: &Tensor) -> Result<Tensor> {
    todo!("{:?}", dy.shape())
}
