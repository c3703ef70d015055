//! `psflow train`: train a zoo model on one machine, writing RUN_DIR
//! (TensorBoard events, checkpoints, loss.svg, summary.json); `--resume`
//! continues from the latest checkpoint bit for bit.
//!
//! `--steps N` is the global step to stop at (TF-slim's
//! `max_number_of_steps`): a run resumed with the same `--steps` finishes
//! where the uninterrupted run would have.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use psflow_graph::train::optimizer::Optimizer;
use psflow_graph::train::schedule::{ConstantLr, CosineDecay, ExponentialDecay, LrSchedule};
use psflow_graph::zoo::Architecture;
use psflow_worker::data::{DatasetKind, Pipeline, PipelineConfig};
use psflow_worker::run::{
    Checkpointer, EventWriter, LossPlot, MetricsAccumulator, ProgressMode, RunDir, StepReport,
    TrainProgress, TrainSummary,
};
use psflow_worker::task::step::PushBatch;
use serde_json::json;

use crate::trainer::{load_latest, moving_average_flag, RunConfig, Trainer};

/// What to train and how: the model, data and optimizer flags shared by
/// `psflow train` and `psflow submit`.
#[derive(Args, Debug, Clone)]
pub struct JobArgs {
    /// mobilenet, mobilenet-standard, resnet18 or resnet50.
    #[arg(long, value_parser = parse_arch)]
    pub model: Architecture,
    /// MobileNet width multiplier, in (0, 1].
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub alpha: f32,
    /// Input height and width; images are resized to it (bilinear).
    #[arg(long, default_value_t = 32)]
    pub resolution: usize,
    /// fashion-mnist, cifar10, cifar100, cifar100-coarse or synthetic.
    #[arg(long)]
    pub dataset: String,
    /// Folder of the dataset files (or its parent).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Train until this global step.
    #[arg(long, conflicts_with = "epochs", required_unless_present = "epochs")]
    pub steps: Option<u64>,
    /// Train for this many epochs (steps = epochs × examples / batch).
    #[arg(long)]
    pub epochs: Option<f64>,
    /// rmsprop (TF-slim: decay 0.9, momentum 0.9, epsilon 1), momentum
    /// (0.9), sgd or adam.
    #[arg(long, default_value = "rmsprop", value_parser = ["rmsprop", "momentum", "sgd", "adam"])]
    pub optimizer: String,
    /// Initial learning rate.
    #[arg(long, default_value_t = 0.01)]
    pub lr: f32,
    /// exponential (× --lr-decay every --lr-decay-epochs, staircase),
    /// constant or cosine.
    #[arg(long, default_value = "exponential", value_parser = ["exponential", "constant", "cosine"])]
    pub lr_schedule: String,
    #[arg(long, default_value_t = 0.94)]
    pub lr_decay: f32,
    #[arg(long, default_value_t = 2.0)]
    pub lr_decay_epochs: f64,
    /// L2 weight decay lambda (loss lambda × sum(w²) / 2).
    #[arg(long, default_value_t = 4e-5)]
    pub weight_decay: f32,
    /// Seeds the initialisers, dropout, shuffling and augmentation.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Training augmentation: auto (cifar for CIFAR, none for
    /// Fashion-MNIST and synthetic), cifar (pad-crop, flip, brightness,
    /// contrast), crop-flip, flip, none (standardization only) or raw
    /// (pixels in [0, 1], no standardization).
    #[arg(long, default_value = "auto", value_parser = ["auto", "cifar", "crop-flip", "flip", "none", "raw"])]
    pub augment: String,
    /// The same as --augment none.
    #[arg(long, conflicts_with = "augment")]
    pub no_augment: bool,
    /// Evaluate and export exponential moving averages of the trained
    /// weights (TensorFlow's ExponentialMovingAverage with
    /// num_updates = global step, as TF-slim's MobileNet recipe); 0: the
    /// last weights.
    #[arg(long, default_value_t = psflow_graph::train::ema::DEFAULT_DECAY)]
    pub moving_average_decay: f32,
    /// Threads preparing batches (0: on the training thread).
    #[arg(long, default_value_t = 1)]
    pub data_threads: usize,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// The run directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Write a checkpoint every N steps (0: only at the end).
    #[arg(long, default_value_t = 1000)]
    pub checkpoint_every: u64,
    /// Checkpoints kept.
    #[arg(long, default_value_t = 3)]
    pub keep_checkpoints: usize,
    /// Continue from the latest checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// TensorBoard scalars every N steps.
    #[arg(long, default_value_t = 20)]
    pub log_every: u64,
    /// Batch size of the final evaluation.
    #[arg(long, default_value_t = 250)]
    pub eval_batch_size: usize,
    /// Skip the final evaluation on the test split.
    #[arg(long)]
    pub no_eval: bool,
    /// auto, bar, plain or quiet.
    #[arg(long, default_value = "auto", value_parser = ["auto", "bar", "plain", "quiet"])]
    pub progress: String,
    /// cpu, auto (a CUDA GPU when the driver reports one, else the CPU) or
    /// cuda:N. The GPU path has not run on hardware yet (docs/cuda.md), so
    /// the default stays cpu.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Train on a cluster inside this process (loopback gRPC, in-memory
    /// membership) with this many workers, each taking --batch-size.
    #[arg(long)]
    pub workers: Option<u32>,
    /// Parameter-server shards of the in-process cluster (default 1 with
    /// --workers).
    #[arg(long)]
    pub ps: Option<u32>,
    /// Cluster: apply every push at once instead of waiting for all workers.
    #[arg(long = "async")]
    pub async_mode: bool,
    /// Cluster, sync mode: apply a step once all but this many workers pushed it.
    #[arg(long, default_value_t = 0)]
    pub backup_workers: u32,
    /// Cluster: when workers push gradients: `step` (all at once when the
    /// step has produced them), a batch size such as `256KiB` (while the
    /// backward pass runs), or `auto` (`step` for CPU workers whose shards
    /// are on loopback addresses, as here; else 256KiB).
    #[arg(long, default_value = "auto")]
    pub push_batch: PushBatch,
}

