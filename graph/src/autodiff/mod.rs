//! Reverse-mode automatic differentiation on the graph IR, as TensorFlow's
//! `tf.gradients`: [`gradients`] adds the backward subgraph to a graph,
//! with TensorFlow's gradient ops (Conv2DBackpropInput/Filter,
//! FusedBatchNormGradV3, Relu6Grad, BroadcastGradientArgs, …) and names
//! under `gradients/<node>_grad/`, so the result is a GraphDef that
//! `psflow run` (and TensorFlow) executes.
//!
//! How: shape inference gives every tensor's dtype and partial shape; the
//! nodes on a data path from the xs to the ys are visited in reverse
//! topological order; each output's incoming gradients are summed with
//! `AddN` (`gradients/AddN…`), and the op's gradient function
//! ([`math`], [`nn`]) emits the input gradients. Only inputs reached from
//! the xs with a float dtype get gradients, so e.g. the first conv layer
//! gets no `Conv2DBackpropInput`. A constant is used for a shape that is
//! known statically, a `Shape` op otherwise (unknown batch size).

mod emit;
mod math;
mod nn;

use std::collections::{HashMap, HashSet};

use psflow_kernels::DType;
use psflow_proto::tensorflow::AttrValue;

use crate::ir::{Graph, TensorName};
use crate::registry::{Registry, TensorInfo};
use crate::validate::validate;
use crate::zoo::type_attr;
use crate::{Error, Result};
use emit::{Emitter, GradCtx};

type GradFn = fn(&mut GradCtx) -> Result<Vec<Option<TensorName>>>;

/// The gradient function of an op, if it has one.
fn grad_fn(op: &str) -> Option<GradFn> {
    Some(match op {
        "Conv2D" | "DepthwiseConv2dNative" => nn::conv2d,
        "FusedBatchNormV3" => nn::fused_batch_norm,
        "Relu" | "Relu6" => nn::relu,
        "AvgPool" => nn::avg_pool,
        "MaxPool" => nn::max_pool,
        "BiasAdd" => nn::bias_add,
        "MatMul" => nn::mat_mul,
        "Softmax" => nn::softmax,
        "SparseSoftmaxCrossEntropyWithLogits" => nn::sparse_xent,
        "L2Loss" => nn::l2_loss,
        "Add" | "AddV2" | "Sub" | "Mul" | "RealDiv" => math::binary,
        "AddN" => math::add_n,
        "Mean" | "Sum" => math::reduction,
        "Reshape" | "Squeeze" | "ExpandDims" => math::reshape,
        "Identity" | "Snapshot" | "ReadVariableOp" => math::identity,
        "Pad" | "PadV2" => math::pad,
        "ConcatV2" => math::concat,
        "Square" => math::square,
        "Neg" => math::neg,
        "Cast" => math::cast,
        _ => return None,
    })
}

/// Ops through which no gradient flows (their inputs get none).
fn blocks_gradient(op: &str) -> bool {
    matches!(op, "StopGradient" | "PreventGradient")
}

fn differentiable(info: &TensorInfo) -> bool {
    info.dtype.is_none_or(DType::is_float)
}

