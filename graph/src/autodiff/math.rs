//! Gradients of element-wise, reduction and shape ops, as TensorFlow's
//! `math_grad.py` and `array_grad.py`.

use psflow_kernels::DType;
use psflow_proto::tensorflow::AttrValue;

use super::emit::GradCtx;
use crate::ir::TensorName;
use crate::registry::broadcast_reduction_axes;
use crate::zoo::type_attr;
use crate::Result;

type Grads = Result<Vec<Option<TensorName>>>;

/// Reduction axes of `x op y`'s gradients when the partial shapes decide
/// them: every axis has both sizes known, or one unknown and the other
/// known to be 1 (absent axes count as 1).
fn static_axes(x: &[i64], y: &[i64]) -> Option<(Vec<i64>, Vec<i64>)> {
    let rank = x.len().max(y.len());
    let pad = |s: &[i64], i: usize| {
        if i + s.len() >= rank {
            s[i + s.len() - rank]
        } else {
            1
        }
    };
    // Replace an unknown size facing a 1 by a stand-in that is neither 1
    // nor any other size: the unknown side is then the output size.
    let mut xs = vec![0; rank];
    let mut ys = vec![0; rank];
    for i in 0..rank {
        let (a, b) = (pad(x, i), pad(y, i));
        match (a, b) {
            (-1, 1) => (xs[i], ys[i]) = (2, 1),
            (1, -1) => (xs[i], ys[i]) = (1, 2),
            (a, b) if a >= 0 && b >= 0 => (xs[i], ys[i]) = (a, b),
            _ => return None,
        }
    }
    let (rx, ry) = broadcast_reduction_axes(&xs, &ys).ok()?;
    // Axes of the lower-rank side that it lacks are counted by
    // `broadcast_reduction_axes` from the padded shapes; map back.
    let lead = |s: &[i64], r: Vec<i64>| -> Vec<i64> {
        let l = (rank - s.len()) as i64;
        let mut r = r;
        r.extend(0..l);
        r.sort_unstable();
        r.dedup();
        r
    };
    Some((lead(x, rx), lead(y, ry)))
}

/// Sums `g` down to input `i`'s shape along `axes`, then reshapes.
fn reduce_to(c: &mut GradCtx, g: TensorName, i: usize, axes: &[i64]) -> Result<TensorName> {
    if axes.is_empty() {
        return Ok(g);
    }
    let t = c.dtype();
    let a = c.e.ints("Const", axes)?;
    let s = c.e.sum(&g, &a, false, t)?;
    let x = c.x(i).clone();
    let info = c.in_info[i].clone();
    let target = c.e.reshape_target(&x, &info)?;
    c.e.reshape(&s, &target, t)
}

