//! `psflow eval --run RUN_DIR`: top-1 / top-5 of the latest checkpoint of
//! a `psflow train` run, with the inference model (batch norm on the
//! moving statistics, no dropout) rebuilt from the run configuration the
//! checkpoint carries, on the CPU or (`--device`) a GPU.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use psflow_graph::cuda::CudaSession;
use psflow_graph::{Registry, ResourceStore, Session};
use psflow_kernels::cuda::CudaDevice;
use psflow_worker::data::DatasetKind;
use psflow_worker::run::RunDir;
use serde_json::json;

use crate::trainer::{checkpoint_weights, evaluate, evaluate_on_gpu, load_latest, RunConfig};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The run directory `psflow train --out` wrote.
    #[arg(long)]
    pub run: PathBuf,
    /// Another dataset with the same image shape and classes (default:
    /// the one trained on).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Folder of the dataset files (default: the training run's).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// test or train.
    #[arg(long, default_value = "test", value_parser = ["test", "train"])]
    pub split: String,
    #[arg(long, default_value_t = 250)]
    pub batch_size: usize,
    /// cpu, auto (a CUDA GPU when the driver reports one) or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Evaluate the last weights instead of their moving averages (for a
    /// run that kept averages: --moving-average-decay, on by default).
    #[arg(long)]
    pub last_weights: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Runs `psflow eval`; every failure is a usage error (exit 2) except
/// one during the evaluation itself.
pub fn run(args: &EvalArgs) -> std::result::Result<(), (bool, anyhow::Error)> {
    let usage = |e: anyhow::Error| (true, e);
    if args.batch_size == 0 {
        return Err(usage(anyhow!("--batch-size must be at least 1")));
    }
    let gpu = crate::trainer::gpu_for(&args.device).map_err(usage)?;
    let dir = RunDir::at(&args.run);
    let (ckpt, tensors, manifest) =
        load_latest(&dir.checkpoints())
            .map_err(usage)?
            .ok_or_else(|| {
                usage(anyhow!(
                    "{} has no checkpoint (is it a psflow train --out directory?)",
                    args.run.display()
                ))
            })?;
    let mut cfg: RunConfig = serde_json::from_value(manifest.meta["config"].clone())
        .with_context(|| format!("{}: no run configuration in meta", ckpt.path.display()))
        .map_err(usage)?;
    if let Some(d) = &args.dataset {
        let kind: DatasetKind = d.parse().map_err(|e| usage(anyhow!("{e}")))?;
        if kind.image_shape().3 != cfg.classes {
            return Err(usage(anyhow!(
                "--dataset {kind} has {} classes, the model {}",
                kind.image_shape().3,
                cfg.classes
            )));
        }
        cfg.dataset = kind.to_string();
    }
    if args.data_dir.is_some() {
        cfg.data_dir = args.data_dir.clone();
    }
    evaluate_run(args, &cfg, tensors, ckpt.step, gpu).map_err(|e| (false, e))
}

fn evaluate_run(
    args: &EvalArgs,
    cfg: &RunConfig,
    tensors: Vec<(String, psflow_graph::Tensor)>,
    step: u64,
    gpu: Option<Arc<CudaDevice>>,
) -> Result<()> {
    let kind = cfg.dataset_kind()?;
    let splits = kind
        .load(cfg.data_dir.as_deref())
        .with_context(|| format!("loading {kind}"))?;
    let data = Arc::new(if args.split == "train" {
        splits.train
    } else {
        splits.test
    });
    let (tensors, weights) = checkpoint_weights(tensors, args.last_weights);
    let model = cfg.model_spec(false)?.build().map_err(|e| anyhow!("{e}"))?;
    let store = Arc::new(ResourceStore::new());
    for v in &model.variables {
        if !tensors.iter().any(|(n, _)| n == &v.name) {
            bail!("the checkpoint has no variable {:?}", v.name);
        }
    }
    for (n, t) in tensors {
        store.set(&n, t);
    }
    let r = match gpu {
        None => {
            let session =
                Session::with_resources(model.graph.clone(), &Registry::standard(), store)?;
            evaluate(&session, &model, cfg, data, args.batch_size)?
        }
        Some(device) => {
            let session = CudaSession::new(
                model.graph.clone(),
                &Registry::standard(),
                Arc::new(ResourceStore::new()),
                device,
            )?;
            session
                .load_variables(&store)
                .context("copying the checkpoint to the GPU")?;
            evaluate_on_gpu(&session, &model, cfg, data, args.batch_size)?
        }
    };
    if args.json {
        println!(
            "{}",
            json!({
                "run": args.run,
                "step": step,
                "dataset": cfg.dataset,
                "split": args.split,
                "examples": r.examples,
                "top1": r.top1,
                "top5": r.top5,
                "loss": r.loss,
                "weights": weights,
            })
        );
    } else {
        println!(
            "{} step {step} ({} weights), {} {} ({} examples): top-1 {:.4}, top-5 {:.4}, loss {:.4}",
            model.name,
            if weights == "last" { "last" } else { "averaged" },
            cfg.dataset,
            args.split,
            r.examples,
            r.top1,
            r.top5,
            r.loss
        );
    }
    Ok(())
}
