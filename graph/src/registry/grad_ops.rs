//! Ops that gradient graphs use besides the forward ops' own backward
//! kernels: BroadcastGradientArgs (reduction axes of a broadcasting binary
//! op's gradients), BroadcastTo (Sum/Mean gradients), Prod (element counts
//! of dynamic shapes) and ConcatOffset (ConcatV2 gradients). Names, inputs
//! and outputs are TensorFlow's.

use psflow_kernels::{DType, Data, Element, Tensor};

use super::{expect_inputs, variadic_n, FnKernel, OpContext, OpKernel, Registry, TensorInfo};
use crate::ir::Node;
use crate::shape::Shape;
use crate::Result;

type Built = Result<Box<dyn OpKernel>>;

pub(super) fn register(r: &mut Registry) {
    r.register("BroadcastGradientArgs", broadcast_gradient_args);
    r.register("BroadcastTo", broadcast_to);
    r.register("Prod", prod);
    r.register("ConcatOffset", concat_offset);
}

/// An int tensor of `dtype` (int32 or int64) from i64 values.
fn int_tensor(values: Vec<i64>, dtype: DType) -> Tensor {
    let n = values.len();
    match dtype {
        DType::I64 => Tensor::new(vec![n], values),
        _ => Tensor::new(vec![n], values.into_iter().map(|v| v as i32).collect()),
    }
    .expect("length matches")
}

/// The reduction axes of the gradients of `x op y` (TF's BCast): an axis
/// of the broadcast shape is reduced for `x` when `x` lacks it or has size
/// 1 there while the result does not.
pub fn broadcast_reduction_axes(
    x: &[i64],
    y: &[i64],
) -> std::result::Result<(Vec<i64>, Vec<i64>), String> {
    let rank = x.len().max(y.len());
    let (mut rx, mut ry) = (vec![], vec![]);
    for i in 0..rank {
        let dx = if i + x.len() >= rank {
            x[i + x.len() - rank]
        } else {
            1
        };
        let dy = if i + y.len() >= rank {
            y[i + y.len() - rank]
        } else {
            1
        };
        if dx != dy && dx != 1 && dy != 1 {
            return Err(format!("shapes {x:?} and {y:?} cannot broadcast"));
        }
        let out = dx.max(dy);
        if (dx == 1 && out != 1) || i + x.len() < rank {
            rx.push(i as i64);
        }
        if (dy == 1 && out != 1) || i + y.len() < rank {
            ry.push(i as i64);
        }
    }
    Ok((rx, ry))
}

fn int_dtype(node: &Node) -> Result<DType> {
    let t = node.attr_dtype_or("T", DType::I32)?;
    if !matches!(t, DType::I32 | DType::I64) {
        return Err(node.attr_error("T", format!("must be int32 or int64, got {t}")));
    }
    Ok(t)
}

fn broadcast_gradient_args(node: &Node) -> Built {
    expect_inputs(node, 2)?;
    let t = int_dtype(node)?;
    let run = move |x: &[i64], y: &[i64]| {
        broadcast_reduction_axes(x, y).map(|(rx, ry)| vec![int_tensor(rx, t), int_tensor(ry, t)])
    };
    FnKernel::boxed(
        2,
        move |ctx| {
            ctx.expect_rank(0, 1, "s0")?;
            ctx.expect_rank(1, 1, "s1")?;
            if let (Some(x), Some(y)) = (ctx.ints(0), ctx.ints(1)) {
                let out = run(&x, &y).map_err(|e| ctx.err(e))?;
                return Ok(out.into_iter().map(TensorInfo::of_value).collect());
            }
            let v = TensorInfo::new(t, Shape::Known(vec![-1]));
            Ok(vec![v.clone(), v])
        },
        move |ctx| {
            let (x, y) = (ctx.ints(0)?, ctx.ints(1)?);
            run(&x, &y).map_err(|e| ctx.err(e))
        },
    )
}

/// Non-negative sizes from an int input.
fn dims_of(ctx: &OpContext, i: usize) -> Result<Vec<usize>> {
    let v = ctx.ints(i)?;
    v.iter()
        .map(|&d| usize::try_from(d).ok())
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| ctx.err(format!("input {i}: negative size in {v:?}")))
}

