//! The single-process trainer behind `psflow train`, `psflow eval` and
//! `psflow bench train`: a zoo model turned into a training graph, run in
//! a [`Session`] whose variables live in a [`ResourceStore`] shared with an
//! inference session of the same model (is_training=false batch norm, no
//! dropout) for evaluation.
//!
//! What a checkpoint holds: every entry of the store — model variables,
//! optimizer slots, `global_step` and the random ops' run counters — so a
//! resumed run continues bit for bit; the manifest's `meta` holds the
//! [`RunConfig`] and the pipeline position (the next step).

mod config;

use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use psflow_graph::cuda::CudaSession;
use psflow_graph::train::builder::{TrainConfig, TrainGraph};
use psflow_graph::zoo::Model;
use psflow_graph::{Profile, Registry, ResourceStore, Schedule, Session, Tensor};
use psflow_kernels::cuda::{CudaDevice, Prefetched};
use psflow_worker::data::Dataset;
use psflow_worker::run::{Checkpoint, Losses};

pub use config::{moving_average_flag, RunConfig};

/// A model ready to train and evaluate.
pub struct Trainer {
    pub model: Model,
    pub graph: TrainGraph,
    pub session: Session,
    pub infer_model: Model,
    pub infer: Session,
    pub store: Arc<ResourceStore>,
    /// Set by [`use_gpu`](Self::use_gpu): the training and inference
    /// graphs on a CUDA device, whose float32 variables are the current
    /// ones (the store's copies are refreshed by [`sync_host`](Self::sync_host)).
    gpu: Option<(CudaSession, CudaSession)>,
}

/// What one training step returns.
pub struct StepOutput {
    pub losses: Losses,
    /// Correct top-1 predictions in the batch.
    pub correct: usize,
}

pub use psflow_worker::task::{count_correct, EvalResult};

impl Trainer {
    /// Builds the training and inference graphs of `cfg` (variables not
    /// yet initialised: call [`init`](Self::init) or [`restore`](Self::restore)).
    pub fn build(cfg: &RunConfig) -> Result<Trainer> {
        let mut model = cfg.model_spec(true)?.build().map_err(|e| anyhow!("{e}"))?;
        let infer_model = cfg.model_spec(false)?.build().map_err(|e| anyhow!("{e}"))?;
        let graph = model
            .add_training(&TrainConfig {
                optimizer: cfg.optimizer,
                weight_decay: cfg.weight_decay,
                moving_average_decay: cfg.moving_average_decay,
            })
            .context("building the training graph")?;
        let registry = Registry::standard();
        let store = Arc::new(ResourceStore::new());
        let session = Session::with_resources(model.graph.clone(), &registry, store.clone())
            .context("checking the training graph")?;
        let infer = Session::with_resources(infer_model.graph.clone(), &registry, store.clone())
            .context("checking the inference graph")?;
        Ok(Trainer {
            model,
            graph,
            session,
            infer_model,
            infer,
            store,
            gpu: None,
        })
    }

    /// Moves training (and evaluation) onto `device`: the variables as
    /// they are now (after [`init`](Self::init) or
    /// [`restore`](Self::restore)) are copied there and stay there.
    pub fn use_gpu(&mut self, device: Arc<CudaDevice>) -> Result<()> {
        let registry = Registry::standard();
        let train = CudaSession::new(
            self.model.graph.clone(),
            &registry,
            self.store.clone(),
            device.clone(),
        )
        .context("preparing the training graph for the GPU")?;
        train
            .load_variables(&self.store)
            .context("copying the variables to the GPU")?;
        let infer = CudaSession::new(
            self.infer_model.graph.clone(),
            &registry,
            self.store.clone(),
            device,
        )
        .context("preparing the inference graph for the GPU")?;
        self.gpu = Some((train, infer));
        Ok(())
    }

    /// The CUDA device training runs on, if any.
    pub fn gpu(&self) -> Option<&Arc<CudaDevice>> {
        self.gpu.as_ref().map(|(t, _)| t.device())
    }

