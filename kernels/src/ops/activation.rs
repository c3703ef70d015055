//! Relu, Relu6 and their gradients (TensorFlow: the gradient passes where
//! `0 < features` for Relu and `0 < features < 6` for Relu6).
//!
//! The loops are plain element-wise maps that LLVM vectorises; large tensors
//! are split over the rayon pool.

use rayon::prelude::*;

use crate::{Element, Error, Result, Tensor};

/// Elements per parallel task of an element-wise map.
const PAR_CHUNK: usize = 32 * 1024;

trait Float: Element + PartialOrd {
    const ZERO: Self;
    const SIX: Self;
}

impl Float for f32 {
    const ZERO: f32 = 0.0;
    const SIX: f32 = 6.0;
}

impl Float for f64 {
    const ZERO: f64 = 0.0;
    const SIX: f64 = 6.0;
}

/// Maps `x` element-wise into a new buffer, in parallel chunks. The buffer
/// is written without being zeroed first (a memset or fresh zero pages would
/// cost as much as the map itself).
fn map1<T: Element>(x: &[T], f: impl Fn(T) -> T + Sync) -> Vec<T> {
    let n = x.len();
    let mut out: Vec<T> = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(PAR_CHUNK)
        .zip(x.par_chunks(PAR_CHUNK))
        .for_each(|(o, i)| {
            o.iter_mut().zip(i).for_each(|(o, &i)| {
                o.write(f(i));
            })
        });
    // SAFETY: the chunks cover `[0, n)` and every element was written.
    unsafe { out.set_len(n) };
    out
}

fn map2<T: Element>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    let n = a.len().min(b.len());
    let mut out: Vec<T> = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(PAR_CHUNK)
        .zip(a.par_chunks(PAR_CHUNK).zip(b.par_chunks(PAR_CHUNK)))
        .for_each(|(o, (a, b))| {
            o.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (&a, &b))| {
                o.write(f(a, b));
            })
        });
    // SAFETY: the chunks cover `[0, n)` and every element was written.
    unsafe { out.set_len(n) };
    out
}

fn unary_float(
    op: &'static str,
    x: &Tensor,
    f32_fn: impl Fn(f32) -> f32 + Sync,
    f64_fn: impl Fn(f64) -> f64 + Sync,
) -> Result<Tensor> {
    match x.dtype() {
        crate::DType::F32 => Tensor::new(x.shape().to_vec(), map1(x.f32s(op)?, f32_fn)),
        crate::DType::F64 => Tensor::new(x.shape().to_vec(), map1(x.values::<f64>(op)?, f64_fn)),
        _ => Err(Error::DType {
            op,
            what: "features",
            expected: crate::DType::F32,
            got: x.dtype(),
        }),
    }
}

fn relu_of<T: Float>(v: T) -> T {
    if v > T::ZERO {
        v
    } else {
        T::ZERO
    }
}

fn relu6_of<T: Float>(v: T) -> T {
    let v = relu_of(v);
    if v < T::SIX {
        v
    } else {
        T::SIX
    }
}

pub fn relu(x: &Tensor) -> Result<Tensor> {
    unary_float("Relu", x, relu_of::<f32>, relu_of::<f64>)
}

pub fn relu6(x: &Tensor) -> Result<Tensor> {
    unary_float("Relu6", x, relu6_of::<f32>, relu6_of::<f64>)
}

fn grad_float(
    op: &'static str,
    g: &Tensor,
    x: &Tensor,
    f32_fn: impl Fn(f32, f32) -> f32 + Sync,
    f64_fn: impl Fn(f64, f64) -> f64 + Sync,
) -> Result<Tensor> {
    if g.shape() != x.shape() {
        return Err(Error::shape(
            op,
            format!(
                "gradients have shape {:?} but features have shape {:?}",
                g.shape(),
                x.shape()
            ),
        ));
    }
    if g.dtype() != x.dtype() {
        return Err(Error::DType {
            op,
            what: "features (must match gradients)",
            expected: g.dtype(),
            got: x.dtype(),
        });
    }
    match g.dtype() {
        crate::DType::F32 => {
            Tensor::new(g.shape().to_vec(), map2(g.f32s(op)?, x.f32s(op)?, f32_fn))
        }
        crate::DType::F64 => Tensor::new(
            g.shape().to_vec(),
            map2(g.values::<f64>(op)?, x.values::<f64>(op)?, f64_fn),
        ),
        other => Err(Error::DType {
            op,
            what: "gradients",
            expected: crate::DType::F32,
            got: other,
        }),
    }
}

/// `g` where `0 < x`, else 0.
fn relu_pass<T: Float>(g: T, x: T) -> T {
    if x > T::ZERO {
        g
    } else {
        T::ZERO
    }
}

/// `g` where `0 < x < 6`, else 0; `&` rather than `&&` keeps the loop
/// branch-free so it vectorises.
fn relu6_pass<T: Float>(g: T, x: T) -> T {
    if (x > T::ZERO) & (x < T::SIX) {
        g
    } else {
        T::ZERO
    }
}

/// `ReluGrad(gradients, features)`.
pub fn relu_grad(gradients: &Tensor, features: &Tensor) -> Result<Tensor> {
    grad_float(
        "ReluGrad",
        gradients,
        features,
        relu_pass::<f32>,
        relu_pass::<f64>,
    )
}

/// `Relu6Grad(gradients, features)`.
pub fn relu6_grad(gradients: &Tensor, features: &Tensor) -> Result<Tensor> {
    grad_float(
        "Relu6Grad",
        gradients,
        features,
        relu6_pass::<f32>,
        relu6_pass::<f64>,
    )
}
