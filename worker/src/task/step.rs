//! The step loop of one worker task: pull → forward/backward → push,
//! overlapped.
//!
//! Each step, at once: the next batch of this worker's data shard is taken
//! from the pipeline (prepared ahead on its own threads); every
//! parameter-server shard is pulled (at least version `step` in sync mode)
//! as a stream whose tensors are handed, one by one as they arrive, to the
//! worker graph's `_Recv`s through the step's rendezvous — so the first
//! layers compute while later variables are still on the wire; and one
//! push per shard is opened whose tensors are the graph's `_Send`s
//! (gradients, batch-norm moving statistics), sent in batches of
//! [`PUSH_BATCH_BYTES`] while the backward pass produces them. The shard
//! applies the push when its last tensor arrives. In sync mode the next
//! step's pulls open as soon as the graph has run, before the pushes'
//! replies: each shard streams the next version the moment it has applied
//! this one. A failed step aborts the rendezvous and drops the open calls
//! (a push cut short is reset, never applied; the next step's pulls are
//! dropped with it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use psflow_graph::cuda::CudaSession;
use psflow_graph::executor::RecvDone;
use psflow_graph::registry::transfer_key;
use psflow_graph::{
    Graph, LocalRendezvous, Registry, Rendezvous, RendezvousKey, ResourceStore, Session, TensorName,
};
use psflow_kernels::cuda::CudaDevice;
use psflow_kernels::Tensor;
use psflow_proto::ps::{PushOutcome, TensorRole};
use psflow_proto::worker::{SyncMode, TaskProgress, TaskSpec};
use psflow_ps::{is_loopback, PsClient, PushReply};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::data::{augment_for, load};
use super::metrics::count_correct;
use super::{Result, TaskError};
use crate::data::{Pipeline, PipelineConfig, Shard};

/// How long connecting to a shard may take before the task fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default wait for a pull's version (sync mode waits for the slowest
/// worker of the step).
pub const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(300);

/// One shard's part of a step: what to pull and push.
struct ShardWork {
    index: u32,
    client: PsClient,
    /// Stored names pulled, and the rendezvous key of the `_Recv` each goes to.
    pulls: Vec<(String, RendezvousKey)>,
    /// Stored names pushed and their roles (a `_Send` of the graph each).
    pushes: Vec<(String, TensorRole)>,
}

/// Bytes of pushed tensors gathered before they are handed to the push
/// task together (or fewer, with the shard's last tensor), when pushes
/// overlap the backward pass. Handing each gradient over on its own woke
/// the push task, h2 and the shard's receiving task for every one of ~80
/// tensors a step; the shard applies nothing before the push ends, so
/// holding them back costs nothing but the last batch's few hundred
/// kilobytes at the end.
pub const PUSH_BATCH_BYTES: usize = 256 << 10;

/// When a worker hands the tensors it pushes to a shard's push call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PushBatch {
    /// [`PushBatch::Step`] for a CPU worker whose shards are all on this
    /// host (loopback addresses); batches of [`PUSH_BATCH_BYTES`]
    /// otherwise.
    #[default]
    Auto,
    /// All at once, when the step has produced the shard's last tensor.
    /// Sending over loopback is CPU work on the cores the backward pass
    /// uses: overlapped with it, the network threads preempt the kernel
    /// threads, and a preempted thread holds up the other at every join.
    Step,
    /// In batches of at least this many bytes, as the backward pass
    /// produces them: the transfer overlaps the computation, which pays
    /// when the shard is across a network (wire time, little CPU).
    Bytes(u64),
}

impl PushBatch {
    /// From `TaskSpec.push_batch_bytes`.
    pub fn from_proto(v: u64) -> PushBatch {
        match v {
            0 => PushBatch::Auto,
            u64::MAX => PushBatch::Step,
            n => PushBatch::Bytes(n),
        }
    }

    pub fn to_proto(self) -> u64 {
        match self {
            PushBatch::Auto => 0,
            PushBatch::Step => u64::MAX,
            PushBatch::Bytes(n) => n,
        }
    }

