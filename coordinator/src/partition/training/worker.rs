//! Building the worker graph and the shard specs of a training split.

use std::collections::{BTreeMap, HashMap, HashSet};

use psflow_graph::dtype::dtype_to_proto;
use psflow_graph::tensor_proto::tensor_to_proto;
use psflow_graph::{
    AttrValue, DType, Graph, Input, Node, RendezvousKey, Session, Tensor, TensorName,
};

use super::{
    apply_spec, handles, ps_device, var_type, Hyper, OptimizerSpec, Pull, Push, PushKind,
    ShardSpec, ShardVar, SlotSpec, TrainingPlan, TrainingSplitConfig, VarRole, WORKER_DEVICE,
};
use crate::partition::{recv_node, send_node, Error, Result};
use crate::placement::{place, stored_name, variables_of, Part, Placement};

/// What a node of the training graph becomes.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// A variable handle (VarHandleOp, Identity of one): shard-side.
    Handle,
    /// ReadVariableOp of a variable: an Identity of the pulled value.
    Read(String),
    /// ResourceApply* of a variable: a gradient push.
    Apply { var: String, grad: TensorName },
    /// AssignVariableOp of worker-computed data: an assign push.
    WorkerAssign { var: String, value: TensorName },
    /// AssignAdd/Sub of a constant: a shard-side counter.
    Counter { var: String, increment: i64 },
    /// Other stateful ops that need no worker data: shard-side.
    PsSide,
    /// Everything else runs on the worker as it is.
    Keep,
}

fn err(node: &str, detail: impl Into<String>) -> Error {
    Error::InvalidGraph {
        node: node.to_string(),
        detail: detail.into(),
    }
}

