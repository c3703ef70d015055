//! Ops that move or make data without arithmetic. All take any dtype.
//!
//! Slicing and transposing are one primitive, [`gather_view`]: copy a
//! strided view (offset, per-axis element strides, sizes) of a buffer.

mod cast;
mod strided_slice;

pub use cast::cast;
pub use strided_slice::{strided_slice, StridedSliceMasks};

use crate::{num_elements, Data, Error, Result, Tensor};

/// Applies a generic expression to the typed buffer of `$data`, wrapping the
/// resulting `Vec` back into `Data` of the same dtype.
macro_rules! map_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            Data::F32($v) => Data::F32(std::sync::Arc::new($body)),
            Data::F64($v) => Data::F64(std::sync::Arc::new($body)),
            Data::I32($v) => Data::I32(std::sync::Arc::new($body)),
            Data::I64($v) => Data::I64(std::sync::Arc::new($body)),
            Data::U8($v) => Data::U8(std::sync::Arc::new($body)),
            Data::Bool($v) => Data::Bool(std::sync::Arc::new($body)),
        }
    };
}
pub(crate) use map_data;

/// Row-major element strides of `shape`.
pub(crate) fn strides_of(shape: &[usize]) -> Vec<i64> {
    let mut s = vec![1i64; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1] as i64;
    }
    s
}

/// Copies the view of `v` starting at `offset` with element `strides` and
/// `sizes` per axis into a new row-major buffer. The caller guarantees every
/// index of the view is inside `v`.
pub(crate) fn gather_view<T: Copy>(
    v: &[T],
    offset: i64,
    strides: &[i64],
    sizes: &[usize],
) -> Vec<T> {
    let n = num_elements(sizes);
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return out;
    }
    let rank = sizes.len();
    if rank == 0 {
        out.push(v[offset as usize]);
        return out;
    }
    let (last_n, last_s) = (sizes[rank - 1], strides[rank - 1]);
    let mut idx = vec![0usize; rank];
    let mut base = offset;
    loop {
        if last_s == 1 {
            out.extend_from_slice(&v[base as usize..base as usize + last_n]);
        } else {
            out.extend((0..last_n).map(|k| v[(base + k as i64 * last_s) as usize]));
        }
        let mut d = rank - 1;
        loop {
            if d == 0 {
                return out;
            }
            d -= 1;
            idx[d] += 1;
            base += strides[d];
            if idx[d] < sizes[d] {
                break;
            }
            base -= strides[d] * sizes[d] as i64;
            idx[d] = 0;
        }
    }
}

fn scalar_of<'a>(op: &'static str, value: &'a Tensor, dtype: crate::DType) -> Result<&'a Tensor> {
    if value.rank() != 0 {
        return Err(Error::shape(
            op,
            format!("the value must be a scalar, got shape {:?}", value.shape()),
        ));
    }
    if value.dtype() != dtype {
        return Err(Error::DType {
            op,
            what: "value",
            expected: dtype,
            got: value.dtype(),
        });
    }
    Ok(value)
}

