//! The job spec of a zoo model trained by `psflow train --workers W --ps P`
//! or `psflow quickstart`.

use anyhow::{anyhow, bail, Result};
use psflow_graph::zoo::Architecture;
use psflow_proto::coordinator as pb;
use psflow_proto::worker::DataSpec;
use psflow_ps::{Mode, ShardConfig};
use psflow_worker::task::step::PushBatch;
use serde_json::json;

use crate::trainer::{RunConfig, Trainer};

/// How the cluster trains.
#[derive(Clone, Copy, Debug)]
pub struct ClusterShape {
    pub workers: u32,
    pub ps: u32,
    pub mode: Mode,
    /// When the workers push their gradients.
    pub push_batch: PushBatch,
}

/// The job spec of `cfg` as built by `trainer`, stopping at global step
/// `total`; `steps_per_epoch` counts steps of the whole cluster.
pub fn job_spec(
    cfg: &RunConfig,
    trainer: &Trainer,
    shape: ClusterShape,
    total: u64,
    steps_per_epoch: u64,
    optimizer_name: &str,
    data_threads: usize,
) -> Result<pb::JobSpec> {
    let schedule = cfg.schedule.build(steps_per_epoch as f64, total)?;
    // The shard header carries the optimizer, schedule and mode as the
    // protocol spells them.
    let header = ShardConfig {
        job_id: "spec".into(),
        shard: 0,
        optimizer: cfg.optimizer,
        schedule,
        mode: shape.mode,
        version: 0,
        moving_average_decay: cfg.moving_average_decay,
    }
    .to_header(false);
    let g = &trainer.graph;
    let m = &trainer.model;
    if !g.averages.is_empty() {
        bail!("internal: the cluster's training graph must not hold weight averages (the shards keep them)");
    }
    Ok(pb::JobSpec {
        name: format!("{} on {}", m.name, cfg.dataset),
        training_graph: Some(m.graph.to_graph_def()),
        names: Some(pb::TrainingNames {
            input: m.input.to_string(),
            labels: m
                .labels
                .as_ref()
                .ok_or_else(|| anyhow!("the training model has no labels placeholder"))?
                .to_string(),
            total_loss: g.total_loss.to_string(),
            cross_entropy_loss: g.cross_entropy_loss.to_string(),
            regularization_loss: g.regularization_loss.to_string(),
            logits: m.logits.to_string(),
            train_op: g.train_op.clone(),
            init: m.init.clone(),
        }),
        inference_graph: Some(trainer.infer_model.graph.to_graph_def()),
        inference_input: trainer.infer_model.input.to_string(),
        inference_logits: trainer.infer_model.logits.to_string(),
        data: Some(DataSpec {
            dataset: cfg.dataset.clone(),
            data_dir: cfg
                .data_dir
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            resolution: cfg.resolution as u32,
            batch_size: cfg.batch_size as u32,
            seed: cfg.seed,
            augment: cfg.augment.clone(),
            threads: data_threads as u32,
        }),
        optimizer: header.optimizer,
        schedule: header.schedule,
        mode: header.mode,
        workers: shape.workers,
        ps: shape.ps,
        steps: total,
        steps_per_epoch,
        model: Some(pb::ModelInfo {
            model: m.name.clone(),
            alpha: cfg.alpha as f64,
            resolution: cfg.resolution as u32,
            conv: match cfg.arch()? {
                Architecture::MobileNet => "depthwise".into(),
                Architecture::MobileNetStandard => "standard".into(),
                _ => String::new(),
            },
            classes: cfg.classes as u32,
            params: m.params,
            optimizer: optimizer_name.to_string(),
            optimizer_config_json: json!({
                "optimizer": cfg.optimizer,
                "schedule": cfg.schedule,
                "weight_decay": cfg.weight_decay,
                "moving_average_decay": cfg.moving_average_decay.map(psflow_graph::train::as_written),
            })
            .to_string(),
        }),
        split_threshold: 0,
        moving_average_decay: cfg.moving_average_decay.unwrap_or(0.0),
        push_batch_bytes: shape.push_batch.to_proto(),
    })
}

/// A gRPC status from the coordinator as one readable line.
pub fn status_line(s: &tonic::Status) -> String {
    format!("{} ({:?})", s.message(), s.code())
}
