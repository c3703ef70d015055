//! Neural-network ops: convolutions (regular and depthwise) and their
//! gradients, batch norm, activations, pooling, MatMul/BiasAdd, softmax,
//! cross-entropy and L2Loss.

use psflow_kernels::ops::{activation, batchnorm, conv, depthwise, matmul, pool, softmax};
use psflow_kernels::{
    window_dim, BatchNormParams, Conv2dParams, DType, Padding, PoolParams, Tensor,
};

use super::{
    expect_inputs, same_as_input, FnKernel, InferCtx, OpContext, OpKernel, Registry, TensorInfo,
};
use crate::ir::Node;
use crate::shape::{merge_dim, Shape};
use crate::Result;

type Built = Result<Box<dyn OpKernel>>;

pub(super) fn register(r: &mut Registry) {
    r.register("Conv2D", conv2d);
    r.register("DepthwiseConv2dNative", conv2d);
    r.register("Conv2DBackpropInput", conv2d_backprop_input);
    r.register("DepthwiseConv2dNativeBackpropInput", conv2d_backprop_input);
    r.register("Conv2DBackpropFilter", conv2d_backprop_filter);
    r.register(
        "DepthwiseConv2dNativeBackpropFilter",
        conv2d_backprop_filter,
    );
    r.register("FusedBatchNorm", fused_batch_norm);
    r.register("FusedBatchNormV2", fused_batch_norm);
    r.register("FusedBatchNormV3", fused_batch_norm);
    r.register("FusedBatchNormGradV3", fused_batch_norm_grad);
    r.register("Relu", activation);
    r.register("Relu6", activation);
    r.register("ReluGrad", activation_grad);
    r.register("Relu6Grad", activation_grad);
    r.register("AvgPool", pool);
    r.register("MaxPool", pool);
    r.register("AvgPoolGrad", avg_pool_grad);
    r.register("MaxPoolGrad", max_pool_grad);
    r.register("MatMul", mat_mul);
    r.register("BiasAdd", bias_add);
    r.register("BiasAddGrad", bias_add_grad);
    r.register("Softmax", softmax_op);
    r.register("LogSoftmax", softmax_op);
    r.register("SparseSoftmaxCrossEntropyWithLogits", cross_entropy);
    r.register("SoftmaxCrossEntropyWithLogits", cross_entropy);
    r.register("L2Loss", l2_loss);
}

/// Attributes shared by Conv2D, DepthwiseConv2dNative and their gradients;
/// settings that would change results and are unsupported are errors.
pub(crate) fn conv_params(node: &Node) -> Result<Conv2dParams> {
    node.require_f32("T")?;
    node.require_nhwc()?;
    node.require_no_dilation()?;
    Ok(Conv2dParams {
        strides: node.attr_hw("strides", None)?,
        padding: node.attr_padding()?,
    })
}

/// One spatial output dimension from partially known sizes.
fn out_dim(
    ctx: &InferCtx,
    input: i64,
    k: i64,
    stride: usize,
    padding: Padding,
    axis: usize,
) -> Result<i64> {
    if input < 0 {
        return Ok(-1);
    }
    if k < 0 {
        return Ok(match padding {
            Padding::Same => (input as usize).div_ceil(stride) as i64,
            _ => -1,
        });
    }
    window_dim("", input as usize, k as usize, stride, padding, axis)
        .map(|d| d.out as i64)
        .map_err(|e| ctx.err(e.to_string().trim_start_matches(": ").to_string()))
}

/// Output shape of a (depthwise) convolution; `depthwise` multiplies the
/// input channels by the multiplier instead of taking the filter's outputs.
fn conv_shape(
    ctx: &InferCtx,
    x: &[i64],
    f: &[i64],
    p: &Conv2dParams,
    depthwise: bool,
) -> Result<Vec<i64>> {
    merge_dim(x[3], f[2])
        .map_err(|(a, b)| ctx.err(format!("input has {a} channels but the filter expects {b}")))?;
    let oh = out_dim(ctx, x[1], f[0], p.strides[0], p.padding, 0)?;
    let ow = out_dim(ctx, x[2], f[1], p.strides[1], p.padding, 1)?;
    let oc = if depthwise {
        let c = if x[3] >= 0 { x[3] } else { f[2] };
        if c < 0 || f[3] < 0 {
            -1
        } else {
            c * f[3]
        }
    } else {
        f[3]
    };
    Ok(vec![x[0], oh, ow, oc])
}

