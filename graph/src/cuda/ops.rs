//! The device side of [`CudaSession`]: each op with a CUDA kernel, its
//! attributes parsed as the CPU registry parses them, its host parameters
//! (sizes, axes, labels, handles, scalars) read on the host.

use std::sync::Arc;

use psflow_kernels::cuda::ops::depthwise::DepthwisePath;
use psflow_kernels::cuda::DeviceTensor;
use psflow_kernels::ops::optim::{AdamHyper, MomentumHyper, RmsPropHyper};
use psflow_kernels::{BatchNormParams, BinaryOp, Tensor, UnaryOp};

use super::place::host_inputs;
use super::session::{CudaSession, Value};
use crate::ir::Node;
use crate::registry::nn::{conv_params, four_sizes, pool_params};
use crate::registry::resource_name;
use crate::{Error, Result};

/// The inputs of one device op: device data and host parameters.
struct Args<'a> {
    s: &'a CudaSession,
    node: &'a Node,
    inputs: Vec<Option<Value>>,
}

impl Args<'_> {
    fn err(&self, detail: impl Into<String>) -> Error {
        Error::shape(&self.node.name, &self.node.op, detail)
    }

    fn k<T>(&self, r: psflow_kernels::Result<T>) -> Result<T> {
        r.map_err(|e| Error::kernel(&self.node.name, &self.node.op, e))
    }

    fn take(&mut self, i: usize) -> Result<Value> {
        self.inputs
            .get_mut(i)
            .and_then(Option::take)
            .ok_or_else(|| self.err(format!("input {i} is missing")))
    }

    /// Data input `i` on the device.
    fn dev(&mut self, i: usize) -> Result<Arc<DeviceTensor>> {
        let v = self.take(i)?;
        self.s
            .to_device(self.node, self.s.producer(self.node, i), v)
    }

    /// Parameter input `i` on the host.
    fn host(&mut self, i: usize) -> Result<Tensor> {
        let v = self.take(i)?;
        self.s.to_host(self.node, v)
    }

    fn ints(&mut self, i: usize) -> Result<Vec<i64>> {
        let t = self.host(i)?;
        self.k(t.to_i64_vec("index input"))
    }

    fn sizes4(&mut self, i: usize) -> Result<[usize; 4]> {
        let v = self.ints(i)?;
        four_sizes(&v).ok_or_else(|| {
            self.err(format!(
                "input {i} must hold 4 non-negative sizes, got {v:?}"
            ))
        })
    }

    fn scalar(&mut self, i: usize) -> Result<f32> {
        let t = self.host(i)?;
        if t.rank() != 0 {
            return Err(self.err(format!(
                "input {i} must be a scalar, got shape {:?}",
                t.shape()
            )));
        }
        self.k(t.scalar_value::<f32>("scalar input"))
    }

    fn handle(&mut self, i: usize) -> Result<String> {
        let t = self.host(i)?;
        resource_name(&t).map(str::to_string).ok_or_else(|| {
            self.err(format!(
                "input {i} is not a resource handle (the output of a VarHandleOp)"
            ))
        })
    }
}

fn dev(t: DeviceTensor) -> Value {
    Value::Dev(Arc::new(t))
}

/// An empty float tensor on the device (the unused outputs of batch norm).
fn empty(a: &Args) -> Result<Value> {
    Ok(dev(a.k(a.s.device().zeros(vec![0]))?))
}

/// A device tensor under another shape (no copy unless it is shared).
fn view(a: &Args, t: Arc<DeviceTensor>, shape: Vec<usize>) -> Result<Value> {
    let owned = match Arc::try_unwrap(t) {
        Ok(t) => t,
        Err(shared) => a.k(a.s.device().copy(&shared))?,
    };
    Ok(dev(a.k(owned.reshape(shape))?))
}

fn binary_op(op: &str) -> Option<BinaryOp> {
    Some(match op {
        "Add" | "AddV2" => BinaryOp::Add,
        "Sub" => BinaryOp::Sub,
        "Mul" => BinaryOp::Mul,
        "RealDiv" => BinaryOp::Div,
        "Maximum" => BinaryOp::Maximum,
        "Minimum" => BinaryOp::Minimum,
        "SquaredDifference" => BinaryOp::SquaredDifference,
        _ => return None,
    })
}

