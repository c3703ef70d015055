//! `psflow export --run RUN_DIR --out model.pb`: the latest checkpoint of a
//! `psflow train` run as a frozen inference GraphDef — weights as `Const`s,
//! batch norm folded into the convolutions (`psflow_graph::export`) — that
//! `psflow run` and TensorFlow load. Feed `input` `[N, R, R, 3]`, fetch
//! `logits` or `probabilities`.

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use psflow_graph::export::{export_inference, ExportOptions, InferenceIo, LOGITS, PROBABILITIES};
use psflow_graph::Tensor;
use psflow_worker::run::{write_atomic, RunDir};
use serde::Serialize;

use crate::trainer::{checkpoint_weights, load_latest, RunConfig};

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The run directory `psflow train --out` wrote.
    #[arg(long)]
    pub run: PathBuf,
    /// The GraphDef file to write (replaced atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// Keep the batch norms (only freeze the variables): the unfolded
    /// graph, to compare with the folded one.
    #[arg(long)]
    pub no_fold: bool,
    /// Export the last weights instead of their moving averages (for a run
    /// that kept averages: --moving-average-decay, on by default).
    #[arg(long)]
    pub last_weights: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// What `psflow export` reports.
#[derive(Debug, Serialize)]
pub struct ExportReport {
    pub out: PathBuf,
    pub model: String,
    pub step: u64,
    pub nodes: usize,
    /// Elements of the float constants (weights after folding).
    pub params: u64,
    pub variables: usize,
    pub batch_norms_folded: usize,
    pub batch_norms_left: usize,
    pub bytes: usize,
    pub input: String,
    pub input_shape: [i64; 4],
    pub outputs: [&'static str; 2],
    /// `moving_average` (the run's weight averages) or `last`.
    pub weights: &'static str,
}

/// Runs `psflow export`; every failure is a usage error (exit 2): a
/// missing run directory or checkpoint, a checkpoint that does not fit its
/// model, an output that cannot be written.
pub fn run(args: &ExportArgs) -> std::result::Result<(), (bool, anyhow::Error)> {
    let report = export(args).map_err(|e| (true, e))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| (false, e.into()))?
        );
    } else {
        println!(
            "{} step {} → {}: {} nodes, {} params, {} batch norms folded{}, {} bytes; \
             feed {} {:?}, fetch {} or {}",
            report.model,
            report.step,
            report.out.display(),
            report.nodes,
            report.params,
            report.batch_norms_folded,
            if report.batch_norms_left > 0 {
                format!(" ({} left)", report.batch_norms_left)
            } else {
                String::new()
            },
            report.bytes,
            report.input,
            report.input_shape,
            report.outputs[0],
            report.outputs[1],
        );
    }
    Ok(())
}

fn export(args: &ExportArgs) -> Result<ExportReport> {
    if !args.run.is_dir() {
        return Err(anyhow!(
            "run directory {} does not exist (pass the --out of psflow train)",
            args.run.display()
        ));
    }
    if args.out.is_dir() {
        return Err(anyhow!(
            "--out {} is a directory; give a file name such as model.pb",
            args.out.display()
        ));
    }
    let dir = RunDir::at(&args.run);
    let (ckpt, tensors, manifest) = load_latest(&dir.checkpoints())?.ok_or_else(|| {
        anyhow!(
            "{} has no checkpoint (is it a psflow train --out directory?)",
            args.run.display()
        )
    })?;
    let cfg: RunConfig = serde_json::from_value(manifest.meta["config"].clone())
        .with_context(|| format!("{}: no run configuration in meta", ckpt.path.display()))?;
    let model = cfg.model_spec(false)?.build().map_err(|e| anyhow!("{e}"))?;
    let (tensors, weights) = checkpoint_weights(tensors, args.last_weights);
    let values: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
    let io = InferenceIo {
        input: model.input.clone(),
        logits: model.logits.clone(),
        probabilities: Some(model.predictions.clone()),
    };
    let exported = export_inference(
        &model.graph,
        &io,
        &|k| values.get(k).cloned(),
        ExportOptions {
            fold_batch_norm: !args.no_fold,
        },
    )
    .with_context(|| format!("exporting {}", ckpt.path.display()))?;
    let bytes = exported.graph.to_graph_def_bytes();
    write_atomic(&args.out, &bytes)
        .map_err(|e| anyhow!("cannot write {}: {e}", args.out.display()))?;
    let r = model.resolution as i64;
    Ok(ExportReport {
        out: args.out.clone(),
        model: model.name.clone(),
        step: ckpt.step,
        nodes: exported.graph.len(),
        params: exported.params,
        variables: exported.variables,
        batch_norms_folded: exported.batch_norms_folded,
        batch_norms_left: exported.batch_norms_left,
        bytes: bytes.len(),
        input: model.input.node.clone(),
        input_shape: [-1, r, r, 3],
        outputs: [LOGITS, PROBABILITIES],
        weights,
    })
}
