//! Ops that make, name or move data: Const, Placeholder, Identity, Shape,
//! Reshape, Squeeze, ExpandDims, Pad, StridedSlice, Slice, Transpose, Pack,
//! ConcatV2, Fill, ZerosLike, OnesLike, NoOp.

use psflow_kernels::ops::shape_ops;
use psflow_kernels::{DType, StridedSliceMasks, Tensor};

use super::{
    expect_inputs, same_as_input, variadic_n, FnKernel, InferCtx, OpKernel, Registry, TensorInfo,
    FOLD_LIMIT,
};
use crate::ir::Node;
use crate::shape::{merge_dim, Shape};
use crate::tensor_proto::tensor_from_proto;
use crate::{Error, Result};

type Built = Result<Box<dyn OpKernel>>;

pub(super) fn register(r: &mut Registry) {
    r.register("Const", konst);
    r.register("Placeholder", placeholder);
    r.register("PlaceholderWithDefault", placeholder_with_default);
    r.register("Identity", identity);
    r.register("StopGradient", identity);
    r.register("Snapshot", identity);
    r.register("IdentityN", identity_n);
    r.register("NoOp", no_op);
    r.register("Shape", shape);
    r.register("Reshape", reshape);
    r.register("Squeeze", squeeze);
    r.register("ExpandDims", expand_dims);
    r.register("Pad", pad);
    r.register("PadV2", pad);
    r.register("StridedSlice", strided_slice);
    r.register("Slice", slice);
    r.register("Transpose", transpose);
    r.register("Pack", pack);
    r.register("ConcatV2", concat);
    r.register("Fill", fill);
    r.register("ZerosLike", zeros_like);
    r.register("OnesLike", ones_like);
}

fn konst(node: &Node) -> Built {
    expect_inputs(node, 0)?;
    let v = node
        .attrs
        .get("value")
        .ok_or_else(|| node.attr_error("value", "missing"))?;
    let proto = v.as_tensor().ok_or_else(|| {
        node.attr_error("value", format!("expected a tensor, found {}", v.kind()))
    })?;
    let t = tensor_from_proto(&node.name, proto)?;
    if node.attrs.contains_key("dtype") {
        let d = node.attr_dtype("dtype")?;
        if d != t.dtype() {
            return Err(node.attr_error("dtype", format!("is {d} but the value is {}", t.dtype())));
        }
    }
    let t2 = t.clone();
    FnKernel::boxed(
        1,
        move |_| Ok(vec![TensorInfo::of_value(t.clone())]),
        move |_| Ok(vec![t2.clone()]),
    )
}

fn placeholder(node: &Node) -> Built {
    expect_inputs(node, 0)?;
    let dtype = node.attr_dtype("dtype")?;
    let shape = node.attr_shape_or_unknown("shape")?;
    FnKernel::boxed(
        1,
        move |_| Ok(vec![TensorInfo::new(dtype, shape.clone())]),
        move |ctx| {
            // The executor checks feeds before running; reaching this means
            // the placeholder was needed and not fed.
            Err(Error::MissingFeed {
                placeholder: ctx.node.name.clone(),
                dtype: dtype.to_string(),
                shape: "?".into(),
            })
        },
    )
}

fn placeholder_with_default(node: &Node) -> Built {
    expect_inputs(node, 1)?;
    let dtype = node.attr_dtype("dtype")?;
    let shape = node.attr_shape_or_unknown("shape")?;
    FnKernel::boxed(
        1,
        move |ctx| {
            if ctx.shape(0).merge(&shape).is_none() {
                return Err(ctx.err(format!(
                    "default value of shape {} does not fit shape {shape}",
                    ctx.shape(0)
                )));
            }
            Ok(vec![TensorInfo::new(dtype, shape.clone())])
        },
        |ctx| Ok(vec![ctx.inputs[0].clone()]),
    )
}

fn identity(node: &Node) -> Built {
    expect_inputs(node, 1)?;
    FnKernel::boxed(
        1,
        |ctx| Ok(vec![ctx.inputs[0].clone()]),
        |ctx| Ok(vec![ctx.inputs[0].clone()]),
    )
}

