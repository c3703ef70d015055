//! psflow-worker: the worker role. For now the input pipeline
//! ([`data`]: datasets, augmentation, prefetching batches); the step loop
//! and the worker service come next.

pub mod data;
