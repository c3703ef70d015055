//! Turns an inference-style model graph (variables as `VarHandleOp`s with
//! `V/Read/ReadVariableOp` reads, an `init` NoOp) into the training graph:
//!
//! - `cross_entropy_loss`, `regularization_loss` (on the variables marked
//!   `regularize`), `total_loss` ([`super::loss`]);
//! - the gradients of `total_loss` w.r.t. every trainable variable (through
//!   its reads), under `gradients/` ([`crate::autodiff`]);
//! - a scalar float `learning_rate` placeholder and the optimizer's slots
//!   and `ResourceApply…` updates ([`super::optimizer`]);
//! - an int64 `global_step` variable, incremented by
//!   `global_step/AssignAdd` after the updates;
//! - with [`TrainConfig::moving_average_decay`], shadow variables holding
//!   exponential moving averages of the trainable variables, updated after
//!   the step ([`super::ema`]);
//! - the NoOp `train_op` with a control input on every update, on the
//!   global-step increment, on the BN moving-average assigns and on the
//!   weight averages' updates;
//! - the new variables' initializers added to `init`.

use psflow_kernels::{DType, Tensor};
use psflow_proto::tensorflow::{AttrValue, TensorShapeProto};

use super::loss;
use super::optimizer::Optimizer;
use crate::autodiff::gradients;
use crate::ir::{Graph, Input, Node, TensorName};
use crate::zoo::{const_node, type_attr};
use crate::{Error, Result};

/// A variable the optimizer trains, as the model zoo describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainableVar {
    /// The `VarHandleOp` node (and resource) name.
    pub name: String,
    pub shape: Vec<usize>,
    /// Included in the L2 weight decay (conv, pointwise and dense weights;
    /// not depthwise filters, biases or batch-norm parameters).
    pub regularize: bool,
}

/// How to train.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainConfig {
    pub optimizer: Optimizer,
    /// The L2 weight-decay factor lambda (loss term `lambda * sum(w²)/2`).
    pub weight_decay: f32,
    /// Keep exponential moving averages of the trainable variables with
    /// this decay ([`super::ema`]; None: no averages).
    pub moving_average_decay: Option<f32>,
}

impl Default for TrainConfig {
    fn default() -> TrainConfig {
        TrainConfig {
            optimizer: Optimizer::default(),
            weight_decay: loss::DEFAULT_WEIGHT_DECAY,
            moving_average_decay: None,
        }
    }
}

/// The names of what [`build_training_graph`] added.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainGraph {
    /// The NoOp to run as a target once per step.
    pub train_op: String,
    pub total_loss: TensorName,
    pub cross_entropy_loss: TensorName,
    pub regularization_loss: TensorName,
    /// The scalar float placeholder fed each step.
    pub learning_rate: TensorName,
    /// The int64 step counter variable.
    pub global_step: String,
    /// Each trainable variable with its gradient tensor, in input order.
    pub gradients: Vec<(String, TensorName)>,
    /// The optimizer's update nodes.
    pub update_nodes: Vec<String>,
    /// The moving-average assigns the train op runs.
    pub moving_average_updates: Vec<String>,
    /// Variables created here (optimizer slots, global_step, weight
    /// averages): with the model's variables, what a checkpoint holds.
    pub new_variables: Vec<String>,
    /// (variable, shadow) pairs of the weight averages (empty without
    /// [`TrainConfig::moving_average_decay`]).
    pub averages: Vec<(String, String)>,
    /// The weight averages' update nodes.
    pub average_updates: Vec<String>,
}

/// The existing read of variable `v` (`v/Read/ReadVariableOp` by
/// convention, else any `ReadVariableOp` of it), or a new one.
fn read_of(graph: &mut Graph, v: &str) -> Result<TensorName> {
    let conventional = format!("{v}/Read/ReadVariableOp");
    if graph.node(&conventional).is_some() {
        return Ok(TensorName::new(conventional, 0));
    }
    if let Some(n) = graph
        .nodes()
        .iter()
        .find(|n| n.op == "ReadVariableOp" && n.data_inputs().next().is_some_and(|t| t.node == v))
    {
        return Ok(TensorName::new(n.name.clone(), 0));
    }
    graph.add(
        Node::new(conventional.clone(), "ReadVariableOp")
            .input(v)
            .attr("dtype", type_attr(DType::F32)),
    )?;
    Ok(TensorName::new(conventional, 0))
}

