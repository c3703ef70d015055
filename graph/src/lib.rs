//! psflow-graph: TensorFlow-compatible dataflow graphs and their executor.
//!
//! - [`Graph`] / [`Node`] / [`TensorName`]: the in-memory IR, imported from
//!   and exported to GraphDef bytes.
//! - [`Registry`]: per op, attribute parsing, shape inference on partial
//!   shapes, and a kernel from psflow-kernels.
//! - [`validate()`], [`Graph::prune`]: checks and pruning.
//! - [`Session`]: runs a graph for feeds, fetches and targets, in parallel.
//! - [`format::npy`]: `.npy` tensors in and out.
//! - [`export`]: frozen inference GraphDefs (variables as constants,
//!   batch norm folded into the convolutions).

mod attrs;
pub mod autodiff;
pub mod cuda;
pub mod dtype;
mod error;
pub mod executor;
pub mod export;
pub mod format;
pub mod infer;
mod ir;
pub mod prune;
pub mod registry;
pub mod shape;
pub mod summary;
pub mod tensor_proto;
pub mod train;
pub mod validate;
pub mod zoo;

pub use autodiff::gradients;
pub use error::{Error, Result};
pub use executor::{
    LocalRendezvous, NodeTiming, OpTotal, PlaceholderInfo, Profile, Rendezvous, RendezvousKey,
    ResourceStore, Schedule, Session,
};
pub use ir::{Graph, Input, Node, TensorName};
pub use registry::{OpContext, OpKernel, Registry, TensorInfo};
pub use shape::Shape;
pub use validate::validate;

pub use psflow_kernels::{DType, Tensor};
pub use psflow_proto::tensorflow::AttrValue;
