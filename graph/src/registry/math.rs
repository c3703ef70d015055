//! Element-wise arithmetic with broadcasting, AddN, reductions, ArgMax and
//! Cast.

use psflow_kernels::ops::{elementwise, reduce, shape_ops};
use psflow_kernels::{BinaryOp, DType, Tensor, UnaryOp};

use super::{
    expect_inputs, same_as_input, variadic_n, FnKernel, InferCtx, OpKernel, Registry, TensorInfo,
};
use crate::ir::Node;
use crate::shape::{broadcast, Shape};
use crate::Result;

type Built = Result<Box<dyn OpKernel>>;

pub(super) fn register(r: &mut Registry) {
    for op in [
        "Add",
        "AddV2",
        "Sub",
        "Mul",
        "RealDiv",
        "Maximum",
        "Minimum",
        "SquaredDifference",
    ] {
        r.register(op, binary);
    }
    for op in ["Square", "Sqrt", "Rsqrt", "Neg", "Exp", "Log"] {
        r.register(op, unary);
    }
    r.register("AddN", add_n);
    for op in ["Mean", "Sum", "Max"] {
        r.register(op, reduction);
    }
    r.register("ArgMax", arg_max);
    r.register("Cast", cast);
}

/// The common dtype of inputs `0..n` (when known they must agree).
fn same_dtype(ctx: &InferCtx, n: usize) -> Result<Option<DType>> {
    let mut d = None;
    for i in 0..n {
        match (d, ctx.dtype(i)) {
            (Some(a), Some(b)) if a != b => {
                return Err(ctx.err(format!("input {i} is {b}, input 0 is {a}")))
            }
            (None, b) => d = b,
            _ => {}
        }
    }
    Ok(d)
}

fn binary(node: &Node) -> Built {
    expect_inputs(node, 2)?;
    let op = match node.op.as_str() {
        "Add" | "AddV2" => BinaryOp::Add,
        "Sub" => BinaryOp::Sub,
        "Mul" => BinaryOp::Mul,
        "RealDiv" => BinaryOp::Div,
        "Maximum" => BinaryOp::Maximum,
        "Minimum" => BinaryOp::Minimum,
        _ => BinaryOp::SquaredDifference,
    };
    FnKernel::boxed(
        1,
        |ctx| {
            let dtype = same_dtype(ctx, 2)?;
            let shape = broadcast(ctx.shape(0), ctx.shape(1)).map_err(|e| ctx.err(e))?;
            Ok(vec![TensorInfo::new(dtype, shape)])
        },
        move |ctx| {
            Ok(vec![ctx.k(elementwise::binary(
                op,
                ctx.input(0),
                ctx.input(1),
            ))?])
        },
    )
}

fn unary(node: &Node) -> Built {
    expect_inputs(node, 1)?;
    let op = match node.op.as_str() {
        "Square" => UnaryOp::Square,
        "Sqrt" => UnaryOp::Sqrt,
        "Rsqrt" => UnaryOp::Rsqrt,
        "Neg" => UnaryOp::Neg,
        "Exp" => UnaryOp::Exp,
        _ => UnaryOp::Log,
    };
    FnKernel::boxed(
        1,
        |ctx| Ok(same_as_input(ctx, 0)),
        move |ctx| Ok(vec![ctx.k(elementwise::unary(op, ctx.input(0)))?]),
    )
}

fn add_n(node: &Node) -> Built {
    let n = variadic_n(node, 0)?;
    FnKernel::boxed(
        1,
        move |ctx| {
            let dtype = same_dtype(ctx, n)?;
            let mut s = Shape::Unknown;
            for i in 0..n {
                s = s.merge(ctx.shape(i)).ok_or_else(|| {
                    ctx.err(format!(
                        "input {i} has shape {}, the others {s}",
                        ctx.shape(i)
                    ))
                })?;
            }
            Ok(vec![TensorInfo::new(dtype, s)])
        },
        |ctx| {
            let refs: Vec<&Tensor> = ctx.inputs.iter().collect();
            Ok(vec![ctx.k(elementwise::add_n(&refs))?])
        },
    )
}

