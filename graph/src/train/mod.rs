//! Training: losses, optimizers, learning-rate schedules, and the builder
//! that turns a model graph into a training graph.

pub mod builder;
pub mod ema;
pub mod loss;
pub mod optimizer;
pub mod schedule;

/// A float32 setting as it was written (4e-5, 0.9999), not widened to
/// f64's digits of the f32 (4.0000000467e-5): for JSON that people read
/// and tests compare.
pub fn as_written(x: f32) -> f64 {
    x.to_string().parse().unwrap_or_default()
}
