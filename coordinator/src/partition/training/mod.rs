//! The training split: between-graph replication, what the cluster runs.
//!
//! From a training graph (`graph::train::builder`'s conventions, see
//! docs/training.md) this makes one **worker graph**, the same for every
//! worker, and one [`ShardSpec`] per parameter-server shard:
//!
//! - variables (`VarHandleOp`s with their optimizer slots) are placed on
//!   shards ([`crate::placement`]);
//! - every variable the worker reads becomes a `_Recv` (`_pull/V`) that
//!   the worker fills from a PS pull; each `ReadVariableOp` becomes an
//!   `Identity` of it, keeping its name. A split variable is received per
//!   part (`_pull/V/part_i`) and re-joined with `ConcatV2` (`_pull/V/concat`);
//! - the gradient that fed each `ResourceApply*` becomes a `_Send`
//!   (`_push/V/grad`, or per part `_push/V/part_i/grad` of a `Slice` of the
//!   gradient) that the worker pushes; the apply op itself, its slots and
//!   hyper-parameters go to the shard's [`OptimizerSpec`];
//! - every `AssignVariableOp` whose value the worker computes (batch-norm
//!   moving statistics: its value depends on a placeholder) becomes a
//!   `_Send` of the new value (`_push/V/assign`) marked
//!   [`PushKind::Assign`];
//! - `AssignAdd`s of a constant (`global_step/AssignAdd`) become shard-side
//!   counters ([`VarRole::Counter`]); other stateful ops that need no worker
//!   data (initializers, Adam's `beta*_power` updates) stay with the shards
//!   (listed in [`TrainingPlan::ps_updates`]);
//! - `train_op` stays, its control inputs now on the sends: running it on
//!   the worker runs forward, backward and every send of the step.
//!
//! Keys: pulls are `ps_device;inc;worker_device;<stored name>;0:0`, pushes
//! `worker_device;inc;ps_device;<stored name>/grad|assign;0:0`, where the
//! stored name is `V` or `V/part_i`. Every worker uses the same keys in its
//! own (process-local) rendezvous: the worker's step loop sends pulled
//! values into it and takes pushes out of it.

mod worker;

use std::collections::{BTreeMap, HashMap};

use psflow_graph::{DType, Graph, Node, ResourceStore, Tensor};
use serde::Serialize;

use crate::partition::{Error, Result};
use crate::placement::{Part, Placement, PlacementConfig};

/// The worker device every worker graph names.
pub const WORKER_DEVICE: &str = "/job:worker/replica:0/task:0/device:CPU:0";

/// The device of PS shard `i`.
pub fn ps_device(i: usize) -> String {
    format!("/job:ps/replica:0/task:{i}/device:CPU:0")
}

/// The inputs of a `ResourceApply*` op: `vars` handles first (variable,
/// then slots), scalar hyper-parameters at `scalars`, the gradient at
/// `grad`. Mirrors psflow-graph's optimizer table.
#[derive(Debug, Clone, Copy)]
pub struct ApplySpec {
    pub op: &'static str,
    pub vars: usize,
    pub scalars: &'static [(usize, &'static str)],
    pub grad: usize,
}

const APPLY_SPECS: &[ApplySpec] = &[
    ApplySpec {
        op: "ResourceApplyGradientDescent",
        vars: 1,
        scalars: &[(1, "alpha")],
        grad: 2,
    },
    ApplySpec {
        op: "ResourceApplyMomentum",
        vars: 2,
        scalars: &[(2, "lr"), (4, "momentum")],
        grad: 3,
    },
    ApplySpec {
        op: "ResourceApplyRMSProp",
        vars: 3,
        scalars: &[(3, "lr"), (4, "rho"), (5, "momentum"), (6, "epsilon")],
        grad: 7,
    },
    ApplySpec {
        op: "ResourceApplyCenteredRMSProp",
        vars: 4,
        scalars: &[(4, "lr"), (5, "rho"), (6, "momentum"), (7, "epsilon")],
        grad: 8,
    },
    ApplySpec {
        op: "ResourceApplyAdam",
        vars: 3,
        scalars: &[
            (3, "beta1_power"),
            (4, "beta2_power"),
            (5, "lr"),
            (6, "beta1"),
            (7, "beta2"),
            (8, "epsilon"),
        ],
        grad: 9,
    },
];

