//! Parameter and multiply-add counts of a graph, per layer and in total.
//!
//! Works on any GraphDef whose shapes inference can work out: a model from
//! [`crate::zoo`] (variables), a training graph (gradient and optimizer ops
//! are recognised and left out of the forward figures), or a frozen graph
//! (weights as `Const`s).
//!
//! - Shapes come from the graph's shape inference ([`crate::infer`]) with
//!   each placeholder's unknown batch dimension taken as 1. Variable ops
//!   (`VarHandleOp`, `ReadVariableOp`, assigns, `ResourceApply*`) and random
//!   initialisers are inferred here (a resource handle carries its
//!   variable's shape), and ops no kernel is registered for get unknown
//!   outputs instead of failing, so a summary never needs the graph to be
//!   runnable.
//! - Parameters: the elements of every variable (`VarHandleOp`,
//!   `VariableV2`; shape from the `shape` attr). Optimizer slots
//!   (`…/RMSProp`, `…/Momentum`, `…/Adam`, …), `global_step`, Adam's beta
//!   powers and integer variables count as variables but not as model
//!   parameters; `moving_mean`/`moving_variance` (by name, or as a batch
//!   norm's mean and variance inputs) are parameters but not trainable. A
//!   graph with no variables (a frozen graph) counts its float `Const`s of
//!   rank ≥ 1 instead (a frozen graph whose batch norm is lowered to
//!   element-wise ops cannot tell its statistics from trained values).
//! - Multiply-adds, per example (the batch dimension is not counted):
//!   Conv2D `oh·ow·kh·kw·cin·cout`, DepthwiseConv2dNative `oh·ow·kh·kw·c·m`,
//!   MatMul `k·n`. Batch norm, activations, pooling and element-wise ops
//!   are not counted. Gradient ops (`…Backprop…`, anything under
//!   `gradients/`) go to [`Summary::backward_macs`].
//! - Layers: one per forward Conv2D / DepthwiseConv2dNative / MatMul, named
//!   by its scope (`MobilenetV1/Conv2d_1_depthwise`). A parameter belongs
//!   to the layer whose op uses it, or, for a parameter of another op
//!   (bias, batch norm), to the layer that op's activation input comes
//!   from.

use std::collections::HashMap;

use psflow_kernels::{DType, Tensor};

use crate::infer::infer_graph;
use crate::ir::{Graph, Node, TensorName};
use crate::registry::{InferCtx, OpContext, OpKernel, Registry, TensorInfo};
use crate::shape::Shape;
use crate::validate::{check_inputs, topological_order};
use crate::{Error, Result};

/// One multiply-add layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSummary {
    /// The op's scope (its name without the last component).
    pub name: String,
    /// The op's node name.
    pub node: String,
    pub op: String,
    /// Shapes with the batch dimension as inferred (1 for placeholders
    /// whose batch is unknown); -1 where unknown.
    pub input: Vec<i64>,
    pub output: Vec<i64>,
    /// The filter or weight matrix shape.
    pub kernel: Vec<i64>,
    /// The spatial stride (1 for MatMul).
    pub stride: usize,
    /// Parameter elements attributed to this layer (weights, biases, BN).
    pub params: u64,
    pub trainable_params: u64,
    /// Multiply-adds per example; `None` when a needed dimension is unknown.
    pub macs: Option<u64>,
}

/// A graph's placeholder.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSummary {
    pub name: String,
    pub dtype: Option<DType>,
    pub shape: Shape,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub nodes: usize,
    pub inputs: Vec<InputSummary>,
    /// Elements of trainable parameters.
    pub trainable_params: u64,
    /// Elements of model parameters (trainable + moving statistics).
    pub params: u64,
    /// Elements of every variable, optimizer slots included.
    pub variable_elements: u64,
    /// Bytes of the model parameters in their dtypes (f32: 4 per element).
    pub model_bytes: u64,
    /// Forward multiply-adds per example (layers whose count is known).
    pub macs: u64,
    /// Multiply-adds per example of gradient ops (training graphs).
    pub backward_macs: u64,
    /// Layers whose multiply-adds could not be counted (unknown shapes).
    pub unknown_mac_layers: usize,
    /// Parameter elements not attributed to any layer.
    pub unattributed_params: u64,
    pub layers: Vec<LayerSummary>,
}

/// Summarises `graph` with the standard registry.
pub fn summarize(graph: &Graph) -> Result<Summary> {
    summarize_with(graph, &Registry::standard())
}

