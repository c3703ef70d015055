//! Element-wise ops with NumPy/TensorFlow broadcasting.
//! Binary ops take f32, f64, i32 and i64 (same dtype on both sides).
//!
//! Same-shape operands, a scalar on either side and a trailing block (a row
//! vector such as a bias over the last axis) take fast contiguous paths;
//! anything else walks the output with per-operand strides (0 on
//! broadcast axes). Large outputs are split over the rayon pool.

use rayon::prelude::*;

use crate::{num_elements, DType, Data, Element, Error, Result, Tensor};

/// Elements per parallel task.
const PAR_CHUNK: usize = 32 * 1024;

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

impl BinaryOp {
    fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "Add",
            BinaryOp::Sub => "Sub",
            BinaryOp::Mul => "Mul",
            BinaryOp::Div => "RealDiv",
            BinaryOp::Maximum => "Maximum",
            BinaryOp::Minimum => "Minimum",
            BinaryOp::SquaredDifference => "SquaredDifference",
        }
    }
}

/// The broadcast shape of two shapes, or an error naming both.
pub fn broadcast_shape(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank {
            a[i + a.len() - rank]
        } else {
            1
        };
        let db = if i + b.len() >= rank {
            b[i + b.len() - rank]
        } else {
            1
        };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(Error::shape(
                op,
                format!("shapes {a:?} and {b:?} are not broadcastable (dimension {i} of the result: {da} vs {db})"),
            ));
        };
    }
    Ok(out)
}

/// Strides of `shape` (right-aligned in `out_rank` axes) with 0 on the axes
/// where it broadcasts.
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let rank = out.len();
    let mut strides = vec![0; rank];
    let mut s = 1;
    for i in (0..shape.len()).rev() {
        let o = i + rank - shape.len();
        strides[o] = if shape[i] == 1 && out[o] != 1 { 0 } else { s };
        s *= shape[i];
    }
    strides
}

trait Arith: Element {
    fn apply(op: BinaryOp, a: Self, b: Self) -> Self;
    fn is_zero(self) -> bool;
}

macro_rules! float_arith {
    ($t:ty) => {
        impl Arith for $t {
            #[inline(always)]
            fn apply(op: BinaryOp, a: $t, b: $t) -> $t {
                match op {
                    BinaryOp::Add => a + b,
                    BinaryOp::Sub => a - b,
                    BinaryOp::Mul => a * b,
                    BinaryOp::Div => a / b,
                    // NaN propagates, as TensorFlow's Maximum/Minimum.
                    BinaryOp::Maximum => {
                        if a.is_nan() || a > b {
                            a
                        } else {
                            b
                        }
                    }
                    BinaryOp::Minimum => {
                        if a.is_nan() || a < b {
                            a
                        } else {
                            b
                        }
                    }
                    BinaryOp::SquaredDifference => (a - b) * (a - b),
                }
            }
            fn is_zero(self) -> bool {
                false // float division by zero is IEEE, not an error
            }
        }
    };
}

macro_rules! int_arith {
    ($t:ty) => {
        impl Arith for $t {
            #[inline(always)]
            fn apply(op: BinaryOp, a: $t, b: $t) -> $t {
                match op {
                    BinaryOp::Add => a.wrapping_add(b),
                    BinaryOp::Sub => a.wrapping_sub(b),
                    BinaryOp::Mul => a.wrapping_mul(b),
                    // Zero divisors were rejected before the loop.
                    BinaryOp::Div => a.wrapping_div(b),
                    BinaryOp::Maximum => a.max(b),
                    BinaryOp::Minimum => a.min(b),
                    BinaryOp::SquaredDifference => {
                        let d = a.wrapping_sub(b);
                        d.wrapping_mul(d)
                    }
                }
            }
            fn is_zero(self) -> bool {
                self == 0
            }
        }
    };
}

float_arith!(f32);
float_arith!(f64);
int_arith!(i32);
int_arith!(i64);

/// Fills `out` (of `shape`) with `f(index)` in parallel chunks.
fn par_fill<T: Element>(out: &mut [T], f: impl Fn(usize, &mut [T]) + Sync) {
    if out.len() <= PAR_CHUNK {
        f(0, out);
    } else {
        out.par_chunks_mut(PAR_CHUNK)
            .enumerate()
            .for_each(|(i, chunk)| f(i * PAR_CHUNK, chunk));
    }
}

