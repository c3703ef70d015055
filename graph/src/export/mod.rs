//! Exporting an inference graph as a frozen GraphDef that TensorFlow loads:
//! [`freeze()`] (variables → `Const`s), [`fold_batch_norms`] (batch norm into
//! the convolution before it) and [`export_inference`], which does both for
//! a model's inference graph and names its outputs.
//!
//! The exported graph's interface:
//! - `input`: the model's float placeholder `[-1, R, R, 3]` (any batch);
//! - `logits`: `Identity` of the model's logits `[-1, classes]`;
//! - `probabilities`: `Identity` of their `Softmax`.
//!
//! The zoo's own node names stay (`MobilenetV1/Logits/SpatialSqueeze`,
//! `MobilenetV1/Predictions/Softmax`, …) so a layer can still be fetched by
//! its TF-slim name. Every op is a standard TensorFlow op with the attrs
//! TensorFlow requires; device strings and `_`-prefixed (internal) attrs
//! are cleared.

mod fold;
mod freeze;

pub use fold::fold_batch_norms;
pub use freeze::{freeze, Frozen};

use psflow_kernels::{DType, Tensor};

use crate::ir::{Graph, Node, TensorName};
use crate::registry::Registry;
use crate::tensor_proto::tensor_from_proto;
use crate::validate::validate;
use crate::zoo::type_attr;
use crate::{Error, Result};

/// Node name of the exported logits.
pub const LOGITS: &str = "logits";
/// Node name of the exported class probabilities (softmax of the logits).
pub const PROBABILITIES: &str = "probabilities";

/// The tensors of an inference graph that the export keeps.
#[derive(Debug, Clone)]
pub struct InferenceIo {
    /// The image placeholder (must be a `Placeholder` node's output 0).
    pub input: TensorName,
    pub logits: TensorName,
    /// The softmax of the logits; `None` adds one.
    pub probabilities: Option<TensorName>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportOptions {
    /// Fold batch norms into the convolutions before them (default).
    pub fold_batch_norm: bool,
}

impl Default for ExportOptions {
    fn default() -> ExportOptions {
        ExportOptions {
            fold_batch_norm: true,
        }
    }
}

/// An exported graph and what it holds.
#[derive(Debug, Clone)]
pub struct Exported {
    pub graph: Graph,
    /// Variables turned into constants.
    pub variables: usize,
    /// Elements of the graph's float32 constants (the weights after
    /// folding, including the folded biases).
    pub params: u64,
    pub batch_norms_folded: usize,
    /// Batch norms left in the graph (not foldable, or folding off).
    pub batch_norms_left: usize,
}

/// Freezes `graph` for `io` with variable values from `value` (by store
/// key), folds batch norms unless told not to, adds the `logits` and
/// `probabilities` outputs and checks that psflow can run the result.
pub fn export_inference(
    graph: &Graph,
    io: &InferenceIo,
    value: &dyn Fn(&str) -> Option<Tensor>,
    opts: ExportOptions,
) -> Result<Exported> {
    let mut g = graph.clone();
    let input = g.node(&io.input.node).ok_or_else(|| Error::Export {
        node: io.input.node.clone(),
        detail: "the input placeholder is not in the graph".into(),
    })?;
    if input.op != "Placeholder" || io.input.port != 0 {
        return Err(Error::Export {
            node: io.input.node.clone(),
            detail: format!("the input must be a Placeholder, not a {}", input.op),
        });
    }
    for name in [LOGITS, PROBABILITIES] {
        if g.node(name).is_some() {
            return Err(Error::Export {
                node: name.into(),
                detail: "the graph already has a node of this name, which the export \
                         gives to its output"
                    .into(),
            });
        }
    }
    let probs = match &io.probabilities {
        Some(p) => p.clone(),
        None => {
            let name = format!("{LOGITS}/Softmax");
            g.add(f32_op(&name, "Softmax").input(io.logits.clone()))?;
            TensorName::new(name, 0)
        }
    };
    g.add(f32_op(LOGITS, "Identity").input(io.logits.clone()))?;
    g.add(f32_op(PROBABILITIES, "Identity").input(probs))?;
    let outputs = [
        TensorName::new(LOGITS, 0),
        TensorName::new(PROBABILITIES, 0),
    ];

    let frozen = freeze(&g, &outputs, value)?;
    let mut g = frozen.graph;
    if let Some(bn) = g.nodes().iter().find(|n| {
        n.op.starts_with("FusedBatchNorm") && n.attr_bool_or("is_training", true).unwrap_or(true)
    }) {
        return Err(Error::Export {
            node: bn.name.clone(),
            detail: "a training-mode batch norm (is_training = true) normalises with the \
                     batch's statistics; export the inference graph"
                .into(),
        });
    }
    if g.node(&io.input.node).is_none() {
        return Err(Error::Export {
            node: io.input.node.clone(),
            detail: "the outputs do not depend on the input".into(),
        });
    }
    let mut batch_norms_folded = 0;
    if opts.fold_batch_norm {
        (g, batch_norms_folded) = fold_batch_norms(&g, &outputs)?;
    }
    g = strip(&g)?;
    validate(&g, &Registry::standard())?;
    Ok(Exported {
        variables: frozen.variables.len(),
        params: float_constant_elements(&g)?,
        batch_norms_folded,
        batch_norms_left: g
            .nodes()
            .iter()
            .filter(|n| n.op.starts_with("FusedBatchNorm"))
            .count(),
        graph: g,
    })
}

fn f32_op(name: &str, op: &str) -> Node {
    Node::new(name, op).attr("T", type_attr(DType::F32))
}

/// The graph without device placements and internal (`_`-prefixed) attrs.
fn strip(graph: &Graph) -> Result<Graph> {
    let mut out = Graph::new();
    out.versions = graph.versions.clone();
    for node in graph.nodes() {
        let mut n = node.clone();
        n.device.clear();
        n.attrs.retain(|k, _| !k.starts_with('_'));
        out.add(n)?;
    }
    Ok(out)
}

/// Elements of every float32 `Const`.
fn float_constant_elements(graph: &Graph) -> Result<u64> {
    let mut total = 0u64;
    for n in graph.nodes().iter().filter(|n| n.op == "Const") {
        if let Some(p) = n.attrs.get("value").and_then(|v| v.as_tensor()) {
            let t = tensor_from_proto(&n.name, p)?;
            if t.dtype() == DType::F32 {
                total += t.len() as u64;
            }
        }
    }
    Ok(total)
}