fn conv2d(node: &Node) -> Built {
    expect_inputs(node, 2)?;
    let p = conv_params(node)?;
    let depthwise = node.op.starts_with("Depthwise");
    FnKernel::boxed(
        1,
        move |ctx| {
            let x = ctx.dims(0, 4, "input")?;
            let f = ctx.dims(1, 4, "filter")?;
            let s = conv_shape(ctx, &x, &f, &p, depthwise)?;
            Ok(vec![TensorInfo::new(DType::F32, Shape::Known(s))])
        },
        move |ctx| {
            let (x, f) = (ctx.input(0), ctx.input(1));
            let y = if depthwise {
                depthwise::depthwise_conv2d(x, f, &p)
            } else {
                conv::conv2d(x, f, &p)
            };
            Ok(vec![ctx.k(y)?])
        },
    )
}

/// A 4-element size input (input_sizes, filter_sizes, orig_input_shape).
fn sizes4(ctx: &OpContext, i: usize) -> Result<[usize; 4]> {
    let v = ctx.ints(i)?;
    four_sizes(&v).ok_or_else(|| {
        ctx.err(format!(
            "input {i} must hold 4 non-negative sizes, got {v:?}"
        ))
    })
}

/// Four non-negative sizes, or None.
pub(crate) fn four_sizes(v: &[i64]) -> Option<[usize; 4]> {
    match *v {
        [a, b, c, d] if v.iter().all(|&x| x >= 0) => {
            Some([a as usize, b as usize, c as usize, d as usize])
        }
        _ => None,
    }
}

/// Shape from a 4-element sizes input known at inference time.
fn sizes_shape(ctx: &InferCtx, i: usize) -> Result<Shape> {
    ctx.expect_rank(i, 1, "sizes")?;
    Ok(match ctx.ints(i) {
        Some(v) if v.len() == 4 => Shape::Known(v),
        Some(v) => return Err(ctx.err(format!("input {i} must hold 4 sizes, got {v:?}"))),
        None => Shape::of_rank(4),
    })
}

fn conv2d_backprop_input(node: &Node) -> Built {
    expect_inputs(node, 3)?;
    let p = conv_params(node)?;
    let depthwise = node.op.starts_with("Depthwise");
    FnKernel::boxed(
        1,
        |ctx| Ok(vec![TensorInfo::new(DType::F32, sizes_shape(ctx, 0)?)]),
        move |ctx| {
            let sizes = sizes4(ctx, 0)?;
            let (f, dy) = (ctx.input(1), ctx.input(2));
            let dx = if depthwise {
                depthwise::depthwise_conv2d_backprop_input(sizes, f, dy, &p)
            } else {
                conv::conv2d_backprop_input(sizes, f, dy, &p)
            };
            Ok(vec![ctx.k(dx)?])
        },
    )
}

fn conv2d_backprop_filter(node: &Node) -> Built {
    expect_inputs(node, 3)?;
    let p = conv_params(node)?;
    let depthwise = node.op.starts_with("Depthwise");
    FnKernel::boxed(
        1,
        |ctx| Ok(vec![TensorInfo::new(DType::F32, sizes_shape(ctx, 1)?)]),
        move |ctx| {
            let sizes = sizes4(ctx, 1)?;
            let (x, dy) = (ctx.input(0), ctx.input(2));
            let df = if depthwise {
                depthwise::depthwise_conv2d_backprop_filter(x, sizes, dy, &p)
            } else {
                conv::conv2d_backprop_filter(x, sizes, dy, &p)
            };
            Ok(vec![ctx.k(df)?])
        },
    )
}

