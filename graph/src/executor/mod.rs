//! The executor: a [`Session`] validates a graph once, then runs it for
//! given feeds, fetches and targets. Each distinct signature gets a pruned
//! [`plan::Plan`], cached. Nodes whose inputs are ready run in parallel on
//! the rayon pool; a tensor is freed as soon as its last consumer has read
//! it (a consumer that takes the last reference may reuse its buffer).
//! [`Session::run_profiled`] also times every kernel ([`Profile`]).

mod feed;
mod plan;
mod profile;
mod rendezvous;
mod resources;
mod run;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use psflow_kernels::{DType, Tensor};

pub use feed::cast_lossless;
use plan::Plan;
pub use profile::{NodeTiming, OpTotal, Profile, Schedule};
pub use rendezvous::{LocalRendezvous, RecvDone, Rendezvous, RendezvousKey, DEFAULT_RECV_TIMEOUT};
pub use resources::{ResourceStore, VarSlot};

use crate::ir::{Graph, TensorName};
use crate::registry::{OpKernel, Registry, TensorInfo};
use crate::shape::Shape;
use crate::validate::validate;
use crate::{Error, Result};

/// A placeholder of the graph: what a run must feed.
#[derive(Debug, Clone, PartialEq)]
pub struct PlaceholderInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Shape,
    /// PlaceholderWithDefault: feeding is optional.
    pub has_default: bool,
}

type PlanKey = (Vec<TensorName>, Vec<TensorName>, Vec<String>);

pub struct Session {
    graph: Arc<Graph>,
    pub(crate) kernels: Vec<Box<dyn OpKernel>>,
    order: Vec<usize>,
    pub(crate) infos: Vec<Vec<TensorInfo>>,
    resources: Arc<ResourceStore>,
    plans: Mutex<HashMap<PlanKey, Arc<Plan>>>,
    rendezvous: Option<Arc<dyn Rendezvous>>,
    recv_timeout: Duration,
}

impl Session {
    /// Validates `graph` against the standard registry.
    pub fn new(graph: Graph) -> Result<Session> {
        Session::with_registry(graph, &Registry::standard())
    }

    pub fn with_registry(graph: Graph, registry: &Registry) -> Result<Session> {
        Session::with_resources(graph, registry, Arc::new(ResourceStore::new()))
    }

    /// A session whose stateful ops use `resources` (shared with others).
    pub fn with_resources(
        graph: Graph,
        registry: &Registry,
        resources: Arc<ResourceStore>,
    ) -> Result<Session> {
        let v = validate(&graph, registry)?;
        Ok(Session {
            graph: Arc::new(graph),
            kernels: v.kernels,
            order: v.order,
            infos: v.infos,
            resources,
            plans: Mutex::new(HashMap::new()),
            rendezvous: None,
            recv_timeout: DEFAULT_RECV_TIMEOUT,
        })
    }

    /// This session's `_Send`s and `_Recv`s meet their peers in
    /// `rendezvous` (shared with the sessions of the other partitions).
    pub fn with_rendezvous(mut self, rendezvous: Arc<dyn Rendezvous>) -> Session {
        self.rendezvous = Some(rendezvous);
        self
    }

    /// How long a run waits for one `_Recv` before failing with an error
    /// naming its key (default [`DEFAULT_RECV_TIMEOUT`]).
    pub fn with_recv_timeout(mut self, timeout: Duration) -> Session {
        self.recv_timeout = timeout;
        self
    }

