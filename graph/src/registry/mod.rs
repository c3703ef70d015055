//! The op registry: for each TensorFlow op name, a builder that parses the
//! node's attributes into an [`OpKernel`]; the kernel infers output shapes
//! from partially known input shapes and computes outputs by calling
//! psflow-kernels.
//!
//! Later ops (variables, optimizers) register the same way; they reach
//! per-session state through [`OpContext::resources`].

mod array;
mod grad_ops;
mod math;
pub(crate) mod nn;
mod random;
mod sendrecv;
mod state;

pub(crate) use sendrecv::check_received;
pub use sendrecv::transfer_key;
pub use state::{resource_handle, resource_name, variable_key};

use std::collections::BTreeMap;

pub use grad_ops::broadcast_reduction_axes;
use psflow_kernels::{DType, Tensor};

use crate::executor::{Rendezvous, RendezvousKey, ResourceStore};
use crate::ir::Node;
use crate::shape::Shape;
use crate::{Error, Result};

/// What shape inference knows about one tensor: its dtype and shape when
/// known, and its value when it is a (small) constant.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub dtype: Option<DType>,
    pub shape: Shape,
    pub value: Option<Tensor>,
}

impl TensorInfo {
    pub fn new(dtype: impl Into<Option<DType>>, shape: Shape) -> TensorInfo {
        TensorInfo {
            dtype: dtype.into(),
            shape,
            value: None,
        }
    }

    pub fn unknown() -> TensorInfo {
        TensorInfo::new(None, Shape::Unknown)
    }

    /// The info of a known value.
    pub fn of_value(t: Tensor) -> TensorInfo {
        TensorInfo {
            dtype: Some(t.dtype()),
            shape: Shape::known(t.shape()),
            value: Some(t),
        }
    }
}

/// The inputs of one node during shape inference.
pub struct InferCtx<'a> {
    pub node: &'a Node,
    pub inputs: &'a [TensorInfo],
}

impl InferCtx<'_> {
    pub fn shape(&self, i: usize) -> &Shape {
        &self.inputs[i].shape
    }

    pub fn dtype(&self, i: usize) -> Option<DType> {
        self.inputs[i].dtype
    }

    pub fn value(&self, i: usize) -> Option<&Tensor> {
        self.inputs[i].value.as_ref()
    }

    /// A known integer input (axes, sizes, paddings), as i64.
    pub fn ints(&self, i: usize) -> Option<Vec<i64>> {
        self.value(i).and_then(|v| v.to_i64_vec("infer").ok())
    }

    /// A shape error naming this node.
    pub fn err(&self, detail: impl Into<String>) -> Error {
        Error::shape(&self.node.name, &self.node.op, detail)
    }

    /// Input `i` must have the given rank when its rank is known.
    pub fn expect_rank(&self, i: usize, rank: usize, what: &str) -> Result<()> {
        match self.shape(i).rank() {
            Some(r) if r != rank => Err(self.err(format!(
                "{what} must have rank {rank}, got shape {}",
                self.shape(i)
            ))),
            _ => Ok(()),
        }
    }

    /// Input `i` as a shape of `rank` dimensions (unknown rank → all -1);
    /// an error when the known rank differs.
    pub fn dims(&self, i: usize, rank: usize, what: &str) -> Result<Vec<i64>> {
        self.expect_rank(i, rank, what)?;
        Ok(match self.shape(i) {
            Shape::Known(d) => d.clone(),
            Shape::Unknown => vec![-1; rank],
        })
    }
}

/// A running node: its inputs (owned, so a kernel holding the last
/// reference may reuse a buffer) and the session's resources.
pub struct OpContext<'a> {
    pub node: &'a Node,
    pub inputs: Vec<Tensor>,
    pub resources: &'a ResourceStore,
    /// Where `_Send` / `_Recv` meet their peers (None: the session has none).
    pub rendezvous: Option<&'a dyn Rendezvous>,
}

impl OpContext<'_> {
    pub fn input(&self, i: usize) -> &Tensor {
        &self.inputs[i]
    }

    /// Maps a kernel error to one naming this node.
    pub fn k<T>(&self, r: psflow_kernels::Result<T>) -> Result<T> {
        r.map_err(|e| Error::kernel(&self.node.name, &self.node.op, e))
    }

    /// An integer input (axes, sizes) as i64.
    pub fn ints(&self, i: usize) -> Result<Vec<i64>> {
        let op: &'static str = "index input";
        self.k(self.inputs[i].to_i64_vec(op))
    }

    /// An error about this node's inputs found while running.
    pub fn err(&self, detail: impl Into<String>) -> Error {
        Error::shape(&self.node.name, &self.node.op, detail)
    }
}

/// An op instance with parsed attributes.
pub trait OpKernel: Send + Sync {
    fn num_outputs(&self) -> usize;

    /// Output dtypes and shapes from what is known of the inputs; an error
    /// when known shapes contradict the op.
    fn infer(&self, ctx: &InferCtx) -> Result<Vec<TensorInfo>>;

    fn compute(&self, ctx: &mut OpContext) -> Result<Vec<Tensor>>;

    /// Stateful ops (variables, optimizer updates) are never evaluated
    /// during shape inference.
    fn is_stateful(&self) -> bool {
        false
    }

    /// A receive (`_Recv`): the key it waits on. The executor waits for
    /// such nodes' values without occupying a compute thread.
    fn recv_key(&self) -> Option<&RendezvousKey> {
        None
    }
}

type InferFn = dyn Fn(&InferCtx) -> Result<Vec<TensorInfo>> + Send + Sync;
type ComputeFn = dyn Fn(&mut OpContext) -> Result<Vec<Tensor>> + Send + Sync;

