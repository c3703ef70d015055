//! psflow-worker: the worker role. For now the input pipeline
//! ([`data`]: datasets, augmentation, prefetching batches); the step loop
//! and the worker service come next. [`run`] writes the run directory of a
//! training job: TensorBoard events, checkpoints, summary, loss plot.

pub mod data;
pub mod run;
