//! Pruning: the nodes needed to compute some fetches and run some targets,
//! following data and control inputs and stopping at fed tensors.

use std::collections::HashSet;

use crate::ir::{Graph, Input, TensorName};
use crate::{Error, Result};

/// A mask over [`Graph::nodes`]: the nodes that must run.
pub fn needed_nodes(
    graph: &Graph,
    fetches: &[TensorName],
    targets: &[String],
    feeds: &HashSet<TensorName>,
) -> Result<Vec<bool>> {
    let mut needed = vec![false; graph.len()];
    let mut stack = Vec::new();
    let lookup = |name: &str, shown: String| {
        graph.id(name).ok_or(Error::UnknownFetch {
            name: shown,
            detail: "no such node in the graph".into(),
        })
    };
    for t in fetches {
        let id = lookup(&t.node, t.to_string())?;
        if !feeds.contains(t) {
            stack.push(id);
        }
    }
    for t in targets {
        stack.push(lookup(t, t.clone())?);
    }
    while let Some(id) = stack.pop() {
        if std::mem::replace(&mut needed[id], true) {
            continue;
        }
        let node = &graph.nodes()[id];
        for input in &node.inputs {
            if let Input::Data(t) = input {
                if feeds.contains(t) {
                    continue;
                }
            }
            let p = graph.id(input.node()).ok_or_else(|| Error::DanglingInput {
                node: node.name.clone(),
                input: input.to_string(),
            })?;
            if !needed[p] {
                stack.push(p);
            }
        }
    }
    Ok(needed)
}

impl Graph {
    /// The subgraph that computes `fetches` and runs `targets` (node order
    /// kept; versions kept).
    pub fn prune(&self, fetches: &[TensorName], targets: &[String]) -> Result<Graph> {
        let needed = needed_nodes(self, fetches, targets, &HashSet::new())?;
        let mut g = Graph::new();
        g.versions = self.versions.clone();
        for (node, keep) in self.nodes().iter().zip(needed) {
            if keep {
                g.add(node.clone())?;
            }
        }
        Ok(g)
    }
}
