//! Where each node of a run executes under [`super::CudaSession`]: on the
//! CUDA device or on the host, decided from the op, the placement of its
//! inputs and its output dtype — the same rule at plan time (this module,
//! which needs no GPU and is tested on every machine) and at run time.
//!
//! Float32 variables live on the device; constants, feeds, variable handles
//! and the small integer shape arithmetic of the gradient graph stay on the
//! host. An op with a CUDA kernel runs on the device when one of its data
//! inputs is there; an op without one runs on the host, and any device
//! input it reads is a *download* (a round trip the training step should
//! never make). Host values a device op reads are *uploads* (constants are
//! uploaded once per session and kept).

use std::collections::HashMap;

use crate::executor::Session;
use crate::ir::TensorName;
use crate::{DType, Result};

/// Where a node runs, or where a value lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Where {
    Host,
    Device,
}

/// Ops with a CUDA kernel (float32 data).
pub const DEVICE_OPS: &[&str] = &[
    "Conv2D",
    "Conv2DBackpropInput",
    "Conv2DBackpropFilter",
    "DepthwiseConv2dNative",
    "DepthwiseConv2dNativeBackpropInput",
    "DepthwiseConv2dNativeBackpropFilter",
    "FusedBatchNorm",
    "FusedBatchNormV2",
    "FusedBatchNormV3",
    "FusedBatchNormGrad",
    "FusedBatchNormGradV2",
    "FusedBatchNormGradV3",
    "Relu",
    "Relu6",
    "ReluGrad",
    "Relu6Grad",
    "Add",
    "AddV2",
    "Sub",
    "Mul",
    "RealDiv",
    "Maximum",
    "Minimum",
    "SquaredDifference",
    "Neg",
    "Square",
    "Sqrt",
    "Rsqrt",
    "Exp",
    "Log",
    "Abs",
    "Reciprocal",
    "AddN",
    "BiasAdd",
    "BiasAddGrad",
    "Sum",
    "Mean",
    "L2Loss",
    "MatMul",
    "Softmax",
    "SparseSoftmaxCrossEntropyWithLogits",
    "SoftmaxCrossEntropyWithLogits",
    "AvgPool",
    "AvgPoolGrad",
    "BroadcastTo",
    // Contiguous cases copy device to device; others go through the host
    // (counted as downloads at run time).
    "ConcatV2",
    "Slice",
    // Views: the device buffer under another shape.
    "Identity",
    "StopGradient",
    "Reshape",
    "Squeeze",
    "ExpandDims",
];

/// Ops that update a variable where it lives (on the device when it is a
/// float32 variable).
pub const VARIABLE_UPDATES: &[&str] = &[
    "AssignVariableOp",
    "AssignAddVariableOp",
    "AssignSubVariableOp",
    "ResourceApplyGradientDescent",
    "ResourceApplyMomentum",
    "ResourceApplyRMSProp",
    "ResourceApplyAdam",
];

/// Ops that read only the shapes of their inputs: a device input costs no
/// download.
pub const SHAPE_ONLY: &[&str] = &["Shape"];

/// Inputs of a device op that are parameters read on the host (sizes,
/// axes, labels, variable handles, optimizer scalars).
pub fn host_inputs(op: &str, n_inputs: usize) -> Vec<usize> {
    match op {
        "Conv2DBackpropInput" | "DepthwiseConv2dNativeBackpropInput" | "AvgPoolGrad" => vec![0],
        "Conv2DBackpropFilter" | "DepthwiseConv2dNativeBackpropFilter" => vec![1],
        "Sum" | "Mean" | "Reshape" | "ExpandDims" | "BroadcastTo" => vec![1],
        "Slice" => vec![1, 2],
        // The axis (the last input).
        "ConcatV2" => vec![n_inputs.saturating_sub(1)],
        "SparseSoftmaxCrossEntropyWithLogits" => vec![1],
        "ReadVariableOp" | "AssignVariableOp" | "AssignAddVariableOp" | "AssignSubVariableOp" => {
            vec![0]
        }
        // Handles and scalars: everything but the gradient (input 3 of
        // Momentum, the last input of the others).
        "ResourceApplyMomentum" => vec![0, 1, 2, 4],
        op if op.starts_with("ResourceApply") => (0..n_inputs.saturating_sub(1)).collect(),
        _ => vec![],
    }
}

/// Where a node runs. `inputs`: where its data inputs live;
/// `float_out`: its first output (or, for variable ops, the variable) is
/// float32.
pub fn decide(op: &str, inputs: &[Where], float_out: bool) -> Where {
    match op {
        // A received float tensor (a pulled variable, a peer's activation)
        // goes to the device as it arrives: the receive itself is a host
        // wait, its value is uploaded.
        "_Recv" => {
            if float_out {
                Where::Device
            } else {
                Where::Host
            }
        }
        "ReadVariableOp" => {
            if float_out {
                Where::Device
            } else {
                Where::Host
            }
        }
        op if VARIABLE_UPDATES.contains(&op) => {
            if float_out {
                Where::Device
            } else {
                Where::Host
            }
        }
        op if DEVICE_OPS.contains(&op) => {
            let host_params = host_inputs(op, inputs.len());
            let data_on_device = inputs
                .iter()
                .enumerate()
                .any(|(i, w)| *w == Where::Device && !host_params.contains(&i));
            if float_out && data_on_device {
                Where::Device
            } else {
                Where::Host
            }
        }
        _ => Where::Host,
    }
}