fn binary_typed<T: Arith>(
    op: BinaryOp,
    a: &[T],
    ash: &[usize],
    b: &[T],
    bsh: &[usize],
    out_shape: &[usize],
) -> Vec<T> {
    let n = num_elements(out_shape);
    let mut out = vec![T::default(); n];
    let f = |x: T, y: T| T::apply(op, x, y);
    if ash == bsh {
        par_fill(&mut out, |start, o| {
            for (k, o) in o.iter_mut().enumerate() {
                *o = f(a[start + k], b[start + k]);
            }
        });
    } else if b.len() == 1 && a.len() == n {
        let y = b[0];
        par_fill(&mut out, |start, o| {
            for (k, o) in o.iter_mut().enumerate() {
                *o = f(a[start + k], y);
            }
        });
    } else if a.len() == 1 && b.len() == n {
        let x = a[0];
        par_fill(&mut out, |start, o| {
            for (k, o) in o.iter_mut().enumerate() {
                *o = f(x, b[start + k]);
            }
        });
    } else if a.len() == n && !b.is_empty() && is_trailing_block(bsh, out_shape) {
        // b repeats every b.len() elements (e.g. a bias over the last axis).
        let m = b.len();
        par_fill(&mut out, |start, o| {
            for (k, o) in o.iter_mut().enumerate() {
                let i = start + k;
                *o = f(a[i], b[i % m]);
            }
        });
    } else if b.len() == n && !a.is_empty() && is_trailing_block(ash, out_shape) {
        let m = a.len();
        par_fill(&mut out, |start, o| {
            for (k, o) in o.iter_mut().enumerate() {
                let i = start + k;
                *o = f(a[i % m], b[i]);
            }
        });
    } else if n > 0 {
        let sa = broadcast_strides(ash, out_shape);
        let sb = broadcast_strides(bsh, out_shape);
        let rank = out_shape.len();
        let inner = out_shape[rank - 1];
        let (ia, ib) = (sa[rank - 1], sb[rank - 1]);
        // One output row (last axis) per step; parallel over rows.
        out.par_chunks_mut(inner).enumerate().for_each(|(row, o)| {
            let (mut oa, mut ob) = (0, 0);
            let mut r = row;
            for d in (0..rank - 1).rev() {
                let i = r % out_shape[d];
                r /= out_shape[d];
                oa += i * sa[d];
                ob += i * sb[d];
            }
            for (k, o) in o.iter_mut().enumerate() {
                *o = f(a[oa + k * ia], b[ob + k * ib]);
            }
        });
    }
    out
}

/// Whether `shape` equals the trailing axes of `out` (ignoring leading 1s),
/// so that it repeats as one contiguous block.
fn is_trailing_block(shape: &[usize], out: &[usize]) -> bool {
    let s: Vec<usize> = shape.iter().copied().skip_while(|&d| d == 1).collect();
    s.len() <= out.len() && out[out.len() - s.len()..] == s[..]
}

pub fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let name = op.name();
    if a.dtype() != b.dtype() {
        return Err(Error::DType {
            op: name,
            what: "second operand (must match the first)",
            expected: a.dtype(),
            got: b.dtype(),
        });
    }
    let shape = broadcast_shape(name, a.shape(), b.shape())?;
    let (ash, bsh) = (a.shape(), b.shape());
    let data = match (a.data(), b.data()) {
        (Data::F32(x), Data::F32(y)) => Data::F32(binary_typed(op, x, ash, y, bsh, &shape).into()),
        (Data::F64(x), Data::F64(y)) => Data::F64(binary_typed(op, x, ash, y, bsh, &shape).into()),
        (Data::I32(x), Data::I32(y)) => {
            check_divisor(op, y.as_slice())?;
            Data::I32(binary_typed(op, x, ash, y, bsh, &shape).into())
        }
        (Data::I64(x), Data::I64(y)) => {
            check_divisor(op, y.as_slice())?;
            Data::I64(binary_typed(op, x, ash, y, bsh, &shape).into())
        }
        _ => {
            return Err(Error::DType {
                op: name,
                what: "operands",
                expected: DType::F32,
                got: a.dtype(),
            })
        }
    };
    Tensor::from_data(shape, data)
}

fn check_divisor<T: Arith>(op: BinaryOp, b: &[T]) -> Result<()> {
    if op == BinaryOp::Div {
        if let Some(i) = b.iter().position(|v| v.is_zero()) {
            return Err(Error::invalid(
                "RealDiv",
                format!("integer division by zero (divisor element {i})"),
            ));
        }
    }
    Ok(())
}