    /// Copies the GPU's variables back into the store (a no-op on the CPU).
    pub fn sync_host(&self) -> Result<()> {
        if let Some((train, _)) = &self.gpu {
            for (name, t) in train
                .variables()
                .context("copying the variables from the GPU")?
            {
                self.store.set(&name, t);
            }
        }
        Ok(())
    }

    /// Runs `init`: every variable to its initial value, global_step 0.
    pub fn init(&self) -> Result<()> {
        self.session
            .run(&[], &[], std::slice::from_ref(&self.model.init))
            .context("initialising the variables")?;
        Ok(())
    }

    /// The global step (the `global_step` variable).
    pub fn global_step(&self) -> Result<u64> {
        let t = self
            .store
            .get(&self.graph.global_step)
            .ok_or_else(|| anyhow!("global_step is not initialised"))?;
        Ok(t.scalar_value::<i64>("global_step")? as u64)
    }

    /// One training step on `images` / `labels` with learning rate `lr`.
    pub fn step(&self, images: Tensor, labels: Tensor, lr: f32) -> Result<StepOutput> {
        Ok(self.step_with(images, labels, lr, None)?.0)
    }

    /// On a GPU: queues the copy of a later step's `images` on the
    /// device's copy stream (so it crosses while this step computes); on
    /// the CPU: None.
    pub fn prefetch(&self, images: &Tensor) -> Result<Option<Prefetched>> {
        match self.gpu() {
            Some(d) => Ok(Some(
                d.prefetch(&[images])
                    .context("queueing the next batch's copy to the GPU")?,
            )),
            None => Ok(None),
        }
    }

    /// [`step`](Self::step) with the images prefetched to the GPU.
    pub fn step_prefetched(
        &self,
        mut images: Prefetched,
        labels: Tensor,
        lr: f32,
    ) -> Result<StepOutput> {
        let Some((gpu, _)) = &self.gpu else {
            bail!("a prefetched batch needs the trainer on the GPU");
        };
        let images = images
            .take()
            .context("taking the prefetched batch")?
            .pop()
            .ok_or_else(|| anyhow!("the prefetched batch is empty"))?;
        let label_values: Vec<i32> = labels.values::<i32>("labels")?.to_vec();
        let feeds = [
            (self.model.labels.clone().expect("checked in build"), labels),
            (self.graph.learning_rate.clone(), Tensor::scalar(lr)),
        ];
        let out = gpu
            .run_with_device_feeds(
                &feeds,
                vec![(self.model.input.clone(), images)],
                &self.step_fetches(),
                std::slice::from_ref(&self.graph.train_op),
            )
            .context("training step on the GPU")?;
        self.step_output(&out, &label_values)
    }

    fn step_fetches(&self) -> [psflow_graph::TensorName; 4] {
        [
            self.graph.total_loss.clone(),
            self.graph.cross_entropy_loss.clone(),
            self.graph.regularization_loss.clone(),
            self.model.logits.clone(),
        ]
    }

    fn step_output(&self, out: &[Tensor], label_values: &[i32]) -> Result<StepOutput> {
        let scalar = |t: &Tensor| -> Result<f64> { Ok(t.scalar_value::<f32>("loss")? as f64) };
        let losses = Losses::new(scalar(&out[0])?, scalar(&out[1])?, scalar(&out[2])?);
        let (top1, _) = count_correct(&out[3], label_values)?;
        Ok(StepOutput {
            losses,
            correct: top1,
        })
    }

    /// [`step`](Self::step), timing every kernel ([`Profile`]) with the
    /// nodes scheduled as `schedule` says.
    pub fn step_profiled(
        &self,
        images: Tensor,
        labels: Tensor,
        lr: f32,
        schedule: Schedule,
    ) -> Result<(StepOutput, Profile)> {
        let (out, profile) = self.step_with(images, labels, lr, Some(schedule))?;
        Ok((out, profile.expect("profiled run")))
    }