/// `Pad` / `PadV2`: `paddings[i] = (before, after)` for each axis; the value
/// is 0 unless given (a scalar of the input's dtype).
pub fn pad(x: &Tensor, paddings: &[(usize, usize)], value: Option<&Tensor>) -> Result<Tensor> {
    let op = "Pad";
    if paddings.len() != x.rank() {
        return Err(Error::shape(
            op,
            format!(
                "paddings has {} rows but the input has rank {} (shape {:?})",
                paddings.len(),
                x.rank(),
                x.shape()
            ),
        ));
    }
    let fill = match value {
        Some(v) => scalar_of("PadV2", v, x.dtype())?.clone(),
        None => Tensor::zeros(x.dtype(), vec![]),
    };
    let out_shape: Vec<usize> = x
        .shape()
        .iter()
        .zip(paddings)
        .map(|(&d, &(b, a))| d + b + a)
        .collect();
    let out_strides = strides_of(&out_shape);
    let offset: i64 = paddings
        .iter()
        .zip(&out_strides)
        .map(|(&(b, _), &s)| b as i64 * s)
        .sum();
    fn run<T: Copy>(
        v: &[T],
        fill: T,
        shape: &[usize],
        out_shape: &[usize],
        out_strides: &[i64],
        offset: i64,
    ) -> Vec<T> {
        let mut out = vec![fill; num_elements(out_shape)];
        if v.is_empty() {
            return out;
        }
        if shape.is_empty() {
            out[0] = v[0];
            return out;
        }
        let rank = shape.len();
        let inner = shape[rank - 1];
        let mut idx = vec![0usize; rank];
        let mut base = offset;
        for row in v.chunks_exact(inner) {
            out[base as usize..base as usize + inner].copy_from_slice(row);
            let mut d = rank - 1;
            while d > 0 {
                d -= 1;
                idx[d] += 1;
                base += out_strides[d];
                if idx[d] < shape[d] {
                    break;
                }
                base -= out_strides[d] * shape[d] as i64;
                idx[d] = 0;
            }
        }
        out
    }
    let s = x.shape();
    let data = match (x.data(), fill.data()) {
        (Data::F32(v), Data::F32(f)) => {
            Data::F32(run(v, f[0], s, &out_shape, &out_strides, offset).into())
        }
        (Data::F64(v), Data::F64(f)) => {
            Data::F64(run(v, f[0], s, &out_shape, &out_strides, offset).into())
        }
        (Data::I32(v), Data::I32(f)) => {
            Data::I32(run(v, f[0], s, &out_shape, &out_strides, offset).into())
        }
        (Data::I64(v), Data::I64(f)) => {
            Data::I64(run(v, f[0], s, &out_shape, &out_strides, offset).into())
        }
        (Data::U8(v), Data::U8(f)) => {
            Data::U8(run(v, f[0], s, &out_shape, &out_strides, offset).into())
        }
        (Data::Bool(v), Data::Bool(f)) => {
            Data::Bool(run(v, f[0], s, &out_shape, &out_strides, offset).into())
        }
        _ => unreachable!("the fill dtype was checked"),
    };
    Tensor::from_data(out_shape, data)
}

fn check_same(op: &'static str, inputs: &[&Tensor], skip_axis: Option<usize>) -> Result<()> {
    let first = inputs[0];
    for (i, t) in inputs.iter().enumerate().skip(1) {
        if t.dtype() != first.dtype() {
            return Err(Error::DType {
                op,
                what: "inputs (must all match input 0)",
                expected: first.dtype(),
                got: t.dtype(),
            });
        }
        let same = t.rank() == first.rank()
            && t.shape()
                .iter()
                .zip(first.shape())
                .enumerate()
                .all(|(d, (a, b))| Some(d) == skip_axis || a == b);
        if !same {
            return Err(Error::shape(
                op,
                format!(
                    "input {i} has shape {:?}, incompatible with input 0's {:?}",
                    t.shape(),
                    first.shape()
                ),
            ));
        }
    }
    Ok(())
}

fn axis_in(op: &'static str, axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    if axis < -r || axis >= r {
        return Err(Error::invalid(
            op,
            format!("axis {axis} is out of range [{}, {r})", -r),
        ));
    }
    Ok(if axis < 0 { axis + r } else { axis } as usize)
}

/// Concatenation of same-dtype buffers along `axis` of their `shapes`.
fn join(inputs: &[&Tensor], shapes: &[Vec<usize>], axis: usize) -> Result<Tensor> {
    let mut out_shape = shapes[0].clone();
    out_shape[axis] = shapes.iter().map(|s| s[axis]).sum();
    let outer: usize = out_shape[..axis].iter().product();
    let blocks: Vec<usize> = shapes.iter().map(|s| s[axis..].iter().product()).collect();
    macro_rules! run {
        ($variant:ident) => {{
            let parts: Vec<&[_]> = inputs
                .iter()
                .map(|t| match t.data() {
                    Data::$variant(v) => v.as_slice(),
                    _ => unreachable!("dtypes checked"),
                })
                .collect();
            let mut out = Vec::with_capacity(num_elements(&out_shape));
            for o in 0..outer {
                for (p, &b) in parts.iter().zip(&blocks) {
                    out.extend_from_slice(&p[o * b..(o + 1) * b]);
                }
            }
            Data::$variant(out.into())
        }};
    }
    let data = match inputs[0].data() {
        Data::F32(_) => run!(F32),
        Data::F64(_) => run!(F64),
        Data::I32(_) => run!(I32),
        Data::I64(_) => run!(I64),
        Data::U8(_) => run!(U8),
        Data::Bool(_) => run!(Bool),
    };
    Tensor::from_data(out_shape, data)
}