    pub fn rendezvous(&self) -> Option<&Arc<dyn Rendezvous>> {
        self.rendezvous.as_ref()
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn resources(&self) -> &Arc<ResourceStore> {
        &self.resources
    }

    /// What static inference knows of a tensor (dtype, partial shape).
    pub fn tensor_info(&self, t: &TensorName) -> Option<&TensorInfo> {
        self.infos.get(self.graph.id(&t.node)?)?.get(t.port)
    }

    /// The graph's placeholders, in graph order.
    pub fn placeholders(&self) -> Vec<PlaceholderInfo> {
        self.graph
            .nodes()
            .iter()
            .enumerate()
            .filter(|(_, n)| n.op == "Placeholder" || n.op == "PlaceholderWithDefault")
            .map(|(id, n)| PlaceholderInfo {
                name: n.name.clone(),
                dtype: self.infos[id][0].dtype.unwrap_or(DType::F32),
                shape: self.infos[id][0].shape.clone(),
                has_default: n.op == "PlaceholderWithDefault",
            })
            .collect()
    }

    /// Runs the graph: feeds replace tensors (usually placeholders),
    /// `fetches` are returned in order, `targets` are nodes run for their
    /// effects. Only what these need runs.
    pub fn run(
        &self,
        feeds: &[(TensorName, Tensor)],
        fetches: &[TensorName],
        targets: &[String],
    ) -> Result<Vec<Tensor>> {
        self.run_with(feeds, fetches, targets, None, None)
    }

    /// [`run`](Self::run) with `rendezvous` in place of the session's for
    /// this run only: how one session runs concurrent steps whose
    /// transfers must not mix (TensorFlow gives each step its own
    /// rendezvous, keyed by step id).
    pub fn run_in(
        &self,
        rendezvous: &dyn Rendezvous,
        feeds: &[(TensorName, Tensor)],
        fetches: &[TensorName],
        targets: &[String],
    ) -> Result<Vec<Tensor>> {
        self.run_with(feeds, fetches, targets, None, Some(rendezvous))
    }

    /// [`run`](Self::run), timing every kernel that computes: the
    /// outputs and a [`Profile`] of the run (per node: op, output shapes,
    /// start/end, self time, thread). [`Schedule::Parallel`] schedules as
    /// `run` does; [`Schedule::Serial`] runs one node at a time, in plan
    /// order, so each kernel has every thread to itself and its time is
    /// its own. A plain `run` pays nothing for profiling.
    pub fn run_profiled(
        &self,
        feeds: &[(TensorName, Tensor)],
        fetches: &[TensorName],
        targets: &[String],
        schedule: Schedule,
    ) -> Result<(Vec<Tensor>, Profile)> {
        let origin = Instant::now();
        let mut timings = Vec::new();
        let profiling = Profiling {
            origin,
            timings: &mut timings,
            schedule,
        };
        let out = self.run_with(feeds, fetches, targets, Some(profiling), None)?;
        Ok((
            out,
            Profile {
                wall: origin.elapsed(),
                schedule,
                nodes: timings,
            },
        ))
    }

    fn run_with(
        &self,
        feeds: &[(TensorName, Tensor)],
        fetches: &[TensorName],
        targets: &[String],
        profile: Option<Profiling<'_>>,
        rendezvous: Option<&dyn Rendezvous>,
    ) -> Result<Vec<Tensor>> {
        let mut names: Vec<TensorName> = feeds.iter().map(|(t, _)| t.clone()).collect();
        names.sort();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::DuplicateFeed {
                name: w[0].to_string(),
            });
        }
        let plan = self.plan(names, fetches, targets)?;
        let mut slots: Vec<Option<Tensor>> = vec![None; plan.uses.len()];
        for (name, t) in feeds {
            slots[plan.feed_slots[name]] = Some(self.check_feed(name, t)?);
        }
        let rendezvous = rendezvous.or(self.rendezvous.as_deref());
        run::execute(self, &plan, slots, profile, rendezvous)
    }

    pub(crate) fn plan(
        &self,
        feeds: Vec<TensorName>,
        fetches: &[TensorName],
        targets: &[String],
    ) -> Result<Arc<Plan>> {
        let key = (feeds, fetches.to_vec(), targets.to_vec());
        if let Some(p) = self.plans.lock().expect("plan cache lock").get(&key) {
            return Ok(p.clone());
        }
        let plan = Plan::build(
            &self.graph,
            &self.kernels,
            &self.order,
            &key.0,
            fetches,
            targets,
        )?;
        // A placeholder that must run was not fed.
        if let Some(&id) = plan
            .nodes
            .iter()
            .zip(&plan.skip)
            .find(|&(&id, &skip)| !skip && self.graph.nodes()[id].op == "Placeholder")
            .map(|(id, _)| id)
        {
            let info = &self.infos[id][0];
            return Err(Error::MissingFeed {
                placeholder: self.graph.nodes()[id].name.clone(),
                dtype: info.dtype.map_or("?".into(), |d| d.to_string()),
                shape: info.shape.to_string(),
            });
        }
        let plan = Arc::new(plan);
        self.plans
            .lock()
            .expect("plan cache lock")
            .insert(key, plan.clone());
        Ok(plan)
    }

    /// Checks a fed tensor against what the graph declares: its shape must
    /// fit, its dtype must match or convert without loss.
    pub(crate) fn check_feed(&self, name: &TensorName, t: &Tensor) -> Result<Tensor> {
        let info = self.tensor_info(name).expect("plan checked the feed");
        let node = self.graph.node(&name.node).expect("plan checked the feed");
        let declared = if node.op.starts_with("Placeholder") {
            node.attr_shape_or_unknown("shape")?
        } else {
            info.shape.clone()
        };
        let shown = if name.port == 0 {
            name.node.clone()
        } else {
            name.to_string()
        };
        if !declared.accepts(t.shape()) {
            return Err(Error::FeedShape {
                placeholder: shown,
                expected: declared.to_string(),
                got: t.shape().to_vec(),
            });
        }
        match info.dtype {
            Some(d) if d != t.dtype() => cast_lossless(t, d).map_err(|detail| Error::FeedDType {
                placeholder: shown,
                expected: d,
                got: t.dtype(),
                detail,
            }),
            _ => Ok(t.clone()),
        }
    }

    /// Graph node names that a run of these fetches and targets executes,
    /// in execution order (for inspection and tests).
    pub fn plan_nodes(
        &self,
        feeds: &[TensorName],
        fetches: &[TensorName],
        targets: &[String],
    ) -> Result<Vec<String>> {
        let mut names = feeds.to_vec();
        names.sort();
        names.dedup();
        let plan = Plan::build(
            &self.graph,
            &self.kernels,
            &self.order,
            &names,
            fetches,
            targets,
        )?;
        Ok(plan
            .nodes
            .iter()
            .map(|&id| self.graph.nodes()[id].name.clone())
            .collect())
    }
}

/// What a profiled run records into and how it schedules.
struct Profiling<'t> {
    origin: Instant,
    timings: &'t mut Vec<NodeTiming>,
    schedule: Schedule,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sessions are shared between threads (a worker's step loop, its
    /// service handlers).
    #[test]
    fn session_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Session>();
        check::<ResourceStore>();
    }
}