fn identity_n(node: &Node) -> Built {
    let n = node.num_data_inputs();
    FnKernel::boxed(
        n,
        |ctx| Ok(ctx.inputs.to_vec()),
        |ctx| Ok(ctx.inputs.clone()),
    )
}

fn no_op(node: &Node) -> Built {
    expect_inputs(node, 0)?;
    FnKernel::boxed(0, |_| Ok(vec![]), |_| Ok(vec![]))
}

fn shape_tensor(dims: &[usize], dtype: DType) -> Tensor {
    let n = dims.len();
    match dtype {
        DType::I64 => Tensor::new(vec![n], dims.iter().map(|&d| d as i64).collect()),
        _ => Tensor::new(vec![n], dims.iter().map(|&d| d as i32).collect()),
    }
    .expect("length matches")
}

fn shape(node: &Node) -> Built {
    expect_inputs(node, 1)?;
    let out = node.attr_dtype_or("out_type", DType::I32)?;
    if !matches!(out, DType::I32 | DType::I64) {
        return Err(node.attr_error("out_type", format!("must be int32 or int64, got {out}")));
    }
    FnKernel::boxed(
        1,
        move |ctx| {
            Ok(vec![match ctx.shape(0) {
                s @ Shape::Known(d) => match s.concrete() {
                    Some(c) => TensorInfo::of_value(shape_tensor(&c, out)),
                    None => TensorInfo::new(out, Shape::Known(vec![d.len() as i64])),
                },
                Shape::Unknown => TensorInfo::new(out, Shape::Known(vec![-1])),
            }])
        },
        move |ctx| Ok(vec![shape_tensor(ctx.input(0).shape(), out)]),
    )
}

/// Resolves a Reshape target (with at most one -1) against `n` elements.
fn reshape_dims(target: &[i64], n: Option<usize>) -> std::result::Result<Vec<i64>, String> {
    let mut unknown = None;
    let mut known = 1usize;
    for (i, &d) in target.iter().enumerate() {
        match d {
            -1 if unknown.is_none() => unknown = Some(i),
            -1 => return Err(format!("shape {target:?} has more than one -1")),
            d if d < 0 => return Err(format!("shape {target:?} has a negative size")),
            d => known *= d as usize,
        }
    }
    let mut out = target.to_vec();
    if let Some(n) = n {
        match unknown {
            Some(i) => {
                if known == 0 || n % known != 0 {
                    return Err(format!("cannot reshape {n} elements to {target:?}"));
                }
                out[i] = (n / known) as i64;
            }
            None if known != n => return Err(format!("cannot reshape {n} elements to {target:?}")),
            None => {}
        }
    }
    Ok(out)
}

fn reshape(node: &Node) -> Built {
    expect_inputs(node, 2)?;
    FnKernel::boxed(
        1,
        |ctx| {
            ctx.expect_rank(1, 1, "shape")?;
            let shape = match ctx.ints(1) {
                Some(t) => Shape::Known(
                    reshape_dims(&t, ctx.shape(0).num_elements()).map_err(|e| ctx.err(e))?,
                ),
                None => match ctx.shape(1).dim(0) {
                    -1 => Shape::Unknown,
                    r => Shape::of_rank(r as usize),
                },
            };
            Ok(vec![TensorInfo::new(ctx.dtype(0), shape)])
        },
        |ctx| {
            let target = ctx.ints(1)?;
            let dims = reshape_dims(&target, Some(ctx.input(0).len())).map_err(|e| ctx.err(e))?;
            let dims: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
            Ok(vec![ctx.k(ctx.input(0).reshape(dims))?])
        },
    )
}

/// Normalizes an axis in `[-rank, rank)`.
fn axis(a: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if a < 0 { a + r } else { a };
    (0..r).contains(&a).then_some(a as usize)
}