/// The input layout of a `ResourceApply*` op, `None` for other ops.
pub fn apply_spec(op: &str) -> Option<&'static ApplySpec> {
    APPLY_SPECS.iter().find(|s| s.op == op)
}

/// Node name → the variable (`VarHandleOp` node) whose handle it outputs:
/// the variables themselves and `Identity`s of handles.
pub fn handles(graph: &Graph) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for n in graph.nodes() {
        let mut cur = n;
        let mut hops = 0;
        loop {
            match cur.op.as_str() {
                "VarHandleOp" => {
                    out.insert(n.name.clone(), cur.name.clone());
                    break;
                }
                "Identity" if hops <= graph.len() => {
                    let Some(next) = cur.data_inputs().next().and_then(|t| graph.node(&t.node))
                    else {
                        break;
                    };
                    cur = next;
                    hops += 1;
                }
                _ => break,
            }
        }
    }
    Ok(out)
}

/// A hyper-parameter of a shard's optimizer.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hyper {
    /// A `Const` input.
    Const(f32),
    /// A tensor fed each step (`learning_rate:0`): the shard gets it with
    /// the push.
    Fed(String),
    /// The value of a variable (Adam's `beta1_power`), on some shard.
    Variable(String),
}

/// The optimizer update of a trainable variable, as its `ResourceApply*`
/// node had it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OptimizerSpec {
    /// The op, e.g. `ResourceApplyRMSProp`.
    pub op: String,
    /// By the op's input names (`lr`, `rho`, `momentum`, `epsilon`, …).
    pub hyper: BTreeMap<String, Hyper>,
    pub use_nesterov: bool,
}

/// What a shard does with a variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VarRole {
    /// Updated by the optimizer from pushed gradients.
    Trainable,
    /// Overwritten by pushed values (batch-norm moving statistics).
    AssignOnly,
    /// Incremented by a constant each step (`global_step`).
    Counter,
    /// Changed only by shard-side bookkeeping or not at all.
    Other,
}

/// An optimizer slot of a shard variable.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlotSpec {
    /// Stored name: `V/RMSProp`, or `V/part_0/RMSProp` for a part.
    pub stored: String,
    /// The slot variable of the whole graph (`V/RMSProp`).
    pub variable: String,
}

/// A variable, or part of one, held by a shard.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShardVar {
    /// `V` or `V/part_i`.
    pub stored: String,
    pub variable: String,
    pub part: Option<Part>,
    pub dtype: String,
    /// Of the part.
    pub shape: Vec<usize>,
    pub role: VarRole,
    pub slots: Vec<SlotSpec>,
    pub optimizer: Option<OptimizerSpec>,
    /// For counters: the increment.
    pub increment: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShardSpec {
    pub index: usize,
    pub device: String,
    pub vars: Vec<ShardVar>,
    pub bytes: u64,
}

/// A variable (part) the worker receives before it can compute.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pull {
    pub variable: String,
    pub stored: String,
    pub part: Option<Part>,
    pub shard: usize,
    /// Rendezvous key (string form) of the worker's `_Recv`.
    pub key: String,
    pub recv_node: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PushKind {
    Gradient,
    Assign,
}

/// A tensor the worker sends to a shard each step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Push {
    pub variable: String,
    pub stored: String,
    pub part: Option<Part>,
    pub shard: usize,
    pub kind: PushKind,
    pub key: String,
    pub send_node: String,
}

/// The training split (see the module docs).
#[derive(Debug, Clone, Serialize)]
pub struct TrainingPlan {
    pub placement: Placement,
    pub shards: Vec<ShardSpec>,
    #[serde(skip)]
    pub worker: Graph,
    pub worker_device: String,
    pub pulls: Vec<Pull>,
    pub pushes: Vec<Push>,
    /// What the worker runs each step: `train_op` when the graph has one,
    /// otherwise every push.
    pub worker_targets: Vec<String>,
    /// Stateful nodes left to the shards (initializers are not listed).
    pub ps_updates: Vec<String>,
}

/// How to split.
#[derive(Debug, Clone, Copy)]
pub struct TrainingSplitConfig {
    pub placement: PlacementConfig,
    pub incarnation: u64,
}

impl TrainingSplitConfig {
    pub fn new(shards: usize) -> TrainingSplitConfig {
        TrainingSplitConfig {
            placement: PlacementConfig::new(shards),
            incarnation: 1,
        }
    }
}

