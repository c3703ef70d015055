//! The input pipeline: shuffles per epoch, shards per worker, augments, and
//! prepares batches ahead of compute on its own threads.
//!
//! Everything a batch contains is a function of (config, step): the epoch's
//! order comes from `(seed, epoch)`, each example's augmentation from
//! `(seed, epoch, example index)`. Threads only decide *when* a batch is
//! ready, never *what* it holds, so a run is reproducible whatever the
//! thread timing, and [`build_batch`] computes any batch on its own.
//!
//! Threads take step numbers in order and may run at most `prefetch` steps
//! ahead of the consumer; finished batches wait in a reorder buffer and are
//! handed out in step order.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use psflow_kernels::Tensor;
use serde::{Deserialize, Serialize};

use super::augment::{AugmentConfig, Augmenter};
use super::rng::Rng;
use super::{DataError, Dataset, Result};

// Stream keys for `Rng::keyed`.
const KEY_SHUFFLE: u64 = 11;
const KEY_AUGMENT: u64 = 12;

/// This worker's part of the data: examples at positions `index`,
/// `index + count`, … of each epoch's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Shard::SINGLE
    }
}

impl Shard {
    /// All the data (one worker).
    pub const SINGLE: Shard = Shard { index: 0, count: 1 };

    pub fn new(index: usize, count: usize) -> Result<Shard> {
        let s = Shard { index, count };
        s.validate()?;
        Ok(s)
    }

    pub fn validate(&self) -> Result<()> {
        if self.count == 0 || self.index >= self.count {
            return Err(DataError::config(format!(
                "shard {}/{}: need index < count",
                self.index, self.count
            )));
        }
        Ok(())
    }
}

/// How batches are made. `Default` is [`PipelineConfig::train`]`(128, 0)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    pub batch_size: usize,
    /// Seeds the per-epoch shuffle and the augmentation.
    pub seed: u64,
    /// Shuffle the whole dataset anew each epoch (before sharding, with the
    /// same order on every worker, so shards stay disjoint).
    pub shuffle: bool,
    /// Drop the last partial batch of each epoch, and make all shards the
    /// same size (`len / count`), so every worker runs the same number of
    /// steps per epoch: what synchronous training needs.
    pub drop_remainder: bool,
    /// Stop after this many epochs; `None` repeats forever.
    pub epochs: Option<u64>,
    pub shard: Shard,
    /// Threads preparing batches; 0 prepares each batch on the caller's
    /// thread when it is asked for (no prefetch).
    pub threads: usize,
    /// How many batches may be prepared (or in preparation) ahead of the
    /// consumer.
    pub prefetch: usize,
    /// The first step to deliver (resuming from a checkpoint at this step
    /// gives the batches an uninterrupted run would have seen).
    pub start_step: u64,
    pub augment: AugmentConfig,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig::train(128, 0)
    }
}

impl PipelineConfig {
    /// Training: shuffled, augmented with the CIFAR recipe, remainder
    /// dropped, repeating forever, 2 threads, 4 batches ahead.
    pub fn train(batch_size: usize, seed: u64) -> Self {
        PipelineConfig {
            batch_size,
            seed,
            shuffle: true,
            drop_remainder: true,
            epochs: None,
            shard: Shard::SINGLE,
            threads: 2,
            prefetch: 4,
            start_step: 0,
            augment: AugmentConfig::cifar_train(),
        }
    }

    /// Evaluation: one full pass in dataset order, the last batch partial,
    /// standardization only.
    pub fn eval(batch_size: usize) -> Self {
        PipelineConfig {
            shuffle: false,
            drop_remainder: false,
            epochs: Some(1),
            augment: AugmentConfig::eval(),
            ..PipelineConfig::train(batch_size, 0)
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(DataError::config("pipeline: batch_size must be > 0"));
        }
        if self.threads > 0 && self.prefetch == 0 {
            return Err(DataError::config(
                "pipeline: prefetch must be > 0 when threads > 0",
            ));
        }
        self.shard.validate()?;
        self.augment.validate()
    }
}