/// Add/AddV2/Sub/Mul/RealDiv with broadcasting: each input's gradient is
/// summed over the axes it was broadcast along (known statically, else
/// from `BroadcastGradientArgs(Shape(x), Shape(y))`) and reshaped.
pub(super) fn binary(c: &mut GradCtx) -> Grads {
    let g = c.grad(0)?;
    let t = c.dtype();
    let (x, y) = (c.x(0).clone(), c.x(1).clone());
    let mut raw = [None, None];
    if c.needed[0] {
        raw[0] = Some(match c.node.op.as_str() {
            "Mul" => c.e.op("Mul", "Mul", &[&g, &y], t)?,
            "RealDiv" => c.e.op("RealDiv", "RealDiv", &[&g, &y], t)?,
            _ => g.clone(),
        });
    }
    if c.needed[1] {
        raw[1] = Some(match c.node.op.as_str() {
            "Mul" => c.e.op("Mul_1", "Mul", &[&x, &g], t)?,
            "RealDiv" => {
                let nx = c.e.op("Neg", "Neg", &[&x], t)?;
                let d1 = c.e.op("RealDiv_1", "RealDiv", &[&nx, &y], t)?;
                let d2 = c.e.op("RealDiv_2", "RealDiv", &[&d1, &y], t)?;
                c.e.op("mul", "Mul", &[&g, &d2], t)?
            }
            "Sub" => c.e.op("Neg", "Neg", &[&g], t)?,
            _ => g.clone(),
        });
    }
    let (sx, sy) = (c.in_info[0].shape.dims(), c.in_info[1].shape.dims());
    if let Some((rx, ry)) = sx.zip(sy).and_then(|(a, b)| static_axes(a, b)) {
        let gx = match raw[0].take() {
            Some(g) => Some(reduce_to(c, g, 0, &rx)?),
            None => None,
        };
        let gy = match raw[1].take() {
            Some(g) => Some(reduce_to(c, g, 1, &ry)?),
            None => None,
        };
        return Ok(vec![gx, gy]);
    }
    let (ix, iy) = (c.in_info[0].clone(), c.in_info[1].clone());
    let shx = c.e.shape_of(&x, &ix)?;
    let shy = c.e.shape_of(&y, &iy)?;
    let args =
        c.e.node("BroadcastGradientArgs", "BroadcastGradientArgs")
            .input(shx.clone())
            .input(shy.clone())
            .attr("T", type_attr(DType::I32));
    let args = c.e.add(args)?;
    let mut out = vec![None, None];
    for (i, sh) in [shx, shy].into_iter().enumerate() {
        if let Some(g) = raw[i].take() {
            let r = TensorName::new(args.node.clone(), i);
            let s = c.e.sum(&g, &r, false, t)?;
            out[i] = Some(c.e.reshape(&s, &sh, t)?);
        }
    }
    Ok(out)
}

pub(super) fn add_n(c: &mut GradCtx) -> Grads {
    let g = c.grad(0)?;
    Ok(c.needed.iter().map(|&n| n.then(|| g.clone())).collect())
}

/// Sum/Mean: the gradient (divided by the reduced element count for Mean)
/// reshaped to the kept-dims shape and broadcast to the input's shape.
pub(super) fn reduction(c: &mut GradCtx) -> Grads {
    let mut g = c.grad(0)?;
    let t = c.dtype();
    let d = t.unwrap_or(DType::F32);
    let x = c.x(0).clone();
    let (xi, yi) = (c.in_info[0].clone(), c.out_info[0].clone());
    if c.node.op == "Mean" {
        let factor = match (xi.shape.num_elements(), yi.shape.num_elements()) {
            (Some(a), Some(b)) => c.e.scalar("Const", d, (a / b.max(1)) as f64)?,
            _ => {
                // Element counts at run time: Prod(Shape(x)) / max(Prod(Shape(y)), 1).
                let y = c.y(0);
                let sx = c.e.shape_of(&x, &xi)?;
                let sy = c.e.shape_of(&y, &yi)?;
                let zero = c.e.ints("Const", &[0])?;
                let mut counts = vec![];
                for (k, s) in [sx, sy].into_iter().enumerate() {
                    let p =
                        c.e.node(&format!("Prod{}", if k == 0 { "" } else { "_1" }), "Prod")
                            .input(s)
                            .input(zero.clone())
                            .attr("keep_dims", AttrValue::from_b(false))
                            .attr("T", type_attr(DType::I32))
                            .attr("Tidx", type_attr(DType::I32));
                    let p = c.e.add(p)?;
                    let cast =
                        c.e.node("Cast", "Cast")
                            .input(p)
                            .attr("SrcT", type_attr(DType::I32))
                            .attr("DstT", type_attr(d));
                    counts.push(c.e.add(cast)?);
                }
                let one = c.e.scalar("Const", d, 1.0)?;
                let den = c.e.op("Maximum", "Maximum", &[&counts[1], &one], t)?;
                c.e.op("floordiv", "RealDiv", &[&counts[0], &den], t)?
            }
        };
        g = c.e.op("truediv", "RealDiv", &[&g, &factor], t)?;
    }
    let keep = c.node.attr_bool_or("keep_dims", false)?;
    if !keep {
        let axes = c.in_info[1].value.as_ref().map(|v| v.to_i64_vec("axes"));
        let kept = match (xi.shape.dims(), axes) {
            (Some(s), Some(Ok(a))) => {
                let r = s.len() as i64;
                let red = |i: usize| a.iter().any(|&x| x == i as i64 || x + r == i as i64);
                let dims: Vec<i64> = (0..s.len())
                    .map(|i| if red(i) { 1 } else { s[i] })
                    .collect();
                (dims.iter().filter(|&&d| d < 0).count() <= 1).then_some(dims)
            }
            _ => None,
        };
        let target = match kept {
            Some(dims) => c.e.ints("Const", &dims)?,
            None => {
                // The kept-dims shape at run time, from a keep_dims Sum.
                let axes = c.x(1).clone();
                let s = c.e.sum(&x, &axes, true, t)?;
                let info = crate::registry::TensorInfo::new(t, crate::shape::Shape::Unknown);
                c.e.shape_of(&s, &info)?
            }
        };
        g = c.e.reshape(&g, &target, t)?;
    }
    let shape = c.e.shape_of(&x, &xi)?;
    let mut n =
        c.e.node("BroadcastTo", "BroadcastTo")
            .input(g)
            .input(shape)
            .attr("Tidx", type_attr(DType::I32));
    if let Some(t) = t {
        n = n.attr("T", type_attr(t));
    }
    Ok(vec![Some(c.e.add(n)?), None])
}

