//! Gradients of the neural-network ops, as TensorFlow's `nn_grad.py`.

use psflow_proto::tensorflow::AttrValue;

use super::emit::GradCtx;
use crate::ir::TensorName;
use crate::zoo::type_attr;
use crate::Result;

type Grads = Result<Vec<Option<TensorName>>>;

const CONV_ATTRS: &[&str] = &[
    "T",
    "strides",
    "padding",
    "explicit_paddings",
    "data_format",
    "dilations",
    "use_cudnn_on_gpu",
];

/// Conv2D / DepthwiseConv2dNative → …BackpropInput(input_sizes, filter, dy)
/// and …BackpropFilter(input, filter_sizes, dy).
pub(super) fn conv2d(c: &mut GradCtx) -> Grads {
    let g = c.grad(0)?;
    let (bi, bf) = if c.node.op == "Conv2D" {
        ("Conv2DBackpropInput", "Conv2DBackpropFilter")
    } else {
        (
            "DepthwiseConv2dNativeBackpropInput",
            "DepthwiseConv2dNativeBackpropFilter",
        )
    };
    let mut out = vec![None, None];
    if c.needed[0] {
        let sizes = c.input_shape(0)?;
        let n = c
            .node_with(bi, bi, CONV_ATTRS)
            .input(sizes)
            .input(c.x(1).clone())
            .input(g.clone());
        out[0] = Some(c.e.add(n)?);
    }
    if c.needed[1] {
        let sizes = c.input_shape(1)?;
        let n = c
            .node_with(bf, bf, CONV_ATTRS)
            .input(c.x(0).clone())
            .input(sizes)
            .input(g);
        out[1] = Some(c.e.add(n)?);
    }
    Ok(out)
}

/// FusedBatchNormV3 → FusedBatchNormGradV3(dy, x, scale, reserve_space_1,
/// reserve_space_2, reserve_space_3): dx, dscale, doffset. The mean and
/// variance inputs get no gradient; gradients into the batch statistics
/// outputs are not supported (TensorFlow ignores them).
pub(super) fn fused_batch_norm(c: &mut GradCtx) -> Grads {
    if c.grads[1..].iter().any(Option::is_some) {
        return Err(c.unsupported(
            "a gradient flows into its batch mean/variance outputs (only y is differentiable)",
        ));
    }
    let g = c.grad(0)?;
    let mut n = c
        .node_with(
            "FusedBatchNormGradV3",
            "FusedBatchNormGradV3",
            &["T", "U", "epsilon", "data_format"],
        )
        .input(g)
        .input(c.x(0).clone())
        .input(c.x(1).clone());
    for port in 3..6 {
        n = n.input(c.y(port));
    }
    let is_training = c.node.attr_bool_or("is_training", true)?;
    n = n.attr("is_training", AttrValue::from_b(is_training));
    let b = c.e.add(n)?;
    let port = |p| Some(TensorName::new(b.node.clone(), p));
    Ok(vec![port(0), port(1), port(2), None, None])
}

/// Relu / Relu6 → ReluGrad / Relu6Grad(dy, y), with the op's output as the
/// features, as TensorFlow.
pub(super) fn relu(c: &mut GradCtx) -> Grads {
    let g = c.grad(0)?;
    let op = format!("{}Grad", c.node.op);
    let n = c.node_with(&op, &op, &["T"]).input(g).input(c.y(0));
    Ok(vec![Some(c.e.add(n)?)])
}

const POOL_ATTRS: &[&str] = &["T", "ksize", "strides", "padding", "data_format"];

pub(super) fn avg_pool(c: &mut GradCtx) -> Grads {
    let g = c.grad(0)?;
    let sizes = c.input_shape(0)?;
    let n = c
        .node_with("AvgPoolGrad", "AvgPoolGrad", POOL_ATTRS)
        .input(sizes)
        .input(g);
    Ok(vec![Some(c.e.add(n)?)])
}