fn squeeze(node: &Node) -> Built {
    expect_inputs(node, 1)?;
    let dims = match node.attrs.get("squeeze_dims") {
        Some(_) => node.attr_ints("squeeze_dims")?.to_vec(),
        None => node.attr_ints_or("axis", &[])?.to_vec(),
    };
    let d2 = dims.clone();
    FnKernel::boxed(
        1,
        move |ctx| {
            let Shape::Known(s) = ctx.shape(0) else {
                return Ok(vec![TensorInfo::new(ctx.dtype(0), Shape::Unknown)]);
            };
            let mut keep = vec![true; s.len()];
            if dims.is_empty() {
                for (i, &d) in s.iter().enumerate() {
                    match d {
                        1 => keep[i] = false,
                        -1 => return Ok(vec![TensorInfo::new(ctx.dtype(0), Shape::Unknown)]),
                        _ => {}
                    }
                }
            } else {
                for &a in &dims {
                    let i = axis(a, s.len()).ok_or_else(|| {
                        ctx.err(format!(
                            "squeeze axis {a} out of range for {}",
                            ctx.shape(0)
                        ))
                    })?;
                    if s[i] > 1 {
                        return Err(ctx.err(format!("cannot squeeze axis {a} of size {}", s[i])));
                    }
                    keep[i] = false;
                }
            }
            let out = s
                .iter()
                .zip(&keep)
                .filter(|(_, &k)| k)
                .map(|(&d, _)| d)
                .collect();
            Ok(vec![TensorInfo::new(ctx.dtype(0), Shape::Known(out))])
        },
        move |ctx| {
            let s = ctx.input(0).shape();
            for &a in &d2 {
                match axis(a, s.len()) {
                    None => return Err(ctx.err(format!("squeeze axis {a} out of range for {s:?}"))),
                    Some(i) if s[i] != 1 => {
                        return Err(
                            ctx.err(format!("cannot squeeze axis {a} of size {} in {s:?}", s[i]))
                        )
                    }
                    Some(_) => {}
                }
            }
            let out: Vec<usize> = s
                .iter()
                .enumerate()
                .filter(|&(i, &d)| !(d == 1 && d1_squeezable(&d2, i, s.len())))
                .map(|(_, &d)| d)
                .collect();
            Ok(vec![ctx.k(ctx.input(0).reshape(out))?])
        },
    )
}

/// Whether axis `i` is one Squeeze removes (all size-1 axes when no list).
fn d1_squeezable(dims: &[i64], i: usize, rank: usize) -> bool {
    dims.is_empty() || dims.iter().any(|&a| axis(a, rank) == Some(i))
}

fn expand_dims(node: &Node) -> Built {
    expect_inputs(node, 2)?;
    fn insert(s: &[i64], a: i64) -> Option<Vec<i64>> {
        let i = axis(a, s.len() + 1)?;
        let mut out = s.to_vec();
        out.insert(i, 1);
        Some(out)
    }
    FnKernel::boxed(
        1,
        |ctx| {
            let shape = match (ctx.shape(0), ctx.ints(1)) {
                (Shape::Known(s), Some(a)) if a.len() == 1 => {
                    Shape::Known(insert(s, a[0]).ok_or_else(|| {
                        ctx.err(format!("axis {} out of range for {}", a[0], ctx.shape(0)))
                    })?)
                }
                (Shape::Known(s), _) => Shape::of_rank(s.len() + 1),
                _ => Shape::Unknown,
            };
            Ok(vec![TensorInfo::new(ctx.dtype(0), shape)])
        },
        |ctx| {
            let a = ctx.ints(1)?;
            let s: Vec<i64> = ctx.input(0).shape().iter().map(|&d| d as i64).collect();
            let out = match a.as_slice() {
                [a] => insert(&s, *a),
                _ => None,
            }
            .ok_or_else(|| ctx.err(format!("bad axis {a:?} for shape {s:?}")))?;
            let out: Vec<usize> = out.iter().map(|&d| d as usize).collect();
            Ok(vec![ctx.k(ctx.input(0).reshape(out))?])
        },
    )
}