fn unary_op(op: &str) -> Option<UnaryOp> {
    Some(match op {
        "Neg" => UnaryOp::Neg,
        "Square" => UnaryOp::Square,
        "Sqrt" => UnaryOp::Sqrt,
        "Rsqrt" => UnaryOp::Rsqrt,
        "Exp" => UnaryOp::Exp,
        "Log" => UnaryOp::Log,
        "Abs" => UnaryOp::Abs,
        "Reciprocal" => UnaryOp::Reciprocal,
        _ => return None,
    })
}

fn bn_params(node: &Node) -> Result<BatchNormParams> {
    node.require_f32("T")?;
    node.require_nhwc()?;
    Ok(BatchNormParams {
        epsilon: node.attr_float_or("epsilon", 1e-4)?,
        exponential_avg_factor: node.attr_float_or("exponential_avg_factor", 1.0)?,
        is_training: node.attr_bool_or("is_training", true)?,
    })
}

/// Runs `node` on the device.
pub(super) fn run(
    s: &CudaSession,
    id: usize,
    node: &Node,
    inputs: Vec<Value>,
) -> Result<Vec<Value>> {
    let n = inputs.len();
    let mut a = Args {
        s,
        node,
        inputs: inputs.into_iter().map(Some).collect(),
    };
    let d = s.device();
    let op = node.op.as_str();
    debug_assert!(host_inputs(op, n).iter().all(|&i| i < n.max(1)));
    if let Some(b) = binary_op(op) {
        let (x, y) = (a.dev(0)?, a.dev(1)?);
        return Ok(vec![dev(a.k(d.binary(b, &x, &y))?)]);
    }
    if let Some(u) = unary_op(op) {
        let x = a.dev(0)?;
        return Ok(vec![dev(a.k(d.unary(u, &x))?)]);
    }
    Ok(match op {
        "Conv2D" | "DepthwiseConv2dNative" => {
            let p = conv_params(node)?;
            let (x, f) = (a.dev(0)?, a.dev(1)?);
            let y = if op == "Conv2D" {
                d.conv2d(&x, &f, &p)
            } else {
                d.depthwise_conv2d(&x, &f, &p, DepthwisePath::Auto)
            };
            vec![dev(a.k(y)?)]
        }
        "Conv2DBackpropInput" | "DepthwiseConv2dNativeBackpropInput" => {
            let p = conv_params(node)?;
            let sizes = a.sizes4(0)?;
            let (f, dy) = (a.dev(1)?, a.dev(2)?);
            let dx = if op == "Conv2DBackpropInput" {
                d.conv2d_backprop_input(sizes, &f, &dy, &p)
            } else {
                d.depthwise_conv2d_backprop_input(sizes, &f, &dy, &p)
            };
            vec![dev(a.k(dx)?)]
        }
        "Conv2DBackpropFilter" | "DepthwiseConv2dNativeBackpropFilter" => {
            let p = conv_params(node)?;
            let x = a.dev(0)?;
            let sizes = a.sizes4(1)?;
            let dy = a.dev(2)?;
            let dw = if op == "Conv2DBackpropFilter" {
                d.conv2d_backprop_filter(&x, sizes, &dy, &p)
            } else {
                d.depthwise_conv2d_backprop_filter(&x, sizes, &dy, &p)
            };
            vec![dev(a.k(dw)?)]
        }
        "FusedBatchNorm" | "FusedBatchNormV2" | "FusedBatchNormV3" => {
            node.require_f32("U").or_else(|e| {
                if op == "FusedBatchNorm" {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
            let p = bn_params(node)?;
            let i: Vec<Arc<DeviceTensor>> = (0..5).map(|i| a.dev(i)).collect::<Result<_>>()?;
            let o = a.k(d.fused_batch_norm(&i[0], &i[1], &i[2], &i[3], &i[4], &p, false))?;
            let mut out = vec![
                dev(o.y),
                dev(o.batch_mean),
                dev(o.batch_variance),
                dev(o.reserve_space_1),
                dev(o.reserve_space_2),
            ];
            if op == "FusedBatchNormV3" {
                out.push(empty(&a)?);
            }
            out
        }
        "FusedBatchNormGrad" | "FusedBatchNormGradV2" | "FusedBatchNormGradV3" => {
            node.require_nhwc()?;
            let epsilon = node.attr_float_or("epsilon", 1e-4)?;
            let is_training = node.attr_bool_or("is_training", true)?;
            let i: Vec<Arc<DeviceTensor>> = (0..5).map(|i| a.dev(i)).collect::<Result<_>>()?;
            let g = a.k(d.fused_batch_norm_grad(
                &i[0],
                None,
                &i[1],
                &i[2],
                &i[3],
                &i[4],
                epsilon,
                is_training,
            ))?;
            vec![
                dev(g.dx),
                dev(g.dscale),
                dev(g.doffset),
                empty(&a)?,
                empty(&a)?,
            ]
        }
        "Relu" | "Relu6" => {
            let x = a.dev(0)?;
            let y = if op == "Relu" {
                d.relu(&x)
            } else {
                d.relu6(&x)
            };
            vec![dev(a.k(y)?)]
        }
        "ReluGrad" | "Relu6Grad" => {
            let (g, f) = (a.dev(0)?, a.dev(1)?);
            let y = if op == "ReluGrad" {
                d.relu_grad(&g, &f)
            } else {
                d.relu6_grad(&g, &f)
            };
            vec![dev(a.k(y)?)]
        }
        "AddN" => {
            let xs: Vec<Arc<DeviceTensor>> = (0..n).map(|i| a.dev(i)).collect::<Result<_>>()?;
            let refs: Vec<&DeviceTensor> = xs.iter().map(|x| x.as_ref()).collect();
            vec![dev(a.k(d.add_n(&refs))?)]
        }
        "BiasAdd" => {
            node.require_nhwc()?;
            let (x, b) = (a.dev(0)?, a.dev(1)?);
            vec![dev(a.k(d.bias_add(&x, &b))?)]
        }
        "BiasAddGrad" => {
            node.require_nhwc()?;
            let dy = a.dev(0)?;
            vec![dev(a.k(d.bias_add_grad(&dy))?)]
        }
        "Sum" | "Mean" => {
            let keep = node.attr_bool_or("keep_dims", false)?;
            let x = a.dev(0)?;
            let axes = a.ints(1)?;
            let y = if op == "Sum" {
                d.sum(&x, &axes, keep)
            } else {
                d.mean(&x, &axes, keep)
            };
            vec![dev(a.k(y)?)]
        }
        "L2Loss" => {
            let x = a.dev(0)?;
            vec![dev(a.k(d.l2_loss(&x))?)]
        }
        "MatMul" => {
            let ta = node.attr_bool_or("transpose_a", false)?;
            let tb = node.attr_bool_or("transpose_b", false)?;
            let (x, y) = (a.dev(0)?, a.dev(1)?);
            vec![dev(a.k(d.matmul_tf32(&x, &y, ta, tb))?)]
        }
        "Softmax" => {
            let x = a.dev(0)?;
            vec![dev(a.k(d.softmax(&x))?)]
        }
        "SparseSoftmaxCrossEntropyWithLogits" => {
            let logits = a.dev(0)?;
            let labels = a.host(1)?;
            let classes = logits.shape().last().copied().unwrap_or(0);
            let ids = a.k(d.upload_labels(&labels, classes))?;
            let (loss, backprop) = a.k(d.sparse_softmax_cross_entropy(&logits, &ids))?;
            vec![dev(loss), dev(backprop)]
        }
        "SoftmaxCrossEntropyWithLogits" => {
            let (logits, labels) = (a.dev(0)?, a.dev(1)?);
            let (loss, backprop) = a.k(d.softmax_cross_entropy(&logits, &labels))?;
            vec![dev(loss), dev(backprop)]
        }
        "AvgPool" => {
            let p = pool_params(node)?;
            let x = a.dev(0)?;
            vec![dev(a.k(d.avg_pool(&x, &p))?)]
        }
        "AvgPoolGrad" => {
            let p = pool_params(node)?;
            let sizes = a.sizes4(0)?;
            let g = a.dev(1)?;
            vec![dev(a.k(d.avg_pool_grad(sizes, &g, &p))?)]
        }
        "BroadcastTo" => {
            let x = a.dev(0)?;
            let shape = a.ints(1)?;
            if shape.iter().any(|&v| v < 0) {
                return Err(a.err(format!("shape {shape:?} has a negative size")));
            }
            let shape: Vec<usize> = shape.iter().map(|&v| v as usize).collect();
            if shape == x.shape() {
                vec![Value::Dev(x)]
            } else {
                // x + 0 broadcast to the shape: exact for every finite x.
                let zeros = a.k(d.zeros(shape))?;
                vec![dev(a.k(d.binary(BinaryOp::Add, &x, &zeros))?)]
            }
        }
        "ConcatV2" => {
            let n_parts = n - 1;
            let axis = a.ints(n_parts)?;
            let parts: Vec<Arc<DeviceTensor>> =
                (0..n_parts).map(|i| a.dev(i)).collect::<Result<_>>()?;
            let rank = parts[0].shape().len() as i64;
            let axis = match axis[..] {
                [v] if (-rank..rank).contains(&v) => (if v < 0 { v + rank } else { v }) as usize,
                _ => return Err(a.err(format!("axis {axis:?} is out of range for rank {rank}"))),
            };
            let mut shape = parts[0].shape().to_vec();
            for p in &parts[1..] {
                let same = p.shape().len() == shape.len()
                    && p.shape()
                        .iter()
                        .zip(&shape)
                        .enumerate()
                        .all(|(i, (x, y))| i == axis || x == y);
                if !same {
                    return Err(a.err(format!(
                        "parts of shapes {:?} and {:?} cannot be joined on axis {axis}",
                        parts[0].shape(),
                        p.shape()
                    )));
                }
                shape[axis] += p.shape()[axis];
            }
            if shape[..axis].iter().all(|&d| d == 1) {
                let refs: Vec<&DeviceTensor> = parts.iter().map(|p| p.as_ref()).collect();
                vec![dev(a.k(d.concat_flat(&refs, shape))?)]
            } else {
                let mut inputs: Vec<Value> = parts.into_iter().map(Value::Dev).collect();
                inputs.push(Value::Host(int_tensor(&[axis as i64])));
                through_host(s, id, node, inputs)?
            }
        }
        "Slice" => {
            let x = a.dev(0)?;
            let begin = a.ints(1)?;
            let size = a.ints(2)?;
            let dims = x.shape().to_vec();
            if begin.len() != dims.len() || size.len() != dims.len() {
                return Err(a.err(format!(
                    "begin {begin:?} and size {size:?} must have one entry per axis of {dims:?}"
                )));
            }
            let mut out = Vec::with_capacity(dims.len());
            for i in 0..dims.len() {
                let b = begin[i];
                let n = if size[i] == -1 {
                    dims[i] as i64 - b
                } else {
                    size[i]
                };
                if b < 0 || n < 0 || b + n > dims[i] as i64 {
                    return Err(a.err(format!(
                        "begin {begin:?} size {size:?} is outside shape {dims:?}"
                    )));
                }
                out.push(n as usize);
            }
            match contiguous_offset(&dims, &begin, &out) {
                Some(offset) => vec![dev(a.k(d.slice_flat(&x, offset, out))?)],
                None => through_host(
                    s,
                    id,
                    node,
                    vec![
                        Value::Dev(x),
                        Value::Host(int_tensor(&begin)),
                        Value::Host(int_tensor(&size)),
                    ],
                )?,
            }
        }
        "Identity" | "StopGradient" => vec![Value::Dev(a.dev(0)?)],
        "Reshape" => {
            let x = a.dev(0)?;
            let target = a.ints(1)?;
            let shape = reshape_target(&a, &target, x.len())?;
            vec![view(&a, x, shape)?]
        }
        "Squeeze" => {
            let x = a.dev(0)?;
            let dims = node.attr_ints_or("squeeze_dims", &[])?.to_vec();
            let rank = x.shape().len() as i64;
            let squeezed: Vec<usize> = dims
                .iter()
                .map(|&v| if v < 0 { v + rank } else { v })
                .map(|v| v as usize)
                .collect();
            let shape: Vec<usize> = x
                .shape()
                .iter()
                .enumerate()
                .filter(|&(i, &s)| {
                    if squeezed.is_empty() {
                        s != 1
                    } else {
                        !squeezed.contains(&i)
                    }
                })
                .map(|(_, &s)| s)
                .collect();
            vec![view(&a, x, shape)?]
        }
        "ExpandDims" => {
            let x = a.dev(0)?;
            let dim = a.ints(1)?;
            let rank = x.shape().len() as i64;
            let at = match dim[..] {
                [v] if (-rank - 1..=rank).contains(&v) => {
                    if v < 0 {
                        (v + rank + 1) as usize
                    } else {
                        v as usize
                    }
                }
                _ => return Err(a.err(format!("dim {dim:?} is out of range for rank {rank}"))),
            };
            let mut shape = x.shape().to_vec();
            shape.insert(at, 1);
            vec![view(&a, x, shape)?]
        }
        "ReadVariableOp" => {
            let name = a.handle(0)?;
            vec![Value::Dev(s.variable(node, &name)?)]
        }
        "AssignVariableOp" => {
            let name = a.handle(0)?;
            let v = a.dev(1)?;
            let owned = match Arc::try_unwrap(v) {
                Ok(t) => t,
                Err(shared) => a.k(d.copy(&shared))?,
            };
            s.put_variable(&name, owned);
            vec![]
        }
        "AssignAddVariableOp" | "AssignSubVariableOp" => {
            let name = a.handle(0)?;
            let v = a.dev(1)?;
            let cur = s.variable(node, &name)?;
            if cur.shape() != v.shape() {
                return Err(a.err(format!(
                    "variable {name:?} has shape {:?}, the value {:?}",
                    cur.shape(),
                    v.shape()
                )));
            }
            let b = if op == "AssignAddVariableOp" {
                BinaryOp::Add
            } else {
                BinaryOp::Sub
            };
            let updated = a.k(d.binary(b, &cur, &v))?;
            drop(cur);
            s.put_variable(&name, updated);
            vec![]
        }
        "ResourceApplyGradientDescent" => {
            let name = a.handle(0)?;
            let lr = a.scalar(1)?;
            let g = a.dev(2)?;
            let mut var = s.take_variable(node, &name)?;
            let r = d.apply_gradient_descent(&mut var, &g, lr);
            s.put_variable(&name, var);
            a.k(r)?;
            vec![]
        }
        "ResourceApplyMomentum" => {
            let names = [a.handle(0)?, a.handle(1)?];
            let lr = a.scalar(2)?;
            let g = a.dev(3)?;
            let momentum = a.scalar(4)?;
            let h = MomentumHyper {
                lr,
                momentum,
                use_nesterov: node.attr_bool_or("use_nesterov", false)?,
            };
            let [mut var, mut accum] = take_all(s, node, &names)?;
            let r = d.apply_momentum(&mut var, &mut accum, &g, h);
            put_all(s, &names, [var, accum]);
            a.k(r)?;
            vec![]
        }
        "ResourceApplyRMSProp" => {
            let names = [a.handle(0)?, a.handle(1)?, a.handle(2)?];
            let h = RmsPropHyper {
                lr: a.scalar(3)?,
                rho: a.scalar(4)?,
                momentum: a.scalar(5)?,
                epsilon: a.scalar(6)?,
            };
            let g = a.dev(7)?;
            let [mut var, mut ms, mut mom] = take_all(s, node, &names)?;
            let r = d.apply_rmsprop(&mut var, &mut ms, &mut mom, &g, h);
            put_all(s, &names, [var, ms, mom]);
            a.k(r)?;
            vec![]
        }
        "ResourceApplyAdam" => {
            let names = [a.handle(0)?, a.handle(1)?, a.handle(2)?];
            let h = AdamHyper {
                beta1_power: a.scalar(3)?,
                beta2_power: a.scalar(4)?,
                lr: a.scalar(5)?,
                beta1: a.scalar(6)?,
                beta2: a.scalar(7)?,
                epsilon: a.scalar(8)?,
                use_nesterov: node.attr_bool_or("use_nesterov", false)?,
            };
            let g = a.dev(9)?;
            let [mut var, mut m, mut v] = take_all(s, node, &names)?;
            let r = d.apply_adam(&mut var, &mut m, &mut v, &g, h);
            put_all(s, &names, [var, m, v]);
            a.k(r)?;
            vec![]
        }
        other => {
            return Err(Error::InvalidNode {
                node: node.name.clone(),
                detail: format!("{other} has no CUDA kernel (placement error)"),
            })
        }
    })
}

/// Takes several distinct variables out for an update.
fn take_all<const N: usize>(
    s: &CudaSession,
    node: &Node,
    names: &[String; N],
) -> Result<[DeviceTensor; N]> {
    for (i, a) in names.iter().enumerate() {
        if names[..i].contains(a) {
            return Err(Error::InvalidNode {
                node: node.name.clone(),
                detail: format!("variable {a:?} is passed twice"),
            });
        }
    }
    let mut taken = Vec::with_capacity(N);
    for name in names {
        match s.take_variable(node, name) {
            Ok(t) => taken.push(t),
            Err(e) => {
                for (n, t) in names.iter().zip(taken) {
                    s.put_variable(n, t);
                }
                return Err(e);
            }
        }
    }
    Ok(taken.try_into().expect("N taken"))
}

fn put_all<const N: usize>(s: &CudaSession, names: &[String; N], ts: [DeviceTensor; N]) {
    for (n, t) in names.iter().zip(ts) {
        s.put_variable(n, t);
    }
}

/// `Reshape`'s target with at most one -1 resolved for `n` elements.
fn reshape_target(a: &Args, target: &[i64], n: usize) -> Result<Vec<usize>> {
    let known: i64 = target.iter().filter(|&&v| v >= 0).product();
    let unknown = target.iter().filter(|&&v| v == -1).count();
    if target.iter().any(|&v| v < -1) || unknown > 1 {
        return Err(a.err(format!("bad reshape target {target:?}")));
    }
    let fill = if unknown == 1 {
        if known == 0 || n as i64 % known != 0 {
            return Err(a.err(format!("cannot reshape {n} elements to {target:?}")));
        }
        n as i64 / known
    } else {
        if known != n as i64 {
            return Err(a.err(format!("cannot reshape {n} elements to {target:?}")));
        }
        0
    };
    Ok(target
        .iter()
        .map(|&v| if v == -1 { fill as usize } else { v as usize })
        .collect())
}

/// An int32 index tensor (the host inputs rebuilt for a host fallback).
fn int_tensor(v: &[i64]) -> Tensor {
    Tensor::new(
        vec![v.len()],
        v.iter().map(|&x| x as i32).collect::<Vec<i32>>(),
    )
    .expect("length matches")
}

/// The case a device kernel does not cover: the CPU kernel on downloaded
/// inputs (each download counted), the outputs uploaded.
fn through_host(s: &CudaSession, id: usize, node: &Node, inputs: Vec<Value>) -> Result<Vec<Value>> {
    s.run_on_host(id, node, inputs)?
        .into_iter()
        .map(|v| Ok(Value::Dev(s.to_device(node, None, v)?)))
        .collect()
}

/// Where a slice of `dims` starting at `begin` with extents `size` starts
/// in the flat buffer, when it is one contiguous range: every axis after
/// the last partial one is whole (by definition), every axis before it has
/// extent 1.
fn contiguous_offset(dims: &[usize], begin: &[i64], size: &[usize]) -> Option<usize> {
    let partial = (0..dims.len())
        .rev()
        .find(|&i| begin[i] != 0 || size[i] != dims[i]);
    let Some(j) = partial else {
        return Some(0);
    };
    if size[..j].iter().any(|&n| n != 1) {
        return None;
    }
    let mut stride = 1usize;
    let mut offset = 0usize;
    for i in (0..dims.len()).rev() {
        offset += begin[i] as usize * stride;
        stride *= dims[i];
    }
    Some(offset)
}

#[cfg(test)]
mod tests {
    use super::contiguous_offset;

    #[test]
    fn contiguous_slices_are_found() {
        // Rows 2..5 of a [6, 4] matrix.
        assert_eq!(contiguous_offset(&[6, 4], &[2, 0], &[3, 4]), Some(8));
        // The whole tensor.
        assert_eq!(contiguous_offset(&[6, 4], &[0, 0], &[6, 4]), Some(0));
        // Part of one row: contiguous.
        assert_eq!(contiguous_offset(&[6, 4], &[1, 1], &[1, 2]), Some(5));
        // Columns of several rows: not.
        assert_eq!(contiguous_offset(&[6, 4], &[0, 1], &[2, 2]), None);
        // A 3×3×c×m filter split on its first axis.
        assert_eq!(
            contiguous_offset(&[3, 3, 8, 1], &[1, 0, 0, 0], &[2, 3, 8, 1]),
            Some(24)
        );
    }
}