/// `AddN`: the sum of tensors of one shape and dtype.
pub fn add_n(inputs: &[&Tensor]) -> Result<Tensor> {
    let op = "AddN";
    let first = inputs
        .first()
        .ok_or_else(|| Error::invalid(op, "needs at least one input"))?;
    for (i, t) in inputs.iter().enumerate().skip(1) {
        if t.shape() != first.shape() {
            return Err(Error::shape(
                op,
                format!(
                    "input {i} has shape {:?} but input 0 has {:?}",
                    t.shape(),
                    first.shape()
                ),
            ));
        }
        if t.dtype() != first.dtype() {
            return Err(Error::DType {
                op,
                what: "inputs (must all match input 0)",
                expected: first.dtype(),
                got: t.dtype(),
            });
        }
    }
    let mut acc = (*first).clone();
    for t in &inputs[1..] {
        acc = binary(BinaryOp::Add, &acc, t).map_err(|e| match e {
            Error::DType { expected, got, .. } => Error::DType {
                op,
                what: "inputs",
                expected,
                got,
            },
            other => other,
        })?;
    }
    Ok(acc)
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

impl UnaryOp {
    fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "Neg",
            UnaryOp::Square => "Square",
            UnaryOp::Sqrt => "Sqrt",
            UnaryOp::Rsqrt => "Rsqrt",
            UnaryOp::Exp => "Exp",
            UnaryOp::Log => "Log",
            UnaryOp::Abs => "Abs",
            UnaryOp::Reciprocal => "Reciprocal",
        }
    }
}

fn map<T: Element, U: Element>(x: &[T], f: impl Fn(T) -> U + Sync) -> Vec<U> {
    let mut out = vec![U::default(); x.len()];
    par_fill(&mut out, |start, o| {
        for (k, o) in o.iter_mut().enumerate() {
            *o = f(x[start + k]);
        }
    });
    out
}

macro_rules! float_unary {
    ($op:expr, $v:expr, $t:ty) => {{
        let one: $t = 1.0;
        match $op {
            UnaryOp::Neg => map($v, |x: $t| -x),
            UnaryOp::Square => map($v, |x: $t| x * x),
            UnaryOp::Sqrt => map($v, |x: $t| x.sqrt()),
            UnaryOp::Rsqrt => map($v, move |x: $t| one / x.sqrt()),
            UnaryOp::Exp => map($v, |x: $t| x.exp()),
            UnaryOp::Log => map($v, |x: $t| x.ln()),
            UnaryOp::Abs => map($v, |x: $t| x.abs()),
            UnaryOp::Reciprocal => map($v, move |x: $t| one / x),
        }
    }};
}

pub fn unary(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    let name = op.name();
    let int_ok = matches!(op, UnaryOp::Neg | UnaryOp::Square | UnaryOp::Abs);
    let data = match x.data() {
        Data::F32(v) => Data::F32(float_unary!(op, v, f32).into()),
        Data::F64(v) => Data::F64(float_unary!(op, v, f64).into()),
        Data::I32(v) if int_ok => Data::I32(
            match op {
                UnaryOp::Neg => map(v, |x: i32| x.wrapping_neg()),
                UnaryOp::Square => map(v, |x: i32| x.wrapping_mul(x)),
                _ => map(v, |x: i32| x.wrapping_abs()),
            }
            .into(),
        ),
        Data::I64(v) if int_ok => Data::I64(
            match op {
                UnaryOp::Neg => map(v, |x: i64| x.wrapping_neg()),
                UnaryOp::Square => map(v, |x: i64| x.wrapping_mul(x)),
                _ => map(v, |x: i64| x.wrapping_abs()),
            }
            .into(),
        ),
        _ => {
            return Err(Error::DType {
                op: name,
                what: "input",
                expected: DType::F32,
                got: x.dtype(),
            })
        }
    };
    Tensor::from_data(x.shape().to_vec(), data)
}

/// Sums `grad` (of the broadcast shape) down to `shape`: the gradient of a
/// broadcasting binary op w.r.t. an input of that shape.
pub fn reduce_to_shape(grad: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let op = "ReduceToShape";
    let g = grad.shape();
    if shape == g {
        return Ok(grad.clone());
    }
    if broadcast_shape(op, shape, g)? != g {
        return Err(Error::shape(
            op,
            format!("shape {shape:?} does not broadcast to the gradient's shape {g:?}"),
        ));
    }
    let lead = g.len() - shape.len();
    let axes: Vec<i64> = (0..g.len())
        .filter(|&i| i < lead || (shape[i - lead] == 1 && g[i] != 1))
        .map(|i| i as i64)
        .collect();
    let summed = super::reduce::sum(grad, &axes, false)?;
    summed.reshape(shape.to_vec())
}