/// Reshape/Squeeze/ExpandDims: the gradient reshaped to the input's shape.
pub(super) fn reshape(c: &mut GradCtx) -> Grads {
    let g = c.grad(0)?;
    let t = c.dtype();
    let (x, xi) = (c.x(0).clone(), c.in_info[0].clone());
    let target = c.e.reshape_target(&x, &xi)?;
    let mut out = vec![Some(c.e.reshape(&g, &target, t)?)];
    out.resize(c.inputs.len(), None);
    Ok(out)
}

pub(super) fn identity(c: &mut GradCtx) -> Grads {
    Ok(vec![Some(c.grad(0)?)])
}

/// Pad: the gradient sliced at the leading paddings, of the input's size.
pub(super) fn pad(c: &mut GradCtx) -> Grads {
    let g = c.grad(0)?;
    let t = c.dtype();
    let (x, xi) = (c.x(0).clone(), c.in_info[0].clone());
    let begin = match c.in_info[1]
        .value
        .as_ref()
        .map(|v| v.to_i64_vec("paddings"))
    {
        Some(Ok(p)) => {
            let before: Vec<i64> = p.chunks(2).map(|c| c[0]).collect();
            c.e.ints("Const", &before)?
        }
        _ => {
            let p = c.x(1).clone();
            let b = c.e.ints("Slice/begin", &[0, 0])?;
            let s = c.e.ints("Slice/size", &[-1, 1])?;
            let col = c.e.op("Slice", "Slice", &[&p, &b, &s], None)?;
            let flat = c.e.ints("Const", &[-1])?;
            c.e.reshape(&col, &flat, Some(DType::I32))?
        }
    };
    let size = c.e.shape_of(&x, &xi)?;
    let n =
        c.e.node("Slice_1", "Slice")
            .input(g)
            .input(begin)
            .input(size)
            .attr("Index", type_attr(DType::I32));
    let n = match t {
        Some(t) => n.attr("T", type_attr(t)),
        None => n,
    };
    let mut out = vec![Some(c.e.add(n)?)];
    out.resize(c.inputs.len(), None);
    Ok(out)
}