/// The channel count of a channels-last input and of `[c]` parameters.
fn channels(ctx: &InferCtx, x: usize, params: std::ops::Range<usize>) -> Result<i64> {
    let mut c = match ctx.shape(x) {
        Shape::Known(d) if d.is_empty() => return Err(ctx.err("x must have rank ≥ 1")),
        Shape::Known(d) => d[d.len() - 1],
        Shape::Unknown => -1,
    };
    for i in params {
        // Mean and variance may be empty in training mode.
        if ctx.shape(i).dims() == Some(&[0][..]) {
            continue;
        }
        let d = ctx.dims(i, 1, "scale, offset, mean and variance")?;
        c = merge_dim(c, d[0])
            .map_err(|(a, b)| ctx.err(format!("input {i} has {b} channels, x has {a}")))?;
    }
    Ok(c)
}

fn fused_batch_norm(node: &Node) -> Built {
    expect_inputs(node, 5)?;
    node.require_f32("T")?;
    node.require_f32("U")?;
    node.require_nhwc()?;
    let p = BatchNormParams {
        epsilon: node.attr_float_or("epsilon", 1e-4)?,
        exponential_avg_factor: node.attr_float_or("exponential_avg_factor", 1.0)?,
        is_training: node.attr_bool_or("is_training", true)?,
    };
    let outputs = if node.op == "FusedBatchNormV3" { 6 } else { 5 };
    FnKernel::boxed(
        outputs,
        move |ctx| {
            let c = channels(ctx, 0, 1..5)?;
            let mut out = vec![TensorInfo::new(DType::F32, ctx.shape(0).clone())];
            out.extend((1..5).map(|_| TensorInfo::new(DType::F32, Shape::Known(vec![c]))));
            if outputs == 6 {
                out.push(TensorInfo::new(DType::F32, Shape::Unknown));
            }
            Ok(out)
        },
        move |ctx| {
            let i = &ctx.inputs;
            let o = ctx.k(batchnorm::fused_batch_norm(
                &i[0], &i[1], &i[2], &i[3], &i[4], &p,
            ))?;
            let mut out = vec![
                o.y,
                o.batch_mean,
                o.batch_variance,
                o.reserve_space_1,
                o.reserve_space_2,
            ];
            if outputs == 6 {
                out.push(o.reserve_space_3);
            }
            Ok(out)
        },
    )
}

fn fused_batch_norm_grad(node: &Node) -> Built {
    expect_inputs(node, 6)?;
    node.require_f32("T")?;
    node.require_f32("U")?;
    node.require_nhwc()?;
    let epsilon = node.attr_float_or("epsilon", 1e-4)?;
    let is_training = node.attr_bool_or("is_training", true)?;
    FnKernel::boxed(
        5,
        |ctx| {
            let x = ctx.shape(0).merge(ctx.shape(1)).ok_or_else(|| {
                ctx.err(format!(
                    "y_backprop {} and x {} differ",
                    ctx.shape(0),
                    ctx.shape(1)
                ))
            })?;
            let c = channels(ctx, 1, 2..5)?;
            let vec_c = TensorInfo::new(DType::F32, Shape::Known(vec![c]));
            let empty = TensorInfo::new(DType::F32, Shape::Known(vec![0]));
            Ok(vec![
                TensorInfo::new(DType::F32, x),
                vec_c.clone(),
                vec_c,
                empty.clone(),
                empty,
            ])
        },
        move |ctx| {
            let i = &ctx.inputs;
            let g = ctx.k(batchnorm::fused_batch_norm_grad(
                &i[0],
                &i[1],
                &i[2],
                &i[3],
                &i[4],
                epsilon,
                is_training,
            ))?;
            let empty = Tensor::zeros(DType::F32, vec![0]);
            Ok(vec![g.dx, g.dscale, g.doffset, empty.clone(), empty])
        },
    )
}

