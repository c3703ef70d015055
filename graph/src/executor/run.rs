//! One run of a [`Plan`]: nodes whose inputs are ready run on the rayon
//! pool (one continues on the thread that made it ready, the others are
//! spawned), a tensor is freed after its last read.
//!
//! `_Recv` nodes never occupy a pool thread. When one becomes ready the
//! run registers a callback with the rendezvous ([`Rendezvous::recv_async`]);
//! the callback only queues the value (on the sender's thread). Pool
//! threads pick queued values up between nodes; when nothing is left to
//! compute, the rayon scope ends and the calling thread waits for the
//! next arrival (or the earliest deadline), then starts a new scope with
//! what became ready. So any number of partitions can wait on each other
//! on a pool of any size, provided each `Session::run` is called from its
//! own thread (a caller that is itself a pool thread keeps executing other
//! pool work while it waits).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use psflow_kernels::Tensor;

use super::plan::Plan;
use super::profile::Timer;
use super::{NodeTiming, Profiling, Rendezvous, Schedule, Session};
use crate::registry::{check_received, OpContext};
use crate::{Error, Result};

struct RunState {
    slots: Vec<Option<Tensor>>,
    uses_left: Vec<usize>,
    pending: Vec<usize>,
    error: Option<Error>,
    /// Plan nodes finished.
    done: usize,
    /// Receives registered and not yet taken: plan node → (registered at,
    /// the rendezvous ticket once known).
    waiting: HashMap<usize, (Instant, Option<u64>)>,
    /// Kernel timings, when the run is profiled.
    timings: Vec<NodeTiming>,
}

/// Values that arrived for this run's receives, not yet taken.
#[derive(Default)]
struct Arrivals {
    queue: Mutex<Queue>,
    cv: Condvar,
    /// Set when the queue may be non-empty: a cheap check between nodes.
    flag: AtomicBool,
}

#[derive(Default)]
struct Queue {
    items: Vec<(usize, Result<Tensor>)>,
    /// The run's thread sleeps on the condition variable. Only then does an
    /// arrival notify it: a pull delivers ~a hundred tensors a step, and a
    /// notification is a system call even when nobody waits.
    sleeping: bool,
}

impl Arrivals {
    fn push(&self, p: usize, r: Result<Tensor>) {
        let mut q = self.queue.lock().expect("arrivals lock");
        q.items.push((p, r));
        self.flag.store(true, Ordering::Release);
        if q.sleeping {
            q.sleeping = false;
            drop(q);
            self.cv.notify_all();
        }
    }
}

struct Run<'a> {
    session: &'a Session,
    /// Where this run's `_Send`s and `_Recv`s meet their peers.
    rendezvous: Option<&'a dyn Rendezvous>,
    plan: &'a Plan,
    state: Mutex<RunState>,
    arrivals: Arc<Arrivals>,
    /// When the run began; Some only when it is profiled.
    origin: Option<Instant>,
}

/// Runs `plan` with the fed `slots`; returns the fetches in order. A
/// profiled run records every kernel's timing into `profile`.
pub(super) fn execute(
    session: &Session,
    plan: &Plan,
    slots: Vec<Option<Tensor>>,
    profile: Option<Profiling<'_>>,
    rendezvous: Option<&dyn Rendezvous>,
) -> Result<Vec<Tensor>> {
    let (origin, timings, schedule) = match profile {
        Some(p) => (Some(p.origin), Some(p.timings), p.schedule),
        None => (None, None, Schedule::Parallel),
    };
    let run = Run {
        session,
        rendezvous,
        plan,
        state: Mutex::new(RunState {
            slots,
            uses_left: plan.uses.clone(),
            pending: plan.pending.clone(),
            error: None,
            done: 0,
            waiting: HashMap::new(),
            timings: Vec::new(),
        }),
        arrivals: Arc::default(),
        origin,
    };
    let total = plan.nodes.len();
    if schedule == Schedule::Serial {
        // Plan order is topological: every node's inputs are ready. A
        // receive would need the event loop below, so serial runs refuse it.
        for p in 0..total {
            if run.is_recv(p) {
                let node = &session.graph.nodes()[plan.nodes[p]];
                return Err(Error::InvalidNode {
                    node: node.name.clone(),
                    detail: "a serial (profiling) run cannot receive; use Schedule::Parallel"
                        .into(),
                });
            }
            if run.compute(p).is_none() {
                break;
            }
        }
        return finish(session, plan, run, timings);
    }
    let mut ready: Vec<usize> = (0..total).filter(|&p| plan.pending[p] == 0).collect();
    loop {
        let compute = run.sort_ready(ready);
        if !compute.is_empty() {
            rayon::scope(|s| {
                for p in compute {
                    let run = &run;
                    s.spawn(move |s| run.node(s, p));
                }
            });
        }
        {
            let st = run.state.lock().expect("run state lock");
            if st.error.is_some() || st.done == total {
                break;
            }
        }
        ready = run.drain();
        if ready.is_empty() {
            if let Err(e) = run.wait() {
                run.state
                    .lock()
                    .expect("run state lock")
                    .error
                    .get_or_insert(e);
                break;
            }
        }
    }
    finish(session, plan, run, timings)
}

