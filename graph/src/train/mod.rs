//! Training graphs: losses, the full training graph builder, and (from the
//! `trainops` side) optimizers and learning-rate schedules.

pub mod builder;
pub mod loss;
