//! Worker tasks of cluster jobs: the step loop ([`Task`]: pull → forward /
//! backward → push on this worker's data shard), evaluation of a job's
//! variables ([`evaluate`]), graphs partitioned across workers
//! ([`graphs`]: RegisterGraph / RunGraph, with worker-to-worker tensors
//! through [`remote`] and RecvTensor) and the gRPC service that runs them
//! ([`WorkerService`], [`serve`]). The protocol is
//! `proto/proto/psflow/worker.proto`; docs/cluster.md, "Workers", says how
//! a task runs.

pub mod data;
mod error;
pub mod eval;
pub mod graphs;
pub mod metrics;
pub mod remote;
pub mod service;
pub mod step;

pub use error::{Result, TaskError};
pub use eval::evaluate;
pub use metrics::{count_correct, evaluate_split, evaluate_split_with, EvalResult};
pub use service::{serve, WorkerService};
pub use step::Task;