pub(super) fn max_pool(c: &mut GradCtx) -> Grads {
    let g = c.grad(0)?;
    let n = c
        .node_with("MaxPoolGrad", "MaxPoolGrad", POOL_ATTRS)
        .input(c.x(0).clone())
        .input(c.y(0))
        .input(g);
    Ok(vec![Some(c.e.add(n)?)])
}

pub(super) fn bias_add(c: &mut GradCtx) -> Grads {
    let g = c.grad(0)?;
    let db = if c.needed[1] {
        let n = c
            .node_with("BiasAddGrad", "BiasAddGrad", &["T", "data_format"])
            .input(g.clone());
        Some(c.e.add(n)?)
    } else {
        None
    };
    Ok(vec![Some(g), db])
}

/// MatMul: with `y = op(a) · op(b)`, the four transpose cases of
/// TensorFlow's `_MatMulGrad`.
pub(super) fn mat_mul(c: &mut GradCtx) -> Grads {
    let g = c.grad(0)?;
    let ta = c.node.attr_bool_or("transpose_a", false)?;
    let tb = c.node.attr_bool_or("transpose_b", false)?;
    let (a, b) = (c.x(0).clone(), c.x(1).clone());
    // (first, second, transpose_a, transpose_b) for da and db.
    let (da, db) = match (ta, tb) {
        (false, false) => ((&g, &b, false, true), (&a, &g, true, false)),
        (false, true) => ((&g, &b, false, false), (&g, &a, true, false)),
        (true, false) => ((&b, &g, false, true), (&a, &g, false, false)),
        (true, true) => ((&b, &g, true, true), (&g, &a, true, true)),
    };
    let mut out = vec![None, None];
    for (i, (p, q, t1, t2)) in [da, db].into_iter().enumerate() {
        if !c.needed[i] {
            continue;
        }
        let n = c
            .node_with("MatMul", "MatMul", &["T"])
            .input(p.clone())
            .input(q.clone())
            .attr("transpose_a", AttrValue::from_b(t1))
            .attr("transpose_b", AttrValue::from_b(t2));
        out[i] = Some(c.e.add(n)?);
    }
    Ok(out)
}

/// Softmax: `(dy - sum(dy * y, -1, keepdims)) * y`.
pub(super) fn softmax(c: &mut GradCtx) -> Grads {
    let g = c.grad(0)?;
    let t = c.dtype();
    let y = c.y(0);
    let gy = c.e.op("mul", "Mul", &[&g, &y], t)?;
    let axis = c.e.ints("Sum/reduction_indices", &[-1])?;
    let s = c.e.sum(&gy, &axis, true, t)?;
    let d = c.e.op("sub", "Sub", &[&g, &s], t)?;
    Ok(vec![Some(c.e.op("mul_1", "Mul", &[&d, &y], t)?)])
}

/// SparseSoftmaxCrossEntropyWithLogits: `expand_dims(dloss, -1) * backprop`
/// (the op's second output); the labels get none.
pub(super) fn sparse_xent(c: &mut GradCtx) -> Grads {
    if c.grads[1].is_some() {
        return Err(c.unsupported("a gradient flows into its backprop output"));
    }
    let g = c.grad(0)?;
    let t = c.dtype();
    let dim = c.e.ints("ExpandDims/dim", &[-1])?;
    let n =
        c.e.node("ExpandDims", "ExpandDims")
            .input(g)
            .input(dim)
            .attr("Tdim", type_attr(psflow_kernels::DType::I32));
    let n = match t {
        Some(t) => n.attr("T", type_attr(t)),
        None => n,
    };
    let ge = c.e.add(n)?;
    Ok(vec![Some(c.e.op("mul", "Mul", &[&ge, &c.y(1)], t)?), None])
}

/// L2Loss (`sum(x²)/2`): `x * dy`.
pub(super) fn l2_loss(c: &mut GradCtx) -> Grads {
    let g = c.grad(0)?;
    let t = c.dtype();
    let x = c.x(0).clone();
    Ok(vec![Some(c.e.op("mul", "Mul", &[&x, &g], t)?)])
}
