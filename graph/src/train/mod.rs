//! Training: optimizers and learning-rate schedules.

pub mod optimizer;
pub mod schedule;