fn paddings(v: &[i64]) -> Option<Vec<(usize, usize)>> {
    if v.len() & 1 != 0 || v.iter().any(|&x| x < 0) {
        return None;
    }
    Some(
        v.chunks(2)
            .map(|c| (c[0] as usize, c[1] as usize))
            .collect(),
    )
}

fn pad(node: &Node) -> Built {
    let v2 = node.op == "PadV2";
    expect_inputs(node, if v2 { 3 } else { 2 })?;
    FnKernel::boxed(
        1,
        |ctx| {
            let shape = match (ctx.shape(0), ctx.ints(1)) {
                (Shape::Known(s), Some(p)) => {
                    let p = paddings(&p).filter(|p| p.len() == s.len()).ok_or_else(|| {
                        ctx.err(format!("paddings {p:?} do not fit input {}", ctx.shape(0)))
                    })?;
                    Shape::Known(
                        s.iter()
                            .zip(&p)
                            .map(|(&d, &(a, b))| if d < 0 { -1 } else { d + (a + b) as i64 })
                            .collect(),
                    )
                }
                (Shape::Known(s), None) => Shape::of_rank(s.len()),
                (Shape::Unknown, _) => match ctx.shape(1).dim(0) {
                    -1 => Shape::Unknown,
                    r => Shape::of_rank(r as usize),
                },
            };
            Ok(vec![TensorInfo::new(ctx.dtype(0), shape)])
        },
        |ctx| {
            let p = ctx.ints(1)?;
            let p = paddings(&p).ok_or_else(|| ctx.err(format!("bad paddings {p:?}")))?;
            let value = ctx.inputs.get(2);
            Ok(vec![ctx.k(shape_ops::pad(ctx.input(0), &p, value))?])
        },
    )
}

fn strided_slice(node: &Node) -> Built {
    expect_inputs(node, 4)?;
    let masks = StridedSliceMasks {
        begin_mask: node.attr_int_or("begin_mask", 0)?,
        end_mask: node.attr_int_or("end_mask", 0)?,
        ellipsis_mask: node.attr_int_or("ellipsis_mask", 0)?,
        new_axis_mask: node.attr_int_or("new_axis_mask", 0)?,
        shrink_axis_mask: node.attr_int_or("shrink_axis_mask", 0)?,
    };
    let run = move |x: &Tensor, b: &[i64], e: &[i64], s: &[i64]| {
        shape_ops::strided_slice(x, b, e, s, &masks)
    };
    FnKernel::boxed(
        1,
        move |ctx| {
            // The output shape depends on values and masks in intricate
            // ways; when the input shape is known and small, slicing a
            // stand-in of that shape gives it exactly.
            if let (Some(c), Some(b), Some(e), Some(s)) = (
                ctx.shape(0).concrete(),
                ctx.ints(1),
                ctx.ints(2),
                ctx.ints(3),
            ) {
                if c.iter().product::<usize>() <= FOLD_LIMIT {
                    let stand_in = Tensor::zeros(DType::U8, c);
                    let out = run(&stand_in, &b, &e, &s).map_err(|err| ctx.err(err.to_string()))?;
                    return Ok(vec![TensorInfo::new(
                        ctx.dtype(0),
                        Shape::known(out.shape()),
                    )]);
                }
            }
            Ok(vec![TensorInfo::new(ctx.dtype(0), Shape::Unknown)])
        },
        move |ctx| {
            let (b, e, s) = (ctx.ints(1)?, ctx.ints(2)?, ctx.ints(3)?);
            Ok(vec![ctx.k(run(ctx.input(0), &b, &e, &s))?])
        },
    )
}

fn slice(node: &Node) -> Built {
    expect_inputs(node, 3)?;
    FnKernel::boxed(
        1,
        |ctx| {
            let shape = match (ctx.shape(0), ctx.ints(1), ctx.ints(2)) {
                (Shape::Known(s), Some(b), Some(z)) if b.len() == s.len() && z.len() == s.len() => {
                    Shape::Known(
                        s.iter()
                            .zip(b.iter().zip(&z))
                            .map(|(&d, (&b, &z))| match z {
                                -1 if d >= 0 => d - b,
                                -1 => -1,
                                z => z,
                            })
                            .collect(),
                    )
                }
                (Shape::Known(s), ..) => Shape::of_rank(s.len()),
                _ => Shape::Unknown,
            };
            Ok(vec![TensorInfo::new(ctx.dtype(0), shape)])
        },
        |ctx| {
            let (b, z) = (ctx.ints(1)?, ctx.ints(2)?);
            Ok(vec![ctx.k(shape_ops::slice(ctx.input(0), &b, &z))?])
        },
    )
}