/// ConcatV2: each input's gradient is the slice of the gradient where that
/// input sits (offsets static when every shape is, else `ConcatOffset`).
pub(super) fn concat(c: &mut GradCtx) -> Grads {
    let g = c.grad(0)?;
    let t = c.dtype();
    let n = c.inputs.len() - 1;
    let axis = c.in_info[n]
        .value
        .as_ref()
        .and_then(|v| v.to_i64_vec("axis").ok())
        .and_then(|a| a.first().copied());
    let shapes: Option<Vec<Vec<usize>>> = (0..n).map(|i| c.in_info[i].shape.concrete()).collect();
    let mut offsets: Vec<Option<TensorName>> = vec![];
    let mut sizes: Vec<Option<TensorName>> = vec![];
    match (axis, shapes) {
        (Some(a), Some(shapes)) if !shapes.is_empty() => {
            let rank = shapes[0].len() as i64;
            let a = if a < 0 { a + rank } else { a } as usize;
            let mut off = 0i64;
            for (i, s) in shapes.iter().enumerate() {
                let mut o = vec![0i64; s.len()];
                o[a] = off;
                off += s[a] as i64;
                if c.needed[i] {
                    offsets.push(Some(c.e.ints("Const", &o)?));
                    let dims: Vec<i64> = s.iter().map(|&d| d as i64).collect();
                    sizes.push(Some(c.e.ints("Const", &dims)?));
                } else {
                    offsets.push(None);
                    sizes.push(None);
                }
            }
        }
        _ => {
            for i in 0..n {
                let (x, xi) = (c.x(i).clone(), c.in_info[i].clone());
                sizes.push(Some(c.e.shape_of(&x, &xi)?));
            }
            let mut node =
                c.e.node("ConcatOffset", "ConcatOffset")
                    .input(c.x(n).clone())
                    .attr("N", AttrValue::from_i(n as i64));
            for s in sizes.iter().flatten() {
                node = node.input(s.clone());
            }
            let co = c.e.add(node)?;
            offsets = (0..n)
                .map(|i| Some(TensorName::new(co.node.clone(), i)))
                .collect();
        }
    }
    let mut out = vec![None; n + 1];
    for i in 0..n {
        let (true, Some(off), Some(size)) = (c.needed[i], &offsets[i], &sizes[i]) else {
            continue;
        };
        let node =
            c.e.node("Slice", "Slice")
                .input(g.clone())
                .input(off.clone())
                .input(size.clone())
                .attr("Index", type_attr(DType::I32));
        let node = match t {
            Some(t) => node.attr("T", type_attr(t)),
            None => node,
        };
        out[i] = Some(c.e.add(node)?);
    }
    Ok(out)
}

/// Square: `dy * (x * 2)`.
pub(super) fn square(c: &mut GradCtx) -> Grads {
    let g = c.grad(0)?;
    let t = c.dtype();
    let x = c.x(0).clone();
    let two = c.e.scalar("Const", t.unwrap_or(DType::F32), 2.0)?;
    let x2 = c.e.op("Mul", "Mul", &[&x, &two], t)?;
    Ok(vec![Some(c.e.op("Mul_1", "Mul", &[&g, &x2], t)?)])
}

pub(super) fn neg(c: &mut GradCtx) -> Grads {
    let g = c.grad(0)?;
    let t = c.dtype();
    Ok(vec![Some(c.e.op("Neg", "Neg", &[&g], t)?)])
}

/// Cast between float types: the gradient cast back; none otherwise.
pub(super) fn cast(c: &mut GradCtx) -> Grads {
    let g = c.grad(0)?;
    let src = c.in_info[0].dtype;
    let dst = c.out_info[0].dtype;
    match (src, dst) {
        (Some(s), Some(d)) if s.is_float() && d.is_float() => {
            let n =
                c.e.node("Cast", "Cast")
                    .input(g)
                    .attr("SrcT", type_attr(d))
                    .attr("DstT", type_attr(s));
            Ok(vec![Some(c.e.add(n)?)])
        }
        _ => Ok(vec![None]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_axes_with_unknown_batch() {
        // [?, 10] + [10]: x keeps everything, y sums over the batch.
        assert_eq!(static_axes(&[-1, 10], &[10]), Some((vec![], vec![0])));
        // [?, 1] * [?, 4]: unknown facing unknown is decided at run time.
        assert_eq!(static_axes(&[-1, 1], &[-1, 4]), None);
        assert_eq!(static_axes(&[2, 3], &[]), Some((vec![], vec![0, 1])));
        assert_eq!(static_axes(&[3], &[2, 1]), Some((vec![0], vec![1])));
    }
}