fn parse_arch(s: &str) -> Result<Architecture, String> {
    s.parse()
}

impl JobArgs {
    fn optimizer(&self) -> Optimizer {
        // clap admits only the four names.
        Optimizer::with_defaults(&self.optimizer).unwrap_or_default()
    }

    fn schedule(&self) -> LrSchedule {
        match self.lr_schedule.as_str() {
            "constant" => LrSchedule::Constant(ConstantLr { lr: self.lr }),
            "cosine" => LrSchedule::Cosine(CosineDecay {
                initial: self.lr,
                ..CosineDecay::default()
            }),
            _ => LrSchedule::ExponentialDecay(ExponentialDecay {
                initial: self.lr,
                decay_rate: self.lr_decay,
                decay_epochs: self.lr_decay_epochs,
                staircase: true,
            }),
        }
    }

    /// Checks the flags the parser cannot; a failure is a usage error.
    pub(crate) fn check(&self) -> Result<RunConfig> {
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        if let Some(e) = self.epochs {
            if !(e > 0.0 && e.is_finite()) {
                bail!("--epochs must be positive, got {e}");
            }
        }
        if self.steps == Some(0) {
            bail!("--steps must be at least 1");
        }
        let kind: DatasetKind = self.dataset.parse()?;
        let optimizer = self.optimizer();
        optimizer.validate()?;
        let schedule = self.schedule();
        schedule.validate()?;
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            bail!(
                "--weight-decay must be at least 0, got {}",
                self.weight_decay
            );
        }
        let moving_average_decay = moving_average_flag(self.moving_average_decay)?;
        let cfg = RunConfig {
            model: self.model.name().to_string(),
            alpha: self.alpha,
            resolution: self.resolution,
            dataset: kind.to_string(),
            data_dir: self.data_dir.clone(),
            classes: kind.image_shape().3,
            batch_size: self.batch_size,
            seed: self.seed,
            optimizer,
            schedule,
            weight_decay: self.weight_decay,
            augment: match (self.no_augment, self.augment.as_str()) {
                (true, _) => "none".into(),
                // The CIFAR recipe is for CIFAR. On Fashion-MNIST any
                // augmentation costs accuracy at a 2-epoch budget
                // (docs/training.md); the synthetic set is jittered already.
                (false, "auto") => match kind {
                    DatasetKind::Cifar10 | DatasetKind::Cifar100 { .. } => "cifar".into(),
                    DatasetKind::FashionMnist | DatasetKind::Synthetic(_) => "none".into(),
                },
                (false, other) => other.to_string(),
            },
            moving_average_decay,
        };
        // Builds (and so checks) the model configuration.
        cfg.model_spec(false)?.build().map_err(|e| anyhow!("{e}"))?;
        Ok(cfg)
    }
}