/// One transfer a run makes between host and device, other than its feeds
/// and fetches. (A `_Recv` whose value goes up is listed with itself as
/// the reader.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// The node that reads the value.
    pub node: String,
    pub op: String,
    /// Which of its inputs.
    pub input: usize,
    /// The tensor read.
    pub tensor: String,
}

/// The placement of one run signature (feeds, fetches, targets).
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// Nodes that run, each with where it runs, in execution order.
    pub nodes: Vec<(String, String, Where)>,
    /// Device values read on the host: every one is a round trip.
    pub downloads: Vec<Transfer>,
    /// Host values (other than constants, uploaded once) read by device ops.
    pub uploads: Vec<Transfer>,
    /// Constants a device op reads (uploaded on first use, then kept).
    pub constants: usize,
}

impl Placement {
    /// Nodes per op that run on the host, for reports: `op → count`.
    pub fn host_ops(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for (_, op, w) in &self.nodes {
            if *w == Where::Host {
                *m.entry(op.clone()).or_insert(0) += 1;
            }
        }
        m
    }
}

/// Whether a node's decisive output is float32: the variable's dtype for
/// variable ops, else output 0's inferred dtype (unknown counts as float).
pub(crate) fn float_out(session: &Session, id: usize) -> bool {
    let node = &session.graph().nodes()[id];
    let dtype = match node.op.as_str() {
        "ReadVariableOp" | "AssignVariableOp" | "AssignAddVariableOp" | "AssignSubVariableOp" => {
            node.attr_dtype("dtype").ok()
        }
        op if op.starts_with("ResourceApply") => node.attr_dtype("T").ok(),
        _ => session
            .infos
            .get(id)
            .and_then(|o| o.first())
            .and_then(|i| i.dtype),
    };
    dtype.is_none_or(|d| d == DType::F32)
}

/// The placement of a run of `session`'s graph with these feeds, fetches
/// and targets, computed without a device (fed values are on the host).
pub fn plan(
    session: &Session,
    feeds: &[TensorName],
    fetches: &[TensorName],
    targets: &[String],
) -> Result<Placement> {
    let mut names = feeds.to_vec();
    names.sort();
    names.dedup();
    let plan = session.plan(names, fetches, targets)?;
    let graph = session.graph();
    let mut slot_where = vec![Where::Host; plan.uses.len()];
    let mut slot_name = vec![String::new(); plan.uses.len()];
    for (t, &s) in &plan.feed_slots {
        slot_name[s] = t.to_string();
    }
    let mut out = Placement::default();
    for (pi, &id) in plan.nodes.iter().enumerate() {
        if plan.skip[pi] {
            continue;
        }
        let node = &graph.nodes()[id];
        let inputs: Vec<Where> = plan.inputs[pi].iter().map(|&s| slot_where[s]).collect();
        let w = decide(&node.op, &inputs, float_out(session, id));
        let params = host_inputs(&node.op, inputs.len());
        for (i, &s) in plan.inputs[pi].iter().enumerate() {
            let transfer = || Transfer {
                node: node.name.clone(),
                op: node.op.clone(),
                input: i,
                tensor: slot_name[s].clone(),
            };
            let is_param = params.contains(&i);
            match (w, slot_where[s]) {
                (Where::Host, Where::Device) if !SHAPE_ONLY.contains(&node.op.as_str()) => {
                    out.downloads.push(transfer())
                }
                (Where::Device, Where::Device) if is_param => out.downloads.push(transfer()),
                (Where::Device, Where::Host) if !is_param => {
                    let producer = slot_name[s].split(':').next().unwrap_or_default();
                    if graph.node(producer).is_some_and(|n| n.op == "Const") {
                        out.constants += 1;
                    } else {
                        out.uploads.push(transfer());
                        // Later readers find it on the device.
                        slot_where[s] = Where::Device;
                    }
                }
                _ => {}
            }
        }
        // Outputs live where the node ran, except the host-side results of
        // device variable updates (none) and handles.
        let out_where = match node.op.as_str() {
            "VarHandleOp" => Where::Host,
            _ => w,
        };
        for (port, slot) in plan.outputs[pi].iter().enumerate() {
            if let Some(s) = *slot {
                slot_where[s] = out_where;
                slot_name[s] = TensorName::new(node.name.clone(), port).to_string();
            }
        }
        if node.op == "_Recv" && w == Where::Device {
            out.uploads.push(Transfer {
                node: node.name.clone(),
                op: node.op.clone(),
                input: 0,
                tensor: format!("{}:0", node.name),
            });
        }
        out.nodes.push((node.name.clone(), node.op.clone(), w));
    }
    Ok(out)
}