/// `AssignVariableOp`s that store a training-mode `FusedBatchNormV3`'s
/// running statistics (outputs 1 and 2) into a variable.
fn moving_average_assigns(graph: &Graph) -> Vec<String> {
    graph
        .nodes()
        .iter()
        .filter(|n| n.op == "AssignVariableOp")
        .filter(|n| {
            n.data_inputs().nth(1).is_some_and(|t| {
                (t.port == 1 || t.port == 2)
                    && graph
                        .node(&t.node)
                        .is_some_and(|p| p.op.starts_with("FusedBatchNorm"))
            })
        })
        .map(|n| n.name.clone())
        .collect()
}

/// Adds control inputs on `controls` to node `name` (rebuilding the graph,
/// whose nodes are otherwise immutable).
fn add_control_inputs(graph: &mut Graph, name: &str, controls: &[String]) -> Result<()> {
    let mut def = graph.to_graph_def();
    let node = def
        .node
        .iter_mut()
        .find(|n| n.name == name)
        .expect("caller checked the node exists");
    for c in controls {
        let s = Input::Control(c.clone()).to_string();
        if !node.input.contains(&s) {
            node.input.push(s);
        }
    }
    *graph = Graph::from_graph_def(def)?;
    Ok(())
}

impl crate::zoo::Model {
    /// Adds the training graph of this model (its logits, labels,
    /// trainable variables and batch-norm updates) to its graph: what
    /// [`build_training_graph`] does for a zoo model. The model must be the
    /// training variant (it has the labels placeholder).
    pub fn add_training(&mut self, cfg: &TrainConfig) -> Result<TrainGraph> {
        let labels = self.labels.clone().ok_or_else(|| Error::InvalidNode {
            node: self.name.clone(),
            detail: "the inference variant has no labels placeholder: build the model with \
                     training = true to train it"
                .into(),
        })?;
        let vars: Vec<TrainableVar> = self
            .trainable
            .iter()
            .map(|v| TrainableVar {
                name: v.name.clone(),
                shape: v.shape.clone(),
                regularize: v.regularize,
            })
            .collect();
        let (logits, updates) = (self.logits.clone(), self.moving_average_updates.clone());
        build_training_graph(&mut self.graph, &logits, &labels, &vars, &updates, cfg)
    }
}

