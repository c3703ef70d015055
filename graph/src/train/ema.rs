//! Exponential moving averages of the trained variables, as TensorFlow's
//! `tf.train.ExponentialMovingAverage(decay, num_updates=global_step)`
//! builds them (TF-slim's `--moving_average_decay`, 0.9999 in its MobileNet
//! recipe), in the training graph:
//!
//! - every trainable variable `V` gets a shadow `V/ExponentialMovingAverage`
//!   (a float32 `VarHandleOp` of `V`'s shape), initialised to `V`'s initial
//!   value (`V/ExponentialMovingAverage/Assign` reads `V` after `V/Assign`);
//! - each step, after the optimizer's updates and the `global_step`
//!   increment, `decay = min(D, (1 + n) / (10 + n))` with `n` the new global
//!   step (float32, `ExponentialMovingAverage/…`), and
//!   `shadow -= (shadow - V) * (1 - decay)`
//!   (`V/ExponentialMovingAverage/AssignMovingAvg`, an
//!   `AssignSubVariableOp`, as TF's `assign_moving_average`).
//!
//! The `(1 + n) / (10 + n)` cap makes the average cover roughly the last
//! ninth of a run until it reaches `D`: at step 1,000 the decay is 0.991 (a
//! window of ~110 steps), at 100,000 it is `D` = 0.9999.
//!
//! Only trainable variables are averaged (as Keras' `use_ema`); batch-norm
//! moving statistics are averages already and are evaluated as they are.
//! Evaluation and export read the shadows in place of the variables
//! ([`averaged`]).

use psflow_kernels::{DType, Tensor};
use psflow_proto::tensorflow::{AttrValue, TensorShapeProto};

use crate::ir::{Graph, Node, TensorName};
use crate::zoo::const_node;
use crate::zoo::type_attr;
use crate::{Error, Result};

/// What a shadow variable's name adds to its variable's.
pub const SUFFIX: &str = "/ExponentialMovingAverage";

/// TF-slim's MobileNet recipe (`--moving_average_decay=0.9999`).
pub const DEFAULT_DECAY: f32 = 0.9999;

/// The shadow variable of `v`.
pub fn shadow_name(v: &str) -> String {
    format!("{v}{SUFFIX}")
}

/// The decay applied by the update that makes the global step `n`:
/// `min(decay, (1 + n) / (10 + n))`, in float32 as TensorFlow computes it.
pub fn decay_at(decay: f32, n: u64) -> f32 {
    let n = n as f32;
    decay.min((1.0 + n) / (10.0 + n))
}

/// Checks a decay flag: in [0, 1).
pub fn validate(decay: f32) -> Result<()> {
    if (0.0..1.0).contains(&decay) {
        Ok(())
    } else {
        Err(Error::InvalidNode {
            node: "ExponentialMovingAverage".into(),
            detail: format!(
                "the moving-average decay is {decay}; it must be in [0, 1) (0 turns averaging off)"
            ),
        })
    }
}

/// What [`add_to_graph`] added.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EmaOps {
    /// (variable, shadow) pairs.
    pub averages: Vec<(String, String)>,
    /// The `AssignMovingAvg` nodes the train op must run.
    pub update_nodes: Vec<String>,
    /// The shadows' initializers, for `init`.
    pub init_assigns: Vec<String>,
}

/// `checkpoint`'s tensors with every variable that has a shadow replaced
/// by the shadow's value and the shadows dropped: the weights to evaluate
/// or export. A checkpoint without shadows comes back as it is.
pub fn averaged(tensors: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    let shadows: std::collections::HashMap<String, Tensor> = tensors
        .iter()
        .filter_map(|(n, t)| n.strip_suffix(SUFFIX).map(|v| (v.to_string(), t.clone())))
        .collect();
    tensors
        .into_iter()
        .filter(|(n, _)| !n.ends_with(SUFFIX))
        .map(|(n, t)| match shadows.get(&n) {
            Some(s) => (n, s.clone()),
            None => (n, t),
        })
        .collect()
}

/// Whether `tensors` hold moving averages.
pub fn has_averages(tensors: &[(String, Tensor)]) -> bool {
    tensors.iter().any(|(n, _)| n.ends_with(SUFFIX))
}

fn add_const(graph: &mut Graph, name: &str, t: &Tensor) -> Result<TensorName> {
    graph.add(const_node(name, t))?;
    Ok(TensorName::new(name, 0))
}

fn add_op(graph: &mut Graph, name: &str, op: &str, inputs: &[&TensorName]) -> Result<TensorName> {
    let mut n = Node::new(name, op).attr("T", type_attr(DType::F32));
    for i in inputs {
        n = n.input((*i).clone());
    }
    graph.add(n)?;
    Ok(TensorName::new(name, 0))
}

/// The `AssignVariableOp` that initialises `v`: `v/Assign` by convention,
/// else the only assign of `v` among `init`'s control inputs.
fn initializer_of(graph: &Graph, v: &str) -> Result<String> {
    let conventional = format!("{v}/Assign");
    if graph
        .node(&conventional)
        .is_some_and(|n| n.op == "AssignVariableOp")
    {
        return Ok(conventional);
    }
    let init: Vec<&str> = graph
        .node("init")
        .map(|n| n.control_inputs().collect())
        .unwrap_or_default();
    init.iter()
        .filter_map(|c| graph.node(c))
        .find(|n| n.op == "AssignVariableOp" && n.data_inputs().next().is_some_and(|t| t.node == v))
        .map(|n| n.name.clone())
        .ok_or_else(|| Error::InvalidNode {
            node: v.to_string(),
            detail: "the variable has no initializer (`V/Assign` or an assign under `init`) \
                     to start its moving average from"
                .into(),
        })
}