/// Summarises `graph`, inferring shapes with `registry`'s kernels.
pub fn summarize_with(graph: &Graph, registry: &Registry) -> Result<Summary> {
    check_inputs(graph)?;
    let order = topological_order(graph)?;
    let kernels = summary_kernels(graph, registry)?;
    check_ports(graph, &kernels)?;
    let mut fixed = HashMap::new();
    let mut inputs = vec![];
    for node in graph.nodes() {
        if node.op != "Placeholder" && node.op != "PlaceholderWithDefault" {
            continue;
        }
        let dtype = node.attr_dtype("dtype").ok();
        let shape = node.attr_shape_or_unknown("shape")?;
        inputs.push(InputSummary {
            name: node.name.clone(),
            dtype,
            shape: shape.clone(),
        });
        if let Shape::Known(mut d) = shape {
            if d.first() == Some(&-1) {
                d[0] = 1;
                fixed.insert(
                    TensorName::new(node.name.clone(), 0),
                    TensorInfo::new(dtype, Shape::Known(d)),
                );
            }
        }
    }
    let infos = infer_graph(graph, &kernels, &order, &fixed)?;
    let info = |t: &TensorName| -> Shape {
        fixed.get(t).map(|i| i.shape.clone()).unwrap_or_else(|| {
            graph
                .id(&t.node)
                .and_then(|id| infos[id].get(t.port))
                .map_or(Shape::Unknown, |i| i.shape.clone())
        })
    };

    let params = find_params(graph)?;
    let consumers = consumers(graph);
    let mut s = Summary {
        nodes: graph.len(),
        inputs,
        trainable_params: 0,
        params: 0,
        variable_elements: 0,
        model_bytes: 0,
        macs: 0,
        backward_macs: 0,
        unknown_mac_layers: 0,
        unattributed_params: 0,
        layers: vec![],
    };
    let mut layer_of_node: HashMap<usize, usize> = HashMap::new();
    for (id, node) in graph.nodes().iter().enumerate() {
        let Some(kind) = mac_kind(node) else { continue };
        let shapes: Vec<Shape> = node.data_inputs().map(&info).collect();
        let out = infos[id]
            .first()
            .map_or(Shape::Unknown, |i| i.shape.clone());
        let macs = count_macs(node, kind, &shapes, &out);
        if is_backward(node) {
            s.backward_macs += macs.unwrap_or(0);
            continue;
        }
        let (input, kernel) = match kind {
            MacKind::Conv | MacKind::Depthwise | MacKind::MatMul => {
                (dims_of(shapes.first()), dims_of(shapes.get(1)))
            }
            _ => unreachable!("backward kinds are counted above"),
        };
        match macs {
            Some(m) => s.macs += m,
            None => s.unknown_mac_layers += 1,
        }
        layer_of_node.insert(id, s.layers.len());
        s.layers.push(LayerSummary {
            name: scope_of(&node.name).to_string(),
            node: node.name.clone(),
            op: node.op.clone(),
            input,
            output: dims_of(Some(&out)),
            kernel,
            stride: node.attr_hw("strides", Some([1, 1])).map_or(1, |[h, _]| h),
            params: 0,
            trainable_params: 0,
            macs,
        });
    }

    let active = activation_layers(graph, &order, &layer_of_node);
    for p in &params {
        s.variable_elements += p.elements;
        if p.class == ParamClass::Slot {
            continue;
        }
        s.params += p.elements;
        s.model_bytes += p.elements * p.dtype.size() as u64;
        let used = find_use(graph, &consumers, &active, p.node);
        let trainable = p.class == ParamClass::Trainable && !used.statistic;
        if trainable {
            s.trainable_params += p.elements;
        }
        match used.layer {
            Some(l) => {
                s.layers[l].params += p.elements;
                if trainable {
                    s.layers[l].trainable_params += p.elements;
                }
            }
            None => s.unattributed_params += p.elements,
        }
    }
    Ok(s)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MacKind {
    Conv,
    Depthwise,
    MatMul,
    ConvBackpropInput,
    ConvBackpropFilter,
    DepthwiseBackpropInput,
    DepthwiseBackpropFilter,
}

fn mac_kind(node: &Node) -> Option<MacKind> {
    Some(match node.op.as_str() {
        "Conv2D" => MacKind::Conv,
        "DepthwiseConv2dNative" => MacKind::Depthwise,
        "MatMul" => MacKind::MatMul,
        "Conv2DBackpropInput" => MacKind::ConvBackpropInput,
        "Conv2DBackpropFilter" => MacKind::ConvBackpropFilter,
        "DepthwiseConv2dNativeBackpropInput" => MacKind::DepthwiseBackpropInput,
        "DepthwiseConv2dNativeBackpropFilter" => MacKind::DepthwiseBackpropFilter,
        _ => return None,
    })
}

fn is_backward(node: &Node) -> bool {
    node.name.starts_with("gradients/")
        || node.name.contains("/gradients/")
        || node.op.contains("Backprop")
}

/// Known dimensions `idx` of `s`, or `None` if any is unknown.
fn known(s: Option<&Shape>, idx: &[usize]) -> Option<Vec<u64>> {
    let s = s?;
    idx.iter()
        .map(|&i| {
            let d = s.dim(i);
            (d >= 0).then_some(d as u64)
        })
        .collect()
}

fn count_macs(node: &Node, kind: MacKind, inputs: &[Shape], out: &Shape) -> Option<u64> {
    // Per example: output (or out_backprop) spatial size × filter volume.
    let conv = |spatial: &Shape, filter: &Shape| -> Option<u64> {
        let o = known(Some(spatial), &[1, 2])?;
        let f = known(Some(filter), &[0, 1, 2, 3])?;
        Some(o.iter().product::<u64>() * f.iter().product::<u64>())
    };
    match kind {
        MacKind::Conv | MacKind::Depthwise => conv(out, inputs.get(1)?),
        // (input_sizes, filter, out_backprop) → d input.
        MacKind::ConvBackpropInput | MacKind::DepthwiseBackpropInput => {
            conv(inputs.get(2)?, inputs.get(1)?)
        }
        // (input, filter_sizes, out_backprop) → d filter (output 0).
        MacKind::ConvBackpropFilter | MacKind::DepthwiseBackpropFilter => conv(inputs.get(2)?, out),
        MacKind::MatMul => {
            let tb = node.attr_bool_or("transpose_b", false).ok()?;
            let b = known(inputs.get(1), &[0, 1])?;
            let (k, n) = if tb { (b[1], b[0]) } else { (b[0], b[1]) };
            Some(k * n)
        }
    }
}

fn dims_of(s: Option<&Shape>) -> Vec<i64> {
    s.and_then(|s| s.dims().map(<[i64]>::to_vec))
        .unwrap_or_default()
}

/// A node's scope: its name up to the last `/` (the name if none).
pub fn scope_of(name: &str) -> &str {
    name.rsplit_once('/').map_or(name, |(s, _)| s)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParamClass {
    Trainable,
    Statistic,
    /// Optimizer slots, step counters: variables, not model parameters.
    Slot,
}

struct Param {
    node: usize,
    elements: u64,
    dtype: DType,
    class: ParamClass,
}

const VARIABLE_OPS: &[&str] = &["VarHandleOp", "VariableV2", "Variable"];
const SLOT_SUFFIXES: &[&str] = &[
    "RMSProp",
    "RMSProp_1",
    "Momentum",
    "Adam",
    "Adam_1",
    "Adagrad",
    "global_step",
    "beta1_power",
    "beta2_power",
];

fn classify(name: &str, dtype: DType) -> ParamClass {
    let last = name.rsplit('/').next().unwrap_or(name);
    if !dtype.is_float()
        || SLOT_SUFFIXES.contains(&last)
        || name.contains("ExponentialMovingAverage")
    {
        ParamClass::Slot
    } else if last.starts_with("moving_mean") || last.starts_with("moving_variance") {
        ParamClass::Statistic
    } else {
        ParamClass::Trainable
    }
}

fn find_params(graph: &Graph) -> Result<Vec<Param>> {
    let mut out = vec![];
    for (id, node) in graph.nodes().iter().enumerate() {
        if !VARIABLE_OPS.contains(&node.op.as_str()) {
            continue;
        }
        let shape = node.attr_shape_or_unknown("shape")?;
        let dtype = node.attr_dtype("dtype")?;
        let elements = shape
            .num_elements()
            .ok_or_else(|| node.attr_error("shape", format!("{shape} is not fully known")))?
            as u64;
        out.push(Param {
            node: id,
            elements,
            dtype,
            class: classify(&node.name, dtype),
        });
    }
    if !out.is_empty() {
        return Ok(out);
    }
    // A frozen graph: float constants of rank >= 1 are the weights.
    for (id, node) in graph.nodes().iter().enumerate() {
        if node.op != "Const" {
            continue;
        }
        let Some(t) = node.attrs.get("value").and_then(|v| v.as_tensor()) else {
            continue;
        };
        let Some(dtype) = crate::dtype::dtype_from_proto(t.dtype) else {
            continue;
        };
        let shape = t
            .tensor_shape
            .as_ref()
            .map_or(Shape::scalar(), Shape::from_proto);
        if !dtype.is_float() || shape.rank().unwrap_or(0) == 0 {
            continue;
        }
        if let Some(n) = shape.num_elements() {
            out.push(Param {
                node: id,
                elements: n as u64,
                dtype,
                class: classify(&node.name, dtype),
            });
        }
    }
    Ok(out)
}

/// Data consumers of each node: (consumer id, input index).
fn consumers(graph: &Graph) -> Vec<Vec<(usize, usize)>> {
    let mut out = vec![vec![]; graph.len()];
    for (id, node) in graph.nodes().iter().enumerate() {
        for (i, t) in node.data_inputs().enumerate() {
            if let Some(p) = graph.id(&t.node) {
                out[p].push((id, i));
            }
        }
    }
    out
}

fn is_update(node: &Node) -> bool {
    node.op.starts_with("Assign")
        || node.op.starts_with("ResourceApply")
        || node.op.starts_with("Apply")
        || node.op == "VarIsInitializedOp"
}

/// For every node computed from the inputs (reachable from a placeholder),
/// the layer its activation comes from: itself for a layer op, else that
/// of its first input computed from the inputs.
fn activation_layers(
    graph: &Graph,
    order: &[usize],
    layers: &HashMap<usize, usize>,
) -> Vec<Option<Option<usize>>> {
    let nodes = graph.nodes();
    let mut out: Vec<Option<Option<usize>>> = vec![None; nodes.len()];
    for &id in order {
        let node = &nodes[id];
        if node.op == "Placeholder" || node.op == "PlaceholderWithDefault" {
            out[id] = Some(None);
            continue;
        }
        let from = node
            .data_inputs()
            .filter_map(|t| graph.id(&t.node))
            .find_map(|p| out[p]);
        if let Some(upstream) = from {
            out[id] = Some(layers.get(&id).copied().or(upstream));
        }
    }
    out
}

/// Where a parameter is used.
struct Use {
    /// The layer it belongs to (see the module docs).
    layer: Option<usize>,
    /// Fed to a batch norm as its mean or variance.
    statistic: bool,
}

/// Follows a parameter's consumers (breadth first, leaving out updates and
/// gradient ops) to the first node that also takes an activation; the
/// parameter belongs to that activation's layer. This finds the conv of
/// its weights, the conv before a bias or batch norm, and the conv before
/// a batch norm lowered to element-wise ops on constants.
fn find_use(
    graph: &Graph,
    consumers: &[Vec<(usize, usize)>],
    active: &[Option<Option<usize>>],
    param: usize,
) -> Use {
    let nodes = graph.nodes();
    let mut seen = vec![param];
    let mut frontier = vec![param];
    for _ in 0..16 {
        let mut next = vec![];
        for &n in &frontier {
            for &(c, i) in &consumers[n] {
                let node = &nodes[c];
                if is_update(node) || is_backward(node) || seen.contains(&c) {
                    continue;
                }
                if let Some(layer) = active[c] {
                    let statistic = node.op.starts_with("FusedBatchNorm") && (i == 3 || i == 4);
                    return Use { layer, statistic };
                }
                seen.push(c);
                next.push(c);
            }
        }
        frontier = next;
    }
    Use {
        layer: None,
        statistic: false,
    }
}

/// Every data input names an existing output port.
fn check_ports(graph: &Graph, kernels: &[Box<dyn OpKernel>]) -> Result<()> {
    for node in graph.nodes() {
        for t in node.data_inputs() {
            let p = graph.id(&t.node).expect("inputs checked");
            let outputs = kernels[p].num_outputs();
            if t.port >= outputs {
                return Err(Error::BadInputPort {
                    node: node.name.clone(),
                    input: t.to_input_string(),
                    producer: t.node.clone(),
                    port: t.port,
                    outputs,
                });
            }
        }
    }
    Ok(())
}

type InferOnlyFn = fn(&InferCtx) -> Result<Vec<TensorInfo>>;

/// A kernel for shape inference only (never evaluated: stateful).
struct InferOnly {
    outputs: usize,
    infer: InferOnlyFn,
}

impl OpKernel for InferOnly {
    fn num_outputs(&self) -> usize {
        self.outputs
    }

    fn infer(&self, ctx: &InferCtx) -> Result<Vec<TensorInfo>> {
        (self.infer)(ctx)
    }

    fn compute(&self, ctx: &mut OpContext) -> Result<Vec<Tensor>> {
        Err(ctx.err("summary kernels only infer shapes"))
    }

    fn is_stateful(&self) -> bool {
        true
    }
}

fn infer_variable(ctx: &InferCtx) -> Result<Vec<TensorInfo>> {
    let shape = ctx.node.attr_shape_or_unknown("shape")?;
    // A VarHandleOp's output is a resource; its "shape" here is the
    // variable's, which ReadVariableOp passes on.
    let dtype = if ctx.node.op == "VarHandleOp" {
        None
    } else {
        ctx.node.attr_dtype("dtype").ok()
    };
    Ok(vec![TensorInfo::new(dtype, shape)])
}

fn infer_read(ctx: &InferCtx) -> Result<Vec<TensorInfo>> {
    let dtype = ctx.node.attr_dtype("dtype").ok();
    Ok(vec![TensorInfo::new(dtype, ctx.shape(0).clone())])
}

fn infer_random(ctx: &InferCtx) -> Result<Vec<TensorInfo>> {
    let dtype = ctx.node.attr_dtype("dtype").ok();
    let shape = match ctx.ints(0) {
        Some(d) => Shape::Known(d),
        None => match ctx.shape(0).dim(0) {
            r if r >= 0 => Shape::of_rank(r as usize),
            _ => Shape::Unknown,
        },
    };
    Ok(vec![TensorInfo::new(dtype, shape)])
}

fn infer_same(ctx: &InferCtx) -> Result<Vec<TensorInfo>> {
    Ok(vec![TensorInfo::new(ctx.dtype(0), ctx.shape(0).clone())])
}

fn infer_nothing(_: &InferCtx) -> Result<Vec<TensorInfo>> {
    Ok(vec![])
}

fn infer_unknown_1(_: &InferCtx) -> Result<Vec<TensorInfo>> {
    Ok(vec![TensorInfo::unknown()])
}

/// Summary-side kernels for variable and random ops, whatever the
/// registry has (their shapes need the handle trick above).
fn override_kernel(op: &str) -> Option<InferOnly> {
    let k = |outputs, infer| Some(InferOnly { outputs, infer });
    match op {
        "VarHandleOp" | "VariableV2" | "Variable" => k(1, infer_variable),
        "ReadVariableOp" => k(1, infer_read),
        "Assign" | "AssignAdd" | "AssignSub" => k(1, infer_same),
        "RandomUniform" | "TruncatedNormal" | "RandomStandardNormal" => k(1, infer_random),
        "VarIsInitializedOp" => k(1, infer_unknown_1),
        _ if op.starts_with("AssignVariableOp")
            || op.starts_with("AssignAddVariableOp")
            || op.starts_with("AssignSubVariableOp")
            || op.starts_with("ResourceApply") =>
        {
            k(0, infer_nothing)
        }
        _ => None,
    }
}

fn summary_kernels(graph: &Graph, registry: &Registry) -> Result<Vec<Box<dyn OpKernel>>> {
    // Ports used of each node, for ops no kernel knows.
    let mut used = vec![0usize; graph.len()];
    for node in graph.nodes() {
        for t in node.data_inputs() {
            let p = graph.id(&t.node).expect("inputs checked");
            used[p] = used[p].max(t.port + 1);
        }
    }
    graph
        .nodes()
        .iter()
        .enumerate()
        .map(|(id, node)| -> Result<Box<dyn OpKernel>> {
            if let Some(k) = override_kernel(&node.op) {
                return Ok(Box::new(k));
            }
            if registry.contains(&node.op) {
                return registry.build(node);
            }
            Ok(Box::new(UnknownOp {
                outputs: used[id].max(1),
            }))
        })
        .collect()
}

/// An op no kernel is registered for: as many unknown outputs as the
/// graph uses.
struct UnknownOp {
    outputs: usize,
}

impl OpKernel for UnknownOp {
    fn num_outputs(&self) -> usize {
        self.outputs
    }

    fn infer(&self, _: &InferCtx) -> Result<Vec<TensorInfo>> {
        Ok(vec![TensorInfo::unknown(); self.outputs])
    }

    fn compute(&self, ctx: &mut OpContext) -> Result<Vec<Tensor>> {
        Err(ctx.err("no kernel is registered for this op"))
    }

    fn is_stateful(&self) -> bool {
        true
    }
}
