//! Batch-norm folding on a frozen graph.
//!
//! An inference batch norm `y = γ·(x − μ)/√(σ² + ε) + β` right after a
//! linear op `x = conv(in, W)` is the linear op with `W` scaled per output
//! channel by `s = γ/√(σ² + ε)`, plus a bias `β − μ·s`. So for every
//! `FusedBatchNorm{,V2,V3}` with `is_training = false` whose scale, offset,
//! mean and variance are `Const`s and whose input is a `Conv2D` or
//! `DepthwiseConv2dNative` with a `Const` filter:
//!
//! - the filter `Const` gets the scaled values (its name is kept);
//! - the batch norm becomes a `BiasAdd` of the same name (so consumers and
//!   fetches by name are unchanged) on a new `Const` `…/folded_bias`.
//!
//! Output channels: the last filter dimension for `Conv2D` (HWIO); for
//! depthwise filters `[h, w, in, multiplier]` channel `i·multiplier + m`,
//! i.e. the last two dimensions flattened. (`MatMul` is not folded: its
//! output is 2-D and a fused batch norm only takes 4-D inputs, so the
//! pair never occurs without a reshape between them.)
//!
//! A batch norm is left as it is, not an error, when folding would change
//! something else: the linear op's output or its filter has another
//! consumer (or is an output), a consumer uses one of the batch norm's
//! statistics outputs, or a shape or attribute is not the plain case.
//! Scales and biases are computed in f64 and rounded once to f32.

use std::collections::{HashMap, HashSet};

use psflow_kernels::{DType, Tensor};

use crate::ir::{Graph, Input, Node, TensorName};
use crate::tensor_proto::tensor_from_proto;
use crate::zoo::const_node;
use crate::zoo::type_attr;
use crate::{AttrValue, Result};

const BATCH_NORMS: [&str; 3] = ["FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"];

/// One fold: the filter `Const` to rewrite and the batch norm to replace.
struct Fold {
    filter: String,
    filter_value: Tensor,
    batch_norm: String,
    bias_name: String,
    bias_value: Tensor,
}

/// Folds every batch norm that can be folded (see the module docs) and
/// prunes what they leave unused; returns the graph and how many were
/// folded.
pub fn fold_batch_norms(graph: &Graph, outputs: &[TensorName]) -> Result<(Graph, usize)> {
    let uses = Uses::of(graph, outputs);
    let mut taken: HashSet<String> = graph.nodes().iter().map(|n| n.name.clone()).collect();
    let mut folds: Vec<Fold> = Vec::new();
    for bn in graph
        .nodes()
        .iter()
        .filter(|n| BATCH_NORMS.contains(&n.op.as_str()))
    {
        if let Some(mut f) = plan_fold(graph, &uses, bn)? {
            f.bias_name = unique(&mut taken, &f.bias_name);
            folds.push(f);
        }
    }
    let by_filter: HashMap<&str, &Fold> = folds.iter().map(|f| (f.filter.as_str(), f)).collect();
    let by_bn: HashMap<&str, &Fold> = folds.iter().map(|f| (f.batch_norm.as_str(), f)).collect();
    let mut out = Graph::new();
    out.versions = graph.versions.clone();
    for node in graph.nodes() {
        if let Some(f) = by_filter.get(node.name.as_str()) {
            let mut n = const_node(&node.name, &f.filter_value);
            n.inputs = node.inputs.clone();
            out.add(n)?;
        } else if let Some(f) = by_bn.get(node.name.as_str()) {
            out.add(const_node(&f.bias_name, &f.bias_value))?;
            let x = node
                .data_inputs()
                .next()
                .expect("checked in plan_fold")
                .clone();
            let mut n = Node::new(node.name.clone(), "BiasAdd")
                .input(x)
                .input(TensorName::new(f.bias_name.clone(), 0))
                .attr("T", type_attr(DType::F32))
                .attr("data_format", AttrValue::from_s("NHWC"));
            n.inputs.extend(
                node.inputs
                    .iter()
                    .filter(|i| matches!(i, Input::Control(_)))
                    .cloned(),
            );
            out.add(n)?;
        } else {
            out.add(node.clone())?;
        }
    }
    // The batch norms' γ, β, μ, σ² constants are unused now.
    Ok((out.prune(outputs, &[])?, folds.len()))
}

/// How each node's outputs are used: data references per `(node, port)`,
/// control references per node, and the graph's outputs.
struct Uses {
    data: HashMap<(String, usize), usize>,
    control: HashMap<String, usize>,
    outputs: HashSet<String>,
}

impl Uses {
    fn of(graph: &Graph, outputs: &[TensorName]) -> Uses {
        let mut data = HashMap::new();
        let mut control = HashMap::new();
        for n in graph.nodes() {
            for i in &n.inputs {
                match i {
                    Input::Data(t) => *data.entry((t.node.clone(), t.port)).or_insert(0) += 1,
                    Input::Control(c) => *control.entry(c.clone()).or_insert(0) += 1,
                }
            }
        }
        Uses {
            data,
            control,
            outputs: outputs.iter().map(|t| t.node.clone()).collect(),
        }
    }

    /// Output 0 of `node` has exactly one data consumer and nothing else
    /// refers to the node.
    fn sole_consumer(&self, node: &str) -> bool {
        let refs: usize = self
            .data
            .iter()
            .filter(|((n, _), _)| n == node)
            .map(|(_, c)| c)
            .sum();
        refs == 1
            && self.data.get(&(node.to_string(), 0)) == Some(&1)
            && !self.control.contains_key(node)
            && !self.outputs.contains(node)
    }

