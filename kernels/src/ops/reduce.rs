//! Reductions over axes (negative axes count from the end, as TensorFlow).
//!
//! The input is walked once in row-major order; each element lands in the
//! output slot its kept coordinates name (output strides are 0 on reduced
//! axes), so any set of axes costs one pass.

use crate::{DType, Data, Error, Result, Tensor};

/// Axes as sorted, deduplicated indices in `[0, rank)`.
pub(crate) fn normalize_axes(op: &'static str, rank: usize, axes: &[i64]) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let r = rank as i64;
        if a < -r || a >= r {
            return Err(Error::invalid(
                op,
                format!("axis {a} is out of range for a tensor of rank {rank}"),
            ));
        }
        out.push(if a < 0 { a + r } else { a } as usize);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The geometry of one reduction: output shape (with and without kept
/// dims), output strides per input axis (0 where reduced), reduced count.
struct Plan {
    shape: Vec<usize>,
    kept_shape: Vec<usize>,
    out_strides: Vec<usize>,
    count: usize,
}

fn plan(shape: &[usize], axes: &[usize]) -> Plan {
    let rank = shape.len();
    let reduced: Vec<bool> = (0..rank).map(|i| axes.contains(&i)).collect();
    let kept_shape: Vec<usize> = (0..rank)
        .map(|i| if reduced[i] { 1 } else { shape[i] })
        .collect();
    let shape_out: Vec<usize> = (0..rank)
        .filter(|&i| !reduced[i])
        .map(|i| shape[i])
        .collect();
    let mut out_strides = vec![0; rank];
    let mut s = 1;
    for i in (0..rank).rev() {
        if !reduced[i] {
            out_strides[i] = s;
            s *= shape[i];
        }
    }
    let count = axes.iter().map(|&a| shape[a]).product();
    Plan {
        shape: shape_out,
        kept_shape,
        out_strides,
        count,
    }
}

/// Calls `f(out_index, value)` for every input element in row-major order.
fn walk<T: Copy>(v: &[T], shape: &[usize], out_strides: &[usize], mut f: impl FnMut(usize, T)) {
    if v.is_empty() {
        return;
    }
    let rank = shape.len();
    if rank == 0 {
        f(0, v[0]);
        return;
    }
    let inner = shape[rank - 1];
    let inner_stride = out_strides[rank - 1];
    let mut idx = vec![0usize; rank];
    let mut base = 0usize;
    for row in v.chunks_exact(inner) {
        for (k, &x) in row.iter().enumerate() {
            f(base + k * inner_stride, x);
        }
        // Advance the odometer over the outer axes.
        let mut d = rank - 1;
        while d > 0 {
            d -= 1;
            idx[d] += 1;
            base += out_strides[d];
            if idx[d] < shape[d] {
                break;
            }
            base -= out_strides[d] * shape[d];
            idx[d] = 0;
        }
    }
}

fn finish(p: &Plan, keep_dims: bool, data: Data) -> Result<Tensor> {
    let shape = if keep_dims {
        p.kept_shape.clone()
    } else {
        p.shape.clone()
    };
    Tensor::from_data(shape, data)
}

fn reduce_sum(
    op: &'static str,
    x: &Tensor,
    axes: &[i64],
    keep_dims: bool,
    mean: bool,
) -> Result<Tensor> {
    let axes = normalize_axes(op, x.rank(), axes)?;
    let p = plan(x.shape(), &axes);
    let n_out = crate::num_elements(&p.shape);
    let data = match x.data() {
        Data::F32(v) => {
            let mut acc = vec![0f64; n_out];
            walk(v, x.shape(), &p.out_strides, |o, x| acc[o] += x as f64);
            let div = if mean { p.count as f64 } else { 1.0 };
            Data::F32(
                acc.into_iter()
                    .map(|s| (s / div) as f32)
                    .collect::<Vec<_>>()
                    .into(),
            )
        }
        Data::F64(v) => {
            let mut acc = vec![0f64; n_out];
            walk(v, x.shape(), &p.out_strides, |o, x| acc[o] += x);
            let div = if mean { p.count as f64 } else { 1.0 };
            Data::F64(acc.into_iter().map(|s| s / div).collect::<Vec<_>>().into())
        }
        Data::I32(v) => {
            let mut acc = vec![0i32; n_out];
            walk(v, x.shape(), &p.out_strides, |o, x| {
                acc[o] = acc[o].wrapping_add(x)
            });
            if mean {
                let n = p.count.max(1) as i32;
                acc.iter_mut().for_each(|s| *s = s.wrapping_div(n));
            }
            Data::I32(acc.into())
        }
        Data::I64(v) => {
            let mut acc = vec![0i64; n_out];
            walk(v, x.shape(), &p.out_strides, |o, x| {
                acc[o] = acc[o].wrapping_add(x)
            });
            if mean {
                let n = p.count.max(1) as i64;
                acc.iter_mut().for_each(|s| *s = s.wrapping_div(n));
            }
            Data::I64(acc.into())
        }
        _ => {
            return Err(Error::DType {
                op,
                what: "input",
                expected: DType::F32,
                got: x.dtype(),
            })
        }
    };
    finish(&p, keep_dims, data)
}

/// `Sum` over `axes` (f32, f64, i32, i64).
pub fn sum(x: &Tensor, axes: &[i64], keep_dims: bool) -> Result<Tensor> {
    reduce_sum("Sum", x, axes, keep_dims, false)
}

/// `Mean` over `axes` (f32, f64; integers truncate as TensorFlow).
pub fn mean(x: &Tensor, axes: &[i64], keep_dims: bool) -> Result<Tensor> {
    reduce_sum("Mean", x, axes, keep_dims, true)
}

/// `Max` over `axes`.
pub fn max(x: &Tensor, axes: &[i64], keep_dims: bool) -> Result<Tensor> {
    let op = "Max";
    let axes = normalize_axes(op, x.rank(), axes)?;
    let p = plan(x.shape(), &axes);
    let n_out = crate::num_elements(&p.shape);
    macro_rules! max_of {
        ($v:expr, $variant:ident, $lowest:expr) => {{
            let mut acc = vec![$lowest; n_out];
            walk($v, x.shape(), &p.out_strides, |o, x| {
                // NaN wins, as TensorFlow's max propagates it.
                if x > acc[o] || x != x {
                    acc[o] = x
                }
            });
            Data::$variant(acc.into())
        }};
    }
    #[allow(clippy::eq_op)]
    let data = match x.data() {
        Data::F32(v) => max_of!(v, F32, f32::NEG_INFINITY),
        Data::F64(v) => max_of!(v, F64, f64::NEG_INFINITY),
        Data::I32(v) => max_of!(v, I32, i32::MIN),
        Data::I64(v) => max_of!(v, I64, i64::MIN),
        Data::U8(v) => max_of!(v, U8, 0u8),
        Data::Bool(_) => {
            return Err(Error::DType {
                op,
                what: "input",
                expected: DType::F32,
                got: DType::Bool,
            })
        }
    };
    finish(&p, keep_dims, data)
}

/// `ArgMax` along one axis, int64 indices.
pub fn arg_max(x: &Tensor, axis: i64) -> Result<Tensor> {
    let op = "ArgMax";
    let axis = normalize_axes(op, x.rank(), &[axis])?[0];
    let shape = x.shape();
    let len = shape[axis];
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let mut out_shape = shape.to_vec();
    out_shape.remove(axis);
    if len == 0 && outer * inner > 0 {
        return Err(Error::invalid(
            op,
            format!("reduction axis {axis} is empty in shape {shape:?}"),
        ));
    }
    fn run<T: PartialOrd + Copy>(v: &[T], outer: usize, len: usize, inner: usize) -> Vec<i64> {
        let mut out = vec![0i64; outer * inner];
        for o in 0..outer {
            for i in 0..inner {
                let at = |k: usize| v[(o * len + k) * inner + i];
                let mut best = 0;
                for k in 1..len {
                    // The first maximum wins ties.
                    if at(k) > at(best) {
                        best = k;
                    }
                }
                out[o * inner + i] = best as i64;
            }
        }
        out
    }
    let idx = match x.data() {
        Data::F32(v) => run(v, outer, len, inner),
        Data::F64(v) => run(v, outer, len, inner),
        Data::I32(v) => run(v, outer, len, inner),
        Data::I64(v) => run(v, outer, len, inner),
        Data::U8(v) => run(v, outer, len, inner),
        Data::Bool(_) => {
            return Err(Error::DType {
                op,
                what: "input",
                expected: DType::F32,
                got: DType::Bool,
            })
        }
    };
    Tensor::new(out_shape, idx)
}
