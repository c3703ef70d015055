//! Sync-mode aggregation: the open step's per-variable sums of gradients
//! (and of assigned values), and which workers have finished it.
//!
//! Memory stays bounded: there is at most one open step per shard (a push
//! for a later step is refused), and it holds one accumulator per variable
//! pushed in it — the first contribution's own buffer, to which later ones
//! are added. Sums are taken in arrival order, so with three or more
//! workers the average may differ in the last bit between runs; with two it
//! is exact ((a + b) = (b + a)).

use std::collections::{BTreeMap, BTreeSet};

use psflow_kernels::Tensor;

use crate::{Error, Result};

/// A running sum and how many tensors went into it.
pub struct Acc {
    sum: Vec<f32>,
    count: u32,
}

impl Acc {
    fn new(value: Tensor) -> Result<Acc> {
        Ok(Acc {
            sum: into_f32(value)?,
            count: 1,
        })
    }

    fn add(&mut self, value: &Tensor) -> Result<()> {
        let x = value
            .f32s("ps accumulate")
            .map_err(|e| Error::Invalid(e.to_string()))?;
        self.sum.iter_mut().zip(x).for_each(|(s, &v)| *s += v);
        self.count += 1;
        Ok(())
    }

    /// The average: `sum / count`, in place.
    pub fn into_mean(mut self) -> Vec<f32> {
        if self.count > 1 {
            let n = self.count as f32;
            self.sum.iter_mut().for_each(|s| *s /= n);
        }
        self.sum
    }
}

fn into_f32(t: Tensor) -> Result<Vec<f32>> {
    t.into_vec::<f32>("ps accumulate")
        .map_err(|e| Error::Invalid(e.to_string()))
}

/// The open step of a sync shard.
pub struct Step {
    pub step: u64,
    /// Workers whose contribution to the step is complete.
    pub done: BTreeSet<u32>,
    /// Names each worker pushed in this step (a worker may push a step in
    /// several partial pushes, each variable once).
    pushed: BTreeMap<u32, BTreeSet<String>>,
    pub grads: BTreeMap<String, Acc>,
    pub assigns: BTreeMap<String, Acc>,
}

impl Step {
    pub fn new(step: u64) -> Step {
        Step {
            step,
            done: BTreeSet::new(),
            pushed: BTreeMap::new(),
            grads: BTreeMap::new(),
            assigns: BTreeMap::new(),
        }
    }

    /// Refuses a push from `worker` that finished the step or pushed one
    /// of `names` already in it.
    pub fn check(&self, worker: u32, names: &[&str]) -> Result<()> {
        if self.done.contains(&worker) {
            return Err(Error::Precondition(format!(
                "worker {worker} already pushed step {} (a push with partial=false ends a \
                 worker's step)",
                self.step
            )));
        }
        if let Some(seen) = self.pushed.get(&worker) {
            if let Some(n) = names.iter().find(|n| seen.contains(**n)) {
                return Err(Error::Precondition(format!(
                    "worker {worker} already pushed `{n}` for step {}",
                    self.step
                )));
            }
        }
        Ok(())
    }

    /// Adds a checked contribution.
    pub fn add(&mut self, worker: u32, name: String, value: Tensor, assign: bool) -> Result<()> {
        let accs = if assign {
            &mut self.assigns
        } else {
            &mut self.grads
        };
        match accs.get_mut(&name) {
            Some(acc) => acc.add(&value)?,
            None => {
                accs.insert(name.clone(), Acc::new(value)?);
            }
        }
        self.pushed.entry(worker).or_default().insert(name);
        Ok(())
    }
}