    fn step_with(
        &self,
        images: Tensor,
        labels: Tensor,
        lr: f32,
        profile: Option<Schedule>,
    ) -> Result<(StepOutput, Option<Profile>)> {
        let label_values: Vec<i32> = labels.values::<i32>("labels")?.to_vec();
        let feeds = [
            (self.model.input.clone(), images),
            (self.model.labels.clone().expect("checked in build"), labels),
            (self.graph.learning_rate.clone(), Tensor::scalar(lr)),
        ];
        let fetches = self.step_fetches();
        let targets = std::slice::from_ref(&self.graph.train_op);
        let (out, profile) = if let Some((gpu, _)) = &self.gpu {
            if profile.is_some() {
                bail!("per-kernel profiles are of CPU steps; this trainer runs on the GPU");
            }
            let out = gpu
                .run(&feeds, &fetches, targets)
                .context("training step on the GPU")?;
            (out, None)
        } else if let Some(schedule) = profile {
            let (out, p) = self
                .session
                .run_profiled(&feeds, &fetches, targets, schedule)
                .context("training step")?;
            (out, Some(p))
        } else {
            let out = self
                .session
                .run(&feeds, &fetches, targets)
                .context("training step")?;
            (out, None)
        };
        Ok((self.step_output(&out, &label_values)?, profile))
    }

    /// Evaluates the inference model on every example of `data`
    /// (preprocessed as `cfg`'s eval recipe) with the weights a checkpoint
    /// would export: the moving averages when the run keeps them, else the
    /// last weights.
    pub fn evaluate(
        &self,
        cfg: &RunConfig,
        data: Arc<Dataset>,
        batch_size: usize,
    ) -> Result<EvalResult> {
        self.evaluate_weights(cfg, data, batch_size, true)
    }

    /// Whether the run keeps moving averages of its weights.
    pub fn has_averages(&self) -> bool {
        !self.graph.averages.is_empty()
    }

    /// [`evaluate`](Self::evaluate) with the moving averages (`averaged`,
    /// when the run keeps them) or the last weights.
    pub fn evaluate_weights(
        &self,
        cfg: &RunConfig,
        data: Arc<Dataset>,
        batch_size: usize,
        averaged: bool,
    ) -> Result<EvalResult> {
        // The inference graph reads the training graph's variables by name
        // in the shared store.
        self.sync_host()?;
        let swapped = if averaged {
            self.swap_in_averages()?
        } else {
            vec![]
        };
        let result = match &self.gpu {
            None => evaluate(&self.infer, &self.infer_model, cfg, data, batch_size),
            Some((_, infer)) => infer
                .load_variables(&self.store)
                .context("copying the variables to the GPU's inference graph")
                .and_then(|()| evaluate_on_gpu(infer, &self.infer_model, cfg, data, batch_size)),
        };
        for (name, t) in swapped {
            self.store.set(&name, t);
        }
        result
    }

