//! Training: losses, optimizers, learning-rate schedules, and the builder
//! that turns a model graph into a training graph.

pub mod builder;
pub mod ema;
pub mod loss;
pub mod optimizer;
pub mod schedule;
