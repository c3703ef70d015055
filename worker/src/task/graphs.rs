//! Graphs partitioned across workers (model parallelism), as TensorFlow's
//! WorkerService runs them: RegisterGraph keeps one task's partition in a
//! session; RunGraph runs it once for a step; RecvTensor serves the values
//! its `_Send`s left for other workers.
//!
//! Steps are kept apart by their id: each step has its own rendezvous on
//! this worker ([`Steps`]), shared by the step's RunGraph calls here (all
//! the graphs this worker runs in that step) and the RecvTensor calls of
//! its peers. A step's rendezvous lives while a RunGraph or a RecvTensor of
//! the step is running here, or values sent for a peer wait in it; values
//! nobody comes for are dropped once the step has been over for the
//! graph's receive timeout. A failed RunGraph aborts its step here: the
//! peers' RecvTensor calls for it fail at once with the reason.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use psflow_graph::executor::DEFAULT_RECV_TIMEOUT;
use psflow_graph::registry::transfer_key;
use psflow_graph::tensor_proto::{tensor_from_proto, tensor_to_proto};
use psflow_graph::{
    Graph, LocalRendezvous, Registry, Rendezvous, RendezvousKey, ResourceStore, Session, TensorName,
};
use psflow_kernels::Tensor;
use psflow_proto::worker as pb;
use psflow_proto::Message;

use super::remote::{task_of, Peer, PeerRendezvous};
use super::service::MAX_SPEC_BYTES;
use super::{Result, TaskError};

/// The longest wait a RecvTensor may ask for.
pub const MAX_RECV_WAIT: Duration = Duration::from_secs(600);

/// One registered partition.
struct Registered {
    /// The RegisterGraph session it shares resources with ("" for none).
    session_name: String,
    /// This worker's task for the graph.
    task: String,
    session: Arc<Session>,
    /// The tasks its `_Recv`s receive from.
    peers: Arc<HashMap<String, Peer>>,
    recv_timeout: Duration,
}

/// The registered graphs of a worker and the rendezvous of their steps.
pub struct Graphs {
    /// Part of every handle, so that a restarted worker never mistakes an
    /// old handle for one of its own.
    incarnation: u64,
    next: AtomicU64,
    graphs: Mutex<HashMap<String, Arc<Registered>>>,
    /// Per RegisterGraph session: its resources and how many graphs use them.
    sessions: Mutex<HashMap<String, (Arc<ResourceStore>, usize)>>,
    steps: Arc<Steps>,
}

impl Default for Graphs {
    fn default() -> Graphs {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Graphs {
            incarnation: nanos ^ u64::from(std::process::id()).rotate_left(32),
            next: AtomicU64::new(0),
            graphs: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            steps: Arc::new(Steps::default()),
        }
    }
}

impl Graphs {
    /// Checks and keeps one task's partition; returns its handle.
    pub fn register(&self, request: pb::RegisterGraphRequest) -> Result<String> {
        let task = task_of(&request.task).to_string();
        if task.is_empty() {
            return Err(TaskError::Invalid(
                "RegisterGraph names no task: say which task this worker is for the graph, \
                 e.g. /job:worker/replica:0/task:0"
                    .into(),
            ));
        }
        let def = request
            .graph
            .ok_or_else(|| TaskError::Invalid("RegisterGraph has no graph".into()))?;
        let graph = Graph::from_graph_def(def)?;
        let mut peers = HashMap::new();
        for n in graph.nodes() {
            let sends = n.op == "_Send";
            if !sends && n.op != "_Recv" {
                continue;
            }
            let key = transfer_key(n)?;
            let (from, to) = (task_of(&key.send_device), task_of(&key.recv_device));
            if sends && from != task {
                return Err(TaskError::Invalid(format!(
                    "_Send {:?} sends from {}, but this worker is task {task} for the graph",
                    n.name, key.send_device
                )));
            }
            if !sends && to != task {
                return Err(TaskError::Invalid(format!(
                    "_Recv {:?} receives on {}, but this worker is task {task} for the graph",
                    n.name, key.recv_device
                )));
            }
            if !sends && from != task && !peers.contains_key(from) {
                let addr = request.peers.get(from).ok_or_else(|| {
                    TaskError::Invalid(format!(
                        "_Recv {:?} receives from task {from}, but RegisterGraph's peers give \
                         no address for it (they name {:?})",
                        n.name,
                        request.peers.keys().collect::<Vec<_>>()
                    ))
                })?;
                peers.insert(from.to_string(), Peer::new(from, addr)?);
            }
        }
        let recv_timeout = match request.recv_timeout_ms {
            0 => DEFAULT_RECV_TIMEOUT,
            ms => Duration::from_millis(ms),
        };
        let resources = if request.session.is_empty() {
            Arc::new(ResourceStore::new())
        } else {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            let entry = sessions
                .entry(request.session.clone())
                .or_insert_with(|| (Arc::new(ResourceStore::new()), 0));
            entry.1 += 1;
            entry.0.clone()
        };
        let session = Session::with_resources(graph, &Registry::standard(), resources)
            .map(|s| s.with_recv_timeout(recv_timeout));
        let session = match session {
            Ok(s) => s,
            Err(e) => {
                self.release_session(&request.session);
                return Err(e.into());
            }
        };
        let handle = format!(
            "{:016x}-{}",
            self.incarnation,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        tracing::info!(
            handle,
            task,
            session = request.session,
            peers = peers.len(),
            "graph registered"
        );
        self.graphs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                handle.clone(),
                Arc::new(Registered {
                    session_name: request.session,
                    task,
                    session: Arc::new(session),
                    peers: Arc::new(peers),
                    recv_timeout,
                }),
            );
        Ok(handle)
    }