    /// Puts each averaged variable's shadow in its place in the store;
    /// returns the values it replaced.
    fn swap_in_averages(&self) -> Result<Vec<(String, Tensor)>> {
        let pairs = self
            .graph
            .averages
            .iter()
            .map(|(v, s)| match (self.store.get(v), self.store.get(s)) {
                (Some(value), Some(shadow)) => Ok((v.clone(), value, shadow)),
                _ => Err(anyhow!("the moving average of {v:?} is not initialised")),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(pairs
            .into_iter()
            .map(|(v, value, shadow)| {
                self.store.set(&v, shadow);
                (v, value)
            })
            .collect())
    }

    /// Every entry of the store (variables, slots, global_step, random
    /// counters), sorted by name.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        self.sync_host()?;
        state_of(&self.store)
    }

    /// Loads `ckpt` into the store; every variable of the training graph
    /// must be in it.
    pub fn restore(&self, tensors: Vec<(String, Tensor)>) -> Result<()> {
        let expected: Vec<&str> = self
            .model
            .variables
            .iter()
            .map(|v| v.name.as_str())
            .chain(self.graph.new_variables.iter().map(String::as_str))
            .collect();
        for name in &expected {
            if !tensors.iter().any(|(n, _)| n == name) {
                bail!("the checkpoint has no variable {name:?}: was it written for another model or optimizer?");
            }
        }
        for (name, t) in tensors {
            self.store.set(&name, t);
        }
        Ok(())
    }
}

/// The weights of a checkpoint to evaluate or export: its moving averages
/// in place of the variables when it has them (unless `last`), else the
/// last weights; with which of the two (`moving_average` or `last`).
pub fn checkpoint_weights(
    tensors: Vec<(String, Tensor)>,
    last: bool,
) -> (Vec<(String, Tensor)>, &'static str) {
    use psflow_graph::train::ema;
    if !last && ema::has_averages(&tensors) {
        (ema::averaged(tensors), "moving_average")
    } else {
        (tensors, "last")
    }
}

/// Every initialised entry of `store`, sorted by name.
pub fn state_of(store: &ResourceStore) -> Result<Vec<(String, Tensor)>> {
    Ok(store
        .names()
        .into_iter()
        .filter_map(|n| store.get(&n).map(|t| (n, t)))
        .collect())
}

/// The pass over `data` behind [`Trainer::evaluate`], for a bare
/// inference session too (`psflow eval`).
pub fn evaluate(
    session: &Session,
    model: &Model,
    cfg: &RunConfig,
    data: Arc<Dataset>,
    batch_size: usize,
) -> Result<EvalResult> {
    let augment = cfg.augment(&data)?;
    psflow_worker::task::evaluate_split(
        session,
        &model.input,
        &model.logits,
        data,
        &augment,
        batch_size,
    )
    .context("evaluation")
}

/// The device `--device` (`cpu`, `auto`, `cuda:N`) asks for, opened: None
/// for the CPU; with what was chosen and why, in words. An unavailable
/// `cuda:N` is an error naming what is missing.
pub fn open_device(flag: &str) -> Result<(Option<Arc<CudaDevice>>, String)> {
    use psflow_kernels::cuda::device::{pick_device, Device};
    let choice = pick_device(flag).map_err(|e| anyhow!("--device {flag}: {e}"))?;
    Ok(match choice.device {
        Device::Cpu => (None, format!("cpu ({})", choice.reason)),
        Device::Cuda(n) => {
            let gpu = CudaDevice::new(n).map_err(|e| anyhow!("--device {flag}: {e}"))?;
            let said = format!("cuda:{n} {} ({})", gpu.name(), choice.reason);
            (Some(gpu), said)
        }
    })
}

/// [`open_device`] for the commands that train or evaluate here: the
/// choice is said on stderr unless the CPU was asked for.
pub fn gpu_for(flag: &str) -> Result<Option<Arc<CudaDevice>>> {
    let (gpu, said) = open_device(flag)?;
    if gpu.is_some() || flag != "cpu" {
        eprintln!("device: {said}");
    }
    Ok(gpu)
}

/// [`evaluate`] with the inference model on a GPU (its variables loaded).
pub fn evaluate_on_gpu(
    session: &CudaSession,
    model: &Model,
    cfg: &RunConfig,
    data: Arc<Dataset>,
    batch_size: usize,
) -> Result<EvalResult> {
    let augment = cfg.augment(&data)?;
    psflow_worker::task::evaluate_split_with(
        |images| {
            let mut out = session.run(
                &[(model.input.clone(), images)],
                std::slice::from_ref(&model.logits),
                &[],
            )?;
            Ok(out.remove(0))
        },
        data,
        &augment,
        batch_size,
    )
    .context("evaluation on the GPU")
}

/// A checkpoint read back: where it is, its tensors, its manifest.
pub type Loaded = (
    Checkpoint,
    Vec<(String, Tensor)>,
    psflow_worker::run::Manifest,
);

/// The latest checkpoint of a run's checkpoint directory, loaded.
pub fn load_latest(dir: &std::path::Path) -> Result<Option<Loaded>> {
    let Some(ckpt) = Checkpoint::latest(dir)? else {
        return Ok(None);
    };
    let (tensors, manifest) = ckpt
        .load()
        .with_context(|| format!("reading {}", ckpt.path.display()))?;
    Ok(Some((ckpt, tensors, manifest)))
}