fn activation(node: &Node) -> Built {
    expect_inputs(node, 1)?;
    node.require_f32("T")?;
    let f = if node.op == "Relu6" {
        activation::relu6
    } else {
        activation::relu
    };
    FnKernel::boxed(
        1,
        |ctx| Ok(same_as_input(ctx, 0)),
        move |ctx| Ok(vec![ctx.k(f(ctx.input(0)))?]),
    )
}

fn activation_grad(node: &Node) -> Built {
    expect_inputs(node, 2)?;
    node.require_f32("T")?;
    let f = if node.op == "Relu6Grad" {
        activation::relu6_grad
    } else {
        activation::relu_grad
    };
    FnKernel::boxed(
        1,
        |ctx| {
            let s = ctx.shape(0).merge(ctx.shape(1)).ok_or_else(|| {
                ctx.err(format!(
                    "gradients {} and features {} differ",
                    ctx.shape(0),
                    ctx.shape(1)
                ))
            })?;
            Ok(vec![TensorInfo::new(ctx.dtype(0), s)])
        },
        move |ctx| Ok(vec![ctx.k(f(ctx.input(0), ctx.input(1)))?]),
    )
}

pub(crate) fn pool_params(node: &Node) -> Result<PoolParams> {
    node.require_f32("T")?;
    node.require_nhwc()?;
    Ok(PoolParams {
        ksize: node.attr_hw("ksize", None)?,
        strides: node.attr_hw("strides", None)?,
        padding: node.attr_padding()?,
    })
}

fn pool_shape(ctx: &InferCtx, i: usize, p: &PoolParams) -> Result<Shape> {
    let x = ctx.dims(i, 4, "input")?;
    let oh = out_dim(ctx, x[1], p.ksize[0] as i64, p.strides[0], p.padding, 0)?;
    let ow = out_dim(ctx, x[2], p.ksize[1] as i64, p.strides[1], p.padding, 1)?;
    Ok(Shape::Known(vec![x[0], oh, ow, x[3]]))
}

fn pool(node: &Node) -> Built {
    expect_inputs(node, 1)?;
    let p = pool_params(node)?;
    let f = if node.op == "MaxPool" {
        pool::max_pool
    } else {
        pool::avg_pool
    };
    FnKernel::boxed(
        1,
        move |ctx| Ok(vec![TensorInfo::new(DType::F32, pool_shape(ctx, 0, &p)?)]),
        move |ctx| Ok(vec![ctx.k(f(ctx.input(0), &p))?]),
    )
}

fn avg_pool_grad(node: &Node) -> Built {
    expect_inputs(node, 2)?;
    let p = pool_params(node)?;
    FnKernel::boxed(
        1,
        |ctx| Ok(vec![TensorInfo::new(DType::F32, sizes_shape(ctx, 0)?)]),
        move |ctx| {
            let sizes = sizes4(ctx, 0)?;
            Ok(vec![ctx.k(pool::avg_pool_grad(sizes, ctx.input(1), &p))?])
        },
    )
}

fn max_pool_grad(node: &Node) -> Built {
    expect_inputs(node, 3)?;
    let p = pool_params(node)?;
    FnKernel::boxed(
        1,
        move |ctx| {
            let out = pool_shape(ctx, 0, &p)?;
            if out.merge(ctx.shape(1)).is_none() || out.merge(ctx.shape(2)).is_none() {
                return Err(ctx.err(format!(
                    "orig_output {} and grad {} must have the pooled shape {out}",
                    ctx.shape(1),
                    ctx.shape(2)
                )));
            }
            Ok(same_as_input(ctx, 0))
        },
        move |ctx| {
            let i = &ctx.inputs;
            Ok(vec![ctx.k(pool::max_pool_grad(&i[0], &i[1], &i[2], &p))?])
        },
    )
}