impl TrainArgs {
    pub(crate) fn progress_mode(&self) -> ProgressMode {
        match self.progress.as_str() {
            "bar" => ProgressMode::Bar,
            "plain" => ProgressMode::Plain,
            "quiet" => ProgressMode::Quiet,
            _ => ProgressMode::Auto,
        }
    }
}

/// Runs `psflow train`. Usage errors (bad flags, missing data, a run
/// directory that does not match) come back as `Err` before training
/// starts, with `usage = true`.
pub fn run(args: &TrainArgs) -> std::result::Result<(), (bool, anyhow::Error)> {
    let usage = |e: anyhow::Error| (true, e);
    let cfg = args.job.check().map_err(usage)?;
    if args.eval_batch_size == 0 {
        return Err(usage(anyhow!("--eval-batch-size must be at least 1")));
    }
    if args.workers.is_some() || args.ps.is_some() {
        if args.device != "cpu" {
            return Err(usage(anyhow!(
                "--device {}: the in-process cluster (--workers/--ps) trains on the CPU; \
                 drop --device or the cluster flags",
                args.device
            )));
        }
        return super::train_cluster::run(args, cfg);
    }
    let kind = cfg.dataset_kind().map_err(usage)?;
    let splits = kind
        .load(cfg.data_dir.as_deref())
        .with_context(|| format!("loading {kind}"))
        .map_err(usage)?;
    let train = Arc::new(splits.train);
    let test = Arc::new(splits.test);
    let steps_per_epoch = (train.len() / cfg.batch_size) as u64;
    if steps_per_epoch == 0 {
        return Err(usage(anyhow!(
            "--batch-size {} is larger than the {} training examples",
            cfg.batch_size,
            train.len()
        )));
    }
    let total = match (args.job.steps, args.job.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => ((e * steps_per_epoch as f64).round() as u64).max(1),
        (None, None) => unreachable!("clap requires one"),
    };
    // Before the run directory exists: a missing GPU leaves nothing behind.
    let gpu = crate::trainer::gpu_for(&args.device).map_err(usage)?;
    let run_dir = RunDir::create(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))
        .map_err(usage)?;
    let checkpointer = Checkpointer::new(run_dir.checkpoints(), args.keep_checkpoints);
    let existing = load_latest(checkpointer.dir()).map_err(usage)?;
    if existing.is_some() && !args.resume {
        return Err(usage(anyhow!(
            "{} already has checkpoints: pass --resume to continue, or choose another --out",
            args.out.display()
        )));
    }
    let mut trainer = Trainer::build(&cfg).map_err(usage)?;
    let mut resumed_from = None;
    match existing {
        Some((ckpt, tensors, manifest)) => {
            let saved: RunConfig = serde_json::from_value(manifest.meta["config"].clone())
                .with_context(|| format!("{}: no run configuration in meta", ckpt.path.display()))
                .map_err(usage)?;
            let diffs = cfg.differences(&saved);
            if !diffs.is_empty() {
                return Err(usage(anyhow!(
                    "--resume: the flags differ from the checkpointed run ({})",
                    diffs.join("; ")
                )));
            }
            trainer.restore(tensors).map_err(usage)?;
            resumed_from = Some(trainer.global_step().map_err(usage)?);
        }
        None => trainer.init().map_err(usage)?,
    }
    if let Some(device) = gpu {
        trainer.use_gpu(device).map_err(usage)?;
    }
    let start = resumed_from.unwrap_or(0);
    if start > total {
        return Err(usage(anyhow!(
            "the checkpoint is at step {start}, past --steps {total}"
        )));
    }
    train_loop(
        args,
        &cfg,
        &trainer,
        train,
        test,
        start,
        total,
        steps_per_epoch,
    )
    .map_err(|e| (false, e))
}

