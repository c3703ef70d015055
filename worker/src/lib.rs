//! psflow-worker: the worker role. [`data`]: the input pipeline (datasets,
//! augmentation, prefetching batches); [`run`]: the run directory of a
//! training job (TensorBoard events, checkpoints, summary, loss plot);
//! [`task`]: the step loop of cluster jobs and the worker gRPC service.

pub mod data;
pub mod run;
pub mod task;