/// One batch, ready for the step.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// f32 `[batch, height, width, channels]`.
    pub images: Tensor,
    /// i32 `[batch]`.
    pub labels: Tensor,
    /// Which dataset examples it holds, in order.
    pub indices: Vec<usize>,
    /// Epoch of this batch (from 0).
    pub epoch: u64,
    /// Step number in this pipeline's stream (from 0, counting
    /// `start_step`).
    pub step: u64,
    /// Position within the epoch (from 0).
    pub step_in_epoch: u64,
    /// Whether this is the epoch's last batch.
    pub last_in_epoch: bool,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// Counters of a pipeline so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PipelineStats {
    /// Batches handed out.
    pub delivered: u64,
    /// Times the consumer asked for a batch that was not ready yet (a step
    /// that waited for data).
    pub waited: u64,
    /// Total time the consumer waited.
    pub wait_time: Duration,
    /// Time spent preparing batches, summed over threads.
    pub build_time: Duration,
}

/// Examples of one epoch for `shard`, in the order they are batched.
pub fn shard_order(
    len: usize,
    shard: Shard,
    seed: u64,
    epoch: u64,
    shuffle: bool,
    drop_remainder: bool,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        Rng::keyed(seed, &[KEY_SHUFFLE, epoch]).shuffle(&mut order);
    }
    let take = shard_len(len, shard, drop_remainder);
    order
        .into_iter()
        .skip(shard.index)
        .step_by(shard.count.max(1))
        .take(take)
        .collect()
}

fn shard_len(len: usize, shard: Shard, drop_remainder: bool) -> usize {
    if drop_remainder {
        len / shard.count
    } else if shard.index < len {
        (len - shard.index).div_ceil(shard.count)
    } else {
        0
    }
}

/// What a config over a dataset amounts to.
#[derive(Clone, Copy, Debug)]
struct Plan {
    per_epoch: usize,
    steps_per_epoch: u64,
    /// One past the last step (`u64::MAX` when repeating forever).
    end: u64,
}

impl Plan {
    fn new(dataset: &Dataset, config: &PipelineConfig) -> Result<Plan> {
        config.validate()?;
        dataset.validate()?;
        Augmenter::new(
            &config.augment,
            dataset.height,
            dataset.width,
            dataset.channels,
        )?;
        let per_epoch = shard_len(dataset.len(), config.shard, config.drop_remainder);
        let b = config.batch_size;
        let steps = if config.drop_remainder {
            per_epoch / b
        } else {
            per_epoch.div_ceil(b)
        } as u64;
        if steps == 0 {
            return Err(DataError::config(format!(
                "pipeline: dataset {} has {} examples, shard {}/{} gets {per_epoch}: not one \
                 batch of {b}{}",
                dataset.name,
                dataset.len(),
                config.shard.index,
                config.shard.count,
                if config.drop_remainder {
                    " (remainder dropped)"
                } else {
                    ""
                }
            )));
        }
        let end = match config.epochs {
            Some(e) => e.saturating_mul(steps),
            None => u64::MAX,
        };
        Ok(Plan {
            per_epoch,
            steps_per_epoch: steps,
            end,
        })
    }
}

/// Prepares batch `step` from the epoch's `order`.
fn assemble(
    dataset: &Dataset,
    config: &PipelineConfig,
    plan: &Plan,
    augmenter: &mut Augmenter,
    order: &[usize],
    step: u64,
) -> Result<Batch> {
    let epoch = step / plan.steps_per_epoch;
    let in_epoch = step % plan.steps_per_epoch;
    let start = in_epoch as usize * config.batch_size;
    let end = (start + config.batch_size).min(order.len());
    let indices = order[start..end].to_vec();
    let (oh, ow, oc) = augmenter.output_shape();
    let per = augmenter.output_len();
    let mut images = vec![0f32; indices.len() * per];
    let mut labels = Vec::with_capacity(indices.len());
    for (out, &i) in images.chunks_exact_mut(per).zip(&indices) {
        let mut rng = Rng::keyed(config.seed, &[KEY_AUGMENT, epoch, i as u64]);
        augmenter.apply(dataset.image(i), &mut rng, out)?;
        labels.push(dataset.labels[i]);
    }
    Ok(Batch {
        images: Tensor::new(vec![indices.len(), oh, ow, oc], images)?,
        labels: Tensor::new(vec![indices.len()], labels)?,
        indices,
        epoch,
        step,
        step_in_epoch: in_epoch,
        last_in_epoch: in_epoch + 1 == plan.steps_per_epoch,
    })
}