/// The output shape of a reduction over `axes` of a known-rank shape.
fn reduced(s: &[i64], axes: &[i64], keep: bool) -> std::result::Result<Vec<i64>, String> {
    let r = s.len() as i64;
    let mut reduce = vec![false; s.len()];
    for &a in axes {
        let i = if a < 0 { a + r } else { a };
        if !(0..r).contains(&i) {
            return Err(format!("axis {a} out of range for rank {r}"));
        }
        reduce[i as usize] = true;
    }
    Ok(s.iter()
        .zip(&reduce)
        .filter_map(|(&d, &red)| match (red, keep) {
            (true, true) => Some(1),
            (true, false) => None,
            (false, _) => Some(d),
        })
        .collect())
}

fn reduction(node: &Node) -> Built {
    expect_inputs(node, 2)?;
    let keep = node.attr_bool_or("keep_dims", false)?;
    let f = match node.op.as_str() {
        "Mean" => reduce::mean,
        "Sum" => reduce::sum,
        _ => reduce::max,
    };
    FnKernel::boxed(
        1,
        move |ctx| {
            let shape = match (ctx.shape(0), ctx.ints(1)) {
                (Shape::Known(s), Some(a)) => {
                    Shape::Known(reduced(s, &a, keep).map_err(|e| ctx.err(e))?)
                }
                (Shape::Known(s), None) if keep => Shape::of_rank(s.len()),
                _ => Shape::Unknown,
            };
            Ok(vec![TensorInfo::new(ctx.dtype(0), shape)])
        },
        move |ctx| {
            let axes = ctx.ints(1)?;
            Ok(vec![ctx.k(f(ctx.input(0), &axes, keep))?])
        },
    )
}

fn arg_max(node: &Node) -> Built {
    expect_inputs(node, 2)?;
    let out = node.attr_dtype_or("output_type", DType::I64)?;
    if !matches!(out, DType::I32 | DType::I64) {
        return Err(node.attr_error("output_type", format!("must be int32 or int64, got {out}")));
    }
    FnKernel::boxed(
        1,
        move |ctx| {
            let shape = match (ctx.shape(0), ctx.ints(1)) {
                (Shape::Known(s), Some(a)) if a.len() == 1 => {
                    Shape::Known(reduced(s, &a, false).map_err(|e| ctx.err(e))?)
                }
                (Shape::Known(s), _) if !s.is_empty() => Shape::of_rank(s.len() - 1),
                _ => Shape::Unknown,
            };
            Ok(vec![TensorInfo::new(out, shape)])
        },
        move |ctx| {
            let a = ctx.ints(1)?;
            let [a] = a[..] else {
                return Err(ctx.err(format!("dimension must be a scalar, got {a:?}")));
            };
            let idx = ctx.k(reduce::arg_max(ctx.input(0), a))?;
            let idx = if out == DType::I32 {
                ctx.k(shape_ops::cast(&idx, out))?
            } else {
                idx
            };
            Ok(vec![idx])
        },
    )
}

fn cast(node: &Node) -> Built {
    expect_inputs(node, 1)?;
    let dst = node.attr_dtype("DstT")?;
    if node.attrs.contains_key("SrcT") {
        node.attr_dtype("SrcT")?;
    }
    FnKernel::boxed(
        1,
        move |ctx| Ok(vec![TensorInfo::new(dst, ctx.shape(0).clone())]),
        move |ctx| {
            let x = ctx.input(0);
            if x.dtype() == dst {
                return Ok(vec![x.clone()]);
            }
            Ok(vec![ctx.k(shape_ops::cast(x, dst))?])
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduced_shapes() {
        assert_eq!(reduced(&[2, -1, 4], &[1], false).unwrap(), vec![2, 4]);
        assert_eq!(
            reduced(&[2, -1, 4], &[-1, 0], true).unwrap(),
            vec![1, -1, 1]
        );
        assert_eq!(reduced(&[2, 3], &[], false).unwrap(), vec![2, 3]);
        assert!(reduced(&[2, 3], &[2], false).is_err());
    }
}
