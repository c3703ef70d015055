//! [`GraphBuilder`]: adds nodes under TensorFlow-style name scopes and
//! writes variables the way TF2 resource variables appear in a GraphDef
//! (see the module docs of [`crate::zoo`] for the exact node layout).

use std::collections::HashMap;

use psflow_kernels::{DType, Tensor};
use psflow_proto::tensorflow::{TensorProto, TensorShapeProto};

use crate::dtype::dtype_to_proto;
use crate::ir::{Graph, Node, TensorName};
use crate::tensor_proto::tensor_to_proto;
use crate::AttrValue;

/// How a variable gets its first value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Every element `value` (a `Const` filled like TF's `zeros`/`ones`).
    Fill(f32),
    /// `TruncatedNormal * stddev` (mean 0), TF's
    /// `truncated_normal_initializer`: draws beyond two standard deviations
    /// are redrawn.
    TruncatedNormal { stddev: f32 },
    /// `RandomUniform * (max - min) + min`.
    Uniform { min: f32, max: f32 },
}

impl Init {
    pub const ZEROS: Init = Init::Fill(0.0);
    pub const ONES: Init = Init::Fill(1.0);

    /// Glorot (Xavier) uniform: limit sqrt(6 / (fan_in + fan_out)), with
    /// fans as TensorFlow computes them (receptive field × in/out depth).
    pub fn glorot_uniform(shape: &[usize]) -> Init {
        let (fan_in, fan_out) = fans(shape);
        let limit = (6.0 / (fan_in + fan_out).max(1.0)).sqrt() as f32;
        Init::Uniform {
            min: -limit,
            max: limit,
        }
    }

    /// TF-slim's `variance_scaling_initializer()` (factor 2, FAN_IN,
    /// truncated normal): stddev sqrt(1.3 * 2 / fan_in), the He
    /// initialisation slim's ResNets use.
    pub fn he_truncated_normal(shape: &[usize]) -> Init {
        let (fan_in, _) = fans(shape);
        Init::TruncatedNormal {
            stddev: (2.6 / fan_in.max(1.0)).sqrt() as f32,
        }
    }
}

/// TensorFlow's `_compute_fans`: for HWIO filters (and `[h, w, in, mult]`
/// depthwise ones) fan_in = h*w*in, fan_out = h*w*out.
fn fans(shape: &[usize]) -> (f64, f64) {
    match shape {
        [] => (1.0, 1.0),
        [n] => (*n as f64, *n as f64),
        [i, o] => (*i as f64, *o as f64),
        _ => {
            let r = shape.len();
            let field: usize = shape[..r - 2].iter().product();
            ((field * shape[r - 2]) as f64, (field * shape[r - 1]) as f64)
        }
    }
}

/// One variable the builder created.
#[derive(Debug, Clone, PartialEq)]
pub struct Variable {
    /// The VarHandleOp node (and resource) name, e.g.
    /// `MobilenetV1/Conv2d_0/weights`.
    pub name: String,
    pub shape: Vec<usize>,
    /// `<name>/Read/ReadVariableOp:0`, the value as the forward pass reads it.
    pub read: TensorName,
    /// Updated by the optimizer (false for BN moving statistics).
    pub trainable: bool,
    /// Included in the L2 weight decay (conv, pointwise and dense weights).
    pub regularize: bool,
}

/// What a new variable is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VarKind {
    pub trainable: bool,
    pub regularize: bool,
}

impl VarKind {
    /// Trained and weight-decayed (conv / pointwise / dense weights).
    pub const WEIGHTS: VarKind = VarKind {
        trainable: true,
        regularize: true,
    };
    /// Trained, no weight decay (depthwise filters, biases, BN gamma/beta).
    pub const TRAINED: VarKind = VarKind {
        trainable: true,
        regularize: false,
    };
    /// Not trained (BN moving mean / variance).
    pub const STATISTIC: VarKind = VarKind {
        trainable: false,
        regularize: false,
    };
}

/// Builds a graph under name scopes. Node names are made unique as TF's
/// name scopes do (`name`, `name_1`, `name_2`, …), so adding never fails.
/// Random initialisers get `seed` = the graph seed and `seed2` = a
/// per-op counter, as TF does when a graph-level seed is set, so a graph
/// built twice with the same seed initialises identically.
pub struct GraphBuilder {
    graph: Graph,
    scopes: Vec<String>,
    /// Next suffix to try per base name.
    counters: HashMap<String, usize>,
    seed: i64,
    op_seed: i64,
    variables: Vec<Variable>,
    assigns: Vec<String>,
    updates: Vec<String>,
}

impl GraphBuilder {
    /// A builder whose random initialisers use graph-level seed `seed`.
    pub fn new(seed: u64) -> GraphBuilder {
        GraphBuilder {
            graph: Graph::new(),
            scopes: Vec::new(),
            counters: HashMap::new(),
            seed: (seed & (i64::MAX as u64)) as i64,
            op_seed: 0,
            variables: Vec::new(),
            assigns: Vec::new(),
            updates: Vec::new(),
        }
    }

