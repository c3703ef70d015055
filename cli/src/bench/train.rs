//! `psflow bench train`: training images/s of a zoo model on random
//! tensors, with no input pipeline — the number to compare with
//! TensorFlow's `benchmarks/peers` script. Warm-up steps are not timed.

use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use clap::Args;
use psflow_graph::train::optimizer::{MomentumConfig, Optimizer, RmsPropConfig, SgdConfig};
use psflow_graph::train::schedule::{ConstantLr, LrSchedule};
use psflow_graph::zoo::Architecture;
use psflow_graph::Tensor;
use psflow_worker::data::rng::Rng;
use serde_json::json;

use crate::trainer::{RunConfig, Trainer};

#[derive(Args, Debug)]
pub struct BenchTrainArgs {
    /// mobilenet, mobilenet-standard, resnet18 or resnet50.
    #[arg(long, value_parser = |s: &str| s.parse::<Architecture>())]
    pub model: Architecture,
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub alpha: f32,
    #[arg(long, default_value_t = 32)]
    pub resolution: usize,
    #[arg(long, default_value_t = 10)]
    pub classes: usize,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 20)]
    pub steps: u64,
    /// Untimed steps first.
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// rmsprop, momentum or sgd.
    #[arg(long, default_value = "rmsprop", value_parser = ["rmsprop", "momentum", "sgd"])]
    pub optimizer: String,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &BenchTrainArgs) -> std::result::Result<(), (bool, anyhow::Error)> {
    let usage = |e: anyhow::Error| (true, e);
    if args.batch_size == 0 || args.steps == 0 {
        return Err(usage(anyhow!(
            "--batch-size and --steps must be at least 1"
        )));
    }
    let cfg = RunConfig {
        model: args.model.name().into(),
        alpha: args.alpha,
        resolution: args.resolution,
        dataset: "synthetic".into(),
        data_dir: None,
        classes: args.classes,
        batch_size: args.batch_size,
        seed: 1,
        optimizer: match args.optimizer.as_str() {
            "momentum" => Optimizer::Momentum(MomentumConfig::default()),
            "sgd" => Optimizer::Sgd(SgdConfig::default()),
            _ => Optimizer::RmsProp(RmsPropConfig::default()),
        },
        schedule: LrSchedule::Constant(ConstantLr { lr: 0.01 }),
        weight_decay: 4e-5,
        augment: "none".into(),
    };
    cfg.model_spec(true)
        .and_then(|s| s.build().map_err(|e| anyhow!("{e}")))
        .map_err(usage)?;
    bench(args, &cfg).map_err(|e| (false, e))
}

fn bench(args: &BenchTrainArgs, cfg: &RunConfig) -> Result<()> {
    let trainer = Trainer::build(cfg)?;
    trainer.init()?;
    let (b, r) = (args.batch_size, args.resolution);
    let mut rng = Rng::new(7);
    let images: Vec<f32> = (0..b * r * r * 3).map(|_| rng.normal()).collect();
    let labels: Vec<i32> = (0..b)
        .map(|_| rng.below(args.classes as u64) as i32)
        .collect();
    let images = Tensor::new(vec![b, r, r, 3], images)?;
    let labels = Tensor::new(vec![b], labels)?;
    let step = || -> Result<()> {
        let out = trainer.step(images.clone(), labels.clone(), 0.01)?;
        if !out.losses.total.is_finite() {
            bail!("the loss is not finite: {}", out.losses.total);
        }
        Ok(())
    };
    for _ in 0..args.warmup {
        step()?;
    }
    let t = Instant::now();
    for _ in 0..args.steps {
        step()?;
    }
    let secs = t.elapsed().as_secs_f64();
    let ips = (args.steps * b as u64) as f64 / secs;
    if args.json {
        println!(
            "{}",
            json!({
                "model": trainer.model.name,
                "alpha": args.alpha,
                "resolution": r,
                "batch_size": b,
                "steps": args.steps,
                "warmup": args.warmup,
                "threads": psflow_kernels::threads::current(),
                "seconds": secs,
                "images_per_sec": ips,
                "ms_per_step": 1e3 * secs / args.steps as f64,
            })
        );
    } else {
        println!(
            "{}: batch {b}, {} steps in {secs:.2} s: {ips:.1} images/s ({:.1} ms/step, {} threads)",
            trainer.model.name,
            args.steps,
            1e3 * secs / args.steps as f64,
            psflow_kernels::threads::current()
        );
    }
    Ok(())
}