    /// Forgets a graph (steps running it finish).
    pub fn deregister(&self, handle: &str) -> Result<()> {
        let g = self
            .graphs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(handle)
            .ok_or_else(|| TaskError::UnknownGraph {
                handle: handle.to_string(),
            })?;
        self.release_session(&g.session_name);
        tracing::info!(handle, "graph deregistered");
        Ok(())
    }

    /// Handles of the registered graphs.
    pub fn handles(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .graphs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }

    fn release_session(&self, name: &str) {
        if name.is_empty() {
            return;
        }
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = sessions.get_mut(name) {
            entry.1 -= 1;
            if entry.1 == 0 {
                sessions.remove(name);
            }
        }
    }

    fn get(&self, handle: &str) -> Result<Arc<Registered>> {
        self.graphs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(handle)
            .cloned()
            .ok_or_else(|| TaskError::UnknownGraph {
                handle: handle.to_string(),
            })
    }

    /// Runs a registered graph once, for step `step_id`.
    pub async fn run(&self, request: pb::RunGraphRequest) -> Result<pb::RunGraphResponse> {
        let g = self.get(&request.graph_handle)?;
        let step = request.step_id;
        let mut feeds = Vec::with_capacity(request.feeds.len());
        for f in &request.feeds {
            let name = TensorName::parse(&f.name)
                .map_err(|e| TaskError::Invalid(format!("feed {:?}: {e}", f.name)))?;
            let proto = f
                .tensor
                .as_ref()
                .ok_or_else(|| TaskError::Invalid(format!("feed {:?} has no tensor", f.name)))?;
            feeds.push((name, tensor_from_proto(&f.name, proto)?));
        }
        let fetches = request
            .fetches
            .iter()
            .map(|f| {
                TensorName::parse(f).map_err(|e| TaskError::Invalid(format!("fetch {f:?}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let targets = request.targets;

        let local = self.steps.enter(step);
        let rendezvous = Arc::new(PeerRendezvous::new(
            step,
            g.task.clone(),
            local.clone(),
            g.peers.clone(),
            g.recv_timeout,
            tokio::runtime::Handle::current(),
        ));
        let steps = self.steps.clone();
        // Its own task: the step's bookkeeping completes even when the
        // caller goes away.
        let run = tokio::spawn(async move {
            let (session, r) = (g.session.clone(), rendezvous.clone());
            let fetched = tokio::task::spawn_blocking(move || {
                session.run_in(&*r, &feeds, &fetches, &targets)
            })
            .await;
            let out = match fetched {
                Ok(Ok(out)) => Ok(out),
                Ok(Err(source)) => Err(rendezvous
                    .take_failure()
                    .unwrap_or(TaskError::Step { step, source })),
                Err(e) => Err(TaskError::Internal(format!("step {step} panicked: {e}"))),
            };
            drop(rendezvous);
            let failure = out
                .as_ref()
                .err()
                .map(|e| format!("step {step} failed on task {}: {e}", g.task));
            steps.leave(step, &local, failure, g.recv_timeout);
            out
        });
        let out = run
            .await
            .map_err(|e| TaskError::Internal(format!("step {step} vanished: {e}")))??;
        let response = pb::RunGraphResponse {
            fetched: request
                .fetches
                .iter()
                .zip(&out)
                .map(|(name, t)| pb::NamedTensor {
                    name: name.clone(),
                    tensor: Some(tensor_to_proto(t)),
                })
                .collect(),
        };
        let bytes = response.encoded_len();
        if bytes > MAX_SPEC_BYTES {
            return Err(TaskError::TooLarge {
                what: format!("the RunGraphResponse of step {step}"),
                bytes: bytes as u64,
                limit: MAX_SPEC_BYTES as u64,
                hint: "fetch fewer or smaller tensors (send large ones to another partition)",
            });
        }
        Ok(response)
    }

    /// The value sent under `key` in step `step` here, waiting up to
    /// `wait` for its `_Send`.
    pub async fn recv(&self, step: u64, key: &RendezvousKey, wait: Duration) -> Result<Tensor> {
        let mut serving = Serving::begin(self.steps.clone(), step, key.clone());
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let ticket = serving.local.recv_async(
            key,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        serving.ticket = Some(ticket);
        let r = match tokio::time::timeout(wait, &mut rx).await {
            Ok(r) => r,
            Err(_) => {
                if serving.local.cancel(key, ticket) {
                    serving.ticket = None;
                    return Err(TaskError::RecvDeadline {
                        key: key.to_string(),
                        step,
                        waited_ms: wait.as_millis() as u64,
                    });
                }
                // It arrived between the timeout and the cancel.
                match rx.try_recv() {
                    Ok(r) => Ok(r),
                    Err(_) => {
                        return Err(TaskError::Internal(format!("the value of {key} vanished")))
                    }
                }
            }
        };
        serving.ticket = None;
        match r {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => Err(TaskError::StepAborted {
                key: key.to_string(),
                step,
                detail: e.to_string(),
            }),
            Err(_) => Err(TaskError::Internal(format!(
                "the rendezvous dropped the receive of {key}"
            ))),
        }
    }
}

/// A RecvTensor call in progress; withdraws its receive if dropped early
/// (the peer went away), so the value stays for a retry.
struct Serving {
    steps: Arc<Steps>,
    step: u64,
    key: RendezvousKey,
    local: Arc<LocalRendezvous>,
    ticket: Option<u64>,
}

impl Serving {
    fn begin(steps: Arc<Steps>, step: u64, key: RendezvousKey) -> Serving {
        let local = steps.serve_begin(step);
        Serving {
            steps,
            step,
            key,
            local,
            ticket: None,
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(t) = self.ticket {
            self.local.cancel(&self.key, t);
        }
        self.steps.serve_end(self.step, &self.local);
    }
}

struct StepEntry {
    local: Arc<LocalRendezvous>,
    /// RunGraph calls of the step running here.
    running: usize,
    /// RecvTensor calls of the step waiting here.
    serving: usize,
    /// Set when a RunGraph of the step ended: how long values left for
    /// peers may wait once nothing of the step runs here.
    linger: Option<Duration>,
}

impl StepEntry {
    fn idle(&self) -> bool {
        self.running == 0 && self.serving == 0 && self.local.queued() == 0
    }
}

/// The rendezvous of the steps that have something on this worker.
#[derive(Default)]
struct Steps {
    map: Mutex<HashMap<u64, StepEntry>>,
}

impl Steps {
    fn entry(&self, step: u64, f: impl FnOnce(&mut StepEntry)) -> Arc<LocalRendezvous> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let e = map.entry(step).or_insert_with(|| StepEntry {
            local: Arc::new(LocalRendezvous::new()),
            running: 0,
            serving: 0,
            linger: None,
        });
        f(e);
        e.local.clone()
    }

    fn enter(&self, step: u64) -> Arc<LocalRendezvous> {
        self.entry(step, |e| e.running += 1)
    }

    fn serve_begin(&self, step: u64) -> Arc<LocalRendezvous> {
        self.entry(step, |e| e.serving += 1)
    }

    /// Runs `f` on the step's entry if it is still `local`'s, and drops the
    /// entry when `f` says so.
    fn with(
        &self,
        step: u64,
        local: &Arc<LocalRendezvous>,
        f: impl FnOnce(&mut StepEntry) -> bool,
    ) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map.get_mut(&step) {
            if Arc::ptr_eq(&e.local, local) && f(e) {
                map.remove(&step);
            }
        }
    }

    fn serve_end(self: &Arc<Self>, step: u64, local: &Arc<LocalRendezvous>) {
        let mut linger = None;
        self.with(step, local, |e| {
            e.serving -= 1;
            if e.running == 0 && e.serving == 0 && !e.idle() {
                linger = e.linger;
            }
            e.idle()
        });
        if let Some(linger) = linger {
            self.reap_later(step, local, linger);
        }
    }

    /// A RunGraph of the step ended (`failure`: why it failed). Values
    /// left for peers wait at most `linger`.
    fn leave(
        self: &Arc<Self>,
        step: u64,
        local: &Arc<LocalRendezvous>,
        failure: Option<String>,
        linger: Duration,
    ) {
        let mut lingering = false;
        self.with(step, local, |e| {
            e.running -= 1;
            e.linger = Some(linger);
            lingering = e.running == 0 && e.serving == 0 && !e.idle();
            e.idle() || (failure.is_some() && e.running == 0)
        });
        if let Some(reason) = failure {
            // The step's other graphs here and the peers' RecvTensor calls
            // fail now, not at their deadlines.
            local.abort(reason);
            return;
        }
        if lingering {
            self.reap_later(step, local, linger);
        }
    }

    /// After `linger`, drops the step's values if nothing of it runs here.
    fn reap_later(self: &Arc<Self>, step: u64, local: &Arc<LocalRendezvous>, linger: Duration) {
        {
            let (steps, local) = (self.clone(), local.clone());
            tokio::spawn(async move {
                tokio::time::sleep(linger).await;
                let mut expired = false;
                steps.with(step, &local, |e| {
                    expired = e.running == 0 && e.serving == 0;
                    expired
                });
                if expired {
                    tracing::warn!(
                        step,
                        left = local.queued(),
                        "step over: dropping values no peer came for"
                    );
                    local.abort(format!(
                        "step {step} ended here {linger:?} ago and its value was dropped"
                    ));
                }
            });
        }
    }
}