    /// Bytes gathered before a batch goes (`usize::MAX`: the whole step),
    /// for a worker on the GPU or not whose shards are at `addrs`.
    pub fn bytes(self, gpu: bool, addrs: &[&str]) -> usize {
        match self {
            PushBatch::Auto if !gpu && addrs.iter().all(|a| is_loopback(a)) => usize::MAX,
            PushBatch::Auto => PUSH_BATCH_BYTES,
            PushBatch::Step => usize::MAX,
            PushBatch::Bytes(n) => usize::try_from(n).unwrap_or(usize::MAX),
        }
    }
}

impl std::str::FromStr for PushBatch {
    type Err = String;

    /// `auto`, `step`, or a size: bytes, or a number with `KiB` or `MiB`.
    fn from_str(s: &str) -> std::result::Result<PushBatch, String> {
        let bad = || format!("{s:?}: expected auto, step, or a size such as 256KiB or 1MiB");
        match s {
            "auto" => return Ok(PushBatch::Auto),
            "step" => return Ok(PushBatch::Step),
            _ => {}
        }
        let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
            Some(i) => s.split_at(i),
            None => (s, ""),
        };
        let unit = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            _ => return Err(bad()),
        };
        match number.parse::<u64>() {
            Ok(n) if n > 0 => n
                .checked_mul(unit)
                .filter(|&b| b < u64::MAX)
                .map(PushBatch::Bytes)
                .ok_or_else(bad),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for PushBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushBatch::Auto => f.write_str("auto"),
            PushBatch::Step => f.write_str("step"),
            PushBatch::Bytes(n) if n % (1 << 20) == 0 => write!(f, "{}MiB", n >> 20),
            PushBatch::Bytes(n) if n % (1 << 10) == 0 => write!(f, "{}KiB", n >> 10),
            PushBatch::Bytes(n) => write!(f, "{n}"),
        }
    }
}

/// Pushed tensors of one shard not yet handed to its push task.
#[derive(Default)]
struct Pending {
    /// (index into the shard's pushes, value).
    items: Vec<(usize, Tensor)>,
    bytes: usize,
    /// Tensors of this step received so far, handed over or not.
    seen: usize,
}

/// The tensors of one step in flight.
struct StepState {
    /// Pulled values waiting for their `_Recv`s.
    local: LocalRendezvous,
    /// Per shard: where batches of its pushed tensors go.
    sinks: Vec<mpsc::UnboundedSender<Vec<(usize, Tensor)>>>,
    /// Per shard: tensors gathered for the next batch.
    pending: Vec<Mutex<Pending>>,
    /// Per shard: how many tensors the step pushes there.
    totals: Vec<usize>,
}

/// The worker session's rendezvous: `_Send`s of pushed tensors go to the
/// open push of their shard, every other key meets its peer in the step's
/// local rendezvous. Lives as long as the session; the state is per step.
struct StepRendezvous {
    /// `_Send` key → (shard, index into the shard's pushes).
    pushes: HashMap<RendezvousKey, (usize, usize)>,
    /// Bytes gathered before a batch goes to its push call (see
    /// [`PushBatch::bytes`]).
    batch_bytes: usize,
    current: Mutex<Option<Arc<StepState>>>,
}

impl StepRendezvous {
    fn state(&self, key: &RendezvousKey) -> psflow_graph::Result<Arc<StepState>> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| psflow_graph::Error::Rendezvous {
                key: key.to_string(),
                detail: "no step of this worker task is running".into(),
            })
    }

    fn begin(&self, state: Arc<StepState>) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(state);
    }

    fn end(&self) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl Rendezvous for StepRendezvous {
    fn send(&self, key: &RendezvousKey, value: Tensor) -> psflow_graph::Result<()> {
        let state = self.state(key)?;
        match self.pushes.get(key) {
            Some(&(shard, i)) => {
                let batch = {
                    let mut p = state.pending[shard]
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    p.bytes += value.nbytes();
                    p.seen += 1;
                    p.items.push((i, value));
                    if p.bytes >= self.batch_bytes || p.seen == state.totals[shard] {
                        p.bytes = 0;
                        Some(std::mem::take(&mut p.items))
                    } else {
                        None
                    }
                };
                match batch {
                    Some(b) => {
                        state.sinks[shard]
                            .send(b)
                            .map_err(|_| psflow_graph::Error::Rendezvous {
                                key: key.to_string(),
                                detail: format!("the push to shard {shard} was abandoned"),
                            })
                    }
                    None => Ok(()),
                }
            }
            None => state.local.send(key, value),
        }
    }

    fn recv_async(&self, key: &RendezvousKey, done: RecvDone) -> u64 {
        match self.state(key) {
            Ok(state) => state.local.recv_async(key, done),
            Err(e) => {
                done(Err(e));
                0
            }
        }
    }

    fn cancel(&self, key: &RendezvousKey, ticket: u64) -> bool {
        match self.state(key) {
            Ok(state) => state.local.cancel(key, ticket),
            Err(_) => false,
        }
    }
}

