//! A sync step's new values while the step is applied: the shard hands
//! each variable over as soon as it is updated ([`StepObserver`]), and a
//! pull waiting for that version sends it at once instead of after the
//! whole step. The first layers' variables, which the worker's next step
//! needs first, are updated first (the shard follows the pull order), so
//! the worker's forward pass starts while the optimizer is still updating
//! the later layers.
//!
//! A [`FreshStep`] holds the values of one version, shared with the shard
//! (no copy). It is replaced when the next step begins, so the shard's
//! next update of a variable finds its buffer unshared and updates it in
//! place.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use psflow_kernels::Tensor;
use tokio::sync::watch;

use crate::shard::StepObserver;

#[derive(Default)]
struct State {
    values: HashMap<String, Tensor>,
    /// Set when the step is over: every variable is in `values`, or the
    /// step failed (the reason).
    end: Option<Result<(), String>>,
}

/// The values of the version one sync step makes, as they are made.
pub struct FreshStep {
    job: String,
    /// The shard's variables (what the step ends with).
    variables: Arc<HashSet<String>>,
    version: u64,
    state: Mutex<State>,
    /// Bumped on every change of `state`.
    changed: watch::Sender<u64>,
}

/// What a pull gets from a [`FreshStep`] when it asks for its next names.
pub enum Next {
    /// The values of the next names asked for, in order (at least one).
    Values(Vec<(String, Tensor)>),
    /// Nothing new yet.
    Wait,
    /// The step failed; nothing more will come.
    Failed(String),
}

impl FreshStep {
    fn new(job: String, variables: Arc<HashSet<String>>, version: u64) -> FreshStep {
        FreshStep {
            job,
            variables,
            version,
            state: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether this step is job `job`'s and will have every one of `names`.
    pub fn serves(&self, job: &str, names: &[String]) -> bool {
        self.job == job && names.iter().all(|n| self.variables.contains(n))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn change(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock());
        self.changed.send_modify(|n| *n += 1);
    }

    /// Adds one variable's new value.
    pub fn publish(&self, name: &str, value: &Tensor) {
        self.change(|s| {
            s.values.insert(name.to_string(), value.clone());
        });
    }

    /// Ends the step: `rest` are the values of every variable (those not
    /// updated by the step too), or why the step failed.
    pub fn end(&self, rest: Result<Vec<(String, Tensor)>, String>) {
        self.change(|s| match rest {
            Ok(values) => {
                s.values.extend(values);
                s.end = Some(Ok(()));
            }
            Err(e) => s.end = Some(Err(e)),
        });
    }

    /// A receiver that sees every change from now on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The values of `names[from..]` that are ready, in order, up to the
    /// first that is not.
    pub fn next(&self, names: &[String], from: usize) -> Next {
        let s = self.lock();
        let ready: Vec<_> = names[from..]
            .iter()
            .map_while(|n| s.values.get(n).map(|t| (n.clone(), t.clone())))
            .collect();
        match (&s.end, ready.is_empty()) {
            (_, false) => Next::Values(ready),
            (Some(Err(e)), true) => Next::Failed(e.clone()),
            (Some(Ok(())), true) => {
                Next::Failed(format!("variable `{}` is not on this shard", names[from]))
            }
            (None, true) => Next::Wait,
        }
    }
}

/// The current [`FreshStep`] of a shard, for pulls to find.
#[derive(Default)]
pub struct Current(Mutex<Option<Arc<FreshStep>>>);

impl Current {
    /// The step making `version`, if that is the one being applied or the
    /// last one applied.
    pub fn get(&self, version: u64) -> Option<Arc<FreshStep>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .filter(|f| f.version == version)
    }

    /// Forgets the current step (a new Init replaced the shard).
    pub fn clear(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn replace(&self, fresh: Arc<FreshStep>) {
        // The old step's values are dropped here, before the new step
        // updates the variables they share.
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(fresh);
    }
}

/// The [`StepObserver`] of one push: if the push applies a step, it makes
/// that step's [`FreshStep`] current and fills it. Whoever calls the shard
/// must [`Publisher::finish`] it with the outcome; dropped unfinished (a
/// panic), it fails the step for the pulls waiting on it.
pub struct Publisher<'a> {
    current: &'a Current,
    job: String,
    variables: Arc<HashSet<String>>,
    /// Called when a step begins, with its version.
    on_begin: Box<dyn Fn(u64) + Sync + 'a>,
    fresh: OnceLock<Arc<FreshStep>>,
    finished: bool,
}

impl<'a> Publisher<'a> {
    /// A publisher for a push to job `job`'s shard, whose variables are
    /// `variables`.
    pub fn new(
        current: &'a Current,
        job: &str,
        variables: Arc<HashSet<String>>,
        on_begin: impl Fn(u64) + Sync + 'a,
    ) -> Publisher<'a> {
        Publisher {
            current,
            job: job.to_string(),
            variables,
            on_begin: Box::new(on_begin),
            fresh: OnceLock::new(),
            finished: false,
        }
    }