fn perm_of(p: &[i64], rank: usize) -> Option<Vec<usize>> {
    let mut seen = vec![false; rank];
    let mut out = Vec::with_capacity(rank);
    if p.len() != rank {
        return None;
    }
    for &a in p {
        let i = axis(a, rank)?;
        if std::mem::replace(&mut seen[i], true) {
            return None;
        }
        out.push(i);
    }
    Some(out)
}

fn transpose(node: &Node) -> Built {
    expect_inputs(node, 2)?;
    FnKernel::boxed(
        1,
        |ctx| {
            let shape = match (ctx.shape(0), ctx.ints(1)) {
                (Shape::Known(s), Some(p)) => {
                    let p = perm_of(&p, s.len()).ok_or_else(|| {
                        ctx.err(format!("{p:?} is not a permutation of {} axes", s.len()))
                    })?;
                    Shape::Known(p.iter().map(|&i| s[i]).collect())
                }
                (Shape::Known(s), None) => Shape::of_rank(s.len()),
                _ => Shape::Unknown,
            };
            Ok(vec![TensorInfo::new(ctx.dtype(0), shape)])
        },
        |ctx| {
            let p = ctx.ints(1)?;
            let p = perm_of(&p, ctx.input(0).rank()).ok_or_else(|| {
                ctx.err(format!(
                    "{p:?} is not a permutation of {} axes",
                    ctx.input(0).rank()
                ))
            })?;
            Ok(vec![ctx.k(shape_ops::transpose(ctx.input(0), &p))?])
        },
    )
}

/// Merges the shapes of all inputs `0..n` (they must agree).
fn merge_all(ctx: &InferCtx, n: usize) -> Result<Shape> {
    let mut s = Shape::Unknown;
    for i in 0..n {
        s = s.merge(ctx.shape(i)).ok_or_else(|| {
            ctx.err(format!(
                "input {i} has shape {}, the others {s}",
                ctx.shape(i)
            ))
        })?;
    }
    Ok(s)
}

fn pack(node: &Node) -> Built {
    let n = variadic_n(node, 0)?;
    let ax = node.attr_int_or("axis", 0)?;
    FnKernel::boxed(
        1,
        move |ctx| {
            let shape = match merge_all(ctx, n)? {
                Shape::Known(mut s) => {
                    let i = axis(ax, s.len() + 1)
                        .ok_or_else(|| ctx.err(format!("axis {ax} out of range")))?;
                    s.insert(i, n as i64);
                    Shape::Known(s)
                }
                Shape::Unknown => Shape::Unknown,
            };
            Ok(vec![TensorInfo::new(ctx.dtype(0), shape)])
        },
        move |ctx| {
            let refs: Vec<&Tensor> = ctx.inputs.iter().collect();
            Ok(vec![ctx.k(shape_ops::pack(&refs, ax))?])
        },
    )
}