/// The fetches of a finished run (or its error); hands the timings over.
fn finish(
    session: &Session,
    plan: &Plan,
    run: Run<'_>,
    timings: Option<&mut Vec<NodeTiming>>,
) -> Result<Vec<Tensor>> {
    let mut state = run.state.into_inner().expect("run state lock");
    if let Some(t) = timings {
        *t = std::mem::take(&mut state.timings);
    }
    if let Some(e) = state.error.take() {
        // Withdraw the receives still waiting, so that their values stay
        // in the rendezvous instead of vanishing into this dead run.
        if let Some(r) = run.rendezvous {
            for (p, (_, ticket)) in state.waiting {
                if let (Some(t), Some(key)) = (ticket, run_key(session, plan, p)) {
                    r.cancel(key, t);
                }
            }
        }
        return Err(e);
    }
    plan.fetch_slots
        .iter()
        .map(|&s| {
            state.slots[s].clone().ok_or_else(|| Error::InvalidNode {
                node: String::new(),
                detail: "internal: a fetched tensor was not produced".into(),
            })
        })
        .collect()
}

fn run_key<'s>(
    session: &'s Session,
    plan: &Plan,
    p: usize,
) -> Option<&'s crate::executor::RendezvousKey> {
    session.kernels[plan.nodes[p]].recv_key()
}

impl<'a> Run<'a> {
    fn is_recv(&self, p: usize) -> bool {
        !self.plan.skip[p] && run_key(self.session, self.plan, p).is_some()
    }

    fn fail(&self, e: Error) {
        self.state
            .lock()
            .expect("run state lock")
            .error
            .get_or_insert(e);
    }

    /// Starts the receives among `ready` and returns the nodes to compute;
    /// values that arrived meanwhile are taken too.
    fn sort_ready(&self, mut ready: Vec<usize>) -> Vec<usize> {
        let mut compute = Vec::new();
        loop {
            for p in ready.drain(..) {
                if self.is_recv(p) {
                    self.start_recv(p);
                } else {
                    compute.push(p);
                }
            }
            if !self.arrivals.flag.load(Ordering::Acquire) {
                return compute;
            }
            ready = self.drain();
            if ready.is_empty() {
                return compute;
            }
        }
    }

    fn start_recv(&self, p: usize) {
        let id = self.plan.nodes[p];
        let Some(r) = self.rendezvous else {
            let node = &self.session.graph.nodes()[id];
            return self.fail(Error::NoRendezvous {
                node: node.name.clone(),
                op: node.op.clone(),
            });
        };
        let key = run_key(self.session, self.plan, p).expect("a receive");
        self.state
            .lock()
            .expect("run state lock")
            .waiting
            .insert(p, (Instant::now(), None));
        let arrivals = self.arrivals.clone();
        let ticket = r.recv_async(key, Box::new(move |res| arrivals.push(p, res)));
        if let Some(w) = self
            .state
            .lock()
            .expect("run state lock")
            .waiting
            .get_mut(&p)
        {
            w.1 = Some(ticket);
        }
    }

    /// Takes the values that arrived: completes their receives and returns
    /// the nodes that became ready.
    fn drain(&self) -> Vec<usize> {
        if !self.arrivals.flag.swap(false, Ordering::AcqRel) {
            return vec![];
        }
        let items = std::mem::take(&mut self.arrivals.queue.lock().expect("arrivals lock").items);
        let mut ready = Vec::new();
        let mut st = self.state.lock().expect("run state lock");
        for (p, res) in items {
            st.waiting.remove(&p);
            let id = self.plan.nodes[p];
            let node = &self.session.graph.nodes()[id];
            let info = &self.session.infos[id][0];
            let key = run_key(self.session, self.plan, p).expect("a receive");
            let checked = res.and_then(|t| match info.dtype {
                Some(d) => check_received(node, key, d, &info.shape, t),
                None => Ok(t),
            });
            match checked {
                Ok(t) => ready.extend(self.complete(&mut st, p, vec![t])),
                Err(e) => {
                    st.error.get_or_insert(e);
                }
            }
        }
        ready
    }