    /// Some consumer or output uses an output port other than 0.
    fn uses_other_ports(&self, node: &str) -> bool {
        self.data.keys().any(|(n, p)| n == node && *p != 0)
    }
}

/// The fold of batch norm `bn`, or `None` when it is not the plain case.
fn plan_fold(graph: &Graph, uses: &Uses, bn: &Node) -> Result<Option<Fold>> {
    if bn.attr_bool_or("is_training", true)?
        || bn.attr_str_or("data_format", "NHWC")? != "NHWC"
        || bn.attr_dtype_or("T", DType::F32)? != DType::F32
        || uses.uses_other_ports(&bn.name)
    {
        return Ok(None);
    }
    let ins: Vec<&TensorName> = bn.data_inputs().collect();
    if ins.len() != 5 || ins[0].port != 0 {
        return Ok(None);
    }
    let mut params = Vec::with_capacity(4);
    for t in &ins[1..] {
        match f32_const(graph, t)? {
            Some(v) if v.rank() == 1 => params.push(v),
            _ => return Ok(None),
        }
    }
    let c = params[0].len();
    if params.iter().any(|p| p.len() != c) {
        return Ok(None);
    }
    let Some(linear) = graph.node(&ins[0].node) else {
        return Ok(None);
    };
    if !uses.sole_consumer(&linear.name) {
        return Ok(None);
    }
    let Some(channel) = channel_map(linear)? else {
        return Ok(None);
    };
    let Some(filter_t) = linear.data_inputs().nth(1) else {
        return Ok(None);
    };
    if filter_t.port != 0 || !uses.sole_consumer(&filter_t.node) {
        return Ok(None);
    }
    let Some(filter) = f32_const(graph, filter_t)? else {
        return Ok(None);
    };
    if !channel.fits(filter.shape(), c) {
        return Ok(None);
    }

    let eps = bn.attr_float_or("epsilon", 1e-4)? as f64;
    let vals: Vec<&[f32]> = params
        .iter()
        .map(|p| p.f32s("fold"))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| crate::Error::kernel(&bn.name, &bn.op, e))?;
    let (gamma, beta, mean, var) = (vals[0], vals[1], vals[2], vals[3]);
    let scale: Vec<f64> = (0..c)
        .map(|j| gamma[j] as f64 / (var[j] as f64 + eps).sqrt())
        .collect();
    let bias: Vec<f32> = (0..c)
        .map(|j| (beta[j] as f64 - mean[j] as f64 * scale[j]) as f32)
        .collect();
    let w = filter
        .f32s("fold")
        .map_err(|e| crate::Error::kernel(&linear.name, &linear.op, e))?;
    let scaled: Vec<f32> = w
        .iter()
        .enumerate()
        .map(|(k, &x)| (x as f64 * scale[k % c]) as f32)
        .collect();
    let filter_value = Tensor::new(filter.shape().to_vec(), scaled)
        .expect("same number of elements as the filter");
    let bias_value = Tensor::new(vec![c], bias).expect("c elements");
    let scope = bn
        .name
        .rsplit_once('/')
        .map_or(bn.name.as_str(), |(s, _)| s);
    Ok(Some(Fold {
        filter: filter_t.node.clone(),
        filter_value,
        batch_norm: bn.name.clone(),
        bias_name: format!("{scope}/folded_bias"),
        bias_value,
    }))
}

/// Where a linear op keeps its output channels in its filter.
enum Channels {
    /// The last dimension (Conv2D, HWIO).
    Last,
    /// The last two dimensions flattened (depthwise `[h, w, in, mult]`).
    LastTwo,
}

/// The channel layout of a foldable linear op, `None` for anything else.
fn channel_map(linear: &Node) -> Result<Option<Channels>> {
    if linear.attr_dtype_or("T", DType::F32)? != DType::F32
        || linear.attr_str_or("data_format", "NHWC")? != "NHWC"
    {
        return Ok(None);
    }
    Ok(match linear.op.as_str() {
        "Conv2D" => Some(Channels::Last),
        "DepthwiseConv2dNative" => Some(Channels::LastTwo),
        _ => None,
    })
}

impl Channels {
    /// Whether a filter of `shape` has `c` output channels where this op
    /// keeps them; then element `k` of the filter belongs to channel
    /// `k % c` (channels are the innermost dimensions in both layouts).
    fn fits(&self, shape: &[usize], c: usize) -> bool {
        match self {
            Channels::Last => shape.len() == 4 && shape[3] == c,
            Channels::LastTwo => shape.len() == 4 && shape[2] * shape[3] == c,
        }
    }
}

/// The value of a float32 `Const` that `t` names, if it is one.
fn f32_const(graph: &Graph, t: &TensorName) -> Result<Option<Tensor>> {
    let Some(n) = graph.node(&t.node) else {
        return Ok(None);
    };
    if n.op != "Const" || t.port != 0 {
        return Ok(None);
    }
    let Some(proto) = n.attrs.get("value").and_then(|v| v.as_tensor()) else {
        return Ok(None);
    };
    let v = tensor_from_proto(&n.name, proto)?;
    Ok((v.dtype() == DType::F32).then_some(v))
}

/// `base`, or `base_1`, `base_2`, … — the first name not yet taken.
fn unique(taken: &mut HashSet<String>, base: &str) -> String {
    let mut name = base.to_string();
    let mut i = 0;
    while taken.contains(&name) {
        i += 1;
        name = format!("{base}_{i}");
    }
    taken.insert(name.clone());
    name
}
