//! Shape inference over a whole graph: dtypes and partially known shapes
//! of every output, plus the values of small constant subgraphs (shape
//! arithmetic such as `Shape → StridedSlice → Pack → Reshape`).

use std::collections::HashMap;

use crate::executor::ResourceStore;
use crate::ir::{Graph, TensorName};
use crate::registry::{InferCtx, OpContext, OpKernel, TensorInfo, FOLD_LIMIT};
use crate::{Error, Result};

/// Ops whose output may differ from their inputs at run time (a fed
/// default), so their inputs' values must not be propagated.
const NEVER_FOLD: &[&str] = &["PlaceholderWithDefault", "Placeholder"];

/// Infers every node's outputs in `order` (a topological order of all
/// nodes). `fixed` overrides what is known of some tensors (feeds).
pub fn infer_graph(
    graph: &Graph,
    kernels: &[Box<dyn OpKernel>],
    order: &[usize],
    fixed: &HashMap<TensorName, TensorInfo>,
) -> Result<Vec<Vec<TensorInfo>>> {
    let mut infos: Vec<Vec<TensorInfo>> = vec![vec![]; graph.len()];
    let scratch = ResourceStore::default();
    for &id in order {
        let node = &graph.nodes()[id];
        let kernel = &kernels[id];
        let inputs: Vec<TensorInfo> = node
            .data_inputs()
            .map(|t| match fixed.get(t) {
                Some(info) => info.clone(),
                None => {
                    let p = graph.id(&t.node).expect("validated input");
                    infos[p][t.port].clone()
                }
            })
            .collect();
        let ctx = InferCtx {
            node,
            inputs: &inputs,
        };
        let mut out = kernel.infer(&ctx)?;
        if out.len() != kernel.num_outputs() {
            return Err(Error::InvalidNode {
                node: node.name.clone(),
                detail: format!(
                    "shape inference gave {} outputs, the op has {}",
                    out.len(),
                    kernel.num_outputs()
                ),
            });
        }
        let foldable = !kernel.is_stateful()
            && !NEVER_FOLD.contains(&node.op.as_str())
            && !inputs.is_empty()
            && inputs
                .iter()
                .all(|i| i.value.as_ref().is_some_and(|v| v.len() <= FOLD_LIMIT))
            && out.iter().any(|o| o.value.is_none());
        if foldable {
            let mut run = OpContext {
                node,
                inputs: inputs
                    .iter()
                    .map(|i| i.value.clone().expect("checked"))
                    .collect(),
                resources: &scratch,
                rendezvous: None,
            };
            let values = kernel.compute(&mut run)?;
            for (o, v) in out.iter_mut().zip(values) {
                if v.len() <= FOLD_LIMIT {
                    *o = TensorInfo::of_value(v);
                }
            }
        }
        infos[id] = out;
    }
    Ok(infos)
}