    /// Runs `f` inside name scope `name` (nested scopes join with `/`).
    pub fn scope<R>(&mut self, name: &str, f: impl FnOnce(&mut GraphBuilder) -> R) -> R {
        self.scopes.push(name.to_string());
        let r = f(self);
        self.scopes.pop();
        r
    }

    /// The current scope (`""` at the top level).
    pub fn current_scope(&self) -> String {
        self.scopes.join("/")
    }

    /// `scope/base`, made unique in the graph.
    pub fn unique_name(&mut self, base: &str) -> String {
        let full = if self.scopes.is_empty() {
            base.to_string()
        } else {
            format!("{}/{base}", self.current_scope())
        };
        if self.graph.node(&full).is_none() {
            return full;
        }
        let n = self.counters.entry(full.clone()).or_insert(0);
        loop {
            *n += 1;
            let candidate = format!("{full}_{n}");
            if self.graph.node(&candidate).is_none() {
                return candidate;
            }
        }
    }

    /// Adds `node` under the current scope (its name is the base name) and
    /// returns its output 0.
    pub fn add(&mut self, mut node: Node) -> TensorName {
        node.name = self.unique_name(&node.name);
        let name = node.name.clone();
        self.graph
            .add(node)
            .expect("unique_name gives a name not yet in the graph");
        TensorName::new(name, 0)
    }

    /// An op `op` named `base` (scoped) on data inputs, with attributes.
    pub fn op(
        &mut self,
        base: &str,
        op: &str,
        inputs: &[&TensorName],
        attrs: Vec<(&str, AttrValue)>,
    ) -> TensorName {
        let mut node = Node::new(base, op);
        for i in inputs {
            node = node.input((*i).clone());
        }
        for (k, v) in attrs {
            node = node.attr(k, v);
        }
        self.add(node)
    }

    /// A `T: float` op, the common case.
    pub fn op_f32(
        &mut self,
        base: &str,
        op: &str,
        inputs: &[&TensorName],
        mut attrs: Vec<(&str, AttrValue)>,
    ) -> TensorName {
        attrs.push(("T", type_attr(DType::F32)));
        self.op(base, op, inputs, attrs)
    }

    pub fn placeholder(&mut self, base: &str, dtype: DType, dims: &[i64]) -> TensorName {
        self.op(
            base,
            "Placeholder",
            &[],
            vec![
                ("dtype", type_attr(dtype)),
                (
                    "shape",
                    AttrValue::from_shape(TensorShapeProto::from_dims(dims)),
                ),
            ],
        )
    }

    pub fn constant(&mut self, base: &str, value: &Tensor) -> TensorName {
        self.const_proto(base, value.dtype(), tensor_to_proto(value))
    }

    /// A float tensor of `shape` with every element `value`, stored as TF
    /// stores `zeros`/`ones` (one `float_val`).
    pub fn filled(&mut self, base: &str, shape: &[usize], value: f32) -> TensorName {
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let proto = TensorProto {
            dtype: dtype_to_proto(DType::F32) as i32,
            tensor_shape: Some(TensorShapeProto::from_dims(&dims)),
            float_val: vec![value],
            ..Default::default()
        };
        self.const_proto(base, DType::F32, proto)
    }

    pub fn scalar(&mut self, base: &str, value: f32) -> TensorName {
        self.constant(base, &Tensor::scalar(value))
    }

    /// An int32 vector constant (shapes, axes).
    pub fn ints(&mut self, base: &str, values: &[i32]) -> TensorName {
        let t = Tensor::new(vec![values.len()], values.to_vec()).expect("vector shape");
        self.constant(base, &t)
    }

    fn const_proto(&mut self, base: &str, dtype: DType, proto: TensorProto) -> TensorName {
        self.op(
            base,
            "Const",
            &[],
            vec![
                ("dtype", type_attr(dtype)),
                ("value", AttrValue::from_tensor(proto)),
            ],
        )
    }

    /// A float32 resource variable `base` in the current scope:
    /// `VarHandleOp`, its initialiser and `Assign`, and one
    /// `Read/ReadVariableOp` that the forward pass uses.
    pub fn variable(&mut self, base: &str, shape: &[usize], init: Init, kind: VarKind) -> Variable {
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let name = self.unique_name(base);
        self.graph
            .add(
                Node::new(name.clone(), "VarHandleOp")
                    .attr("dtype", type_attr(DType::F32))
                    .attr(
                        "shape",
                        AttrValue::from_shape(TensorShapeProto::from_dims(&dims)),
                    )
                    .attr("container", AttrValue::from_s(""))
                    .attr("shared_name", AttrValue::from_s(&name)),
            )
            .expect("unique_name gives a name not yet in the graph");
        let handle = TensorName::new(name.clone(), 0);
        // The variable's own nodes live under its full name.
        let saved = std::mem::replace(&mut self.scopes, vec![name.clone()]);
        let value = self.scope("Initializer", |b| b.initial_value(shape, init));
        let read = self.scope("Read", |b| {
            b.op(
                "ReadVariableOp",
                "ReadVariableOp",
                &[&handle],
                vec![("dtype", type_attr(DType::F32))],
            )
        });
        let assign = self.assign("Assign", &handle, &value);
        self.scopes = saved;
        self.assigns.push(assign);
        let v = Variable {
            name,
            shape: shape.to_vec(),
            read,
            trainable: kind.trainable,
            regularize: kind.regularize,
        };
        self.variables.push(v.clone());
        v
    }

