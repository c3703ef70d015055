//! Optimizers as configs (serde, TF-slim defaults) and the graph nodes that
//! apply them, named as TF1's optimizers name them:
//!
//! - slot variables `V/RMSProp` (mean square, initialised to ones as TF1's
//!   RMSPropOptimizer), `V/RMSProp_1` (momentum; with `centered`, the mean
//!   gradient is `V/RMSProp_1` and momentum `V/RMSProp_2`), `V/Momentum`,
//!   `V/Adam` and `V/Adam_1` (m, v), plus Adam's `beta1_power` and
//!   `beta2_power` (initialised to beta1 and beta2, multiplied by them after
//!   every step as TF1's AdamOptimizer does);
//! - each slot `S` is a `VarHandleOp` with initializer nodes under
//!   `S/Initializer/…` and `AssignVariableOp` `S/Assign` (to add to the
//!   graph's `init` NoOp);
//! - hyper-parameters are `Const`s under the optimizer's scope
//!   (`RMSProp/decay`, …), the update of `V` is
//!   `<Opt>/update_V/ResourceApply<Opt>`.
//!
//! The learning rate is a scalar float tensor (the `learning_rate`
//! placeholder that the host feeds from a [`super::schedule`]).

use psflow_kernels::{DType, Tensor};
use psflow_proto::tensorflow::{AttrValue, TensorShapeProto};
use serde::{Deserialize, Serialize};

use crate::dtype::dtype_to_proto;
use crate::ir::{Graph, Node, TensorName};
use crate::tensor_proto::tensor_to_proto;
use crate::{Error, Result};

/// RMSProp (TF's ApplyRMSProp); defaults are TF-slim's MobileNet settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RmsPropConfig {
    /// Decay of the mean square (TF's `rho`).
    pub decay: f32,
    pub momentum: f32,
    pub epsilon: f32,
    /// Centered RMSProp (divides by an estimate of the variance).
    pub centered: bool,
}

impl Default for RmsPropConfig {
    fn default() -> RmsPropConfig {
        RmsPropConfig {
            decay: 0.9,
            momentum: 0.9,
            epsilon: 1.0,
            centered: false,
        }
    }
}

/// Momentum SGD (TF's ApplyMomentum).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MomentumConfig {
    pub momentum: f32,
    pub nesterov: bool,
}

impl Default for MomentumConfig {
    fn default() -> MomentumConfig {
        MomentumConfig {
            momentum: 0.9,
            nesterov: false,
        }
    }
}

/// Plain gradient descent (TF's ApplyGradientDescent): no hyper-parameters
/// beyond the learning rate.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgdConfig {}

/// Adam (TF's ApplyAdam, bias correction folded into the step size).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub epsilon: f32,
    pub nesterov: bool,
}

impl Default for AdamConfig {
    fn default() -> AdamConfig {
        AdamConfig {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            nesterov: false,
        }
    }
}

/// An optimizer: in JSON `{"kind": "rmsprop", "decay": 0.9, …}`, missing
/// fields taking their defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Optimizer {
    #[serde(rename = "rmsprop")]
    RmsProp(RmsPropConfig),
    #[serde(rename = "momentum")]
    Momentum(MomentumConfig),
    #[serde(rename = "sgd")]
    Sgd(SgdConfig),
    #[serde(rename = "adam")]
    Adam(AdamConfig),
}

impl Default for Optimizer {
    /// TF-slim's MobileNet optimizer: RMSProp(0.9, 0.9, 1.0).
    fn default() -> Optimizer {
        Optimizer::RmsProp(RmsPropConfig::default())
    }
}

impl Optimizer {
    /// The optimizer named `name` (`rmsprop`, `momentum`, `sgd`, `adam`)
    /// with its default hyper-parameters; `None` for another name.
    pub fn with_defaults(name: &str) -> Option<Optimizer> {
        Some(match name {
            "rmsprop" => Optimizer::RmsProp(RmsPropConfig::default()),
            "momentum" => Optimizer::Momentum(MomentumConfig::default()),
            "sgd" => Optimizer::Sgd(SgdConfig::default()),
            "adam" => Optimizer::Adam(AdamConfig::default()),
            _ => return None,
        })
    }
}

/// What [`Optimizer::add_to_graph`] added.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OptimizerOps {
    /// Nodes the train op must depend on (the updates, and for Adam the
    /// beta-power updates that follow them).
    pub update_nodes: Vec<String>,
    /// Every variable the optimizer created (slots, beta powers), in
    /// creation order: they belong in checkpoints.
    pub slot_variables: Vec<String>,
    /// The `…/Assign` initializer of each created variable, for `init`.
    pub init_assigns: Vec<String>,
}