#[allow(clippy::too_many_arguments)]
fn train_loop(
    args: &TrainArgs,
    cfg: &RunConfig,
    trainer: &Trainer,
    train: Arc<psflow_worker::data::Dataset>,
    test: Arc<psflow_worker::data::Dataset>,
    start: u64,
    total: u64,
    steps_per_epoch: u64,
) -> Result<()> {
    let run_dir = RunDir::at(&args.out);
    let checkpointer = Checkpointer::new(run_dir.checkpoints(), args.keep_checkpoints);
    let schedule = cfg.schedule.build(steps_per_epoch as f64, total)?;
    let mut pc = PipelineConfig::train(cfg.batch_size, cfg.seed);
    pc.augment = cfg.augment(&train)?;
    pc.threads = args.job.data_threads;
    pc.start_step = start;
    let mut pipeline = Pipeline::new(train.clone(), pc)?;
    let mut events = EventWriter::create(run_dir.events())?;
    events.add_session_start(start as i64)?;
    let meta = |next_step: u64| {
        json!({
            "config": cfg,
            "next_step": next_step,
            "seed": cfg.seed,
            "steps_per_epoch": steps_per_epoch,
        })
    };
    let log_every = args.log_every.max(1);
    let mut progress = TrainProgress::new(total, start, args.progress_mode());
    let mut metrics = MetricsAccumulator::new(log_every as usize);
    let (mut window_correct, mut window_images) = (0usize, 0usize);
    let mut loss_points = vec![];
    let mut xent_points = vec![];
    let mut last_losses = None;
    let mut last_lr = None;
    let mut last_saved = None;
    let began = Instant::now();
    let mut next_batch = |step: u64| {
        pipeline
            .next_batch()?
            .ok_or_else(|| anyhow!("the input pipeline ended at step {step}"))
    };
    // On a GPU the next batch's images are copied on the copy stream while
    // this step computes.
    let mut ahead = None;
    for step in start..total {
        let (batch, prefetched) = match ahead.take() {
            Some(a) => a,
            None => {
                let b = next_batch(step)?;
                let p = trainer.prefetch(&b.images)?;
                (b, p)
            }
        };
        if prefetched.is_some() && step + 1 < total {
            let b = next_batch(step + 1)?;
            let p = trainer.prefetch(&b.images)?;
            ahead = Some((b, p));
        }
        let n = batch.len();
        let lr = schedule.at(step);
        let out = match prefetched {
            Some(p) => trainer.step_prefetched(p, batch.labels, lr)?,
            None => trainer.step(batch.images, batch.labels, lr)?,
        };
        if !out.losses.total.is_finite() {
            bail!(
                "the loss diverged at step {} (total {}); try a smaller --lr",
                step + 1,
                out.losses.total
            );
        }
        if step == start {
            // The first step builds the plan and touches every buffer.
            metrics.restart_clock(Instant::now());
        } else {
            metrics.record(n as u64, out.losses);
        }
        window_correct += out.correct;
        window_images += n;
        let done = step + 1;
        last_lr = Some(lr as f64);
        if done % log_every == 0 || done == total {
            let mean = metrics.take_mean().unwrap_or(out.losses);
            let acc = window_correct as f64 / window_images.max(1) as f64;
            (window_correct, window_images) = (0, 0);
            events.add_scalars(
                done as i64,
                &[
                    ("loss/total", mean.total as f32),
                    ("loss/cross_entropy", mean.cross_entropy as f32),
                    ("loss/regularization", mean.regularization as f32),
                    ("learning_rate", lr),
                    ("accuracy/train", acc as f32),
                ],
            )?;
            loss_points.push((done as f64, mean.total));
            xent_points.push((done as f64, mean.cross_entropy));
            last_losses = Some(mean);
            progress.update(&StepReport {
                step: done,
                epoch: done as f64 / steps_per_epoch as f64,
                losses: mean,
                learning_rate: lr as f64,
                images_per_sec: metrics.images_per_sec(),
            });
        } else if progress.is_bar() {
            // The bar moves every step, with the mean so far in the window.
            progress.update(&StepReport {
                step: done,
                epoch: done as f64 / steps_per_epoch as f64,
                losses: metrics.mean().unwrap_or(out.losses),
                learning_rate: lr as f64,
                images_per_sec: metrics.images_per_sec(),
            });
        }
        if args.checkpoint_every > 0 && done % args.checkpoint_every == 0 && done != total {
            let path = checkpointer.save(done, &trainer.state()?, meta(done))?;
            last_saved = Some(done);
            progress.println(&format!("checkpoint {}", path.display()));
        }
    }
    let wall = began.elapsed().as_secs_f64();
    if last_saved != Some(total) {
        checkpointer.save(total, &trainer.state()?, meta(total))?;
    }
    events.flush()?;
    let ips = metrics.overall_images_per_sec().unwrap_or(0.0);
    progress.finish(&format!(
        "trained to step {total} in {wall:.1} s ({ips:.1} images/s)"
    ));
    if !loss_points.is_empty() {
        LossPlot::new(format!("{} on {}", trainer.model.name, cfg.dataset))
            .with_series("total loss", loss_points)
            .with_series("cross-entropy", xent_points)
            .write(&run_dir.loss_plot())?;
    }
    let mut last_weights_eval = None;
    let eval = if args.no_eval {
        None
    } else {
        if trainer.has_averages() {
            // The last weights too, to show what the averaging gives.
            let r = trainer.evaluate_weights(cfg, test.clone(), args.eval_batch_size, false)?;
            eprintln!(
                "eval (last weights): top-1 {:.4}, top-5 {:.4}, loss {:.4}",
                r.top1, r.top5, r.loss
            );
            last_weights_eval = Some(r);
        }
        let r = trainer.evaluate(cfg, test, args.eval_batch_size)?;
        events.add_scalars(
            total as i64,
            &[
                ("accuracy/eval_top1", r.top1 as f32),
                ("accuracy/eval_top5", r.top5 as f32),
                ("loss/eval_cross_entropy", r.loss as f32),
            ],
        )?;
        events.flush()?;
        eprintln!(
            "eval{}: top-1 {:.4}, top-5 {:.4}, loss {:.4} on {} examples",
            if trainer.has_averages() {
                " (moving averages of the weights)"
            } else {
                ""
            },
            r.top1,
            r.top5,
            r.loss,
            r.examples
        );
        Some(r)
    };
    let summary = TrainSummary {
        model: trainer.model.name.clone(),
        alpha: cfg.alpha as f64,
        resolution: cfg.resolution as u32,
        conv: match cfg.arch()? {
            Architecture::MobileNet => "depthwise".into(),
            Architecture::MobileNetStandard => "standard".into(),
            _ => String::new(),
        },
        dataset: cfg.dataset.clone(),
        classes: cfg.classes as u32,
        top1: eval.map(|r| r.top1),
        top5: eval.map(|r| r.top5),
        eval_loss: eval.map(|r| r.loss),
        params: trainer.model.params,
        model_bytes: trainer.model.params * 4,
        images_per_sec: ips,
        steps: total,
        epochs: total as f64 / steps_per_epoch as f64,
        wall_seconds: wall,
        batch_size: cfg.batch_size as u32,
        optimizer: args.job.optimizer.clone(),
        optimizer_config: json!({
            "optimizer": cfg.optimizer,
            "schedule": cfg.schedule,
            "weight_decay": cfg.weight_decay,
        }),
        final_learning_rate: last_lr,
        final_losses: last_losses,
        resumed_from_step: (start > 0).then_some(start),
        threads: psflow_kernels::threads::current() as u32,
        psflow_version: env!("CARGO_PKG_VERSION").into(),
        extra: [
            (
                "device".to_string(),
                json!(trainer.gpu().map_or("cpu".to_string(), |d| format!(
                    "cuda:{} ({})",
                    d.ordinal(),
                    d.name()
                ))),
            ),
            (
                "weights".to_string(),
                json!(if trainer.has_averages() {
                    "moving_average"
                } else {
                    "last"
                }),
            ),
            (
                "moving_average_decay".to_string(),
                json!(cfg
                    .moving_average_decay
                    .map(psflow_graph::train::as_written)),
            ),
            (
                "last_weights".to_string(),
                json!(last_weights_eval.map(|r| json!({
                    "top1": r.top1,
                    "top5": r.top5,
                    "eval_loss": r.loss,
                }))),
            ),
        ]
        .into_iter()
        .collect(),
    };
    summary.write(&run_dir.summary())?;
    Ok(())
}