fn concat(node: &Node) -> Built {
    let n = variadic_n(node, 1)?;
    FnKernel::boxed(
        1,
        move |ctx| {
            let rank = (0..n).find_map(|i| ctx.shape(i).rank());
            let (Some(rank), Some(a)) = (rank, ctx.ints(n)) else {
                return Ok(vec![TensorInfo::new(
                    ctx.dtype(0),
                    rank.map_or(Shape::Unknown, Shape::of_rank),
                )]);
            };
            let ax = a
                .first()
                .and_then(|&a| axis(a, rank))
                .ok_or_else(|| ctx.err(format!("axis {a:?} out of range for rank {rank}")))?;
            let mut out = vec![-1i64; rank];
            let mut total = 0i64;
            for i in 0..n {
                let d = ctx.dims(i, rank, "every input")?;
                for (j, (&x, o)) in d.iter().zip(out.iter_mut()).enumerate() {
                    if j == ax {
                        total = if x < 0 || total < 0 { -1 } else { total + x };
                    } else {
                        *o = merge_dim(*o, x).map_err(|(a, b)| {
                            ctx.err(format!("input {i}: dimension {j} is {b}, others have {a}"))
                        })?;
                    }
                }
            }
            out[ax] = total;
            Ok(vec![TensorInfo::new(ctx.dtype(0), Shape::Known(out))])
        },
        move |ctx| {
            let a = ctx
                .k(ctx.input(n).scalar_value::<i32>("ConcatV2").map(i64::from))
                .or_else(|_| ctx.k(ctx.input(n).scalar_value::<i64>("ConcatV2")))?;
            let refs: Vec<&Tensor> = ctx.inputs[..n].iter().collect();
            Ok(vec![ctx.k(shape_ops::concat(&refs, a))?])
        },
    )
}

fn to_dims(v: &[i64]) -> Option<Vec<usize>> {
    v.iter().map(|&d| usize::try_from(d).ok()).collect()
}

fn fill(node: &Node) -> Built {
    expect_inputs(node, 2)?;
    FnKernel::boxed(
        1,
        |ctx| {
            ctx.expect_rank(1, 0, "value")?;
            let shape = match ctx.ints(0) {
                Some(d) => Shape::Known(d),
                None => match ctx.shape(0).dim(0) {
                    -1 => Shape::Unknown,
                    r => Shape::of_rank(r as usize),
                },
            };
            Ok(vec![TensorInfo::new(ctx.dtype(1), shape)])
        },
        |ctx| {
            let d = ctx.ints(0)?;
            let d = to_dims(&d).ok_or_else(|| ctx.err(format!("negative dims {d:?}")))?;
            Ok(vec![ctx.k(shape_ops::fill(&d, ctx.input(1)))?])
        },
    )
}

fn zeros_like(node: &Node) -> Built {
    expect_inputs(node, 1)?;
    FnKernel::boxed(
        1,
        |ctx| Ok(same_as_input(ctx, 0)),
        |ctx| {
            let x = ctx.input(0);
            Ok(vec![Tensor::zeros(x.dtype(), x.shape())])
        },
    )
}

fn ones_like(node: &Node) -> Built {
    expect_inputs(node, 1)?;
    FnKernel::boxed(
        1,
        |ctx| Ok(same_as_input(ctx, 0)),
        |ctx| {
            let x = ctx.input(0);
            let s = x.shape().to_vec();
            Ok(vec![match x.dtype() {
                DType::F32 => Tensor::full(s, 1f32),
                DType::F64 => Tensor::full(s, 1f64),
                DType::I32 => Tensor::full(s, 1i32),
                DType::I64 => Tensor::full(s, 1i64),
                DType::U8 => Tensor::full(s, 1u8),
                DType::Bool => Tensor::full(s, true),
            }])
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_resolves_minus_one() {
        assert_eq!(reshape_dims(&[-1, 6], Some(12)).unwrap(), vec![2, 6]);
        assert_eq!(reshape_dims(&[-1, 6], None).unwrap(), vec![-1, 6]);
        assert!(reshape_dims(&[-1, 5], Some(12)).is_err());
        assert!(reshape_dims(&[-1, -1], Some(12)).is_err());
        assert!(reshape_dims(&[3, 5], Some(12)).is_err());
        assert_eq!(reshape_dims(&[], Some(1)).unwrap(), Vec::<i64>::new());
    }

    #[test]
    fn permutations() {
        assert_eq!(perm_of(&[0, 3, 1, 2], 4), Some(vec![0, 3, 1, 2]));
        assert_eq!(perm_of(&[-1, 0], 2), Some(vec![1, 0]));
        assert_eq!(perm_of(&[0, 0], 2), None);
        assert_eq!(perm_of(&[0], 2), None);
    }
}
