//! Adding gradient nodes: unique names under `gradients/<node>_grad/`,
//! constants, shapes (constant when static, a `Shape` op when not), and the
//! per-node context that each op's gradient function receives.

use psflow_kernels::{DType, Tensor};
use psflow_proto::tensorflow::AttrValue;

use crate::ir::{Graph, Node, TensorName};
use crate::registry::TensorInfo;
use crate::tensor_proto::tensor_to_proto;
use crate::zoo::type_attr;
use crate::{Error, Result};

/// Adds nodes to the graph under a name scope, making names unique the
/// way TensorFlow does (`name`, `name_1`, `name_2`, …).
pub(crate) struct Emitter<'g> {
    pub graph: &'g mut Graph,
    /// The current scope, e.g. `gradients/conv/Conv2D_grad`.
    pub scope: String,
}

impl Emitter<'_> {
    /// A node named `<scope>/<name>` (made unique when added).
    pub fn node(&self, name: &str, op: &str) -> Node {
        Node::new(format!("{}/{name}", self.scope), op)
    }

    /// Adds `node`, renaming it `name_k` if the name is taken; returns
    /// its output 0.
    pub fn add(&mut self, mut node: Node) -> Result<TensorName> {
        if self.graph.node(&node.name).is_some() {
            let base = node.name.clone();
            let mut k = 1;
            while self.graph.node(&format!("{base}_{k}")).is_some() {
                k += 1;
            }
            node.name = format!("{base}_{k}");
        }
        let name = node.name.clone();
        self.graph.add(node)?;
        Ok(TensorName::new(name, 0))
    }

    pub fn konst(&mut self, name: &str, t: &Tensor) -> Result<TensorName> {
        let n = self
            .node(name, "Const")
            .attr("dtype", type_attr(t.dtype()))
            .attr("value", AttrValue::from_tensor(tensor_to_proto(t)));
        self.add(n)
    }

    /// An int32 vector constant.
    pub fn ints(&mut self, name: &str, v: &[i64]) -> Result<TensorName> {
        let t = Tensor::new(vec![v.len()], v.iter().map(|&x| x as i32).collect())
            .expect("length matches");
        self.konst(name, &t)
    }

    /// A scalar float constant of dtype `d` (f32 or f64).
    pub fn scalar(&mut self, name: &str, d: DType, v: f64) -> Result<TensorName> {
        let t = match d {
            DType::F64 => Tensor::scalar(v),
            _ => Tensor::scalar(v as f32),
        };
        self.konst(name, &t)
    }

    /// A one-input-per-tensor op with attr `T`.
    pub fn op(
        &mut self,
        name: &str,
        op: &str,
        inputs: &[&TensorName],
        t: Option<DType>,
    ) -> Result<TensorName> {
        let mut n = self.node(name, op);
        for i in inputs {
            n = n.input((*i).clone());
        }
        if let Some(t) = t {
            n = n.attr("T", type_attr(t));
        }
        self.add(n)
    }

    /// The shape of `t` as an int32 vector: a constant when `info` knows
    /// it fully, else a `Shape` op.
    pub fn shape_of(&mut self, t: &TensorName, info: &TensorInfo) -> Result<TensorName> {
        if let Some(dims) = info.shape.concrete() {
            let dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
            return self.ints("Const", &dims);
        }
        let mut n = self
            .node("Shape", "Shape")
            .input(t.clone())
            .attr("out_type", type_attr(DType::I32));
        if let Some(d) = info.dtype {
            n = n.attr("T", type_attr(d));
        }
        self.add(n)
    }

    /// A `Reshape` target giving `info`'s shape: a constant when at most one
    /// dimension is unknown (it becomes -1), else a `Shape` op.
    pub fn reshape_target(&mut self, t: &TensorName, info: &TensorInfo) -> Result<TensorName> {
        if let Some(d) = info.shape.dims() {
            if d.iter().filter(|&&x| x < 0).count() <= 1 {
                return self.ints("Const", d);
            }
        }
        self.shape_of(t, info)
    }

    /// `Reshape(x, target)`.
    pub fn reshape(
        &mut self,
        x: &TensorName,
        target: &TensorName,
        t: Option<DType>,
    ) -> Result<TensorName> {
        let mut n = self
            .node("Reshape", "Reshape")
            .input(x.clone())
            .input(target.clone())
            .attr("Tshape", type_attr(DType::I32));
        if let Some(t) = t {
            n = n.attr("T", type_attr(t));
        }
        self.add(n)
    }

    /// `Sum(x, axes)` with `keep_dims`.
    pub fn sum(
        &mut self,
        x: &TensorName,
        axes: &TensorName,
        keep_dims: bool,
        t: Option<DType>,
    ) -> Result<TensorName> {
        let mut n = self
            .node("Sum", "Sum")
            .input(x.clone())
            .input(axes.clone())
            .attr("keep_dims", AttrValue::from_b(keep_dims))
            .attr("Tidx", type_attr(DType::I32));
        if let Some(t) = t {
            n = n.attr("T", type_attr(t));
        }
        self.add(n)
    }
}

/// What a gradient function sees of one forward node.
pub(crate) struct GradCtx<'a, 'g> {
    pub e: &'a mut Emitter<'g>,
    pub node: &'a Node,
    /// The node's data inputs and what inference knows of them.
    pub inputs: Vec<TensorName>,
    pub in_info: Vec<TensorInfo>,
    pub out_info: Vec<TensorInfo>,
    /// The (aggregated) gradient of each output; `None` where no gradient
    /// flows back into that output.
    pub grads: Vec<Option<TensorName>>,
    /// Which inputs need a gradient (reached from the xs, float).
    pub needed: Vec<bool>,
}

impl GradCtx<'_, '_> {
    /// The gradient of output `i`; an error naming the node when none
    /// flows there.
    pub fn grad(&self, i: usize) -> Result<TensorName> {
        self.grads[i].clone().ok_or_else(|| Error::InvalidNode {
            node: self.node.name.clone(),
            detail: format!(
                "internal: the {} gradient needs a gradient for output {i}",
                self.node.op
            ),
        })
    }

    /// The shape of input `i` (see [`Emitter::shape_of`]).
    pub fn input_shape(&mut self, i: usize) -> Result<TensorName> {
        let (x, info) = (self.inputs[i].clone(), self.in_info[i].clone());
        self.e.shape_of(&x, &info)
    }

    pub fn x(&self, i: usize) -> &TensorName {
        &self.inputs[i]
    }

    pub fn y(&self, port: usize) -> TensorName {
        TensorName::new(self.node.name.clone(), port)
    }

    /// The element type of the op (attr `T`, else inferred from output 0
    /// or input 0).
    pub fn dtype(&self) -> Option<DType> {
        self.node
            .attr_dtype("T")
            .ok()
            .or(self.out_info.first().and_then(|i| i.dtype))
            .or(self.in_info.first().and_then(|i| i.dtype))
    }

    /// A node under the current scope carrying the forward node's
    /// attributes among `attrs` (those present).
    pub fn node_with(&self, name: &str, op: &str, attrs: &[&str]) -> Node {
        let mut n = self.e.node(name, op);
        for &a in attrs {
            if let Some(v) = self.node.attrs.get(a) {
                n = n.attr(a, v.clone());
            }
        }
        n
    }

    /// An error saying this node's gradient cannot be formed.
    pub fn unsupported(&self, detail: impl std::fmt::Display) -> Error {
        Error::InvalidNode {
            node: self.node.name.clone(),
            detail: format!("cannot differentiate {}: {detail}", self.node.op),
        }
    }
}
