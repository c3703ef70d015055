//! Freezing: the graph pruned to some outputs, with every read of a
//! resource variable (`ReadVariableOp` of a `VarHandleOp`, possibly
//! through `Identity`s of the handle) replaced by a `Const` holding the
//! variable's value. The `Const` takes the `VarHandleOp`'s name (the
//! variable's name, e.g. `MobilenetV1/Conv2d_0/weights`), as TensorFlow's
//! `convert_variables_to_constants` does; initializers, assigns and the
//! `init` op fall away with the pruning.

use std::collections::HashMap;

use psflow_kernels::Tensor;

use crate::ir::{Graph, Input, Node, TensorName};
use crate::registry::variable_key;
use crate::zoo::const_node;
use crate::{Error, Result};

/// A frozen graph and what became of its variables.
#[derive(Debug, Clone)]
pub struct Frozen {
    pub graph: Graph,
    /// The outputs as named in the frozen graph (an output that was a
    /// variable read now names the variable's `Const`).
    pub outputs: Vec<TensorName>,
    /// Store keys of the variables turned into constants, in graph order.
    pub variables: Vec<String>,
}

/// Freezes `graph` for `outputs`: `value(key)` gives a variable's value by
/// its store key (the `shared_name`, as [`crate::ResourceStore`] keeps it).
/// A variable read with no value, of another dtype or shape than its
/// `VarHandleOp` declares, or a variable used other than by reading it
/// (an assign, an optimizer update) is an [`Error::Export`] naming it.
pub fn freeze(
    graph: &Graph,
    outputs: &[TensorName],
    value: &dyn Fn(&str) -> Option<Tensor>,
) -> Result<Frozen> {
    let g = graph.prune(outputs, &[])?;
    check_handle_uses(&g)?;

    // Every read node → the name of the Const that replaces it.
    let mut reads: HashMap<String, String> = HashMap::new();
    // VarHandleOp name → its Const.
    let mut consts: HashMap<String, Node> = HashMap::new();
    for node in g.nodes().iter().filter(|n| n.op == "ReadVariableOp") {
        let handle = handle_of(&g, node)?;
        if !consts.contains_key(&handle.name) {
            consts.insert(handle.name.clone(), constant_for(handle, value)?);
        }
        reads.insert(node.name.clone(), handle.name.clone());
    }

    let rename = |t: &TensorName| match reads.get(&t.node) {
        Some(c) => TensorName::new(c.clone(), 0),
        None => t.clone(),
    };
    let mut out = Graph::new();
    out.versions = g.versions.clone();
    let mut variables = Vec::new();
    for node in g.nodes() {
        if node.op == "ReadVariableOp" {
            continue;
        }
        if let Some(c) = consts.remove(&node.name) {
            variables.push(variable_key(node)?);
            out.add(c)?;
            continue;
        }
        let mut n = node.clone();
        n.inputs = n
            .inputs
            .iter()
            .map(|i| match i {
                Input::Data(t) => Input::Data(rename(t)),
                Input::Control(c) => Input::Control(reads.get(c).unwrap_or(c).clone()),
            })
            .collect();
        out.add(n)?;
    }
    let outputs: Vec<TensorName> = outputs.iter().map(rename).collect();
    // Handles and their Identities that only fed reads are unused now.
    let graph = out.prune(&outputs, &[])?;
    if let Some(n) = graph.nodes().iter().find(|n| n.op == "VarHandleOp") {
        return Err(Error::Export {
            node: n.name.clone(),
            detail: "the variable is still used after freezing".into(),
        });
    }
    Ok(Frozen {
        graph,
        outputs,
        variables,
    })
}

/// The VarHandleOp a node's data input 0 comes from, through `Identity`s.
fn handle_of<'g>(g: &'g Graph, node: &Node) -> Result<&'g Node> {
    let mut cur = node;
    loop {
        let t = cur.data_inputs().next().ok_or_else(|| Error::Export {
            node: cur.name.clone(),
            detail: format!("{} has no input", cur.op),
        })?;
        let p = g.node(&t.node).ok_or_else(|| Error::DanglingInput {
            node: cur.name.clone(),
            input: t.to_input_string(),
        })?;
        match p.op.as_str() {
            "VarHandleOp" => return Ok(p),
            "Identity" => cur = p,
            op => {
                return Err(Error::Export {
                    node: node.name.clone(),
                    detail: format!(
                        "reads a resource that does not come from a VarHandleOp \
                         (it comes from {:?}, a {op}); only resource variables can be frozen",
                        p.name
                    ),
                })
            }
        }
    }
}

/// Handles may only flow into `Identity` and `ReadVariableOp`: anything
/// else (an assign, an optimizer update) has no meaning in a frozen graph.
/// TF1 reference variables (`VariableV2`) are refused by name.
fn check_handle_uses(g: &Graph) -> Result<()> {
    let mut is_handle: HashMap<&str, bool> = HashMap::new();
    for n in g.nodes() {
        if n.op == "VariableV2" || n.op == "Variable" {
            return Err(Error::Export {
                node: n.name.clone(),
                detail: format!(
                    "{} (a TF1 reference variable) cannot be frozen; \
                     psflow freezes resource variables (VarHandleOp)",
                    n.op
                ),
            });
        }
        is_handle.insert(&n.name, n.op == "VarHandleOp");
    }
    // Identity chains of handles: iterate to a fixed point (graph order
    // need not be topological).
    loop {
        let mut changed = false;
        for n in g.nodes().iter().filter(|n| n.op == "Identity") {
            let from_handle = n
                .data_inputs()
                .next()
                .is_some_and(|t| is_handle.get(t.node.as_str()) == Some(&true));
            if from_handle && is_handle.get(n.name.as_str()) != Some(&true) {
                is_handle.insert(&n.name, true);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    for n in g.nodes() {
        if n.op == "ReadVariableOp" || n.op == "Identity" {
            continue;
        }
        if let Some(t) = n
            .data_inputs()
            .find(|t| is_handle.get(t.node.as_str()) == Some(&true))
        {
            return Err(Error::Export {
                node: n.name.clone(),
                detail: format!(
                    "uses variable handle {:?} in a {}; a frozen graph can only read \
                     variables (export the inference graph, not the training graph)",
                    t.node, n.op
                ),
            });
        }
    }
    Ok(())
}

/// The `Const` (named like the VarHandleOp) holding the variable's value.
fn constant_for(handle: &Node, value: &dyn Fn(&str) -> Option<Tensor>) -> Result<Node> {
    let key = variable_key(handle)?;
    let t = value(&key).ok_or_else(|| Error::Export {
        node: handle.name.clone(),
        detail: format!("variable {key:?} has no value (it is not in the checkpoint)"),
    })?;
    let dtype = handle.attr_dtype("dtype")?;
    if t.dtype() != dtype {
        return Err(Error::Export {
            node: handle.name.clone(),
            detail: format!(
                "variable {key:?} is declared {dtype} but its value is {}",
                t.dtype()
            ),
        });
    }
    let shape = handle.attr_shape_or_unknown("shape")?;
    if !shape.accepts(t.shape()) {
        return Err(Error::Export {
            node: handle.name.clone(),
            detail: format!(
                "variable {key:?} is declared with shape {shape} but its value has shape {:?}",
                t.shape()
            ),
        });
    }
    Ok(const_node(&handle.name, &t))
}