/// Splits a training graph for `cfg.placement.shards` shards.
pub fn split_training(graph: &Graph, cfg: &TrainingSplitConfig) -> Result<TrainingPlan> {
    worker::split(graph, cfg)
}

impl TrainingPlan {
    /// The values the worker's pulls receive, read from `store` (a
    /// single-process session's variables; split variables sliced by
    /// rows): `(key, value)` in pull order.
    pub fn pull_values(
        &self,
        graph: &Graph,
        store: &ResourceStore,
    ) -> Result<Vec<(String, Tensor)>> {
        self.pulls
            .iter()
            .map(|p| {
                let t = stored_value(graph, store, &p.variable, p.part.as_ref())?;
                Ok((p.key.clone(), t))
            })
            .collect()
    }

    /// The initial contents of every shard — variables and slots, by
    /// stored name — read from `store` after the graph's `init` ran.
    pub fn shard_values(
        &self,
        graph: &Graph,
        store: &ResourceStore,
    ) -> Result<Vec<BTreeMap<String, Tensor>>> {
        self.shards
            .iter()
            .map(|s| {
                let mut m = BTreeMap::new();
                for v in &s.vars {
                    m.insert(
                        v.stored.clone(),
                        stored_value(graph, store, &v.variable, v.part.as_ref())?,
                    );
                    for slot in &v.slots {
                        m.insert(
                            slot.stored.clone(),
                            stored_value(graph, store, &slot.variable, v.part.as_ref())?,
                        );
                    }
                }
                Ok(m)
            })
            .collect()
    }
}

/// The value of variable `var` (a VarHandleOp of `graph`) in `store`,
/// rows `part.rows` of it for a part.
fn stored_value(
    graph: &Graph,
    store: &ResourceStore,
    var: &str,
    part: Option<&Part>,
) -> Result<Tensor> {
    let node = graph.node(var).ok_or_else(|| Error::InvalidGraph {
        node: var.to_string(),
        detail: "not a node of the graph".into(),
    })?;
    let key = psflow_graph::registry::variable_key(node)?;
    let t = store.get(&key).ok_or_else(|| Error::InvalidGraph {
        node: var.to_string(),
        detail: "the variable has no value: run the graph's `init` target first".into(),
    })?;
    match part {
        None => Ok(t),
        Some(p) => slice_rows(&t, p.rows.clone()),
    }
}

/// Rows `rows` of dimension 0 of `t`.
pub fn slice_rows(t: &Tensor, rows: std::ops::Range<usize>) -> Result<Tensor> {
    let dims = t.shape();
    let bad = || Error::InvalidGraph {
        node: String::new(),
        detail: format!("cannot take rows {rows:?} of a tensor of shape {dims:?}"),
    };
    let (&n, rest) = dims.split_first().ok_or_else(bad)?;
    if rows.start > rows.end || rows.end > n {
        return Err(bad());
    }
    let row: usize = rest.iter().product();
    let (a, b) = (rows.start * row, rows.end * row);
    let mut shape = dims.to_vec();
    shape[0] = rows.len();
    use psflow_kernels::Data;
    let data = match t.data() {
        Data::F32(v) => Data::F32(v[a..b].to_vec().into()),
        Data::F64(v) => Data::F64(v[a..b].to_vec().into()),
        Data::I32(v) => Data::I32(v[a..b].to_vec().into()),
        Data::I64(v) => Data::I64(v[a..b].to_vec().into()),
        Data::U8(v) => Data::U8(v[a..b].to_vec().into()),
        Data::Bool(v) => Data::Bool(v[a..b].to_vec().into()),
    };
    Tensor::from_data(shape, data).map_err(|e| Error::InvalidGraph {
        node: String::new(),
        detail: e.to_string(),
    })
}

/// The dtype and full shape of VarHandleOp `n`.
fn var_type(n: &Node) -> Result<(DType, Vec<usize>)> {
    let dtype = n.attr_dtype("dtype")?;
    let shape = n.attr_shape_or_unknown("shape")?;
    let shape = shape.concrete().ok_or_else(|| Error::InvalidGraph {
        node: n.name.clone(),
        detail: format!("variable of shape {shape}: the split needs every variable's shape"),
    })?;
    Ok((dtype, shape))
}