/// Computes batch `step` of the pipeline `config` describes, on the
/// calling thread: exactly what [`Pipeline`] delivers as that step.
pub fn build_batch(dataset: &Dataset, config: &PipelineConfig, step: u64) -> Result<Batch> {
    let plan = Plan::new(dataset, config)?;
    if step >= plan.end {
        return Err(DataError::config(format!(
            "pipeline: step {step} is past the last step {} of {:?} epochs",
            plan.end - 1,
            config.epochs
        )));
    }
    let epoch = step / plan.steps_per_epoch;
    let mut aug = Augmenter::new(
        &config.augment,
        dataset.height,
        dataset.width,
        dataset.channels,
    )?;
    let order = epoch_order(dataset, config, epoch);
    assemble(dataset, config, &plan, &mut aug, &order, step)
}

fn epoch_order(dataset: &Dataset, config: &PipelineConfig, epoch: u64) -> Vec<usize> {
    shard_order(
        dataset.len(),
        config.shard,
        config.seed,
        epoch,
        config.shuffle,
        config.drop_remainder,
    )
}

struct State {
    /// Next step a thread will take.
    next_job: u64,
    /// Next step the consumer will take.
    consumer: u64,
    ready: BTreeMap<u64, Result<Batch>>,
    shutdown: bool,
    build_time: Duration,
}

struct Shared {
    dataset: Arc<Dataset>,
    config: PipelineConfig,
    plan: Plan,
    state: Mutex<State>,
    /// Signalled when a batch lands in `ready` (the consumer waits on it).
    ready_cv: Condvar,
    /// Signalled when the consumer takes a batch or on shutdown.
    space_cv: Condvar,
    /// Recent epochs' orders, shared by the threads.
    orders: Mutex<Vec<(u64, Arc<Vec<usize>>)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while building is caught before it can poison anything; a
    // poisoned lock still holds consistent state.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn order(&self, epoch: u64) -> Arc<Vec<usize>> {
        let mut orders = lock(&self.orders);
        if let Some((_, o)) = orders.iter().find(|(e, _)| *e == epoch) {
            return o.clone();
        }
        let o = Arc::new(epoch_order(&self.dataset, &self.config, epoch));
        orders.push((epoch, o.clone()));
        if orders.len() > 3 {
            let oldest = (0..orders.len()).min_by_key(|&k| orders[k].0).unwrap_or(0);
            orders.swap_remove(oldest);
        }
        o
    }

    fn build(&self, augmenter: &mut Augmenter, step: u64) -> Result<Batch> {
        let order = self.order(step / self.plan.steps_per_epoch);
        assemble(
            &self.dataset,
            &self.config,
            &self.plan,
            augmenter,
            &order,
            step,
        )
    }

    fn run_thread(&self) {
        let d = &self.dataset;
        let mut augmenter =
            match Augmenter::new(&self.config.augment, d.height, d.width, d.channels) {
                Ok(a) => a,
                Err(_) => return, // checked in Plan::new; cannot happen
            };
        loop {
            let step = {
                let mut st = lock(&self.state);
                loop {
                    if st.shutdown || st.next_job >= self.plan.end {
                        return;
                    }
                    if st.next_job < st.consumer.saturating_add(self.config.prefetch as u64) {
                        break;
                    }
                    st = self.space_cv.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                st.next_job += 1;
                st.next_job - 1
            };
            let t0 = Instant::now();
            let result = catch_unwind(AssertUnwindSafe(|| self.build(&mut augmenter, step)))
                .unwrap_or_else(|panic| {
                    let msg = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".into());
                    Err(DataError::Stopped(format!("building step {step}: {msg}")))
                });
            let mut st = lock(&self.state);
            st.build_time += t0.elapsed();
            st.ready.insert(step, result);
            drop(st);
            self.ready_cv.notify_all();
        }
    }
}

/// Batches for training or evaluation, prepared ahead on worker threads.
/// Iterate it (`for batch in pipeline { let batch = batch?; … }`) or call
/// [`next_batch`](Self::next_batch). Dropping it stops and joins the
/// threads.
pub struct Pipeline {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// Used when `threads == 0`.
    local: Option<Augmenter>,
    stats: PipelineStats,
}