/// A step's pulls, opened by [`Task::start_pulls`] (in sync mode while
/// the previous step waits for its pushes' replies).
struct Pulls {
    /// When they were opened.
    began: Instant,
    /// The step's tensors: pulled values wait here for their `_Recv`s.
    state: Arc<StepState>,
    /// Per shard: the tensors the step's `_Send`s push there.
    sources: Vec<mpsc::UnboundedReceiver<Vec<(usize, Tensor)>>>,
    /// The pull tasks (the step adds its push tasks).
    calls: Calls,
    /// Per shard: the bytes pulled, or why the pull failed.
    pulled: Vec<oneshot::Receiver<Result<u64>>>,
    /// Per shard: the version pulled (async mode pushes against it).
    versions: Vec<oneshot::Receiver<u64>>,
    /// When the first pulled tensor arrived.
    first_pulled: Arc<std::sync::OnceLock<Instant>>,
}

/// The calls of a step. Dropped (the step ended, failed, or its task was
/// stopped), it aborts those still running and the step's rendezvous: a
/// graph still waiting on a pulled tensor then fails at once instead of
/// holding its thread until the pull timeout (a stopped task's graph runs
/// on a blocking thread that nothing else would wake).
struct Calls {
    handles: Vec<JoinHandle<()>>,
    state: Arc<StepState>,
}

impl Drop for Calls {
    fn drop(&mut self) {
        for h in &self.handles {
            h.abort();
        }
        self.state
            .local
            .abort("the step was stopped before its tensors arrived");
    }
}

/// A step whose graph has run, waiting for its pushes' replies.
struct Pushes {
    /// Its report, but for what the replies say.
    report: TaskProgress,
    /// Per shard: the push's reply and the bytes pushed.
    replies: Vec<oneshot::Receiver<Result<(PushReply, u64)>>>,
    began: Instant,
    /// Its calls, stopped if the task stops before the replies come.
    _calls: Calls,
}

/// What a step leaves for the next.
struct StepOut {
    /// Reports of the steps now finished, in order.
    reports: Vec<TaskProgress>,
    /// This step, if its pushes' replies are still to come (sync mode).
    pushes: Option<Pushes>,
    /// The next step's pulls, if already opened (sync mode).
    next: Option<Pulls>,
}

/// Where a task's steps compute.
enum StepSession {
    Cpu(Session),
    /// The whole step on a GPU: the pulled variables are uploaded as their
    /// `_Recv`s take them, the gradients downloaded as their `_Send`s send
    /// them (the transfers a parameter server implies); everything between
    /// stays on the device.
    Gpu(Box<CudaSession>),
}

impl StepSession {
    fn run(
        &self,
        feeds: &[(TensorName, Tensor)],
        fetches: &[TensorName],
        targets: &[String],
    ) -> psflow_graph::Result<Vec<Tensor>> {
        match self {
            StepSession::Cpu(s) => s.run(feeds, fetches, targets),
            StepSession::Gpu(s) => s.run(feeds, fetches, targets),
        }
    }
}

