//! A run plan: the pruned nodes of one (feeds, fetches, targets) signature
//! in topological order, with every tensor that is read given a slot, the
//! number of reads of each slot (so a tensor is freed after its last
//! consumer), and the dependency counts that drive the scheduler.

use std::collections::{HashMap, HashSet};

use crate::ir::{Graph, Input, TensorName};
use crate::prune::needed_nodes;
use crate::registry::OpKernel;
use crate::{Error, Result};

pub(crate) struct Plan {
    /// Graph node ids that run, in topological order.
    pub nodes: Vec<usize>,
    /// Per plan node: the slots of its data inputs, in order.
    pub inputs: Vec<Vec<usize>>,
    /// Per plan node and output port: the slot it fills (None: unread).
    pub outputs: Vec<Vec<Option<usize>>>,
    /// Per plan node: the plan nodes waiting on it, once per edge.
    pub consumers: Vec<Vec<usize>>,
    /// Per plan node: the number of edges it waits on.
    pub pending: Vec<usize>,
    /// Per plan node: every output is fed, so it does not compute (it is in
    /// the plan only as a control dependency).
    pub skip: Vec<bool>,
    /// Per slot: how many times it is read (consumers and fetches).
    pub uses: Vec<usize>,
    pub feed_slots: HashMap<TensorName, usize>,
    pub fetch_slots: Vec<usize>,
}

impl Plan {
    pub fn build(
        graph: &Graph,
        kernels: &[Box<dyn OpKernel>],
        order: &[usize],
        feeds: &[TensorName],
        fetches: &[TensorName],
        targets: &[String],
    ) -> Result<Plan> {
        for t in feeds {
            let ok = graph
                .id(&t.node)
                .is_some_and(|id| t.port < kernels[id].num_outputs());
            if !ok {
                return Err(Error::UnknownFeed {
                    name: t.to_string(),
                });
            }
        }
        for t in fetches {
            if let Some(id) = graph.id(&t.node) {
                let outputs = kernels[id].num_outputs();
                if t.port >= outputs {
                    return Err(Error::UnknownFetch {
                        name: t.to_string(),
                        detail: format!("node {:?} has {outputs} output(s)", t.node),
                    });
                }
            }
        }
        let fed: HashSet<TensorName> = feeds.iter().cloned().collect();
        let needed = needed_nodes(graph, fetches, targets, &fed)?;
        let nodes: Vec<usize> = order.iter().copied().filter(|&id| needed[id]).collect();
        let mut plan_index = vec![usize::MAX; graph.len()];
        for (p, &id) in nodes.iter().enumerate() {
            plan_index[id] = p;
        }

        let mut slot_of: HashMap<TensorName, usize> = HashMap::new();
        let mut uses: Vec<usize> = Vec::new();
        let mut read = |t: &TensorName, uses_add: usize| -> usize {
            let next = slot_of.len();
            let s = *slot_of.entry(t.clone()).or_insert(next);
            if s == uses.len() {
                uses.push(0);
            }
            uses[s] += uses_add;
            s
        };
        let feed_slots: HashMap<TensorName, usize> =
            feeds.iter().map(|t| (t.clone(), read(t, 0))).collect();
        let mut inputs = Vec::with_capacity(nodes.len());
        let mut consumers = vec![vec![]; nodes.len()];
        let mut pending = vec![0; nodes.len()];
        for (p, &id) in nodes.iter().enumerate() {
            let node = &graph.nodes()[id];
            let mut slots = Vec::new();
            for input in &node.inputs {
                let waits_on = match input {
                    Input::Data(t) => {
                        slots.push(read(t, 1));
                        (!fed.contains(t)).then(|| graph.id(&t.node).expect("validated"))
                    }
                    Input::Control(n) => Some(graph.id(n).expect("validated")),
                };
                if let Some(producer) = waits_on {
                    let q = plan_index[producer];
                    debug_assert!(q != usize::MAX, "pruning keeps producers");
                    consumers[q].push(p);
                    pending[p] += 1;
                }
            }
            inputs.push(slots);
        }
        let fetch_slots: Vec<usize> = fetches.iter().map(|t| read(t, 1)).collect();
        let skip = nodes
            .iter()
            .map(|&id| {
                let n = kernels[id].num_outputs();
                let name = &graph.nodes()[id].name;
                n > 0 && (0..n).all(|port| fed.contains(&TensorName::new(name.clone(), port)))
            })
            .collect();
        let outputs = nodes
            .iter()
            .map(|&id| {
                let name = &graph.nodes()[id].name;
                (0..kernels[id].num_outputs())
                    .map(|port| {
                        let t = TensorName::new(name.clone(), port);
                        if fed.contains(&t) {
                            None
                        } else {
                            slot_of.get(&t).copied()
                        }
                    })
                    .collect()
            })
            .collect();
        Ok(Plan {
            nodes,
            inputs,
            outputs,
            consumers,
            pending,
            skip,
            uses,
            feed_slots,
            fetch_slots,
        })
    }
}