/// Adds to `graph` the gradients of `sum(ys)` (each y weighted by its
/// `grad_ys` entry, ones by default) with respect to each of `xs`, and
/// returns the gradient tensor of each x: `None` when no data path leads
/// from that x to a y.
///
/// An x may name a variable (`VarHandleOp`): its gradient is that of its
/// reads (`ReadVariableOp` of it), summed when it is read more than once.
/// A node between the xs and ys whose op has no gradient is an error
/// naming the node and op. The graph must validate (known ops, shapes).
pub fn gradients(
    graph: &mut Graph,
    ys: &[TensorName],
    xs: &[TensorName],
    grad_ys: Option<&[TensorName]>,
) -> Result<Vec<Option<TensorName>>> {
    if let Some(g) = grad_ys {
        if g.len() != ys.len() {
            return Err(Error::InvalidNode {
                node: String::new(),
                detail: format!("gradients: {} grad_ys given for {} ys", g.len(), ys.len()),
            });
        }
    }
    let v = validate(graph, &Registry::standard())?;
    let ids: HashMap<String, usize> = graph
        .nodes()
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.clone(), i))
        .collect();
    let info = |t: &TensorName| -> Result<TensorInfo> {
        let id = *ids.get(&t.node).ok_or_else(|| Error::UnknownFetch {
            name: t.to_string(),
            detail: "gradients: no such node".into(),
        })?;
        v.infos[id]
            .get(t.port)
            .cloned()
            .ok_or_else(|| Error::UnknownFetch {
                name: t.to_string(),
                detail: format!("gradients: the node has {} output(s)", v.infos[id].len()),
            })
    };
    for t in ys.iter().chain(xs).chain(grad_ys.unwrap_or(&[])) {
        info(t)?;
    }

    // A variable x stands for its reads.
    let n = graph.len();
    let mut consumers: Vec<Vec<usize>> = vec![vec![]; n];
    for (id, node) in graph.nodes().iter().enumerate() {
        for t in node.data_inputs() {
            consumers[graph.id(&t.node).expect("validated")].push(id);
        }
    }
    let groups: Vec<Vec<TensorName>> = xs
        .iter()
        .map(|x| {
            let node = graph.node(&x.node).expect("checked");
            if node.op == "VarHandleOp" {
                let id = graph.id(&x.node).expect("checked");
                consumers[id]
                    .iter()
                    .map(|&c| &graph.nodes()[c])
                    .filter(|c| c.op == "ReadVariableOp")
                    .map(|c| TensorName::new(c.name.clone(), 0))
                    .collect::<HashSet<_>>()
                    .into_iter()
                    .collect()
            } else {
                vec![x.clone()]
            }
        })
        .collect();
    let x_set: HashSet<TensorName> = groups.iter().flatten().cloned().collect();

    // Nodes reached from the xs, and nodes that reach a y.
    let mut reached = vec![false; n];
    for &id in &v.order {
        let node = &graph.nodes()[id];
        reached[id] = !blocks_gradient(&node.op)
            && node
                .data_inputs()
                .any(|t| x_set.contains(t) || reached[graph.id(&t.node).expect("validated")]);
    }
    let tensor_reached = |t: &TensorName| x_set.contains(t) || reached[ids[&t.node]];
    let mut useful = vec![false; n];
    for t in ys {
        useful[graph.id(&t.node).expect("checked")] = true;
    }
    for &id in v.order.iter().rev() {
        if consumers[id].iter().any(|&c| useful[c]) {
            useful[id] = true;
        }
    }

    let prefix = scope_prefix(graph);
    let nodes = graph.nodes().to_vec();
    let mut e = Emitter {
        graph,
        scope: prefix.clone(),
    };
    let mut acc: HashMap<TensorName, Vec<TensorName>> = HashMap::new();
    for (i, y) in ys.iter().enumerate() {
        if !tensor_reached(y) {
            continue;
        }
        let g = match grad_ys {
            Some(g) => g[i].clone(),
            None => {
                let yi = info(y)?;
                let d = yi.dtype.unwrap_or(DType::F32);
                let shape = e.shape_of(y, &yi)?;
                let one = e.scalar(&format!("grad_ys_{i}/Const"), d, 1.0)?;
                let fill = e
                    .node(&format!("grad_ys_{i}"), "Fill")
                    .input(shape)
                    .input(one)
                    .attr("T", type_attr(d))
                    .attr("index_type", type_attr(DType::I32));
                e.add(fill)?
            }
        };
        acc.entry(y.clone()).or_default().push(g);
    }

    let mut done: HashMap<TensorName, Option<TensorName>> = HashMap::new();
    for &id in v.order.iter().rev() {
        if !(reached[id] && useful[id]) {
            continue;
        }
        let node = &nodes[id];
        let outs = v.infos[id].len();
        e.scope = prefix.clone();
        let mut grads = Vec::with_capacity(outs);
        for port in 0..outs {
            let t = TensorName::new(node.name.clone(), port);
            let g = aggregate(&mut e, acc.remove(&t), v.infos[id][port].dtype)?;
            done.insert(t, g.clone());
            grads.push(g);
        }
        if grads.iter().all(Option::is_none) {
            continue;
        }
        let inputs: Vec<TensorName> = node.data_inputs().cloned().collect();
        let in_info: Vec<TensorInfo> = inputs.iter().map(&info).collect::<Result<_>>()?;
        let needed: Vec<bool> = inputs
            .iter()
            .zip(&in_info)
            .map(|(t, i)| tensor_reached(t) && differentiable(i))
            .collect();
        if !needed.iter().any(|&b| b) {
            continue;
        }
        let Some(f) = grad_fn(&node.op) else {
            return Err(Error::InvalidNode {
                node: node.name.clone(),
                detail: format!(
                    "op {} has no gradient, and the node lies between the tensors \
                     differentiated ({}) and the ones differentiated with respect to",
                    node.op,
                    ys.iter()
                        .map(|t| t.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        };
        e.scope = format!("{prefix}/{}_grad", node.name);
        let mut ctx = GradCtx {
            e: &mut e,
            node,
            inputs: inputs.clone(),
            in_info,
            out_info: v.infos[id].clone(),
            grads,
            needed: needed.clone(),
        };
        let in_grads = f(&mut ctx)?;
        for ((t, g), need) in inputs.into_iter().zip(in_grads).zip(needed) {
            if let (Some(g), true) = (g, need) {
                acc.entry(t).or_default().push(g);
            }
        }
    }

    e.scope = prefix;
    let mut out = Vec::with_capacity(xs.len());
    for group in groups {
        let d = match group.first() {
            Some(x) => info(x)?.dtype,
            None => None,
        };
        let mut parts = vec![];
        for x in group {
            let g = match done.get(&x) {
                Some(g) => g.clone(),
                None => {
                    let g = aggregate(&mut e, acc.remove(&x), info(&x)?.dtype)?;
                    done.insert(x, g.clone());
                    g
                }
            };
            parts.extend(g);
        }
        out.push(aggregate(&mut e, Some(parts).filter(|p| !p.is_empty()), d)?);
    }
    Ok(out)
}

/// Sums the gradients arriving at one tensor: none, one as is, or `AddN`.
fn aggregate(
    e: &mut Emitter,
    grads: Option<Vec<TensorName>>,
    dtype: Option<DType>,
) -> Result<Option<TensorName>> {
    let Some(mut grads) = grads else {
        return Ok(None);
    };
    if grads.len() <= 1 {
        return Ok(grads.pop());
    }
    let mut n = e
        .node("AddN", "AddN")
        .attr("N", AttrValue::from_i(grads.len() as i64));
    if let Some(d) = dtype {
        n = n.attr("T", type_attr(d));
    }
    for g in grads {
        n = n.input(g);
    }
    e.add(n).map(Some)
}

/// `gradients`, or `gradients_k` when an earlier call used that scope.
fn scope_prefix(graph: &Graph) -> String {
    let taken = |p: &str| {
        graph
            .nodes()
            .iter()
            .any(|n| n.name.starts_with(&format!("{p}/")))
    };
    if !taken("gradients") {
        return "gradients".into();
    }
    (1..)
        .map(|k| format!("gradients_{k}"))
        .find(|p| !taken(p))
        .expect("some suffix is free")
}