/// Node ids in a topological order (the graph validated, so acyclic).
fn topo_order(graph: &Graph) -> Vec<usize> {
    let n = graph.len();
    let mut indeg = vec![0usize; n];
    let mut consumers = vec![vec![]; n];
    for (id, node) in graph.nodes().iter().enumerate() {
        for i in &node.inputs {
            let p = graph.id(i.node()).expect("validated");
            consumers[p].push(id);
            indeg[id] += 1;
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| indeg[i] == 0).rev().collect();
    let mut order = Vec::with_capacity(n);
    while let Some(id) = ready.pop() {
        order.push(id);
        for &c in &consumers[id] {
            indeg[c] -= 1;
            if indeg[c] == 0 {
                ready.push(c);
            }
        }
    }
    order
}

fn int_const(name: &str, v: &[i32]) -> Node {
    let t = Tensor::new(vec![v.len()], v.to_vec()).expect("length matches");
    Node::new(name, "Const")
        .attr("dtype", AttrValue::from_type(dtype_to_proto(DType::I32)))
        .attr("value", AttrValue::from_tensor(tensor_to_proto(&t)))
}

fn type_attr(d: DType) -> AttrValue {
    AttrValue::from_type(dtype_to_proto(d))
}

pub(super) fn split(graph: &Graph, cfg: &TrainingSplitConfig) -> Result<TrainingPlan> {
    let session = Session::new(graph.clone())?;
    let handle_of = handles(graph)?;
    let var_of = |t: &TensorName, user: &Node| -> Result<String> {
        handle_of.get(&t.node).cloned().ok_or_else(|| {
            err(
                &user.name,
                format!("input {t} is not a variable handle (a VarHandleOp or an Identity of one)"),
            )
        })
    };
    let nodes = graph.nodes();
    let order = topo_order(graph);

    // Which nodes depend (through data or control edges) on a placeholder
    // — worker data — and which on an optimizer update.
    let mut on_data = vec![false; graph.len()];
    let mut on_apply = vec![false; graph.len()];
    for &id in &order {
        let n = &nodes[id];
        on_data[id] = n.op.starts_with("Placeholder");
        on_apply[id] = apply_spec(&n.op).is_some();
        for i in &n.inputs {
            let p = graph.id(i.node()).expect("validated");
            on_data[id] |= on_data[p];
            on_apply[id] |= on_apply[p];
        }
    }

    let mut kinds = Vec::with_capacity(graph.len());
    for (id, n) in nodes.iter().enumerate() {
        let ins: Vec<&TensorName> = n.data_inputs().collect();
        let kind = if handle_of.contains_key(&n.name) {
            Kind::Handle
        } else if n.op == "ReadVariableOp" {
            Kind::Read(var_of(ins[0], n)?)
        } else if let Some(spec) = apply_spec(&n.op) {
            Kind::Apply {
                var: var_of(ins[0], n)?,
                grad: ins[spec.grad].clone(),
            }
        } else if n.op == "AssignVariableOp" {
            let value = ins[1];
            let p = graph.id(&value.node).expect("validated");
            if on_data[p] && !on_apply[p] {
                Kind::WorkerAssign {
                    var: var_of(ins[0], n)?,
                    value: value.clone(),
                }
            } else {
                Kind::PsSide
            }
        } else if n.op == "AssignAddVariableOp" || n.op == "AssignSubVariableOp" {
            let info = session.tensor_info(ins[1]).expect("validated");
            match info
                .value
                .as_ref()
                .and_then(|v| v.to_i64_vec("increment").ok())
            {
                Some(v) if v.len() == 1 && nodes[graph.id(&ins[1].node).unwrap()].op == "Const" => {
                    let inc = if n.op == "AssignSubVariableOp" {
                        -v[0]
                    } else {
                        v[0]
                    };
                    Kind::Counter {
                        var: var_of(ins[0], n)?,
                        increment: inc,
                    }
                }
                _ if on_data[id] => {
                    return Err(err(
                        &n.name,
                        format!(
                            "{} of a value the worker computes is not supported by the \
                             training split (only constant increments, as global_step's)",
                            n.op
                        ),
                    ))
                }
                _ => Kind::PsSide,
            }
        } else if n.op == "VarIsInitializedOp" {
            Kind::PsSide
        } else {
            Kind::Keep
        };
        kinds.push(kind);
    }

    // Roots: the sinks, except `init` and what stays on the shards.
    let mut consumed = vec![false; graph.len()];
    for n in nodes {
        for i in &n.inputs {
            consumed[graph.id(i.node()).expect("validated")] = true;
        }
    }
    let mut stack: Vec<usize> = (0..graph.len())
        .filter(|&id| !consumed[id])
        .filter(|&id| !(nodes[id].name == "init" && nodes[id].op == "NoOp"))
        .filter(|&id| {
            matches!(
                kinds[id],
                Kind::Keep | Kind::Read(_) | Kind::Apply { .. } | Kind::WorkerAssign { .. }
            )
        })
        .collect();
    let mut visited = vec![false; graph.len()];
    while let Some(id) = stack.pop() {
        if std::mem::replace(&mut visited[id], true) {
            continue;
        }
        let push = |stack: &mut Vec<usize>, t: &str| stack.push(graph.id(t).expect("validated"));
        match &kinds[id] {
            Kind::Apply { grad, .. } => push(&mut stack, &grad.node),
            Kind::WorkerAssign { value, .. } => push(&mut stack, &value.node),
            Kind::Keep => {
                for i in &nodes[id].inputs {
                    push(&mut stack, i.node());
                }
            }
            _ => {}
        }
    }

    let vars = variables_of(graph)?;
    let placement = place(&vars, &cfg.placement)?;
    let slot_owner: HashMap<&str, &str> = vars
        .iter()
        .flat_map(|v| v.slots.iter().map(move |s| (s.as_str(), v.name.as_str())))
        .collect();
    let shard_of = |var: &str, part: Option<usize>, user: &str| -> Result<usize> {
        if let Some(owner) = slot_owner.get(var) {
            return Err(err(
                user,
                format!("the worker would need optimizer slot {var:?} of {owner:?}, which stays on its shard"),
            ));
        }
        placement
            .locate(var, part)
            .map(|(s, _)| s)
            .ok_or_else(|| err(var, "the variable was not placed"))
    };

    let mut worker = Graph::new();
    worker.versions = graph.versions.clone();
    let mut pulls = Vec::new();
    let mut pulled: HashMap<String, TensorName> = HashMap::new();
    let mut pull_nodes: Vec<Node> = Vec::new();
    // Pull nodes first, in graph order of the variables.
    for (id, n) in nodes.iter().enumerate() {
        let Kind::Read(var) = &kinds[id] else {
            continue;
        };
        if !visited[id] || pulled.contains_key(var) {
            continue;
        }
        let vnode = graph.node(var).expect("handle of a node");
        let (dtype, shape) = var_type(vnode)?;
        let parts = placement.parts(var);
        let mut recv = |part: Option<&Part>| -> Result<String> {
            let stored = stored_name(var, part);
            let shard = shard_of(var, part.map(|p| p.index), &n.name)?;
            let key = RendezvousKey::new(ps_device(shard), cfg.incarnation, WORKER_DEVICE, &stored);
            let mut dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            if let Some(p) = part {
                dims[0] = p.rows.len() as i64;
            }
            let name = format!("_pull/{stored}");
            pull_nodes.push(recv_node(&name, dtype, Some(&dims), &key));
            pulls.push(Pull {
                variable: var.clone(),
                stored,
                part: part.cloned(),
                shard,
                key: key.to_string(),
                recv_node: name.clone(),
            });
            Ok(name)
        };
        let tensor = if parts.is_empty() {
            recv(None)?
        } else {
            let names: Vec<String> = parts.iter().map(|p| recv(Some(p))).collect::<Result<_>>()?;
            let axis = format!("_pull/{var}/concat/axis");
            pull_nodes.push(
                Node::new(&axis, "Const")
                    .attr("dtype", type_attr(DType::I32))
                    .attr(
                        "value",
                        AttrValue::from_tensor(tensor_to_proto(&Tensor::scalar(0i32))),
                    ),
            );
            let concat = format!("_pull/{var}/concat");
            let mut c = Node::new(&concat, "ConcatV2")
                .attr("N", AttrValue::from_i(names.len() as i64))
                .attr("T", type_attr(dtype))
                .attr("Tidx", type_attr(DType::I32));
            for p in &names {
                c = c.input(p.as_str());
            }
            pull_nodes.push(c.input(axis.as_str()));
            concat
        };
        pulled.insert(var.clone(), TensorName::new(tensor, 0));
    }

    // Pushes: gradients and worker-computed assigns.
    let mut pushes = Vec::new();
    let mut push_nodes: Vec<Node> = Vec::new();
    let mut sends_of: HashMap<usize, Vec<String>> = HashMap::new();
    for (id, n) in nodes.iter().enumerate() {
        let (var, value, kind) = match &kinds[id] {
            Kind::Apply { var, grad } => (var, grad, PushKind::Gradient),
            Kind::WorkerAssign { var, value } => (var, value, PushKind::Assign),
            _ => continue,
        };
        if !visited[id] {
            continue;
        }
        let (dtype, shape) = var_type(graph.node(var).expect("handle of a node"))?;
        let suffix = match kind {
            PushKind::Gradient => "grad",
            PushKind::Assign => "assign",
        };
        let parts = placement.parts(var);
        let parts: Vec<Option<Part>> = if parts.is_empty() {
            vec![None]
        } else {
            parts.into_iter().map(Some).collect()
        };
        for part in parts {
            let stored = stored_name(var, part.as_ref());
            let shard = shard_of(var, part.as_ref().map(|p| p.index), &n.name)?;
            let key = RendezvousKey::new(
                WORKER_DEVICE,
                cfg.incarnation,
                ps_device(shard),
                format!("{stored}/{suffix}"),
            );
            let mut input = value.clone();
            if let Some(p) = &part {
                let base = format!("_push/{stored}/{suffix}");
                let mut begin = vec![0i32; shape.len()];
                begin[0] = p.rows.start as i32;
                let mut size: Vec<i32> = shape.iter().map(|&d| d as i32).collect();
                size[0] = p.rows.len() as i32;
                push_nodes.push(int_const(&format!("{base}/begin"), &begin));
                push_nodes.push(int_const(&format!("{base}/size"), &size));
                let slice = format!("{base}/slice");
                push_nodes.push(
                    Node::new(&slice, "Slice")
                        .input(value.clone())
                        .input(format!("{base}/begin").as_str())
                        .input(format!("{base}/size").as_str())
                        .attr("T", type_attr(dtype))
                        .attr("Index", type_attr(DType::I32)),
                );
                input = TensorName::new(slice, 0);
            }
            let name = format!("_push/{stored}/{suffix}");
            push_nodes.push(send_node(&name, input, dtype, &key));
            sends_of.entry(id).or_default().push(name.clone());
            pushes.push(Push {
                variable: var.clone(),
                stored,
                part,
                shard,
                kind,
                key: key.to_string(),
                send_node: name,
            });
        }
    }

    // The kept nodes, reads replaced and control inputs remapped.
    let mut kept = Vec::new();
    for (id, n) in nodes.iter().enumerate() {
        if !visited[id] {
            continue;
        }
        let mut node = match &kinds[id] {
            Kind::Read(var) => {
                let dtype = n.attr_dtype("dtype")?;
                let mut r = Node::new(&n.name, "Identity")
                    .input(pulled[var].clone())
                    .attr("T", type_attr(dtype));
                r.inputs.extend(
                    n.inputs
                        .iter()
                        .filter(|i| matches!(i, Input::Control(_)))
                        .cloned(),
                );
                r
            }
            Kind::Keep => n.clone(),
            _ => continue,
        };
        let mut inputs = Vec::with_capacity(node.inputs.len());
        for input in node.inputs.drain(..) {
            let p = graph.id(input.node());
            match (&input, p.map(|p| &kinds[p])) {
                (Input::Data(_), None) => inputs.push(input), // a pull
                (Input::Data(t), Some(Kind::Keep | Kind::Read(_))) => {
                    inputs.push(Input::Data(t.clone()))
                }
                (Input::Data(t), Some(_)) => {
                    return Err(err(
                        &n.name,
                        format!(
                            "input {t} comes from a variable or update that stays on the \
                             parameter servers; only ReadVariableOp values reach the worker"
                        ),
                    ))
                }
                (Input::Control(c), Some(Kind::Keep | Kind::Read(_))) => {
                    inputs.push(Input::Control(c.clone()))
                }
                (Input::Control(_), Some(Kind::Apply { .. } | Kind::WorkerAssign { .. })) => {
                    for s in sends_of.get(&p.expect("known")).into_iter().flatten() {
                        inputs.push(Input::Control(s.clone()));
                    }
                }
                (Input::Control(_), _) => {} // shard-side: nothing to wait for here
            }
        }
        node.inputs = inputs;
        node.device = WORKER_DEVICE.to_string();
        kept.push(node);
    }
    for mut node in pull_nodes.into_iter().chain(kept).chain(push_nodes) {
        node.device = WORKER_DEVICE.to_string();
        let name = node.name.clone();
        worker.add(node).map_err(|_| {
            err(&name, "the graph already has a node of this name, which the split needs for a pull or push")
        })?;
    }
    Session::new(worker.clone()).map_err(|e| {
        err(
            "",
            format!("internal: the worker graph does not validate: {e}"),
        )
    })?;

    let shards = shard_specs(graph, &session, &placement, &vars, &kinds)?;
    let worker_targets = match worker.node("train_op") {
        Some(_) => vec!["train_op".to_string()],
        None => pushes.iter().map(|p| p.send_node.clone()).collect(),
    };
    let init_closure = closure(graph, "init");
    let ps_updates = nodes
        .iter()
        .enumerate()
        .filter(|(id, n)| {
            matches!(kinds[*id], Kind::PsSide | Kind::Counter { .. })
                && !init_closure.contains(n.name.as_str())
        })
        .map(|(_, n)| n.name.clone())
        .collect();
    Ok(TrainingPlan {
        placement,
        shards,
        worker,
        worker_device: WORKER_DEVICE.to_string(),
        pulls,
        pushes,
        worker_targets,
        ps_updates,
    })
}

/// Names of the nodes `root` depends on (itself included); empty when
/// there is no such node.
fn closure<'g>(graph: &'g Graph, root: &str) -> HashSet<&'g str> {
    let mut seen = HashSet::new();
    let mut stack: Vec<&str> = graph
        .node(root)
        .map(|n| n.name.as_str())
        .into_iter()
        .collect();
    while let Some(name) = stack.pop() {
        if !seen.insert(name) {
            continue;
        }
        if let Some(n) = graph.node(name) {
            stack.extend(n.inputs.iter().map(|i| i.node()));
        }
    }
    seen
}

