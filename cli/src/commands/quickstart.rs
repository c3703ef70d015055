//! `psflow quickstart`: a whole cluster in this process — in-memory
//! membership, 2 parameter-server shards and 2 workers talking gRPC on
//! loopback — training MobileNet α=0.25 on the generated `synthetic`
//! dataset, with a progress bar and a final table.

use psflow_worker::task::step::PushBatch;
use std::path::PathBuf;

use anyhow::anyhow;
use clap::Args;
use psflow_graph::train::optimizer::{Optimizer, RmsPropConfig};
use psflow_graph::train::schedule::{ExponentialDecay, LrSchedule};
use psflow_ps::Mode;
use psflow_worker::data::DatasetKind;
use psflow_worker::run::ProgressMode;

use crate::cluster::spec::ClusterShape;
use crate::cluster::train::{train, ClusterRun};
use crate::trainer::RunConfig;

#[derive(Args, Debug)]
pub struct QuickstartArgs {
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    #[arg(long, default_value_t = 2)]
    pub ps: u32,
    /// Global steps (each takes one batch on every worker).
    #[arg(long, default_value_t = 1500)]
    pub steps: u64,
    /// Per worker.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Also write a run directory (events, loss.svg, summary.json).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the summary as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// auto, bar, plain or quiet.
    #[arg(long, default_value = "auto", value_parser = ["auto", "bar", "plain", "quiet"])]
    pub progress: String,
}

pub fn run(args: &QuickstartArgs) -> Result<(), (bool, anyhow::Error)> {
    let usage = |e: anyhow::Error| (true, e);
    if args.workers == 0 || args.ps == 0 || args.steps == 0 || args.batch_size == 0 {
        return Err(usage(anyhow!(
            "--workers, --ps, --steps and --batch-size must be at least 1"
        )));
    }
    let kind = DatasetKind::Synthetic(Default::default());
    let cfg = RunConfig {
        model: "mobilenet".into(),
        alpha: 0.25,
        resolution: 32,
        dataset: kind.to_string(),
        data_dir: None,
        classes: 10,
        batch_size: args.batch_size,
        seed: 1,
        optimizer: Optimizer::RmsProp(RmsPropConfig::default()),
        schedule: LrSchedule::ExponentialDecay(ExponentialDecay::default()),
        weight_decay: 4e-5,
        augment: "none".into(),
        // psflow train's default recipe: the shards keep weight averages.
        moving_average_decay: Some(psflow_graph::train::ema::DEFAULT_DECAY),
    };
    if !args.json {
        eprintln!(
            "psflow quickstart: {} worker(s) and {} parameter-server shard(s) on loopback gRPC, \
             MobileNet α=0.25 on the synthetic dataset, {} steps",
            args.workers, args.ps, args.steps
        );
    }
    let splits = kind.load(None).map_err(|e| usage(e.into()))?;
    let per_step = args.batch_size * args.workers as usize;
    let steps_per_epoch = (splits.train.len() / per_step).max(1) as u64;
    let progress = match (args.json, args.progress.as_str()) {
        (true, _) | (_, "quiet") => ProgressMode::Quiet,
        (_, "bar") => ProgressMode::Bar,
        (_, "plain") => ProgressMode::Plain,
        _ => ProgressMode::Auto,
    };
    let run = ClusterRun {
        cfg: &cfg,
        shape: ClusterShape {
            workers: args.workers,
            ps: args.ps,
            mode: Mode::Sync {
                workers: args.workers,
                backup: 0,
            },
            push_batch: PushBatch::Auto,
        },
        total: args.steps,
        steps_per_epoch,
        out: args.out.clone(),
        progress,
        log_every: 20,
        optimizer_name: "rmsprop".into(),
        data_threads: 1,
        eval: true,
        local: true,
    };
    let outcome = train(&run).map_err(|e| (false, e))?;
    let s = outcome
        .summary
        .as_ref()
        .expect("train() fails unless the job succeeded");
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(s).map_err(|e| (false, e.into()))?
        );
        return Ok(());
    }
    let t = crate::commands::jobs::summary_table(&outcome.info, s);
    print!("{t}");
    Ok(())
}