/// Copies `x` broadcast to `shape` (numpy rules, `x` of lower or equal
/// rank). The innermost axis is copied as a block when it is not
/// broadcast, so `[n, 1, 1, c] -> [n, h, w, c]` is a series of memcpys.
fn broadcast_copy<T: Element>(x: &[T], xs: &[usize], shape: &[usize]) -> Vec<T> {
    let rank = shape.len();
    // Input strides per output axis (0 where broadcast or absent).
    let mut strides = vec![0usize; rank];
    let mut s = 1;
    for i in (0..xs.len()).rev() {
        let o = i + rank - xs.len();
        strides[o] = if xs[i] == 1 { 0 } else { s };
        s *= xs[i];
    }
    let total: usize = shape.iter().product();
    let mut out = Vec::with_capacity(total);
    if total == 0 {
        return out;
    }
    let inner = if rank == 0 { 1 } else { shape[rank - 1] };
    let inner_contig = rank > 0 && strides[rank - 1] == 1;
    let outer = total / inner;
    let mut idx = vec![0usize; rank.saturating_sub(1)];
    for _ in 0..outer {
        let base: usize = idx.iter().zip(&strides).map(|(&i, &s)| i * s).sum();
        if inner_contig {
            out.extend_from_slice(&x[base..base + inner]);
        } else {
            out.extend(std::iter::repeat_n(x[base], inner));
        }
        // Next outer index (row-major).
        for a in (0..idx.len()).rev() {
            idx[a] += 1;
            if idx[a] < shape[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    out
}

fn broadcast_to(node: &Node) -> Built {
    expect_inputs(node, 2)?;
    FnKernel::boxed(
        1,
        |ctx| {
            ctx.expect_rank(1, 1, "shape")?;
            let shape = match ctx.ints(1) {
                Some(d) => Shape::Known(d),
                None => match ctx.shape(1).dim(0) {
                    -1 => Shape::Unknown,
                    r => Shape::of_rank(r as usize),
                },
            };
            Ok(vec![TensorInfo::new(ctx.dtype(0), shape)])
        },
        |ctx| {
            let shape = dims_of(ctx, 1)?;
            let x = ctx.input(0);
            let xs = x.shape();
            let fits = xs.len() <= shape.len()
                && xs
                    .iter()
                    .zip(&shape[shape.len() - xs.len()..])
                    .all(|(&a, &b)| a == b || a == 1);
            if !fits {
                return Err(ctx.err(format!(
                    "input of shape {xs:?} does not broadcast to {shape:?}"
                )));
            }
            if xs == shape.as_slice() {
                return Ok(vec![x.clone()]);
            }
            let data = match x.data() {
                Data::F32(v) => Data::F32(broadcast_copy(v, xs, &shape).into()),
                Data::F64(v) => Data::F64(broadcast_copy(v, xs, &shape).into()),
                Data::I32(v) => Data::I32(broadcast_copy(v, xs, &shape).into()),
                Data::I64(v) => Data::I64(broadcast_copy(v, xs, &shape).into()),
                Data::U8(v) => Data::U8(broadcast_copy(v, xs, &shape).into()),
                Data::Bool(v) => Data::Bool(broadcast_copy(v, xs, &shape).into()),
            };
            Ok(vec![ctx.k(Tensor::from_data(shape, data))?])
        },
    )
}

/// `Prod` over axes: the product of (small) shape vectors in gradients.
fn prod(node: &Node) -> Built {
    expect_inputs(node, 2)?;
    let keep = node.attr_bool_or("keep_dims", false)?;
    FnKernel::boxed(
        1,
        move |ctx| {
            let shape = match (ctx.shape(0), ctx.ints(1)) {
                (Shape::Known(s), Some(a)) => {
                    let r = s.len() as i64;
                    let mut out = vec![];
                    for (i, &d) in s.iter().enumerate() {
                        let red = a.iter().any(|&x| x == i as i64 || x + r == i as i64);
                        match (red, keep) {
                            (true, true) => out.push(1),
                            (true, false) => {}
                            (false, _) => out.push(d),
                        }
                    }
                    Shape::Known(out)
                }
                _ => Shape::Unknown,
            };
            Ok(vec![TensorInfo::new(ctx.dtype(0), shape)])
        },
        move |ctx| {
            let axes = ctx.ints(1)?;
            let x = ctx.input(0);
            let rank = x.rank() as i64;
            let mut reduced = vec![false; x.rank()];
            for &a in &axes {
                let i = if a < 0 { a + rank } else { a };
                if !(0..rank).contains(&i) {
                    return Err(ctx.err(format!("axis {a} out of range for rank {rank}")));
                }
                reduced[i as usize] = true;
            }
            let s = x.shape();
            let out_shape: Vec<usize> = (0..s.len())
                .filter_map(|i| match (reduced[i], keep) {
                    (true, true) => Some(1),
                    (true, false) => None,
                    (false, _) => Some(s[i]),
                })
                .collect();
            let n_out: usize = (0..s.len())
                .filter(|&i| !reduced[i])
                .map(|i| s[i])
                .product();
            // Output index of each input element: row-major over kept axes.
            let mut strides = vec![0usize; s.len()];
            let mut st = 1;
            for i in (0..s.len()).rev() {
                if !reduced[i] {
                    strides[i] = st;
                    st *= s[i];
                }
            }
            let out_index = |mut flat: usize| {
                let mut o = 0;
                for i in (0..s.len()).rev() {
                    o += (flat % s[i]) * strides[i];
                    flat /= s[i];
                }
                o
            };
            fn fold<T: Element + std::ops::Mul<Output = T>>(
                v: &[T],
                one: T,
                n_out: usize,
                out_index: impl Fn(usize) -> usize,
            ) -> Vec<T> {
                let mut acc = vec![one; n_out];
                for (i, &x) in v.iter().enumerate() {
                    let o = out_index(i);
                    acc[o] = acc[o] * x;
                }
                acc
            }
            let data = match x.data() {
                Data::F32(v) => Data::F32(fold(v, 1f32, n_out, out_index).into()),
                Data::F64(v) => Data::F64(fold(v, 1f64, n_out, out_index).into()),
                Data::I32(v) => Data::I32(fold(v, 1i32, n_out, out_index).into()),
                Data::I64(v) => Data::I64(fold(v, 1i64, n_out, out_index).into()),
                _ => return Err(ctx.err(format!("Prod of {} is not supported", x.dtype()))),
            };
            Ok(vec![ctx.k(Tensor::from_data(out_shape, data))?])
        },
    )
}

/// `ConcatOffset(concat_dim, shape_0, …, shape_{n-1})`: where each input of
/// a ConcatV2 starts in the result.
fn concat_offset(node: &Node) -> Built {
    let n = variadic_n(node, 1)?;
    let run = move |axis: i64, shapes: &[Vec<i64>]| -> std::result::Result<Vec<Vec<i64>>, String> {
        let rank = shapes[0].len() as i64;
        let a = if axis < 0 { axis + rank } else { axis };
        if !(0..rank).contains(&a) {
            return Err(format!("concat_dim {axis} out of range for rank {rank}"));
        }
        let mut offset = 0;
        let mut out = vec![];
        for (i, s) in shapes.iter().enumerate() {
            if s.len() != shapes[0].len() {
                return Err(format!(
                    "shape {i} {s:?} has another rank than {:?}",
                    shapes[0]
                ));
            }
            let mut o = vec![0; s.len()];
            o[a as usize] = offset;
            offset += s[a as usize];
            out.push(o);
        }
        Ok(out)
    };
    FnKernel::boxed(
        n,
        move |ctx| {
            let shapes: Option<Vec<Vec<i64>>> = (1..=n).map(|i| ctx.ints(i)).collect();
            if let (Some(a), Some(shapes)) = (ctx.ints(0), shapes) {
                if let [a] = a[..] {
                    let out = run(a, &shapes).map_err(|e| ctx.err(e))?;
                    let t = ctx.dtype(1).unwrap_or(DType::I32);
                    return Ok(out
                        .into_iter()
                        .map(|o| TensorInfo::of_value(int_tensor(o, t)))
                        .collect());
                }
            }
            Ok((1..=n)
                .map(|i| TensorInfo::new(ctx.dtype(i), ctx.shape(i).clone()))
                .collect())
        },
        move |ctx| {
            let a = ctx.ints(0)?;
            let [a] = a[..] else {
                return Err(ctx.err(format!("concat_dim must be a scalar, got {a:?}")));
            };
            let shapes = (1..=n).map(|i| ctx.ints(i)).collect::<Result<Vec<_>>>()?;
            let out = run(a, &shapes).map_err(|e| ctx.err(e))?;
            let t = ctx.input(1).dtype();
            Ok(out.into_iter().map(|o| int_tensor(o, t)).collect())
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduction_axes_follow_tf_bcast() {
        let (rx, ry) = broadcast_reduction_axes(&[2, 3, 4], &[4]).unwrap();
        assert_eq!((rx, ry), (vec![], vec![0, 1]));
        let (rx, ry) = broadcast_reduction_axes(&[2, 1, 4], &[1, 3, 1]).unwrap();
        assert_eq!((rx, ry), (vec![1], vec![0, 2]));
        let (rx, ry) = broadcast_reduction_axes(&[], &[5]).unwrap();
        assert_eq!((rx, ry), (vec![0], vec![]));
        assert!(broadcast_reduction_axes(&[3], &[4]).is_err());
    }

    #[test]
    fn broadcast_copy_blocks_and_scalars() {
        let x: Vec<f32> = vec![1.0, 2.0, 3.0, 4.0];
        // [2, 1, 2] -> [2, 3, 2]
        let out = broadcast_copy(&x, &[2, 1, 2], &[2, 3, 2]);
        assert_eq!(
            out,
            vec![1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 4.0, 3.0, 4.0]
        );
        // [2, 1] -> [3, 2, 2]
        let out = broadcast_copy(&x[..2], &[2, 1], &[3, 2, 2]);
        assert_eq!(out, [1.0, 1.0, 2.0, 2.0].repeat(3));
        let out = broadcast_copy(&x[..1], &[], &[2, 2]);
        assert_eq!(out, vec![1.0; 4]);
    }
}
