//! [`RunConfig`]: what defines a training run, kept in every checkpoint's
//! meta so that `--resume` can refuse a different run and `psflow eval`
//! can rebuild the model.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use psflow_graph::train::optimizer::Optimizer;
use psflow_graph::train::schedule::LrSchedule;
use psflow_graph::zoo::{Architecture, ModelSpec};
use psflow_worker::data::{AugmentConfig, Dataset, DatasetKind};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// `mobilenet`, `mobilenet-standard`, `resnet18`, `resnet50`.
    pub model: String,
    pub alpha: f32,
    pub resolution: usize,
    /// `fashion-mnist`, `cifar10`, …
    pub dataset: String,
    pub data_dir: Option<PathBuf>,
    pub classes: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub optimizer: Optimizer,
    pub schedule: LrSchedule,
    pub weight_decay: f32,
    /// Training augmentation: `cifar` (the MobileNet-on-CIFAR recipe),
    /// `crop-flip` (pad 4 + crop, flip; no brightness/contrast) or `none`
    /// (standardization only).
    pub augment: String,
    /// Exponential moving averages of the trained weights, evaluated and
    /// exported in place of the last weights (`psflow_graph::train::ema`);
    /// None: off. Absent in checkpoints written before it existed.
    #[serde(default)]
    pub moving_average_decay: Option<f32>,
}

/// `--moving-average-decay D` as a configuration: None for 0 (no
/// averages); a usage error outside [0, 1).
pub fn moving_average_flag(decay: f32) -> Result<Option<f32>> {
    psflow_graph::train::ema::validate(decay).map_err(|_| {
        anyhow!("--moving-average-decay must be in [0, 1) (0 turns averaging off), got {decay}")
    })?;
    Ok((decay > 0.0).then_some(decay))
}

impl RunConfig {
    pub fn arch(&self) -> Result<Architecture> {
        self.model.parse().map_err(|e: String| anyhow!(e))
    }

    pub fn dataset_kind(&self) -> Result<DatasetKind> {
        Ok(self.dataset.parse::<DatasetKind>()?)
    }

    pub fn model_spec(&self, training: bool) -> Result<ModelSpec> {
        Ok(ModelSpec {
            arch: self.arch()?,
            alpha: self.alpha,
            resolution: self.resolution,
            classes: self.classes,
            training,
            seed: self.seed,
        })
    }

    /// The training preprocessing of `data`: the CIFAR recipe (or only
    /// standardization), resized to the model's resolution, grey images
    /// replicated to RGB.
    pub fn augment(&self, data: &Dataset) -> Result<AugmentConfig> {
        Ok(psflow_worker::task::data::augment_for(
            &self.augment,
            self.resolution,
            data,
        )?)
    }

    /// The fields `--resume` requires to be unchanged, with their values.
    pub fn differences(&self, other: &RunConfig) -> Vec<String> {
        let a = serde_json::to_value(self).unwrap_or_default();
        let b = serde_json::to_value(other).unwrap_or_default();
        let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
            return vec![];
        };
        a.iter()
            .filter(|(k, v)| k.as_str() != "data_dir" && b.get(*k) != Some(v))
            .map(|(k, v)| {
                format!(
                    "{k}: checkpoint {} vs now {v}",
                    b.get(k).cloned().unwrap_or_default()
                )
            })
            .collect()
    }
}