/// A kernel made of two closures, the form every built-in op uses.
pub struct FnKernel {
    outputs: usize,
    infer: Box<InferFn>,
    compute: Box<ComputeFn>,
}

impl FnKernel {
    pub fn boxed(
        outputs: usize,
        infer: impl Fn(&InferCtx) -> Result<Vec<TensorInfo>> + Send + Sync + 'static,
        compute: impl Fn(&mut OpContext) -> Result<Vec<Tensor>> + Send + Sync + 'static,
    ) -> Result<Box<dyn OpKernel>> {
        Ok(Box::new(FnKernel {
            outputs,
            infer: Box::new(infer),
            compute: Box::new(compute),
        }))
    }
}

impl OpKernel for FnKernel {
    fn num_outputs(&self) -> usize {
        self.outputs
    }

    fn infer(&self, ctx: &InferCtx) -> Result<Vec<TensorInfo>> {
        (self.infer)(ctx)
    }

    fn compute(&self, ctx: &mut OpContext) -> Result<Vec<Tensor>> {
        (self.compute)(ctx)
    }
}

/// Parses a node's attributes into a kernel.
pub type BuildFn = fn(&Node) -> Result<Box<dyn OpKernel>>;

/// Op name → kernel builder.
#[derive(Clone, Default)]
pub struct Registry {
    ops: BTreeMap<String, BuildFn>,
}

impl Registry {
    pub fn empty() -> Registry {
        Registry::default()
    }

    /// Every op psflow implements.
    pub fn standard() -> Registry {
        let mut r = Registry::empty();
        array::register(&mut r);
        math::register(&mut r);
        nn::register(&mut r);
        grad_ops::register(&mut r);
        state::register(&mut r);
        random::register(&mut r);
        sendrecv::register(&mut r);
        r
    }

    /// Registers (or replaces) the builder of an op.
    pub fn register(&mut self, op: &str, build: BuildFn) {
        self.ops.insert(op.to_string(), build);
    }

    pub fn contains(&self, op: &str) -> bool {
        self.ops.contains_key(op)
    }

    pub fn op_names(&self) -> impl Iterator<Item = &str> {
        self.ops.keys().map(String::as_str)
    }

    /// The kernel of a node; an unknown op is an `UnknownOps` error.
    pub fn build(&self, node: &Node) -> Result<Box<dyn OpKernel>> {
        match self.ops.get(&node.op) {
            Some(build) => build(node),
            None => Err(Error::UnknownOps {
                ops: vec![(node.name.clone(), node.op.clone())],
            }),
        }
    }
}

/// Requires exactly `n` data inputs.
pub(crate) fn expect_inputs(node: &Node, n: usize) -> Result<()> {
    let got = node.num_data_inputs();
    if got != n {
        return Err(Error::InvalidNode {
            node: node.name.clone(),
            detail: format!("{} takes {n} data input(s), got {got}", node.op),
        });
    }
    Ok(())
}

/// Reads the `N` attr of a variadic op (when present it must match the
/// number of data inputs, minus `extra` fixed ones) and returns N.
pub(crate) fn variadic_n(node: &Node, extra: usize) -> Result<usize> {
    let got = node.num_data_inputs().saturating_sub(extra);
    if let Some(n) = node.attrs.get("N") {
        let n = n
            .as_i()
            .ok_or_else(|| node.attr_error("N", "expected an int"))?;
        if n < 1 || n as usize != got {
            return Err(
                node.attr_error("N", format!("is {n} but the node has {got} such input(s)"))
            );
        }
    }
    if got == 0 {
        return Err(Error::InvalidNode {
            node: node.name.clone(),
            detail: format!("{} needs at least one input", node.op),
        });
    }
    Ok(got)
}

/// The single output of a same-shape op (Relu, Neg, …).
pub(crate) fn same_as_input(ctx: &InferCtx, i: usize) -> Vec<TensorInfo> {
    vec![TensorInfo::new(ctx.dtype(i), ctx.shape(i).clone())]
}

/// Element count limit under which shape inference evaluates ops whose
/// inputs are all known (shape arithmetic on small int tensors).
pub(crate) const FOLD_LIMIT: usize = 1 << 12;

#[cfg(test)]
mod tests {
    use super::*;

    /// The ops the issue lists must all be registered.
    #[test]
    fn standard_registry_has_every_listed_op() {
        let r = Registry::standard();
        let listed = "Conv2D Conv2DBackpropInput Conv2DBackpropFilter DepthwiseConv2dNative \
            DepthwiseConv2dNativeBackpropInput DepthwiseConv2dNativeBackpropFilter FusedBatchNorm \
            FusedBatchNormV2 FusedBatchNormV3 FusedBatchNormGradV3 Relu Relu6 ReluGrad Relu6Grad \
            AvgPool AvgPoolGrad MaxPool MaxPoolGrad Mean Sum Max ArgMax MatMul BiasAdd BiasAddGrad \
            Add AddV2 AddN Sub Mul RealDiv Maximum Minimum SquaredDifference Square Sqrt Rsqrt Neg \
            Exp Log Pad PadV2 Reshape Squeeze ExpandDims Identity IdentityN StopGradient Shape \
            StridedSlice Slice Transpose Pack ConcatV2 Fill ZerosLike OnesLike NoOp Softmax \
            LogSoftmax SparseSoftmaxCrossEntropyWithLogits SoftmaxCrossEntropyWithLogits L2Loss \
            Cast Const Placeholder PlaceholderWithDefault";
        let missing: Vec<_> = listed
            .split_whitespace()
            .filter(|op| !r.contains(op))
            .collect();
        assert!(missing.is_empty(), "not registered: {missing:?}");
    }
}