    /// Waits on the calling thread for an arrival; an error past the
    /// earliest waiting receive's deadline.
    fn wait(&self) -> Result<()> {
        let timeout = self.session.recv_timeout;
        let (deadline, oldest) = {
            let st = self.state.lock().expect("run state lock");
            match st.waiting.iter().min_by_key(|(_, (t, _))| *t) {
                Some((&p, &(t, _))) => (t + timeout, p),
                None => {
                    return Err(Error::InvalidNode {
                        node: String::new(),
                        detail: "internal: the run stalled with nothing to wait for".into(),
                    })
                }
            }
        };
        let in_pool = rayon::current_thread_index().is_some();
        let mut q = self.arrivals.queue.lock().expect("arrivals lock");
        loop {
            if !q.items.is_empty() {
                q.sleeping = false;
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                q.sleeping = false;
                let key = run_key(self.session, self.plan, oldest).expect("a receive");
                return Err(Error::RecvTimeout {
                    key: key.to_string(),
                    waited: timeout,
                });
            }
            if in_pool {
                // Keep the pool thread useful (another partition's nodes
                // may be what we wait for).
                drop(q);
                if rayon::yield_now() != Some(rayon::Yield::Executed) {
                    std::thread::sleep(Duration::from_micros(200));
                }
                q = self.arrivals.queue.lock().expect("arrivals lock");
            } else {
                q.sleeping = true;
                q = self
                    .arrivals
                    .cv
                    .wait_timeout(q, deadline - now)
                    .expect("arrivals lock")
                    .0;
            }
        }
    }

    /// Stores plan node `p`'s outputs; returns the consumers it made ready.
    fn complete(&self, st: &mut RunState, p: usize, outs: Vec<Tensor>) -> Vec<usize> {
        for (t, slot) in outs.into_iter().zip(&self.plan.outputs[p]) {
            if let Some(s) = slot {
                st.slots[*s] = Some(t);
            }
        }
        st.done += 1;
        let mut ready = Vec::new();
        for &c in &self.plan.consumers[p] {
            st.pending[c] -= 1;
            if st.pending[c] == 0 {
                ready.push(c);
            }
        }
        ready
    }

    /// Runs plan node `p`, then the consumers it made ready: one on this
    /// thread, the others spawned.
    fn node<'s>(&'s self, scope: &rayon::Scope<'s>, mut p: usize)
    where
        'a: 's,
    {
        loop {
            let Some(ready) = self.compute(p) else { return };
            let mut compute = self.sort_ready(ready);
            let Some(next) = compute.pop() else { return };
            for c in compute {
                scope.spawn(move |s| self.node(s, c));
            }
            p = next;
        }
    }

    /// Runs plan node `p`'s kernel; returns the plan nodes it made ready,
    /// or None once the run has failed.
    fn compute(&self, p: usize) -> Option<Vec<usize>> {
        let id = self.plan.nodes[p];
        let inputs = {
            let mut st = self.state.lock().expect("run state lock");
            if st.error.is_some() {
                return None;
            }
            let mut inputs = Vec::with_capacity(self.plan.inputs[p].len());
            for &s in &self.plan.inputs[p] {
                st.uses_left[s] -= 1;
                let t = if st.uses_left[s] == 0 {
                    st.slots[s].take()
                } else {
                    st.slots[s].clone()
                };
                inputs.push(t.expect("inputs are produced before consumers run"));
            }
            inputs
        };
        let node = &self.session.graph.nodes()[id];
        let kernel = &self.session.kernels[id];
        let mut ctx = OpContext {
            node,
            inputs,
            resources: &self.session.resources,
            rendezvous: self.rendezvous,
        };
        let skip = self.plan.skip[p];
        let timer = (self.origin.is_some() && !skip).then(Timer::start);
        let result = if skip {
            Ok(vec![])
        } else {
            kernel.compute(&mut ctx)
        };
        drop(ctx);
        let timing = match (timer, self.origin, &result) {
            (Some(timer), Some(origin), Ok(outs)) => {
                let (start, end, self_time) = timer.finish(origin);
                Some(NodeTiming {
                    node: node.name.clone(),
                    op: node.op.clone(),
                    output_shapes: outs.iter().map(|t| t.shape().to_vec()).collect(),
                    start,
                    end,
                    self_time,
                    thread: rayon::current_thread_index(),
                })
            }
            (Some(timer), Some(origin), Err(_)) => {
                timer.finish(origin);
                None
            }
            _ => None,
        };
        let mut st = self.state.lock().expect("run state lock");
        match result {
            Ok(outs) if outs.len() == kernel.num_outputs() || skip => {
                if let Some(t) = timing {
                    st.timings.push(t);
                }
                Some(self.complete(&mut st, p, outs))
            }
            Ok(outs) => {
                st.error.get_or_insert(Error::InvalidNode {
                    node: node.name.clone(),
                    detail: format!(
                        "kernel returned {} outputs, expected {}",
                        outs.len(),
                        kernel.num_outputs()
                    ),
                });
                None
            }
            Err(e) => {
                st.error.get_or_insert(e);
                None
            }
        }
    }
}