/// Builds the training graph on `graph` (see the module docs). `logits`
/// are `[batch, classes]` float32, `labels` `[batch]` int class ids;
/// `vars` are the trainable variables; `extra_updates` are nodes the train
/// op must also run (the BN moving-average assigns are found by
/// themselves: `AssignVariableOp`s of a FusedBatchNorm's outputs 1 and 2).
pub fn build_training_graph(
    graph: &mut Graph,
    logits: &TensorName,
    labels: &TensorName,
    vars: &[TrainableVar],
    extra_updates: &[String],
    cfg: &TrainConfig,
) -> Result<TrainGraph> {
    for v in vars {
        match graph.node(&v.name) {
            Some(n) if n.op == "VarHandleOp" => {}
            Some(n) => {
                return Err(Error::InvalidNode {
                    node: v.name.clone(),
                    detail: format!(
                        "a trainable variable must be a VarHandleOp, this is {}",
                        n.op
                    ),
                })
            }
            None => {
                return Err(Error::InvalidNode {
                    node: v.name.clone(),
                    detail: "the trainable variable is not in the graph".into(),
                })
            }
        }
    }
    let xent = loss::cross_entropy_loss(graph, logits, labels)?;
    let mut decayed = vec![];
    for v in vars.iter().filter(|v| v.regularize) {
        decayed.push(read_of(graph, &v.name)?);
    }
    let reg = loss::regularization_loss(graph, &decayed, cfg.weight_decay)?;
    let total = loss::total_loss(graph, &xent, &reg)?;

    let xs: Vec<TensorName> = vars
        .iter()
        .map(|v| TensorName::new(v.name.clone(), 0))
        .collect();
    let grads = gradients(graph, std::slice::from_ref(&total), &xs, None)?;
    let mut pairs = vec![];
    for (v, g) in vars.iter().zip(grads) {
        let g = g.ok_or_else(|| Error::InvalidNode {
            node: v.name.clone(),
            detail: "the trainable variable does not affect total_loss (no gradient)".into(),
        })?;
        pairs.push((v.name.clone(), g));
    }

    let lr_name = "learning_rate";
    if graph.node(lr_name).is_none() {
        graph.add(
            Node::new(lr_name, "Placeholder")
                .attr("dtype", type_attr(DType::F32))
                .attr(
                    "shape",
                    AttrValue::from_shape(TensorShapeProto::from_dims(&[])),
                ),
        )?;
    }
    let lr = TensorName::new(lr_name, 0);
    let opt = cfg.optimizer.add_to_graph(graph, &pairs, &lr)?;

    // global_step, incremented after the updates.
    let gs = "global_step";
    let mut new_variables = opt.slot_variables.clone();
    let mut init_assigns = opt.init_assigns.clone();
    if graph.node(gs).is_none() {
        graph.add(
            Node::new(gs, "VarHandleOp")
                .attr("dtype", type_attr(DType::I64))
                .attr(
                    "shape",
                    AttrValue::from_shape(TensorShapeProto::from_dims(&[])),
                )
                .attr("shared_name", AttrValue::from_s(gs))
                .attr("container", AttrValue::from_s("")),
        )?;
        graph.add(const_node(
            "global_step/Initializer/zeros",
            &Tensor::scalar(0i64),
        ))?;
        graph.add(
            Node::new("global_step/Assign", "AssignVariableOp")
                .input(gs)
                .input("global_step/Initializer/zeros")
                .attr("dtype", type_attr(DType::I64)),
        )?;
        new_variables.push(gs.to_string());
        init_assigns.push("global_step/Assign".to_string());
    }
    graph.add(const_node(
        "global_step/AssignAdd/value",
        &Tensor::scalar(1i64),
    ))?;
    let mut inc = Node::new("global_step/AssignAdd", "AssignAddVariableOp")
        .input(gs)
        .input("global_step/AssignAdd/value")
        .attr("dtype", type_attr(DType::I64));
    for u in &opt.update_nodes {
        inc = inc.control_input(u.as_str());
    }
    graph.add(inc)?;

    let ema = match cfg.moving_average_decay {
        Some(decay) => {
            let shaped: Vec<(String, Vec<usize>)> = vars
                .iter()
                .map(|v| (v.name.clone(), v.shape.clone()))
                .collect();
            super::ema::add_to_graph(graph, &shaped, decay, gs, "global_step/AssignAdd")?
        }
        None => super::ema::EmaOps::default(),
    };
    new_variables.extend(ema.averages.iter().map(|(_, s)| s.clone()));
    init_assigns.extend(ema.init_assigns.iter().cloned());

    let mut ma = moving_average_assigns(graph);
    for u in extra_updates {
        if !ma.contains(u) {
            ma.push(u.clone());
        }
    }
    let mut train = Node::new("train_op", "NoOp");
    for u in opt.update_nodes.iter().chain(&ma).chain(&ema.update_nodes) {
        train = train.control_input(u.as_str());
    }
    train = train.control_input("global_step/AssignAdd");
    graph.add(train)?;

    if graph.node("init").is_some() {
        add_control_inputs(graph, "init", &init_assigns)?;
    } else {
        // No init yet: every `*/Assign` initializer, the model's included.
        let all: Vec<String> = graph
            .nodes()
            .iter()
            .filter(|n| n.op == "AssignVariableOp" && n.name.ends_with("/Assign"))
            .map(|n| n.name.clone())
            .collect();
        let mut init = Node::new("init", "NoOp");
        for a in &all {
            init = init.control_input(a.as_str());
        }
        graph.add(init)?;
    }

    Ok(TrainGraph {
        train_op: "train_op".into(),
        total_loss: total,
        cross_entropy_loss: xent,
        regularization_loss: reg,
        learning_rate: lr,
        global_step: gs.into(),
        gradients: pairs,
        update_nodes: opt.update_nodes,
        moving_average_updates: ma,
        new_variables,
        averages: ema.averages,
        average_updates: ema.update_nodes,
    })
}
