//! Graph validation: every op known (one error listing all unknown ones),
//! every input present, attributes parsed, output ports in range, no
//! cycles, shapes consistent. Each error names the node.

use std::collections::HashMap;

use crate::infer::infer_graph;
use crate::ir::{Graph, Input};
use crate::registry::{OpKernel, Registry, TensorInfo};
use crate::{Error, Result};

/// A graph that passed validation: a kernel per node (indexed like
/// [`Graph::nodes`]), a topological order, and the inferred outputs.
pub struct Validated {
    pub kernels: Vec<Box<dyn OpKernel>>,
    pub order: Vec<usize>,
    pub infos: Vec<Vec<TensorInfo>>,
}

/// Every op of the graph is registered; otherwise one error listing each
/// unknown op with its node.
pub fn check_ops(graph: &Graph, registry: &Registry) -> Result<()> {
    let ops: Vec<(String, String)> = graph
        .nodes()
        .iter()
        .filter(|n| !registry.contains(&n.op))
        .map(|n| (n.name.clone(), n.op.clone()))
        .collect();
    if ops.is_empty() {
        Ok(())
    } else {
        Err(Error::UnknownOps { ops })
    }
}

/// Every input names a node of the graph.
pub fn check_inputs(graph: &Graph) -> Result<()> {
    for node in graph.nodes() {
        for input in &node.inputs {
            if graph.id(input.node()).is_none() {
                return Err(Error::DanglingInput {
                    node: node.name.clone(),
                    input: input.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// A topological order of all nodes (inputs before consumers, data and
/// control edges alike), or a `Cycle` error naming the nodes of one cycle.
/// Inputs must exist (see [`check_inputs`]).
pub fn topological_order(graph: &Graph) -> Result<Vec<usize>> {
    let n = graph.len();
    let mut pending = vec![0usize; n];
    let mut consumers: Vec<Vec<usize>> = vec![vec![]; n];
    for (id, node) in graph.nodes().iter().enumerate() {
        for input in &node.inputs {
            let p = graph.id(input.node()).expect("inputs checked");
            pending[id] += 1;
            consumers[p].push(id);
        }
    }
    let mut order: Vec<usize> = (0..n).filter(|&i| pending[i] == 0).collect();
    let mut next = 0;
    while next < order.len() {
        let id = order[next];
        next += 1;
        for &c in &consumers[id] {
            pending[c] -= 1;
            if pending[c] == 0 {
                order.push(c);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    Err(Error::Cycle {
        nodes: find_cycle(graph, &pending),
    })
}

/// Walks inputs from a node left unordered until a node repeats: every
/// unordered node has an unordered input, so the walk ends in a cycle.
fn find_cycle(graph: &Graph, pending: &[usize]) -> Vec<String> {
    let start = pending
        .iter()
        .position(|&p| p > 0)
        .expect("some node is stuck");
    let mut path = vec![start];
    let mut seen = HashMap::from([(start, 0usize)]);
    let mut cur = start;
    loop {
        let next = graph.nodes()[cur]
            .inputs
            .iter()
            .map(|i| graph.id(i.node()).expect("inputs checked"))
            .find(|&p| pending[p] > 0)
            .expect("a stuck node has a stuck input");
        if let Some(&at) = seen.get(&next) {
            let mut cycle: Vec<String> = path[at..]
                .iter()
                .rev()
                .map(|&i| graph.nodes()[i].name.clone())
                .collect();
            cycle.push(cycle[0].clone());
            return cycle;
        }
        seen.insert(next, path.len());
        path.push(next);
        cur = next;
    }
}

/// Builds every node's kernel and checks that data inputs ask for output
/// ports their producers have.
pub fn build_kernels(graph: &Graph, registry: &Registry) -> Result<Vec<Box<dyn OpKernel>>> {
    let kernels = graph
        .nodes()
        .iter()
        .map(|n| registry.build(n))
        .collect::<Result<Vec<_>>>()?;
    for node in graph.nodes() {
        for input in &node.inputs {
            if let Input::Data(t) = input {
                let p = graph.id(&t.node).expect("inputs checked");
                let outputs = kernels[p].num_outputs();
                if t.port >= outputs {
                    return Err(Error::BadInputPort {
                        node: node.name.clone(),
                        input: input.to_string(),
                        producer: t.node.clone(),
                        port: t.port,
                        outputs,
                    });
                }
            }
        }
    }
    Ok(kernels)
}

/// All checks, then shape inference with the placeholders' declared shapes.
pub fn validate(graph: &Graph, registry: &Registry) -> Result<Validated> {
    check_ops(graph, registry)?;
    check_inputs(graph)?;
    let kernels = build_kernels(graph, registry)?;
    let order = topological_order(graph)?;
    let infos = infer_graph(graph, &kernels, &order, &HashMap::new())?;
    Ok(Validated {
        kernels,
        order,
        infos,
    })
}