/// A task ready to run its steps.
pub struct Task {
    spec: TaskSpec,
    session: Arc<StepSession>,
    rendezvous: Arc<StepRendezvous>,
    pipeline: Arc<Mutex<Pipeline>>,
    shards: Vec<ShardWork>,
    fetches: Vec<TensorName>,
    /// The `_Send` nodes: what each step runs besides the fetches.
    targets: Vec<String>,
    input: TensorName,
    labels: TensorName,
    pull_timeout: Duration,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn tensor_name(s: &str, what: &str) -> Result<TensorName> {
    if s.is_empty() {
        return Err(TaskError::Invalid(format!("the task spec names no {what}")));
    }
    TensorName::parse(s).map_err(|e| TaskError::Invalid(format!("{what} {s:?}: {e}")))
}

impl Task {
    /// Checks `spec`, builds the session and the data pipeline, connects
    /// to the shards.
    pub async fn prepare(spec: TaskSpec, gpu: Option<Arc<CudaDevice>>) -> Result<Task> {
        if spec.workers == 0 || spec.worker >= spec.workers {
            return Err(TaskError::Invalid(format!(
                "worker {} of {}: need worker < workers",
                spec.worker, spec.workers
            )));
        }
        if spec.start_step > spec.end_step {
            return Err(TaskError::Invalid(format!(
                "start step {} is after end step {}",
                spec.start_step, spec.end_step
            )));
        }
        let def = spec
            .graph
            .clone()
            .ok_or_else(|| TaskError::Invalid("the task spec has no graph".into()))?;
        let data_spec = spec
            .data
            .clone()
            .ok_or_else(|| TaskError::Invalid("the task spec has no data spec".into()))?;
        let graph = Graph::from_graph_def(def)?;
        let key_of = |node: &str, what: &str| -> Result<RendezvousKey> {
            let n = graph.node(node).ok_or_else(|| {
                TaskError::Invalid(format!("the worker graph has no {what} node {node:?}"))
            })?;
            Ok(transfer_key(n)?)
        };
        let input = tensor_name(&spec.input, "input")?;
        let labels = tensor_name(&spec.labels, "labels")?;
        let fetches = vec![
            tensor_name(&spec.total_loss, "total loss")?,
            tensor_name(&spec.cross_entropy_loss, "cross-entropy loss")?,
            tensor_name(&spec.regularization_loss, "regularization loss")?,
            tensor_name(&spec.logits, "logits")?,
        ];
        let mut shards = Vec::with_capacity(spec.shards.len());
        for (i, s) in spec.shards.iter().enumerate() {
            if s.index as usize != i {
                return Err(TaskError::Invalid(format!(
                    "shard {i} of the task spec says it is shard {}",
                    s.index
                )));
            }
            let client = PsClient::connect(&s.addr, spec.job_id.clone(), CONNECT_TIMEOUT)
                .await
                .map_err(|source| TaskError::Shard {
                    shard: s.index,
                    addr: s.addr.clone(),
                    source,
                })?;
            shards.push(ShardWork {
                index: s.index,
                client,
                pulls: vec![],
                pushes: vec![],
            });
        }
        let shard_of = |i: u32, what: &str, name: &str| -> Result<usize> {
            if (i as usize) < spec.shards.len() {
                Ok(i as usize)
            } else {
                Err(TaskError::Invalid(format!(
                    "{what} {name:?} is on shard {i}, but the job has {} shard(s)",
                    spec.shards.len()
                )))
            }
        };
        for p in &spec.pulls {
            let s = shard_of(p.shard, "pulled variable", &p.stored)?;
            let key = key_of(&p.recv_node, "_Recv")?;
            shards[s].pulls.push((p.stored.clone(), key));
        }
        let mut push_keys = HashMap::new();
        let mut targets = Vec::with_capacity(spec.pushes.len());
        for p in &spec.pushes {
            let s = shard_of(p.shard, "pushed tensor", &p.stored)?;
            let role = TensorRole::try_from(p.role)
                .map_err(|_| TaskError::Invalid(format!("push {:?}: unknown role", p.stored)))?;
            let key = key_of(&p.send_node, "_Send")?;
            if push_keys.insert(key, (s, shards[s].pushes.len())).is_some() {
                return Err(TaskError::Invalid(format!(
                    "two pushes share the rendezvous key of {:?}",
                    p.send_node
                )));
            }
            shards[s].pushes.push((p.stored.clone(), role));
            targets.push(p.send_node.clone());
        }
        let addrs: Vec<&str> = spec.shards.iter().map(|s| s.addr.as_str()).collect();
        let push_batch = PushBatch::from_proto(spec.push_batch_bytes);
        let batch_bytes = push_batch.bytes(gpu.is_some(), &addrs);
        tracing::info!(
            job = spec.job_id,
            worker = spec.worker,
            push_batch = %push_batch,
            batch_bytes = (batch_bytes != usize::MAX).then_some(batch_bytes),
            "pushes go {}",
            if batch_bytes == usize::MAX {
                "once the step has produced each shard's tensors"
            } else {
                "in batches while the backward pass runs"
            }
        );
        let rendezvous = Arc::new(StepRendezvous {
            pushes: push_keys,
            batch_bytes,
            current: Mutex::new(None),
        });

        tracing::info!(
            job = spec.job_id,
            worker = spec.worker,
            "connected to every shard; loading the data"
        );
        let data = load(&data_spec)?;
        let mut pc = PipelineConfig::train(data_spec.batch_size as usize, data_spec.seed);
        pc.augment = augment_for(
            &data_spec.augment,
            data_spec.resolution as usize,
            &data.train,
        )?;
        pc.threads = data_spec.threads as usize;
        pc.shard = Shard::new(spec.worker as usize, spec.workers as usize)?;
        pc.start_step = spec.start_step;
        let pipeline = Pipeline::new(data.train, pc)?;
        let pull_timeout = match spec.pull_timeout_ms {
            0 => DEFAULT_PULL_TIMEOUT,
            ms => Duration::from_millis(ms),
        };
        // A `_Recv` waits as long as a pull may (the rendezvous is aborted
        // at once when a pull fails).
        let session = match gpu {
            None => StepSession::Cpu(
                Session::with_resources(
                    graph,
                    &Registry::standard(),
                    Arc::new(ResourceStore::new()),
                )?
                .with_rendezvous(rendezvous.clone())
                .with_recv_timeout(pull_timeout),
            ),
            Some(device) => {
                tracing::info!(job = spec.job_id, worker = spec.worker, device = %device.name(), "steps run on the GPU");
                StepSession::Gpu(Box::new(
                    CudaSession::new(
                        graph,
                        &Registry::standard(),
                        Arc::new(ResourceStore::new()),
                        device,
                    )?
                    .with_rendezvous(rendezvous.clone())
                    .with_recv_timeout(pull_timeout),
                ))
            }
        };
        Ok(Task {
            spec,
            session: Arc::new(session),
            rendezvous,
            pipeline: Arc::new(Mutex::new(pipeline)),
            shards,
            fetches,
            targets,
            input,
            labels,
            pull_timeout,
        })
    }