impl Pipeline {
    /// Checks the config against the dataset and starts the threads.
    pub fn new(dataset: Arc<Dataset>, config: PipelineConfig) -> Result<Pipeline> {
        let plan = Plan::new(&dataset, &config)?;
        let local = if config.threads == 0 {
            Some(Augmenter::new(
                &config.augment,
                dataset.height,
                dataset.width,
                dataset.channels,
            )?)
        } else {
            None
        };
        let start = config.start_step.min(plan.end);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_job: start,
                consumer: start,
                ready: BTreeMap::new(),
                shutdown: false,
                build_time: Duration::ZERO,
            }),
            dataset,
            plan,
            ready_cv: Condvar::new(),
            space_cv: Condvar::new(),
            orders: Mutex::new(Vec::new()),
            config,
        });
        let mut pipeline = Pipeline {
            shared: shared.clone(),
            threads: Vec::new(),
            local,
            stats: PipelineStats::default(),
        };
        for k in 0..shared.config.threads {
            let s = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("psflow-data-{k}"))
                .spawn(move || s.run_thread())
                .map_err(|e| DataError::Stopped(format!("cannot start a data thread: {e}")))?;
            pipeline.threads.push(handle);
        }
        Ok(pipeline)
    }

    pub fn config(&self) -> &PipelineConfig {
        &self.shared.config
    }

    pub fn dataset(&self) -> &Arc<Dataset> {
        &self.shared.dataset
    }

    /// Steps in one epoch of this shard.
    pub fn steps_per_epoch(&self) -> u64 {
        self.shared.plan.steps_per_epoch
    }

    /// Examples one epoch of this shard covers (before dropping a partial
    /// batch).
    pub fn examples_per_epoch(&self) -> usize {
        self.shared.plan.per_epoch
    }

    /// All steps, from 0, when `epochs` is set (`start_step` not
    /// subtracted); `None` when repeating forever.
    pub fn total_steps(&self) -> Option<u64> {
        self.shared.config.epochs.map(|_| self.shared.plan.end)
    }

    /// `[batch_size, height, width, channels]` of full image batches.
    pub fn batch_shape(&self) -> [usize; 4] {
        let d = &self.shared.dataset;
        let (h, w, c) = self
            .shared
            .config
            .augment
            .output_shape(d.height, d.width, d.channels);
        [self.shared.config.batch_size, h, w, c]
    }

    /// The step the next batch will have.
    pub fn next_step(&self) -> u64 {
        lock(&self.shared.state).consumer
    }

    /// The epoch of the next batch.
    pub fn epoch(&self) -> u64 {
        self.next_step() / self.shared.plan.steps_per_epoch
    }

    pub fn stats(&self) -> PipelineStats {
        PipelineStats {
            build_time: self.stats.build_time + lock(&self.shared.state).build_time,
            ..self.stats.clone()
        }
    }

    /// The next batch in step order; `Ok(None)` after the last epoch.
    pub fn next_batch(&mut self) -> Result<Option<Batch>> {
        let shared = &*self.shared;
        if let Some(aug) = self.local.as_mut() {
            let mut st = lock(&shared.state);
            if st.consumer >= shared.plan.end {
                return Ok(None);
            }
            let step = st.consumer;
            st.consumer += 1;
            st.next_job = st.consumer;
            drop(st);
            let t0 = Instant::now();
            let b = shared.build(aug, step);
            self.stats.build_time += t0.elapsed();
            self.stats.delivered += 1;
            return b.map(Some);
        }
        let mut st = lock(&shared.state);
        if st.consumer >= shared.plan.end {
            return Ok(None);
        }
        let step = st.consumer;
        if !st.ready.contains_key(&step) {
            self.stats.waited += 1;
            let t0 = Instant::now();
            while !st.ready.contains_key(&step) {
                st = shared.ready_cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            self.stats.wait_time += t0.elapsed();
        }
        let result = st.ready.remove(&step).expect("checked above");
        st.consumer += 1;
        drop(st);
        shared.space_cv.notify_all();
        self.stats.delivered += 1;
        result.map(Some)
    }
}

impl Iterator for Pipeline {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        self.next_batch().transpose()
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        lock(&self.shared.state).shutdown = true;
        self.shared.space_cv.notify_all();
        self.shared.ready_cv.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
