//! `psflow bench train`: training images/s of a zoo model on random
//! tensors, with no input pipeline — the number to compare with
//! TensorFlow's `benchmarks/peers` script. Warm-up steps are not timed;
//! each timed step is timed on its own, so the JSON has the median and
//! spread as well as the mean. `--profile` times every kernel of one more
//! step ([`super::profile`]). `--device cuda:N` runs the whole step on a
//! GPU (`psflow_graph::cuda::CudaSession`).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use clap::Args;
use psflow_graph::train::optimizer::Optimizer;
use psflow_graph::train::schedule::{ConstantLr, LrSchedule};
use psflow_graph::zoo::Architecture;
use psflow_graph::{Schedule, Tensor};
use psflow_kernels::cuda::CudaDevice;
use psflow_worker::data::rng::Rng;
use serde_json::json;

use crate::trainer::{gpu_for, RunConfig, StepOutput, Trainer};

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
    /// After the timed steps, time every kernel of one more step and print
    /// the time per op type and the slowest nodes (`profile` in the JSON).
    #[arg(long)]
    pub profile: bool,
    /// How the profiled step schedules its nodes: serial (one kernel at a
    /// time with every thread: clean per-kernel times that add up to the
    /// step) or parallel (as the timed steps: the real overlap, but a kernel
    /// waiting for a thread busy with another node counts the wait).
    #[arg(long, default_value = "serial", value_parser = |s: &str| s.parse::<Schedule>())]
    pub profile_schedule: Schedule,
    /// cpu, auto (a CUDA GPU when the driver reports one, else the CPU) or
    /// cuda:N: the whole step on the GPU (`CudaSession`; not yet run on
    /// hardware, docs/cuda.md).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Order statistics of the per-step times, in seconds.
struct Spread {
    median: f64,
    min: f64,
    max: f64,
    p25: f64,
    p75: f64,
}

impl Spread {
    fn of(times: &[f64]) -> Spread {
        let mut v = times.to_vec();
        v.sort_by(f64::total_cmp);
        // Linear interpolation between the closest ranks.
        let q = |f: f64| {
            let x = f * (v.len() - 1) as f64;
            let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
            v[lo] + (v[hi] - v[lo]) * (x - lo as f64)
        };
        Spread {
            median: q(0.5),
            min: v[0],
            max: v[v.len() - 1],
            p25: q(0.25),
            p75: q(0.75),
        }
    }

    fn ms_json(&self) -> serde_json::Value {
        json!({
            "median": 1e3 * self.median,
            "min": 1e3 * self.min,
            "max": 1e3 * self.max,
            "p25": 1e3 * self.p25,
            "p75": 1e3 * self.p75,
        })
    }
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
        // clap admits only rmsprop, momentum and sgd.
        optimizer: Optimizer::with_defaults(&args.optimizer).unwrap_or_default(),
        schedule: LrSchedule::Constant(ConstantLr { lr: 0.01 }),
        weight_decay: 4e-5,
        augment: "none".into(),
        moving_average_decay: None,
    };
    cfg.model_spec(true)
        .and_then(|s| s.build().map_err(|e| anyhow!("{e}")))
        .map_err(usage)?;
    let gpu = gpu_for(&args.device).map_err(usage)?;
    if gpu.is_some() && args.profile {
        return Err(usage(anyhow!(
            "--profile times CPU kernels; it does not apply to --device {}",
            args.device
        )));
    }
    bench(args, &cfg, gpu).map_err(|e| (false, e))
}

fn bench(args: &BenchTrainArgs, cfg: &RunConfig, gpu: Option<Arc<CudaDevice>>) -> Result<()> {
    let mut trainer = Trainer::build(cfg)?;
    trainer.init()?;
    let device_name = gpu.as_ref().map(|d| d.name().to_string());
    if let Some(d) = gpu {
        trainer.use_gpu(d)?;
    }
    let (b, r) = (args.batch_size, args.resolution);
    let mut rng = Rng::new(7);
    let images: Vec<f32> = (0..b * r * r * 3).map(|_| rng.normal()).collect();
    let labels: Vec<i32> = (0..b)
        .map(|_| rng.below(args.classes as u64) as i32)
        .collect();
    let images = Tensor::new(vec![b, r, r, 3], images)?;
    let labels = Tensor::new(vec![b], labels)?;
    let finite = |out: &StepOutput| -> Result<()> {
        if !out.losses.total.is_finite() {
            bail!("the loss is not finite: {}", out.losses.total);
        }
        Ok(())
    };
    let step = || -> Result<()> { finite(&trainer.step(images.clone(), labels.clone(), 0.01)?) };
    for _ in 0..args.warmup {
        step()?;
    }
    let mut times = Vec::with_capacity(args.steps as usize);
    let t = Instant::now();
    for _ in 0..args.steps {
        let s = Instant::now();
        step()?;
        times.push(s.elapsed().as_secs_f64());
    }
    let secs = t.elapsed().as_secs_f64();
    let ips = (args.steps * b as u64) as f64 / secs;
    let spread = Spread::of(&times);
    let ips_median = b as f64 / spread.median;
    let threads = psflow_kernels::threads::current();
    let profile = if args.profile {
        let (out, p) =
            trainer.step_profiled(images.clone(), labels.clone(), 0.01, args.profile_schedule)?;
        finite(&out)?;
        Some(p)
    } else {
        None
    };
    if args.json {
        let mut v = json!({
            "model": trainer.model.name,
            "device": args.device,
            "device_name": device_name,
            "alpha": args.alpha,
            "resolution": r,
            "batch_size": b,
            "steps": args.steps,
            "warmup": args.warmup,
            "threads": threads,
            "pinned_threads": psflow_kernels::threads::pinned(),
            "seconds": secs,
            "images_per_sec": ips,
            "ms_per_step": 1e3 * secs / args.steps as f64,
            "images_per_sec_median": ips_median,
            "images_per_sec_min": b as f64 / spread.max,
            "images_per_sec_max": b as f64 / spread.min,
            "step_ms": spread.ms_json(),
            "step_times_ms": times.iter().map(|t| 1e3 * t).collect::<Vec<f64>>(),
        });
        if let Some(p) = &profile {
            v["profile"] = super::profile::to_json(p, threads);
        }
        println!("{v}");
    } else {
        println!(
            "{}: batch {b}, {} steps in {secs:.2} s: {ips:.1} images/s mean, {ips_median:.1} median \
             ({:.1} ms/step median, {:.1}–{:.1} min–max, {threads} threads)",
            trainer.model.name,
            args.steps,
            1e3 * spread.median,
            1e3 * spread.min,
            1e3 * spread.max,
        );
        if let Some(p) = &profile {
            println!();
            print!("{}", super::profile::render(p, threads));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Spread;

    #[test]
    fn spread_interpolates_quartiles() {
        let s = Spread::of(&[4.0, 1.0, 3.0, 2.0, 5.0]);
        assert_eq!((s.min, s.median, s.max), (1.0, 3.0, 5.0));
        assert_eq!((s.p25, s.p75), (2.0, 4.0));
        let s = Spread::of(&[2.0, 1.0]);
        assert_eq!((s.median, s.p25), (1.5, 1.25));
        assert_eq!(Spread::of(&[7.0]).p75, 7.0);
    }
}
