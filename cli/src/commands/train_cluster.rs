//! `psflow train … --workers W --ps P`: the same training on a cluster
//! inside this process (see `crate::cluster`).

use std::sync::Arc;

use anyhow::{anyhow, Context};
use psflow_ps::Mode;

use super::train::TrainArgs;
use crate::cluster::spec::ClusterShape;
use crate::cluster::train::{train, ClusterRun};
use crate::trainer::RunConfig;

/// Runs `args` (already checked into `cfg`) on an in-process cluster.
pub fn run(args: &TrainArgs, cfg: RunConfig) -> Result<(), (bool, anyhow::Error)> {
    let usage = |e: anyhow::Error| (true, e);
    let workers = args.workers.unwrap_or(1);
    let ps = args.ps.unwrap_or(1);
    if workers == 0 || ps == 0 {
        return Err(usage(anyhow!("--workers and --ps must be at least 1")));
    }
    if args.resume {
        return Err(usage(anyhow!(
            "--resume is not supported with --workers/--ps (the cluster writes no checkpoints yet)"
        )));
    }
    if args.async_mode && args.backup_workers > 0 {
        return Err(usage(anyhow!(
            "--backup-workers applies to sync mode, not --async"
        )));
    }
    if args.backup_workers >= workers {
        return Err(usage(anyhow!(
            "--backup-workers {} leaves none of the {workers} workers to wait for",
            args.backup_workers
        )));
    }
    let kind = cfg.dataset_kind().map_err(usage)?;
    let splits = kind
        .load(cfg.data_dir.as_deref())
        .with_context(|| format!("loading {kind}"))
        .map_err(usage)?;
    let train_len = Arc::new(splits.train).len();
    let per_step = cfg.batch_size * workers as usize;
    let steps_per_epoch = (train_len / per_step) as u64;
    if steps_per_epoch == 0 {
        return Err(usage(anyhow!(
            "{workers} worker(s) × --batch-size {} is more than the {train_len} training examples",
            cfg.batch_size
        )));
    }
    let total = match (args.job.steps, args.job.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => ((e * steps_per_epoch as f64).round() as u64).max(1),
        (None, None) => unreachable!("clap requires one"),
    };
    let mode = if args.async_mode {
        Mode::Async
    } else {
        Mode::Sync {
            workers,
            backup: args.backup_workers,
        }
    };
    let run = ClusterRun {
        cfg: &cfg,
        shape: ClusterShape {
            workers,
            ps,
            mode,
            push_batch: args.push_batch,
        },
        total,
        steps_per_epoch,
        out: Some(args.out.clone()),
        progress: args.progress_mode(),
        log_every: args.log_every,
        optimizer_name: args.job.optimizer.clone(),
        data_threads: args.job.data_threads,
        eval: !args.no_eval,
        local: true,
    };
    train(&run).map(|_| ()).map_err(|e| (false, e))
}