/// `Pack`: stacks tensors of one shape along a new `axis`.
pub fn pack(inputs: &[&Tensor], axis: i64) -> Result<Tensor> {
    let op = "Pack";
    let first = inputs
        .first()
        .ok_or_else(|| Error::invalid(op, "needs at least one input"))?;
    check_same(op, inputs, None)?;
    let axis = axis_in(op, axis, first.rank() + 1)?;
    let mut shape = first.shape().to_vec();
    shape.insert(axis, 1);
    let shapes = vec![shape; inputs.len()];
    join(inputs, &shapes, axis)
}

/// `ConcatV2`: joins tensors along an existing `axis`.
pub fn concat(inputs: &[&Tensor], axis: i64) -> Result<Tensor> {
    let op = "ConcatV2";
    let first = inputs
        .first()
        .ok_or_else(|| Error::invalid(op, "needs at least one input"))?;
    if first.rank() == 0 {
        return Err(Error::shape(op, "cannot concatenate scalars"));
    }
    let axis = axis_in(op, axis, first.rank())?;
    check_same(op, inputs, Some(axis))?;
    let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape().to_vec()).collect();
    join(inputs, &shapes, axis)
}

/// `Fill(dims, value)`.
pub fn fill(dims: &[usize], value: &Tensor) -> Result<Tensor> {
    let value = scalar_of("Fill", value, value.dtype())?;
    let n = num_elements(dims);
    let data = map_data!(value.data(), v => vec![v[0]; n]);
    Tensor::from_data(dims.to_vec(), data)
}

/// `Transpose` by a permutation of the axes.
pub fn transpose(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    let op = "Transpose";
    let rank = x.rank();
    let mut seen = vec![false; rank];
    if perm.len() != rank
        || perm
            .iter()
            .any(|&p| p >= rank || std::mem::replace(&mut seen[p], true))
    {
        return Err(Error::invalid(
            op,
            format!(
                "{perm:?} is not a permutation of the {rank} axes of shape {:?}",
                x.shape()
            ),
        ));
    }
    let in_strides = strides_of(x.shape());
    let sizes: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    let strides: Vec<i64> = perm.iter().map(|&p| in_strides[p]).collect();
    let data = map_data!(x.data(), v => gather_view(v, 0, &strides, &sizes));
    Tensor::from_data(sizes, data)
}

/// `Slice(begin, size)`; a size of -1 means "to the end".
pub fn slice(x: &Tensor, begin: &[i64], size: &[i64]) -> Result<Tensor> {
    let op = "Slice";
    let rank = x.rank();
    if begin.len() != rank || size.len() != rank {
        return Err(Error::shape(
            op,
            format!(
                "begin {begin:?} and size {size:?} must both have one entry per axis of shape {:?}",
                x.shape()
            ),
        ));
    }
    let mut sizes = Vec::with_capacity(rank);
    for d in 0..rank {
        let dim = x.shape()[d] as i64;
        let b = begin[d];
        let s = if size[d] == -1 { dim - b } else { size[d] };
        if b < 0 || s < 0 || b + s > dim {
            return Err(Error::invalid(
                op,
                format!(
                    "axis {d}: begin {b} with size {} does not fit dimension {dim} (shape {:?})",
                    size[d],
                    x.shape()
                ),
            ));
        }
        sizes.push(s as usize);
    }
    let strides = strides_of(x.shape());
    let offset: i64 = begin.iter().zip(&strides).map(|(b, s)| b * s).sum();
    let data = map_data!(x.data(), v => gather_view(v, offset, &strides, &sizes));
    Tensor::from_data(sizes, data)
}