impl Optimizer {
    /// The name TF gives the optimizer: the scope of its nodes and the
    /// suffix of its slots.
    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::RmsProp(_) => "RMSProp",
            Optimizer::Momentum(_) => "Momentum",
            Optimizer::Sgd(_) => "GradientDescent",
            Optimizer::Adam(_) => "Adam",
        }
    }

    /// Checks the hyper-parameters (finite, in range).
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, detail: String| {
            Err(Error::InvalidNode {
                node: self.name().to_string(),
                detail: format!("optimizer {what}: {detail}"),
            })
        };
        let unit = |what: &str, x: f32| {
            if (0.0..1.0).contains(&x) {
                Ok(())
            } else {
                bad(what, format!("must be in [0, 1), got {x}"))
            }
        };
        let positive = |what: &str, x: f32| {
            if x > 0.0 && x.is_finite() {
                Ok(())
            } else {
                bad(what, format!("must be positive, got {x}"))
            }
        };
        match *self {
            Optimizer::RmsProp(c) => {
                unit("decay", c.decay)?;
                unit("momentum", c.momentum)?;
                positive("epsilon", c.epsilon)
            }
            Optimizer::Momentum(c) => unit("momentum", c.momentum),
            Optimizer::Sgd(_) => Ok(()),
            Optimizer::Adam(c) => {
                unit("beta1", c.beta1)?;
                unit("beta2", c.beta2)?;
                positive("epsilon", c.epsilon)
            }
        }
    }

    /// Adds the slots and update ops for `vars` — pairs of (variable, its
    /// gradient), each variable a float32 `VarHandleOp` of fully known
    /// shape — with `learning_rate` a scalar float32 tensor. Returns the
    /// nodes added that callers need (see [`OptimizerOps`]).
    pub fn add_to_graph(
        &self,
        graph: &mut Graph,
        vars: &[(String, TensorName)],
        learning_rate: &TensorName,
    ) -> Result<OptimizerOps> {
        self.validate()?;
        let scope = self.name();
        let mut b = Builder {
            graph,
            ops: OptimizerOps::default(),
        };
        let lr = learning_rate.clone();
        let c = |b: &mut Builder, name: &str, x: f32| b.scalar(&format!("{scope}/{name}"), x);
        match *self {
            Optimizer::RmsProp(cfg) => {
                let rho = c(&mut b, "decay", cfg.decay)?;
                let mu = c(&mut b, "momentum", cfg.momentum)?;
                let eps = c(&mut b, "epsilon", cfg.epsilon)?;
                for (v, g) in vars {
                    let shape = b.var_shape(v)?;
                    let ms = b.slot(v, "RMSProp", &shape, 1.0)?;
                    let (op, slots) = if cfg.centered {
                        let mg = b.slot(v, "RMSProp_1", &shape, 0.0)?;
                        let mom = b.slot(v, "RMSProp_2", &shape, 0.0)?;
                        ("ResourceApplyCenteredRMSProp", vec![mg, ms, mom])
                    } else {
                        let mom = b.slot(v, "RMSProp_1", &shape, 0.0)?;
                        ("ResourceApplyRMSProp", vec![ms, mom])
                    };
                    let mut n = Node::new(format!("{scope}/update_{v}/{op}"), op).input(v.as_str());
                    for s in slots {
                        n = n.input(s.as_str());
                    }
                    n = n.input(lr.clone()).input(rho.clone()).input(mu.clone());
                    n = n.input(eps.clone()).input(g.clone());
                    b.update(n)?;
                }
            }
            Optimizer::Momentum(cfg) => {
                let mu = c(&mut b, "momentum", cfg.momentum)?;
                for (v, g) in vars {
                    let shape = b.var_shape(v)?;
                    let accum = b.slot(v, "Momentum", &shape, 0.0)?;
                    let op = "ResourceApplyMomentum";
                    let n = Node::new(format!("{scope}/update_{v}/{op}"), op)
                        .input(v.as_str())
                        .input(accum.as_str())
                        .input(lr.clone())
                        .input(g.clone())
                        .input(mu.clone())
                        .attr("use_nesterov", AttrValue::from_b(cfg.nesterov));
                    b.update(n)?;
                }
            }
            Optimizer::Sgd(_) => {
                for (v, g) in vars {
                    b.var_shape(v)?;
                    let op = "ResourceApplyGradientDescent";
                    let n = Node::new(format!("{scope}/update_{v}/{op}"), op)
                        .input(v.as_str())
                        .input(lr.clone())
                        .input(g.clone());
                    b.update(n)?;
                }
            }
            Optimizer::Adam(cfg) => {
                let beta1 = c(&mut b, "beta1", cfg.beta1)?;
                let beta2 = c(&mut b, "beta2", cfg.beta2)?;
                let eps = c(&mut b, "epsilon", cfg.epsilon)?;
                let b1p = b.variable("beta1_power", &[], cfg.beta1)?;
                let b2p = b.variable("beta2_power", &[], cfg.beta2)?;
                let b1p_read = b.read(&b1p)?;
                let b2p_read = b.read(&b2p)?;
                for (v, g) in vars {
                    let shape = b.var_shape(v)?;
                    let m = b.slot(v, "Adam", &shape, 0.0)?;
                    let vv = b.slot(v, "Adam_1", &shape, 0.0)?;
                    let op = "ResourceApplyAdam";
                    let n = Node::new(format!("{scope}/update_{v}/{op}"), op)
                        .input(v.as_str())
                        .input(m.as_str())
                        .input(vv.as_str())
                        .input(b1p_read.clone())
                        .input(b2p_read.clone())
                        .input(lr.clone())
                        .input(beta1.clone())
                        .input(beta2.clone())
                        .input(eps.clone())
                        .input(g.clone())
                        .attr("use_nesterov", AttrValue::from_b(cfg.nesterov));
                    b.update(n)?;
                }
                // After every update, as TF1's AdamOptimizer._finish.
                let updates = b.ops.update_nodes.clone();
                for (i, (var, read, beta)) in [(&b1p, &b1p_read, &beta1), (&b2p, &b2p_read, &beta2)]
                    .into_iter()
                    .enumerate()
                {
                    let sfx = if i == 0 { "" } else { "_1" };
                    let mut mul = Node::new(format!("{scope}/mul{sfx}"), "Mul")
                        .input(read.clone())
                        .input(beta.clone())
                        .attr("T", f32_type());
                    for u in &updates {
                        mul = mul.control_input(u.as_str());
                    }
                    let mul_name = mul.name.clone();
                    b.graph.add(mul)?;
                    let assign = assign_node(&format!("{scope}/Assign{sfx}"), var, &mul_name);
                    b.ops.update_nodes.push(assign.name.clone());
                    b.graph.add(assign)?;
                }
            }
        }
        Ok(b.ops)
    }
}