/// Adds the moving averages of `vars` (`(name, shape)`, float32
/// `VarHandleOp`s) to `graph`. `global_step` is the int64 step variable;
/// `after` is the node whose completion means every update of the step
/// (the variables' and the global step's) is done.
pub fn add_to_graph(
    graph: &mut Graph,
    vars: &[(String, Vec<usize>)],
    decay: f32,
    global_step: &str,
    after: &str,
) -> Result<EmaOps> {
    validate(decay)?;
    let scope = "ExponentialMovingAverage";
    let d = add_const(graph, &format!("{scope}/decay"), &Tensor::scalar(decay))?;
    graph.add(
        Node::new(format!("{scope}/ReadVariableOp"), "ReadVariableOp")
            .input(global_step)
            .control_input(after)
            .attr("dtype", type_attr(DType::I64)),
    )?;
    graph.add(
        Node::new(format!("{scope}/num_updates"), "Cast")
            .input(format!("{scope}/ReadVariableOp").as_str())
            .attr("SrcT", type_attr(DType::I64))
            .attr("DstT", type_attr(DType::F32))
            .attr("Truncate", AttrValue::from_b(false)),
    )?;
    let n = TensorName::new(format!("{scope}/num_updates"), 0);
    let one = add_const(graph, &format!("{scope}/add/x"), &Tensor::scalar(1.0f32))?;
    let ten = add_const(graph, &format!("{scope}/add_1/x"), &Tensor::scalar(10.0f32))?;
    let num = add_op(graph, &format!("{scope}/add"), "AddV2", &[&one, &n])?;
    let den = add_op(graph, &format!("{scope}/add_1"), "AddV2", &[&ten, &n])?;
    let ratio = add_op(graph, &format!("{scope}/truediv"), "RealDiv", &[&num, &den])?;
    let decay_t = add_op(graph, &format!("{scope}/Minimum"), "Minimum", &[&d, &ratio])?;
    let one_b = add_const(graph, &format!("{scope}/sub/x"), &Tensor::scalar(1.0f32))?;
    let rate = add_op(graph, &format!("{scope}/sub"), "Sub", &[&one_b, &decay_t])?;

    let mut ops = EmaOps::default();
    for (v, shape) in vars {
        let s = shadow_name(v);
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        graph.add(
            Node::new(&s, "VarHandleOp")
                .attr("dtype", type_attr(DType::F32))
                .attr(
                    "shape",
                    AttrValue::from_shape(TensorShapeProto::from_dims(&dims)),
                )
                .attr("shared_name", AttrValue::from_s(&s))
                .attr("container", AttrValue::from_s("")),
        )?;
        // Initialised to the variable's initial value.
        let init_read = format!("{s}/Initializer/ReadVariableOp");
        graph.add(
            Node::new(&init_read, "ReadVariableOp")
                .input(v.as_str())
                .control_input(initializer_of(graph, v)?)
                .attr("dtype", type_attr(DType::F32)),
        )?;
        let assign = format!("{s}/Assign");
        graph.add(
            Node::new(&assign, "AssignVariableOp")
                .input(s.as_str())
                .input(init_read.as_str())
                .attr("dtype", type_attr(DType::F32)),
        )?;
        ops.init_assigns.push(assign);

        // shadow -= (shadow - V) * (1 - decay), V read after the step's updates.
        let base = format!("{s}/AssignMovingAvg");
        graph.add(
            Node::new(format!("{base}/ReadVariableOp"), "ReadVariableOp")
                .input(s.as_str())
                .control_input(after)
                .attr("dtype", type_attr(DType::F32)),
        )?;
        graph.add(
            Node::new(format!("{base}/ReadVariableOp_1"), "ReadVariableOp")
                .input(v.as_str())
                .control_input(after)
                .attr("dtype", type_attr(DType::F32)),
        )?;
        let shadow_v = TensorName::new(format!("{base}/ReadVariableOp"), 0);
        let value = TensorName::new(format!("{base}/ReadVariableOp_1"), 0);
        let diff = add_op(graph, &format!("{base}/sub"), "Sub", &[&shadow_v, &value])?;
        let delta = add_op(graph, &format!("{base}/mul"), "Mul", &[&diff, &rate])?;
        graph.add(
            Node::new(&base, "AssignSubVariableOp")
                .input(s.as_str())
                .input(delta)
                .attr("dtype", type_attr(DType::F32)),
        )?;
        ops.update_nodes.push(base);
        ops.averages.push((v.clone(), s));
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_follows_tensorflows_num_updates_cap() {
        assert_eq!(decay_at(0.9999, 0), 0.1);
        assert!((decay_at(0.9999, 1000) - 1001.0 / 1010.0).abs() < 1e-7);
        assert_eq!(decay_at(0.9999, 10_000_000), 0.9999);
        assert_eq!(decay_at(0.5, 1000), 0.5);
    }

    #[test]
    fn averaged_swaps_in_the_shadows_and_drops_them() {
        let t = |v: f32| Tensor::new(vec![1], vec![v]).unwrap();
        let ckpt = vec![
            ("a".to_string(), t(1.0)),
            ("a/ExponentialMovingAverage".to_string(), t(2.0)),
            ("b".to_string(), t(3.0)),
        ];
        assert!(has_averages(&ckpt));
        let out = averaged(ckpt);
        let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(out[0].1.f32s("t").unwrap(), &[2.0]);
        assert_eq!(out[1].1.f32s("t").unwrap(), &[3.0]);
        assert!(!has_averages(&out));
    }

    #[test]
    fn decay_outside_zero_one_is_refused() {
        assert!(validate(1.0).is_err());
        assert!(validate(-0.1).is_err());
        assert!(validate(f32::NAN).is_err());
        assert!(validate(0.0).is_ok());
    }
}