    /// Runs every step, sending one [`TaskProgress`] per step and a last
    /// one with `done`. Stops with [`TaskError::Cancelled`] when `progress`
    /// is closed (nobody follows the task any more).
    pub async fn run(self, progress: mpsc::Sender<TaskProgress>) -> Result<()> {
        let mut bytes = (0u64, 0u64);
        let mut next = None;
        let mut pending = None;
        for step in self.spec.start_step..self.spec.end_step {
            let pulls = match next.take() {
                Some(p) => p,
                None => self.start_pulls(step),
            };
            let r = self.step(step, pulls, pending.take(), &mut bytes).await;
            self.rendezvous.end();
            let out = r?;
            next = out.next;
            pending = out.pushes;
            for report in out.reports {
                if progress.send(report).await.is_err() {
                    return Err(TaskError::Cancelled);
                }
            }
        }
        if let Some(p) = pending {
            let report = self.finish_pushes(p, &mut bytes).await?;
            if progress.send(report).await.is_err() {
                return Err(TaskError::Cancelled);
            }
        }
        let (pulled_bytes, pushed_bytes) = bytes;
        let last = TaskProgress {
            step: self.spec.end_step,
            bytes_pulled: pulled_bytes,
            bytes_pushed: pushed_bytes,
            done: true,
            ..Default::default()
        };
        progress.send(last).await.map_err(|_| TaskError::Cancelled)
    }

