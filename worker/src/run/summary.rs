//! `RUN_DIR/summary.json`: what a training run achieved, for people and
//! for sweep reports. Written atomically at the end of a run (and may be
//! rewritten after a resume); unknown fields are kept in [`extra`] so that
//! older readers accept newer files.
//!
//! [`extra`]: TrainSummary::extra

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{IoContext, Result, RunError};
use super::fsutil::write_atomic;
use super::progress::Losses;

/// The figures of one training run. Fields that a run may not produce
/// (accuracy without an eval split) are `Option`s, written as `null`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainSummary {
    /// "mobilenet_v1", "resnet18", …
    pub model: String,
    /// Width multiplier (1.0 for models without one).
    pub alpha: f64,
    /// Input height = width in pixels.
    pub resolution: u32,
    /// "standard" or "depthwise" convolutions (MobileNet), "" otherwise.
    pub conv: String,
    /// "fashion-mnist", "cifar10", "synthetic", …
    pub dataset: String,
    pub classes: u32,
    /// Top-1 / top-5 accuracy on the eval split, in [0, 1].
    pub top1: Option<f64>,
    pub top5: Option<f64>,
    /// Mean cross-entropy on the eval split.
    pub eval_loss: Option<f64>,
    /// Trainable parameters.
    pub params: u64,
    /// Bytes of the exported inference model (f32 weights), if exported,
    /// else of the trainable parameters.
    pub model_bytes: u64,
    /// Training throughput over the whole run (steps after the first).
    pub images_per_sec: f64,
    /// Global steps done (including those before a resume).
    pub steps: u64,
    pub epochs: f64,
    /// Wall time of this process's training loop.
    pub wall_seconds: f64,
    pub batch_size: u32,
    /// "rmsprop", "momentum", "sgd", "adam".
    pub optimizer: String,
    /// Optimizer hyper-parameters and learning-rate schedule as given.
    pub optimizer_config: serde_json::Value,
    /// Learning rate at the last step.
    pub final_learning_rate: Option<f64>,
    /// Mean losses over the last logging window.
    pub final_losses: Option<Losses>,
    /// Step at which this process started (0, or the resumed checkpoint's).
    pub resumed_from_step: Option<u64>,
    /// Worker threads used by the kernels.
    pub threads: u32,
    /// The `psflow` version that wrote the file.
    pub psflow_version: String,
    /// Fields this version does not know, kept as they were.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl TrainSummary {
    /// Writes pretty JSON to `path` atomically (temp file, fsync, rename,
    /// directory fsync).
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| RunError::json(path, e))?;
        json.push(b'\n');
        write_atomic(path, &json)
    }

    pub fn read(path: &Path) -> Result<TrainSummary> {
        let bytes = std::fs::read(path).at(path)?;
        serde_json::from_slice(&bytes).map_err(|e| RunError::json(path, e))
    }
}