    /// `AssignVariableOp(handle, value)` named `base` (scoped); returns the
    /// node name.
    pub fn assign(&mut self, base: &str, handle: &TensorName, value: &TensorName) -> String {
        self.op(
            base,
            "AssignVariableOp",
            &[handle, value],
            vec![("dtype", type_attr(DType::F32))],
        )
        .node
    }

    fn initial_value(&mut self, shape: &[usize], init: Init) -> TensorName {
        let shape_i32: Vec<i32> = shape.iter().map(|&d| d as i32).collect();
        match init {
            Init::Fill(v) => {
                let base = if v == 0.0 {
                    "zeros"
                } else if v == 1.0 {
                    "ones"
                } else {
                    "Const"
                };
                self.filled(base, shape, v)
            }
            Init::TruncatedNormal { stddev } => self.scope("truncated_normal", |b| {
                let s = b.ints("shape", &shape_i32);
                let mean = b.scalar("mean", 0.0);
                let sd = b.scalar("stddev", stddev);
                let attrs = b.random_attrs();
                let r = b.op("TruncatedNormal", "TruncatedNormal", &[&s], attrs);
                let m = b.op_f32("mul", "Mul", &[&r, &sd], vec![]);
                // TF names the sum after the scope: `.../truncated_normal`.
                b.scopes.pop();
                let out = b.op_f32("truncated_normal", "AddV2", &[&m, &mean], vec![]);
                b.scopes.push("truncated_normal".into());
                out
            }),
            Init::Uniform { min, max } => self.scope("random_uniform", |b| {
                let s = b.ints("shape", &shape_i32);
                let lo = b.scalar("min", min);
                let hi = b.scalar("max", max);
                let attrs = b.random_attrs();
                let r = b.op("RandomUniform", "RandomUniform", &[&s], attrs);
                let range = b.op_f32("sub", "Sub", &[&hi, &lo], vec![]);
                let m = b.op_f32("mul", "Mul", &[&r, &range], vec![]);
                b.scopes.pop();
                let out = b.op_f32("random_uniform", "AddV2", &[&m, &lo], vec![]);
                b.scopes.push("random_uniform".into());
                out
            }),
        }
    }

    /// Attributes of a float random op on an int32 shape: dtype, T, seed,
    /// seed2 (a fresh op seed each call).
    pub fn random_attrs(&mut self) -> Vec<(&'static str, AttrValue)> {
        self.op_seed += 1;
        vec![
            ("dtype", type_attr(DType::F32)),
            ("T", type_attr(DType::I32)),
            ("seed", AttrValue::from_i(self.seed)),
            ("seed2", AttrValue::from_i(self.op_seed)),
        ]
    }

    /// A `NoOp` named `name` (top level) with a control input on every
    /// variable's `Assign`: run it as a target to initialise.
    pub fn add_init_op(&mut self, name: &str) -> String {
        let mut node = Node::new(name, "NoOp");
        for a in &self.assigns {
            node = node.control_input(a.clone());
        }
        let saved = std::mem::take(&mut self.scopes);
        let out = self.add(node).node;
        self.scopes = saved;
        out
    }

    /// Records assign nodes that update moving statistics in training.
    pub fn record_updates(&mut self, nodes: impl IntoIterator<Item = String>) {
        self.updates.extend(nodes);
    }

    /// The moving-statistic assigns recorded so far (batch norm in
    /// training); a training op must depend on them.
    pub fn moving_average_updates(&self) -> &[String] {
        &self.updates
    }

    /// Variables created so far, in creation order.
    pub fn variables(&self) -> &[Variable] {
        &self.variables
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The graph and every variable created.
    pub fn finish(self) -> (Graph, Vec<Variable>) {
        (self.graph, self.variables)
    }
}

/// A `type` attribute.
pub fn type_attr(d: DType) -> AttrValue {
    AttrValue::from_type(dtype_to_proto(d))
}

/// A `Const` node holding `t`, with TensorFlow's attrs (`dtype`, `value`).
pub fn const_node(name: &str, t: &Tensor) -> Node {
    Node::new(name, "Const")
        .attr("dtype", type_attr(t.dtype()))
        .attr("value", AttrValue::from_tensor(tensor_to_proto(t)))
}