    /// Ends the step begun, if any: with every variable's value, or the
    /// push's error.
    pub fn finish(mut self, all: impl FnOnce() -> Result<Vec<(String, Tensor)>, String>) {
        self.finished = true;
        if let Some(f) = self.fresh.get() {
            f.end(all());
        }
    }
}

impl StepObserver for Publisher<'_> {
    fn begin(&self, version: u64) {
        let fresh = Arc::new(FreshStep::new(
            self.job.clone(),
            self.variables.clone(),
            version,
        ));
        if self.fresh.set(fresh.clone()).is_ok() {
            self.current.replace(fresh);
            (self.on_begin)(version);
        }
    }

    fn updated(&self, name: &str, value: &Tensor) {
        if let Some(f) = self.fresh.get() {
            f.publish(name, value);
        }
    }
}

impl Drop for Publisher<'_> {
    fn drop(&mut self) {
        if let (false, Some(f)) = (self.finished, self.fresh.get()) {
            f.end(Err("applying the step stopped before it ended".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: f32) -> Tensor {
        Tensor::new(vec![1], vec![v]).unwrap()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn publisher<'a>(current: &'a Current, on_begin: impl Fn(u64) + Sync + 'a) -> Publisher<'a> {
        let vars = names(&["a", "b", "c"]).into_iter().collect();
        Publisher::new(current, "job", Arc::new(vars), on_begin)
    }

    #[test]
    fn values_come_in_the_order_asked_as_they_are_ready() {
        let current = Current::default();
        let p = publisher(&current, |_| {});
        p.begin(7);
        let fresh = current.get(7).expect("current");
        assert!(current.get(6).is_none());
        assert!(fresh.serves("job", &names(&["c", "a"])));
        assert!(!fresh.serves("job", &names(&["a", "d"])));
        assert!(!fresh.serves("other", &names(&["a"])));
        let want = names(&["a", "b", "c"]);
        assert!(matches!(fresh.next(&want, 0), Next::Wait));
        p.updated("b", &t(2.0));
        // `a` is not ready, so `b` waits behind it.
        assert!(matches!(fresh.next(&want, 0), Next::Wait));
        p.updated("a", &t(1.0));
        let Next::Values(v) = fresh.next(&want, 0) else {
            panic!("a and b are ready")
        };
        assert_eq!(
            v.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        p.finish(|| Ok(vec![("c".into(), t(3.0))]));
        let Next::Values(v) = fresh.next(&want, 2) else {
            panic!("c came with the end")
        };
        assert_eq!(v[0].1, t(3.0));
        assert!(matches!(fresh.next(&names(&["zz"]), 0), Next::Failed(m) if m.contains("`zz`")));
    }

    #[test]
    fn a_step_dropped_unfinished_fails_its_pulls() {
        let current = Current::default();
        {
            let p = publisher(&current, |_| {});
            p.begin(3);
        }
        let fresh = current.get(3).unwrap();
        assert!(matches!(fresh.next(&names(&["a"]), 0), Next::Failed(m) if m.contains("stopped")));
    }

    #[test]
    fn a_push_that_applies_nothing_begins_nothing() {
        let current = Current::default();
        publisher(&current, |_| panic!("no step began")).finish(|| unreachable!());
        assert!(current.get(1).is_none());
    }
}
