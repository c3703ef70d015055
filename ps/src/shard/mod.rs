//! A shard: variables, optimizer slots and the rules that turn pushes into
//! updates. A pure state machine, with no I/O: the gRPC service wraps it.
//!
//! The version counts applied steps: sync mode bumps it once per
//! aggregated step, async and bounded modes once per (complete) push.
//! Learning rates come from the schedule at the version being updated
//! (TF's global step before its increment).

mod aggregate;
pub mod optim;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use psflow_kernels::{DType, Tensor};
use psflow_proto::ps::{PushOutcome, TensorRole};

use crate::config::{Mode, ShardConfig};
use crate::wire::Received;
use crate::{Error, Result};
use aggregate::{Acc, Step};
use optim::AdamPowers;
use psflow_graph::train::ema;
use psflow_graph::train::optimizer::Optimizer;
use rayon::prelude::*;

/// One variable and its optimizer slots (none for non-float32 variables,
/// which can be assigned but not trained).
struct Variable {
    value: Tensor,
    slots: Vec<Vec<f32>>,
    /// The moving average of a float32 variable when the shard keeps
    /// them, starting at the initial value.
    average: Option<Vec<f32>>,
    /// Whether gradients were applied to it (only trained variables'
    /// averages are updated).
    trained: bool,
}

impl Variable {
    /// Applies `grad` with `optimizer` at learning rate `lr`.
    fn update(
        &mut self,
        optimizer: &Optimizer,
        name: &str,
        grad: &[f32],
        lr: f32,
        adam: Option<AdamPowers>,
    ) -> Result<()> {
        self.trained = true;
        optim::apply(
            optimizer,
            name,
            &mut self.value,
            &mut self.slots,
            grad,
            lr,
            adam,
        )
    }
}

/// One worker's gradients and assigned values for one step.
#[derive(Debug, Clone)]
pub struct Push {
    pub worker: u32,
    /// The version the gradients were computed on (sync: the step).
    pub base_version: u64,
    /// More pushes for this step follow from this worker.
    pub partial: bool,
    pub tensors: Vec<Received>,
}

/// What became of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReply {
    pub outcome: PushOutcome,
    /// The shard's version after the push.
    pub version: u64,
    /// Why it was dropped (empty otherwise).
    pub message: String,
}

/// Counters for Stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub pushes_accepted: u64,
    pub pushes_dropped_late: u64,
    pub pushes_dropped_stale: u64,
    pub updates_applied: u64,
}

/// Size of one variable, for Stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariableInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: u64,
    pub slot_bytes: u64,
}

/// Told about a sync step's new values while the step is applied, so that
/// pulls waiting for its version can send each variable as soon as it has
/// its new value instead of after the whole step.
pub trait StepObserver: Sync {
    /// The step that makes `version` begins.
    fn begin(&self, version: u64);
    /// `name` has its value of the version being made (called from the
    /// kernel threads, in parallel).
    fn updated(&self, name: &str, value: &Tensor);
}

/// An observer that does nothing.
pub struct NoObserver;

impl StepObserver for NoObserver {
    fn begin(&self, _: u64) {}
    fn updated(&self, _: &str, _: &Tensor) {}
}

pub struct Shard {
    config: ShardConfig,
    version: u64,
    vars: BTreeMap<String, Variable>,
    step: Option<Step>,
    adam: Option<AdamPowers>,
    counters: Counters,
    /// Where each variable comes in the order workers pull them (set by
    /// [`Shard::set_pull_order`]): a sync step updates them in that order,
    /// so the first ones a worker's next step needs are ready first.
    pull_rank: HashMap<String, usize>,
    /// The list `pull_rank` was computed from.
    pull_order: Arc<Vec<String>>,
    /// The variables' names, shared with the values of each sync step
    /// (`crate::fresh`).
    names: Arc<HashSet<String>>,
}