    /// Waits for the replies to a step's pushes; its report, with what
    /// they said.
    async fn finish_pushes(&self, p: Pushes, bytes: &mut (u64, u64)) -> Result<TaskProgress> {
        let Pushes {
            mut report,
            replies,
            began,
            _calls,
        } = p;
        let mut events = Vec::new();
        for (rx, s) in replies.into_iter().zip(&self.shards) {
            let (reply, n) = rx
                .await
                .map_err(|_| TaskError::Internal("a push of this step vanished".into()))??;
            bytes.1 += n;
            if matches!(
                reply.outcome,
                PushOutcome::DroppedLate | PushOutcome::DroppedStale
            ) {
                events.push(format!("shard {}: {}", s.index, reply.message));
            }
        }
        report.event = events.join("; ");
        report.bytes_pulled = bytes.0;
        report.bytes_pushed = bytes.1;
        report.seconds = began.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Opens the pulls of `step`: one stream per shard, whose tensors wait
    /// in the step's own rendezvous until its `_Recv`s take them.
    fn start_pulls(&self, step: u64) -> Pulls {
        let sync = self.spec.mode() == SyncMode::Sync;
        let began = Instant::now();
        let mut sinks = Vec::with_capacity(self.shards.len());
        let mut sources = Vec::with_capacity(self.shards.len());
        for _ in &self.shards {
            let (tx, rx) = mpsc::unbounded_channel();
            sinks.push(tx);
            sources.push(rx);
        }
        let state = Arc::new(StepState {
            local: LocalRendezvous::new(),
            sinks,
            pending: self.shards.iter().map(|_| Mutex::default()).collect(),
            totals: self.shards.iter().map(|s| s.pushes.len()).collect(),
        });
        let min_version = if sync { step } else { 0 };
        let mut calls = Calls {
            handles: Vec::new(),
            state: state.clone(),
        };
        let mut pulled = Vec::with_capacity(self.shards.len());
        let mut versions = Vec::with_capacity(self.shards.len());
        let first_pulled = Arc::new(std::sync::OnceLock::new());
        for s in &self.shards {
            let (version_tx, version_rx) = oneshot::channel::<u64>();
            let (pull_done, pull_rx) = oneshot::channel();
            let mut client = s.client.clone();
            let pulls = s.pulls.clone();
            let (index, addr) = (s.index, client.addr().to_string());
            let (state2, timeout) = (state.clone(), self.pull_timeout);
            let first_pulled = first_pulled.clone();
            calls.handles.push(tokio::spawn(async move {
                let names: Vec<String> = pulls.iter().map(|(n, _)| n.clone()).collect();
                let mut next = 0usize;
                let mut nbytes = 0u64;
                let r = client
                    .pull_each(&names, min_version, timeout, |name, value| {
                        let Some((want, key)) = pulls.get(next) else {
                            return Err(psflow_ps::Error::Invalid(format!(
                                "sent {name:?} after the {} tensors asked for",
                                pulls.len()
                            )));
                        };
                        if *want != name {
                            return Err(psflow_ps::Error::Invalid(format!(
                                "sent {name:?} where {want:?} was expected"
                            )));
                        }
                        first_pulled.get_or_init(Instant::now);
                        next += 1;
                        nbytes += value.nbytes() as u64;
                        state2
                            .local
                            .send(key, value)
                            .map_err(|e| psflow_ps::Error::Invalid(e.to_string()))
                    })
                    .await
                    .and_then(|version| {
                        if next == pulls.len() {
                            Ok(version)
                        } else {
                            Err(psflow_ps::Error::Invalid(format!(
                                "sent {next} tensors for {} asked",
                                pulls.len()
                            )))
                        }
                    });
                // Async mode pushes against the version pulled.
                let r = r.map(|version| {
                    let _ = version_tx.send(version);
                    nbytes
                });
                if let Err(e) = &r {
                    // Fail the step's `_Recv`s now, not at their timeout.
                    state2
                        .local
                        .abort(format!("pulling shard {index} ({addr}): {e}"));
                }
                let _ = pull_done.send(r.map_err(|source| TaskError::Shard {
                    shard: index,
                    addr,
                    source,
                }));
            }));
            pulled.push(pull_rx);
            versions.push(version_rx);
        }
        Pulls {
            began,
            state,
            sources,
            calls,
            pulled,
            versions,
            first_pulled,
        }
    }

    /// One step (see the module docs) on its opened `pulls`; adds the bytes
    /// pulled and pushed. In sync mode, once the graph has run (every
    /// gradient is on its way), opens the next step's pulls and returns
    /// without waiting for the pushes' replies: the shards stream the next
    /// version as they apply this one, and the next step's graph starts on
    /// its first values while the replies to `prev`, the step before it,
    /// are awaited (a failed push fails the step after it).
    async fn step(
        &self,
        step: u64,
        pulls: Pulls,
        prev: Option<Pushes>,
        bytes: &mut (u64, u64),
    ) -> Result<StepOut> {
        let began = Instant::now();
        let sync = self.spec.mode() == SyncMode::Sync;
        let pipeline = self.pipeline.clone();
        let batch = tokio::task::spawn_blocking(move || {
            pipeline
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .next_batch()
        });
        let Pulls {
            began: pulls_began,
            state,
            sources,
            mut calls,
            pulled,
            versions,
            first_pulled,
        } = pulls;
        self.rendezvous.begin(state.clone());

        // Pushes run as their own tasks: the graph produces their tensors
        // while it runs.
        let mut pushed = Vec::with_capacity(self.shards.len());
        for ((s, source), version_rx) in self.shards.iter().zip(sources).zip(versions) {
            let (push_done, push_rx) = oneshot::channel();
            let mut client = s.client.clone();
            let pushes = s.pushes.clone();
            let worker = self.spec.worker;
            let (index, addr) = (s.index, client.addr().to_string());
            calls.handles.push(tokio::spawn(async move {
                // Async mode pushes against the version pulled.
                let base = if sync {
                    step
                } else {
                    match version_rx.await {
                        Ok(v) => v,
                        // The pull failed; the step fails with its error.
                        Err(_) => return,
                    }
                };
                let n = pushes.len();
                let nbytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
                let counted = nbytes.clone();
                let batches = futures::stream::unfold((source, 0usize), move |(mut rx, k)| {
                    let pushes = pushes.clone();
                    let counted = counted.clone();
                    async move {
                        if k == n {
                            return None;
                        }
                        match rx.recv().await {
                            Some(batch) => {
                                let k = k + batch.len();
                                let batch: Vec<_> = batch
                                    .into_iter()
                                    .map(|(i, t)| {
                                        counted.fetch_add(
                                            t.nbytes() as u64,
                                            std::sync::atomic::Ordering::Relaxed,
                                        );
                                        let (name, role) = pushes[i].clone();
                                        (name, role, t)
                                    })
                                    .collect();
                                Some((batch, (rx, k)))
                            }
                            // The graph stopped before sending everything:
                            // never end the push cleanly (it would apply a
                            // partial step); the step's failure drops it.
                            None => futures::future::pending().await,
                        }
                    }
                });
                let r = client
                    .push_stream(worker, base, false, batches)
                    .await
                    .map(|reply| (reply, nbytes.load(std::sync::atomic::Ordering::Relaxed)))
                    .map_err(|source| TaskError::Shard {
                        shard: index,
                        addr,
                        source,
                    });
                let _ = push_done.send(r);
            }));
            pushed.push(push_rx);
        }

        let batch = batch
            .await
            .map_err(|e| TaskError::Internal(format!("the input pipeline panicked: {e}")))??
            .ok_or_else(|| {
                TaskError::Internal(format!("the input pipeline ended at step {step}"))
            })?;
        let batch_ready = began.elapsed();
        let examples = batch.len();
        let label_values: Vec<i32> = batch.labels.values::<i32>("labels")?.to_vec();
        let feeds = vec![
            (self.input.clone(), batch.images),
            (self.labels.clone(), batch.labels),
        ];
        let session = self.session.clone();
        let fetches = self.fetches.clone();
        let targets = self.targets.clone();
        let run = tokio::task::spawn_blocking(move || session.run(&feeds, &fetches, &targets));
        // The step before ends while this one computes.
        let mut reports = Vec::with_capacity(2);
        if let Some(p) = prev {
            reports.push(self.finish_pushes(p, bytes).await?);
        }
        let run = run
            .await
            .map_err(|e| TaskError::Internal(format!("the step panicked: {e}")))?;
        if let Err(e) = run {
            // A pull's failure explains a failed run better than the
            // `_Recv` it aborted.
            for mut rx in pulled {
                if let Ok(Err(pull)) = rx.try_recv() {
                    return Err(pull);
                }
            }
            return Err(e.into());
        }
        let computed = began.elapsed();
        let next = (sync && step + 1 < self.spec.end_step).then(|| self.start_pulls(step + 1));
        for rx in pulled {
            bytes.0 += rx
                .await
                .map_err(|_| TaskError::Internal("a pull of this step vanished".into()))??;
        }
        let pulls_done = began.elapsed();
        let out = run?;

        let scalar = |t: &Tensor| -> Result<f64> { Ok(t.scalar_value::<f32>("loss")? as f64) };
        let (total, xent, reg) = (scalar(&out[0])?, scalar(&out[1])?, scalar(&out[2])?);
        if !total.is_finite() {
            return Err(TaskError::Diverged {
                step: step + 1,
                loss: total,
            });
        }
        let (correct, _) = count_correct(&out[3], &label_values)?;

        // Where the step's time went, for `PSFLOW_LOG=psflow_worker=debug`.
        tracing::debug!(
            step,
            batch_ms = ms(batch_ready),
            pulls_opened_ahead_ms = ms(began.saturating_duration_since(pulls_began)),
            first_pull_ms = first_pulled
                .get()
                .map_or(f64::NAN, |t| ms(t.saturating_duration_since(began))),
            run_end_ms = ms(computed),
            pulls_done_ms = ms(pulls_done),
            "step timeline"
        );
        let pushes = Pushes {
            report: TaskProgress {
                step: step + 1,
                total_loss: total,
                cross_entropy_loss: xent,
                regularization_loss: reg,
                examples: examples as u32,
                correct: correct as u32,
                ..Default::default()
            },
            replies: pushed,
            began,
            _calls: calls,
        };
        if sync {
            return Ok(StepOut {
                reports,
                pushes: Some(pushes),
                next,
            });
        }
        // Async modes pull the next step after this one's pushes applied.
        reports.push(self.finish_pushes(pushes, bytes).await?);
        Ok(StepOut {
            reports,
            pushes: None,
            next,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_batch_parses_and_prints_its_forms() {
        for (text, want) in [
            ("auto", PushBatch::Auto),
            ("step", PushBatch::Step),
            ("256KiB", PushBatch::Bytes(256 << 10)),
            ("1MiB", PushBatch::Bytes(1 << 20)),
            ("1000", PushBatch::Bytes(1000)),
        ] {
            let got: PushBatch = text.parse().unwrap();
            assert_eq!(got, want, "{text}");
            assert_eq!(got.to_string(), text);
            assert_eq!(PushBatch::from_proto(got.to_proto()), got);
        }
        for bad in ["", "0", "1GiB", "-5", "lots", "12 KB"] {
            let e = bad.parse::<PushBatch>().unwrap_err();
            assert!(e.contains("expected auto, step, or a size"), "{bad}: {e}");
        }
    }

    #[test]
    fn auto_holds_pushes_for_the_step_only_for_cpu_workers_on_loopback() {
        let local = ["127.0.0.1:7000", "http://[::1]:7001", "localhost:7002"];
        assert_eq!(PushBatch::Auto.bytes(false, &local), usize::MAX);
        assert_eq!(PushBatch::Auto.bytes(true, &local), PUSH_BATCH_BYTES);
        let mixed = ["127.0.0.1:7000", "10.0.0.7:7000"];
        assert_eq!(PushBatch::Auto.bytes(false, &mixed), PUSH_BATCH_BYTES);
        assert_eq!(
            PushBatch::Auto.bytes(false, &["ps-0.cluster:7000"]),
            PUSH_BATCH_BYTES
        );
        assert_eq!(PushBatch::Step.bytes(true, &mixed), usize::MAX);
        assert_eq!(PushBatch::Bytes(4096).bytes(false, &local), 4096);
    }
}