fn shard_specs(
    graph: &Graph,
    session: &Session,
    placement: &Placement,
    vars: &[crate::placement::Variable],
    kinds: &[Kind],
) -> Result<Vec<ShardSpec>> {
    let mut role: BTreeMap<&str, VarRole> = BTreeMap::new();
    let mut optimizer: BTreeMap<&str, OptimizerSpec> = BTreeMap::new();
    let mut increment: BTreeMap<&str, i64> = BTreeMap::new();
    let handle_of = handles(graph)?;
    for (id, kind) in kinds.iter().enumerate() {
        let n = &graph.nodes()[id];
        match kind {
            Kind::Apply { var, .. } => {
                role.insert(var, VarRole::Trainable);
                let spec = apply_spec(&n.op).expect("an apply op");
                let ins: Vec<&TensorName> = n.data_inputs().collect();
                let mut hyper = BTreeMap::new();
                for &(i, what) in spec.scalars {
                    let t = ins[i];
                    let producer = graph.node(&t.node).expect("validated");
                    let info = session.tensor_info(t).expect("validated");
                    let h = match (&info.value, producer.op.as_str()) {
                        (Some(v), _) if v.len() == 1 && v.dtype() == DType::F32 => {
                            Hyper::Const(v.to_f64_vec()[0] as f32)
                        }
                        (_, "ReadVariableOp") => Hyper::Variable(
                            producer
                                .data_inputs()
                                .next()
                                .and_then(|h| handle_of.get(&h.node).cloned())
                                .unwrap_or_else(|| t.node.clone()),
                        ),
                        _ => Hyper::Fed(t.to_string()),
                    };
                    hyper.insert(what.to_string(), h);
                }
                optimizer.insert(
                    var,
                    OptimizerSpec {
                        op: n.op.clone(),
                        hyper,
                        use_nesterov: n.attr_bool_or("use_nesterov", false)?,
                    },
                );
            }
            Kind::WorkerAssign { var, .. } => {
                role.entry(var).or_insert(VarRole::AssignOnly);
            }
            Kind::Counter {
                var,
                increment: inc,
            } => {
                role.entry(var).or_insert(VarRole::Counter);
                increment.insert(var, *inc);
            }
            _ => {}
        }
    }
    let by_name: HashMap<&str, &crate::placement::Variable> =
        vars.iter().map(|v| (v.name.as_str(), v)).collect();
    let mut out = Vec::new();
    for (index, a) in placement.shards.iter().enumerate() {
        let mut svars = Vec::new();
        for pv in &a.vars {
            let v = by_name[pv.name.as_str()];
            let stored = pv.stored_name();
            let mut shape = v.shape.clone();
            if let Some(p) = &pv.part {
                shape[0] = p.rows.len();
            }
            let slots = v
                .slots
                .iter()
                .map(|s| {
                    let suffix = s.strip_prefix(&format!("{}/", v.name)).unwrap_or(s);
                    SlotSpec {
                        stored: format!("{stored}/{suffix}"),
                        variable: s.clone(),
                    }
                })
                .collect();
            svars.push(ShardVar {
                stored,
                variable: v.name.clone(),
                part: pv.part.clone(),
                dtype: v.dtype.name().to_string(),
                shape,
                role: role.get(v.name.as_str()).copied().unwrap_or(VarRole::Other),
                slots,
                optimizer: optimizer.get(v.name.as_str()).cloned(),
                increment: increment.get(v.name.as_str()).copied(),
            });
        }
        out.push(ShardSpec {
            index,
            device: ps_device(index),
            vars: svars,
            bytes: a.bytes,
        });
    }
    Ok(out)
}