impl Shard {
    /// A shard holding `values`, with fresh optimizer slots.
    pub fn new(config: ShardConfig, values: Vec<(String, Tensor)>) -> Result<Shard> {
        config.validate()?;
        let mut vars = BTreeMap::new();
        for (name, value) in values {
            let (slots, average) = if value.dtype() == DType::F32 {
                let average = config
                    .moving_average_decay
                    .map(|_| value.f32s("ps init").expect("float32").to_vec());
                (optim::new_slots(&config.optimizer, value.len()), average)
            } else {
                (vec![], None)
            };
            let var = Variable {
                value,
                slots,
                average,
                trained: false,
            };
            if vars.insert(name.clone(), var).is_some() {
                return Err(Error::Invalid(format!(
                    "variable `{name}` is given twice in Init"
                )));
            }
        }
        Ok(Shard {
            version: config.version,
            adam: AdamPowers::new(&config.optimizer),
            config,
            step: None,
            counters: Counters::default(),
            pull_rank: HashMap::new(),
            pull_order: Arc::default(),
            names: Arc::new(vars.keys().cloned().collect()),
            vars,
        })
    }

    pub fn config(&self) -> &ShardConfig {
        &self.config
    }

    pub fn job_id(&self) -> &str {
        &self.config.job_id
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Sync mode: workers that finished the open step.
    pub fn step_workers_done(&self) -> u32 {
        self.step.as_ref().map_or(0, |s| s.done.len() as u32)
    }

    /// A variable's current value.
    pub fn value(&self, name: &str) -> Option<&Tensor> {
        self.vars.get(name).map(|v| &v.value)
    }

    /// The names of the shard's variables.
    pub fn variable_names(&self) -> &Arc<HashSet<String>> {
        &self.names
    }

    /// Makes sync steps update the variables in the order of `names` (a
    /// pull's), those not named last. The ranks are computed again only
    /// when `names` is another list than the last one given.
    pub fn set_pull_order(&mut self, names: Arc<Vec<String>>) {
        if Arc::ptr_eq(&names, &self.pull_order) {
            return;
        }
        self.pull_rank = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        self.pull_order = names;
    }

    /// A variable's optimizer slots, named as TF1 names them.
    pub fn slots(&self, name: &str) -> Option<Vec<(String, &[f32])>> {
        let v = self.vars.get(name)?;
        let names = optim::slot_names(&self.config.optimizer, name);
        Some(
            names
                .into_iter()
                .zip(v.slots.iter().map(|s| s.as_slice()))
                .collect(),
        )
    }

    pub fn variables(&self) -> Vec<VariableInfo> {
        self.vars
            .iter()
            .map(|(name, v)| VariableInfo {
                name: name.clone(),
                dtype: v.value.dtype(),
                shape: v.value.shape().to_vec(),
                bytes: v.value.nbytes() as u64,
                slot_bytes: v.slots.iter().map(|s| s.len() as u64 * 4).sum::<u64>()
                    + v.average.as_ref().map_or(0, |a| a.len() as u64 * 4),
            })
            .collect()
    }

    /// The moving average of a trained variable (None when the shard keeps
    /// no averages or `name` is not a trained float32 variable).
    pub fn average(&self, name: &str) -> Option<Tensor> {
        let v = self.vars.get(name)?;
        let a = v.average.as_ref().filter(|_| v.trained)?;
        Some(Tensor::new(v.value.shape().to_vec(), a.clone()).expect("same length"))
    }

    /// The values of `names` (all variables, by name, when empty); `V` +
    /// [`ema::SUFFIX`] names `V`'s moving average. Variables share their
    /// buffers with the shard: a later update copies on write.
    pub fn pull(&self, names: &[String]) -> Result<Vec<(String, Tensor)>> {
        if names.is_empty() {
            return Ok(self
                .vars
                .iter()
                .map(|(n, v)| (n.clone(), v.value.clone()))
                .collect());
        }
        names
            .iter()
            .map(|n| match self.vars.get(n) {
                Some(v) => Ok((n.clone(), v.value.clone())),
                None => match n.strip_suffix(ema::SUFFIX).and_then(|v| self.average(v)) {
                    Some(a) => Ok((n.clone(), a)),
                    None => Err(Error::UnknownVariable { name: n.clone() }),
                },
            })
            .collect()
    }

    /// Sync mode: changes the number of workers a step waits for; applies
    /// the open step when it now has enough. Returns whether it did.
    pub fn set_workers(&mut self, workers: u32) -> Result<bool> {
        let Mode::Sync { backup, .. } = self.config.mode else {
            return Err(Error::Precondition(format!(
                "job `{}` runs in {:?} mode: only sync mode waits for a number of workers",
                self.config.job_id, self.config.mode
            )));
        };
        if workers == 0 {
            return Err(Error::Invalid(
                "the number of workers must be at least 1".into(),
            ));
        }
        self.config.mode = Mode::Sync { workers, backup };
        self.maybe_apply_step(&NoObserver)
    }

    /// Applies, accumulates or drops one push. A push that is refused
    /// (unknown variable, wrong shape or dtype, a duplicate) changes
    /// nothing.
    pub fn push(&mut self, push: Push) -> Result<PushReply> {
        self.push_observed(push, &NoObserver)
    }

    /// [`Shard::push`], telling `observer` about a sync step it applies.
    pub fn push_observed(&mut self, push: Push, observer: &dyn StepObserver) -> Result<PushReply> {
        self.check(&push)?;
        match self.config.mode {
            Mode::Sync { .. } => self.push_sync(push, observer),
            Mode::Async => self.push_async(push),
            Mode::Bounded { staleness } => {
                let lag = self.version - push.base_version;
                if lag > staleness {
                    self.counters.pushes_dropped_stale += 1;
                    return Ok(self.reply(
                        PushOutcome::DroppedStale,
                        format!(
                            "worker {}: gradients computed on version {} are {lag} versions \
                             old, more than the bound of {staleness}; pull and recompute",
                            push.worker, push.base_version
                        ),
                    ));
                }
                self.push_async(push)
            }
        }
    }

    fn reply(&self, outcome: PushOutcome, message: String) -> PushReply {
        PushReply {
            outcome,
            version: self.version,
            message,
        }
    }

    /// Everything that can be checked without changing state.
    fn check(&self, push: &Push) -> Result<()> {
        if push.base_version > self.version {
            return Err(Error::Precondition(format!(
                "worker {} pushed for version {} but the shard is at version {}: \
                 pull version {} before computing it",
                push.worker, push.base_version, self.version, push.base_version
            )));
        }
        let sync = matches!(self.config.mode, Mode::Sync { .. });
        let mut seen = BTreeSet::new();
        for t in &push.tensors {
            let assign = t.role == TensorRole::Assign;
            if !seen.insert((t.name.as_str(), assign)) {
                return Err(Error::Invalid(format!(
                    "the push holds {} `{}` twice",
                    if assign {
                        "a value for"
                    } else {
                        "a gradient of"
                    },
                    t.name
                )));
            }
            let var = self
                .vars
                .get(&t.name)
                .ok_or_else(|| Error::UnknownVariable {
                    name: t.name.clone(),
                })?;
            if t.value.shape() != var.value.shape() {
                return Err(Error::ShapeMismatch {
                    name: t.name.clone(),
                    what: if assign { "assigned value" } else { "gradient" },
                    expected: var.value.shape().to_vec(),
                    got: t.value.shape().to_vec(),
                });
            }
            let (vd, td) = (var.value.dtype(), t.value.dtype());
            let dtype_err = |detail: String| {
                Err(Error::DType {
                    name: t.name.clone(),
                    detail,
                })
            };
            if !assign && (vd != DType::F32 || td != DType::F32) {
                return dtype_err(format!(
                    "gradients must be float32 for a float32 variable; the variable is {vd}, \
                     the gradient {td}"
                ));
            }
            if assign && vd != td {
                return dtype_err(format!("the variable is {vd}, the assigned value {td}"));
            }
            if assign && sync && vd != DType::F32 {
                return dtype_err(format!(
                    "sync mode averages assigned values over the workers, which needs \
                     float32; the variable is {vd}"
                ));
            }
        }
        if let (true, Some(step)) = (sync, &self.step) {
            if step.step == push.base_version {
                let names: Vec<&str> = push.tensors.iter().map(|t| t.name.as_str()).collect();
                step.check(push.worker, &names)?;
            }
        }
        Ok(())
    }

    fn push_sync(&mut self, push: Push, observer: &dyn StepObserver) -> Result<PushReply> {
        if push.base_version < self.version {
            self.counters.pushes_dropped_late += 1;
            return Ok(self.reply(
                PushOutcome::DroppedLate,
                format!(
                    "worker {}: step {} was applied without it (the shard is at version {})",
                    push.worker, push.base_version, self.version
                ),
            ));
        }
        let version = self.version;
        let step = self.step.get_or_insert_with(|| Step::new(version));
        for t in push.tensors {
            step.add(push.worker, t.name, t.value, t.role == TensorRole::Assign)?;
        }
        if !push.partial {
            step.done.insert(push.worker);
        }
        self.counters.pushes_accepted += 1;
        let outcome = if self.maybe_apply_step(observer)? {
            PushOutcome::Applied
        } else {
            PushOutcome::Accepted
        };
        Ok(self.reply(outcome, String::new()))
    }

    /// Applies the open step if enough workers finished it.
    fn maybe_apply_step(&mut self, observer: &dyn StepObserver) -> Result<bool> {
        let Mode::Sync { workers, backup } = self.config.mode else {
            return Ok(false);
        };
        let ready = self
            .step
            .as_ref()
            .is_some_and(|s| s.done.len() as u32 >= Mode::required(workers, backup));
        if !ready {
            return Ok(false);
        }
        let step = self.step.take().expect("checked above");
        let lr = self.config.schedule.at(step.step);
        observer.begin(self.version + 1);
        self.apply_step(step.grads, step.assigns, lr, observer)?;
        self.finish_step();
        Ok(true)
    }

    fn push_async(&mut self, push: Push) -> Result<PushReply> {
        let lr = self.config.schedule.at(self.version);
        for t in push.tensors {
            if t.role == TensorRole::Assign {
                self.vars.get_mut(&t.name).expect("checked").value = t.value;
            } else {
                let grad = t.value.f32s("ps push").expect("checked float32");
                self.apply_gradient(&t.name, grad, lr)?;
            }
        }
        self.counters.pushes_accepted += 1;
        if !push.partial {
            self.finish_step();
        }
        Ok(self.reply(PushOutcome::Applied, String::new()))
    }

    /// Applies the step's averaged gradients, then its averaged assigned
    /// values, variable by variable in the pull order, the variables in
    /// parallel (each one's update is itself split over the kernel threads
    /// when it is large): most of a model's ~140 variables are too small
    /// to split. Each variable is given to `observer` once it is done.
    fn apply_step(
        &mut self,
        mut grads: BTreeMap<String, Acc>,
        mut assigns: BTreeMap<String, Acc>,
        lr: f32,
        observer: &dyn StepObserver,
    ) -> Result<()> {
        let (optimizer, adam) = (self.config.optimizer, self.adam);
        let rank = &self.pull_rank;
        // Every pushed name is a variable (checked on push).
        let mut work: Vec<_> = self
            .vars
            .iter_mut()
            .filter_map(|(name, var)| {
                let (g, a) = (grads.remove(name), assigns.remove(name));
                (g.is_some() || a.is_some()).then_some((name, var, g, a))
            })
            .collect();
        work.sort_by_key(|(name, ..)| rank.get(*name).copied().unwrap_or(usize::MAX));
        work.into_par_iter()
            .try_for_each(|(name, var, grad, assign)| {
                if let Some(g) = grad {
                    var.update(&optimizer, name, &g.into_mean(), lr, adam)?;
                }
                if let Some(a) = assign {
                    let shape = var.value.shape().to_vec();
                    var.value = Tensor::new(shape, a.into_mean()).expect("checked on push");
                }
                observer.updated(name, &var.value);
                Ok(())
            })
    }

    fn apply_gradient(&mut self, name: &str, grad: &[f32], lr: f32) -> Result<()> {
        let var = self.vars.get_mut(name).expect("checked on push");
        var.update(&self.config.optimizer, name, grad, lr, self.adam)
    }

    fn finish_step(&mut self) {
        if let Some(p) = self.adam.as_mut() {
            p.advance(&self.config.optimizer);
        }
        self.version += 1;
        self.counters.updates_applied += 1;
        if let Some(decay) = self.config.moving_average_decay {
            // As the single-process graph: after the step's updates, with
            // the new global step as num_updates.
            let rate = 1.0 - ema::decay_at(decay, self.version);
            let trained = self.vars.par_iter_mut().filter(|(_, v)| v.trained);
            trained.for_each(|(_, v)| {
                let (Some(avg), Ok(x)) = (v.average.as_mut(), v.value.f32s("ps average")) else {
                    return;
                };
                for (s, x) in avg.iter_mut().zip(x) {
                    *s -= (*s - x) * rate;
                }
            });
        }
    }
}

#[cfg(test)]
mod tests;