fn mat_mul(node: &Node) -> Built {
    expect_inputs(node, 2)?;
    node.require_f32("T")?;
    let ta = node.attr_bool_or("transpose_a", false)?;
    let tb = node.attr_bool_or("transpose_b", false)?;
    FnKernel::boxed(
        1,
        move |ctx| {
            let a = ctx.dims(0, 2, "a")?;
            let b = ctx.dims(1, 2, "b")?;
            let (m, ka) = if ta { (a[1], a[0]) } else { (a[0], a[1]) };
            let (kb, n) = if tb { (b[1], b[0]) } else { (b[0], b[1]) };
            merge_dim(ka, kb).map_err(|(x, y)| {
                ctx.err(format!(
                    "inner dimensions differ: {x} vs {y} (a {}, b {})",
                    ctx.shape(0),
                    ctx.shape(1)
                ))
            })?;
            Ok(vec![TensorInfo::new(DType::F32, Shape::Known(vec![m, n]))])
        },
        move |ctx| {
            Ok(vec![ctx.k(matmul::matmul(
                ctx.input(0),
                ctx.input(1),
                ta,
                tb,
            ))?])
        },
    )
}

fn bias_add(node: &Node) -> Built {
    expect_inputs(node, 2)?;
    node.require_f32("T")?;
    node.require_nhwc()?;
    FnKernel::boxed(
        1,
        |ctx| {
            channels(ctx, 0, 1..2)?;
            Ok(same_as_input(ctx, 0))
        },
        |ctx| Ok(vec![ctx.k(matmul::bias_add(ctx.input(0), ctx.input(1)))?]),
    )
}

fn bias_add_grad(node: &Node) -> Built {
    expect_inputs(node, 1)?;
    node.require_f32("T")?;
    node.require_nhwc()?;
    FnKernel::boxed(
        1,
        |ctx| {
            let c = channels(ctx, 0, 0..0)?;
            Ok(vec![TensorInfo::new(DType::F32, Shape::Known(vec![c]))])
        },
        |ctx| Ok(vec![ctx.k(matmul::bias_add_grad(ctx.input(0)))?]),
    )
}

fn softmax_op(node: &Node) -> Built {
    expect_inputs(node, 1)?;
    node.require_f32("T")?;
    let f = if node.op == "LogSoftmax" {
        softmax::log_softmax
    } else {
        softmax::softmax
    };
    FnKernel::boxed(
        1,
        |ctx| Ok(same_as_input(ctx, 0)),
        move |ctx| Ok(vec![ctx.k(f(ctx.input(0)))?]),
    )
}

fn cross_entropy(node: &Node) -> Built {
    expect_inputs(node, 2)?;
    node.require_f32("T")?;
    let sparse = node.op.starts_with("Sparse");
    FnKernel::boxed(
        2,
        move |ctx| {
            let l = ctx.dims(0, 2, "logits")?;
            let batch = if sparse {
                let y = ctx.dims(1, 1, "labels")?;
                merge_dim(l[0], y[0])
            } else {
                let y = ctx.dims(1, 2, "labels")?;
                merge_dim(l[1], y[1]).and_then(|_| merge_dim(l[0], y[0]))
            }
            .map_err(|(a, b)| {
                ctx.err(format!(
                    "logits {} and labels {} do not fit ({a} vs {b})",
                    ctx.shape(0),
                    ctx.shape(1)
                ))
            })?;
            Ok(vec![
                TensorInfo::new(DType::F32, Shape::Known(vec![batch])),
                TensorInfo::new(DType::F32, Shape::Known(vec![batch, l[1]])),
            ])
        },
        move |ctx| {
            let (loss, backprop) = if sparse {
                ctx.k(softmax::sparse_softmax_cross_entropy(
                    ctx.input(0),
                    ctx.input(1),
                ))?
            } else {
                ctx.k(softmax::softmax_cross_entropy(ctx.input(0), ctx.input(1)))?
            };
            Ok(vec![loss, backprop])
        },
    )
}

fn l2_loss(node: &Node) -> Built {
    expect_inputs(node, 1)?;
    node.require_f32("T")?;
    FnKernel::boxed(
        1,
        |ctx| Ok(vec![TensorInfo::new(ctx.dtype(0), Shape::scalar())]),
        |ctx| Ok(vec![ctx.k(softmax::l2_loss(ctx.input(0)))?]),
    )
}