fn f32_type() -> AttrValue {
    AttrValue::from_type(dtype_to_proto(DType::F32))
}

fn assign_node(name: &str, var: &str, value: &str) -> Node {
    Node::new(name, "AssignVariableOp")
        .input(var)
        .input(value)
        .attr("dtype", f32_type())
}

struct Builder<'g> {
    graph: &'g mut Graph,
    ops: OptimizerOps,
}

impl Builder<'_> {
    fn scalar(&mut self, name: &str, x: f32) -> Result<TensorName> {
        let t = Tensor::scalar(x);
        self.graph.add(
            Node::new(name, "Const")
                .attr("dtype", f32_type())
                .attr("value", AttrValue::from_tensor(tensor_to_proto(&t))),
        )?;
        Ok(TensorName::new(name, 0))
    }

    /// The shape of variable `v`: a float32 VarHandleOp of known shape.
    fn var_shape(&self, v: &str) -> Result<Vec<usize>> {
        let err = |detail: String| Error::InvalidNode {
            node: v.to_string(),
            detail,
        };
        let node = self.graph.node(v).ok_or_else(|| {
            err("the optimizer was given a variable that is not in the graph".into())
        })?;
        if node.op != "VarHandleOp" {
            return Err(err(format!(
                "the optimizer updates VarHandleOp variables, this is a {}",
                node.op
            )));
        }
        let dtype = node.attr_dtype("dtype")?;
        if dtype != DType::F32 {
            return Err(err(format!(
                "the optimizer updates float32 variables, this is {dtype}"
            )));
        }
        let shape = node.attr_shape_or_unknown("shape")?;
        shape.concrete().ok_or_else(|| {
            err(format!(
                "slots need a fully known variable shape, got {shape}"
            ))
        })
    }

    /// Slot `V/<suffix>` of `v`, filled with `value`.
    fn slot(&mut self, v: &str, suffix: &str, shape: &[usize], value: f32) -> Result<String> {
        self.variable(&format!("{v}/{suffix}"), shape, value)
    }

    /// A float32 variable `name` of `shape` whose initializer fills it with
    /// `value` (TF's zeros/ones initializers: `Fill` of a shape constant,
    /// so the GraphDef stays small for large variables).
    fn variable(&mut self, name: &str, shape: &[usize], value: f32) -> Result<String> {
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        self.graph.add(
            Node::new(name, "VarHandleOp")
                .attr("dtype", f32_type())
                .attr(
                    "shape",
                    AttrValue::from_shape(TensorShapeProto::from_dims(&dims)),
                )
                .attr("shared_name", AttrValue::from_s(name))
                .attr("container", AttrValue::from_s("")),
        )?;
        let kind = match value {
            0.0 => "zeros",
            1.0 => "ones",
            _ => "Const",
        };
        let init = format!("{name}/Initializer/{kind}");
        let value_t = if shape.is_empty() {
            self.scalar(&init, value)?
        } else {
            let dims_t = Tensor::new(
                vec![dims.len()],
                dims.iter().map(|&d| d as i32).collect::<Vec<_>>(),
            )
            .expect("length matches");
            let shape_name = format!("{init}/shape_as_tensor");
            self.graph.add(
                Node::new(&shape_name, "Const")
                    .attr("dtype", AttrValue::from_type(dtype_to_proto(DType::I32)))
                    .attr("value", AttrValue::from_tensor(tensor_to_proto(&dims_t))),
            )?;
            let fill_value = self.scalar(&format!("{init}/Const"), value)?;
            self.graph.add(
                Node::new(&init, "Fill")
                    .input(shape_name.as_str())
                    .input(fill_value)
                    .attr("T", f32_type())
                    .attr(
                        "index_type",
                        AttrValue::from_type(dtype_to_proto(DType::I32)),
                    ),
            )?;
            TensorName::new(init, 0)
        };
        let assign = assign_node(&format!("{name}/Assign"), name, &value_t.node);
        self.ops.init_assigns.push(assign.name.clone());
        self.graph.add(assign)?;
        self.ops.slot_variables.push(name.to_string());
        Ok(name.to_string())
    }

    /// `V/Read/ReadVariableOp` of a float32 variable.
    fn read(&mut self, v: &str) -> Result<TensorName> {
        let name = format!("{v}/Read/ReadVariableOp");
        self.graph.add(
            Node::new(&name, "ReadVariableOp")
                .input(v)
                .attr("dtype", f32_type()),
        )?;
        Ok(TensorName::new(name, 0))
    }

    fn update(&mut self, node: Node) -> Result<()> {
        let node = node
            .attr("T", f32_type())
            .attr("use_locking", AttrValue::from_b(false));
        self.ops.update_nodes.push(node.name.clone());
        self.graph.add(node)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_tf_slims() {
        let Optimizer::RmsProp(c) = Optimizer::default() else {
            panic!("RMSProp is the default")
        };
        assert_eq!(
            (c.decay, c.momentum, c.epsilon, c.centered),
            (0.9, 0.9, 1.0, false)
        );
        let m = MomentumConfig::default();
        assert_eq!((m.momentum, m.nesterov), (0.9, false));
        let a = AdamConfig::default();
        assert_eq!((a.beta1, a.beta2, a.epsilon), (0.9, 0.999, 1e-8));
    }

    #[test]
    fn validate_rejects_out_of_range_hyper_parameters() {
        assert!(Optimizer::default().validate().is_ok());
        let bad = Optimizer::RmsProp(RmsPropConfig {
            decay: 1.5,
            ..Default::default()
        });
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("decay") && e.contains("1.5"), "{e}");
        let bad = Optimizer::Adam(AdamConfig {
            epsilon: 0.0,
            ..Default::default()
        });
        assert!(bad.validate().is_err());
    }

    #[test]
    fn configs_read_from_json_with_defaults() {
        let o: Optimizer = serde_json::from_str(r#"{"kind": "rmsprop"}"#).unwrap();
        assert_eq!(o, Optimizer::default());
        let o: Optimizer =
            serde_json::from_str(r#"{"kind": "rmsprop", "epsilon": 0.5, "centered": true}"#)
                .unwrap();
        assert_eq!(
            o,
            Optimizer::RmsProp(RmsPropConfig {
                epsilon: 0.5,
                centered: true,
                ..Default::default()
            })
        );
        let o: Optimizer = serde_json::from_str(r#"{"kind": "adam", "beta2": 0.99}"#).unwrap();
        assert_eq!(
            o,
            Optimizer::Adam(AdamConfig {
                beta2: 0.99,
                ..Default::default()
            })
        );
        let o: Optimizer = serde_json::from_str(r#"{"kind": "sgd"}"#).unwrap();
        assert_eq!(o, Optimizer::Sgd(SgdConfig {}));
        for o in [
            Optimizer::default(),
            Optimizer::Momentum(MomentumConfig::default()),
            Optimizer::Sgd(SgdConfig {}),
            Optimizer::Adam(AdamConfig::default()),
        ] {
            let back: Optimizer =
                serde_json::from_str(&serde_json::to_string(&o).unwrap()).unwrap();
            assert_eq!(back, o);
        }
        let err = serde_json::from_str::<Optimizer>(r#"{"kind": "rmsprop", "rho": 0.9}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("rho"), "{err}");
        assert!(serde_json::from_str::<Optimizer>(r#"{"kind": "adagrad"}"#).is_err());
    }
}
