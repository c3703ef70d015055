//! The step loop of one worker task: pull → forward/backward → push.
//!
//! Each step, concurrently: the next batch of this worker's data shard is
//! taken from the pipeline (prepared ahead on its own threads), and every
//! parameter-server shard is pulled (at least version `step` in sync mode).
//! The pulled values are fed to the worker graph's `_Recv` outputs, the
//! graph runs forward and backward, and the tensors the `_Send`s would send
//! (gradients, batch-norm moving statistics) are fetched and pushed, one
//! push per shard, all shards at once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use psflow_graph::{Graph, Registry, ResourceStore, Session, TensorName};
use psflow_kernels::Tensor;
use psflow_proto::ps::{PushOutcome, TensorRole};
use psflow_proto::worker::{SyncMode, TaskProgress, TaskSpec};
use psflow_ps::PsClient;
use tokio::sync::mpsc;

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
    /// Stored names pulled, and the tensor each is fed to.
    pulls: Vec<(String, TensorName)>,
    /// Stored name, role, index into the run's fetches.
    pushes: Vec<(String, TensorRole, usize)>,
}

/// A task ready to run its steps.
pub struct Task {
    spec: TaskSpec,
    session: Arc<Session>,
    pipeline: Arc<Mutex<Pipeline>>,
    shards: Vec<ShardWork>,
    fetches: Vec<TensorName>,
    input: TensorName,
    labels: TensorName,
    pull_timeout: Duration,
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
    pub async fn prepare(spec: TaskSpec) -> Result<Task> {
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
        let session =
            Session::with_resources(graph, &Registry::standard(), Arc::new(ResourceStore::new()))?;
        let input = tensor_name(&spec.input, "input")?;
        let labels = tensor_name(&spec.labels, "labels")?;
        let mut fetches = vec![
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
            shards[s]
                .pulls
                .push((p.stored.clone(), TensorName::new(p.recv_node.clone(), 0)));
        }
        for p in &spec.pushes {
            let s = shard_of(p.shard, "pushed tensor", &p.stored)?;
            let role = TensorRole::try_from(p.role)
                .map_err(|_| TaskError::Invalid(format!("push {:?}: unknown role", p.stored)))?;
            shards[s]
                .pushes
                .push((p.stored.clone(), role, fetches.len()));
            fetches.push(tensor_name(&p.value, "pushed value")?);
        }

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
        Ok(Task {
            spec,
            session: Arc::new(session),
            pipeline: Arc::new(Mutex::new(pipeline)),
            shards,
            fetches,
            input,
            labels,
            pull_timeout,
        })
    }

    /// Runs every step, sending one [`TaskProgress`] per step and a last
    /// one with `done`. Stops with [`TaskError::Cancelled`] when `progress`
    /// is closed (nobody follows the task any more).
    pub async fn run(mut self, progress: mpsc::Sender<TaskProgress>) -> Result<()> {
        let (mut pulled_bytes, mut pushed_bytes) = (0u64, 0u64);
        let sync = self.spec.mode() == SyncMode::Sync;
        for step in self.spec.start_step..self.spec.end_step {
            let began = Instant::now();
            // The batch and the variables, at once.
            let pipeline = self.pipeline.clone();
            let batch = tokio::task::spawn_blocking(move || {
                pipeline
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .next_batch()
            });
            let min_version = if sync { step } else { 0 };
            let timeout = self.pull_timeout;
            let pulls = try_join_all(self.shards.iter().map(|s| {
                let mut client = s.client.clone();
                let names: Vec<String> = s.pulls.iter().map(|(n, _)| n.clone()).collect();
                let (index, addr) = (s.index, client.addr().to_string());
                async move {
                    client
                        .pull(&names, min_version, timeout)
                        .await
                        .map_err(|source| TaskError::Shard {
                            shard: index,
                            addr,
                            source,
                        })
                }
            }));
            let (batch, pulled) = tokio::join!(batch, pulls);
            let pulled = pulled?;
            let batch = batch
                .map_err(|e| TaskError::Internal(format!("the input pipeline panicked: {e}")))??
                .ok_or_else(|| {
                    TaskError::Internal(format!("the input pipeline ended at step {step}"))
                })?;

            let mut feeds = Vec::with_capacity(self.spec.pulls.len() + 2);
            let examples = batch.len();
            let label_values: Vec<i32> = batch.labels.values::<i32>("labels")?.to_vec();
            feeds.push((self.input.clone(), batch.images));
            feeds.push((self.labels.clone(), batch.labels));
            let mut versions = Vec::with_capacity(pulled.len());
            for (s, p) in self.shards.iter().zip(pulled) {
                if p.tensors.len() != s.pulls.len() {
                    return Err(TaskError::Internal(format!(
                        "shard {} sent {} tensors for {} asked",
                        s.index,
                        p.tensors.len(),
                        s.pulls.len()
                    )));
                }
                versions.push(p.version);
                for ((_, t), (_, feed)) in p.tensors.into_iter().zip(&s.pulls) {
                    pulled_bytes += t.nbytes() as u64;
                    feeds.push((feed.clone(), t));
                }
            }

            let session = self.session.clone();
            let fetches = self.fetches.clone();
            let targets = self.spec.targets.clone();
            let out = tokio::task::spawn_blocking(move || session.run(&feeds, &fetches, &targets))
                .await
                .map_err(|e| TaskError::Internal(format!("the step panicked: {e}")))??;

            let scalar = |t: &Tensor| -> Result<f64> { Ok(t.scalar_value::<f32>("loss")? as f64) };
            let (total, xent, reg) = (scalar(&out[0])?, scalar(&out[1])?, scalar(&out[2])?);
            if !total.is_finite() {
                return Err(TaskError::Diverged {
                    step: step + 1,
                    loss: total,
                });
            }
            let (correct, _) = count_correct(&out[3], &label_values)?;

            let worker = self.spec.worker;
            let out = Arc::new(out);
            let replies = try_join_all(self.shards.iter_mut().zip(&versions).map(|(s, &v)| {
                let base = if sync { step } else { v };
                let out = out.clone();
                let (index, addr) = (s.index, s.client.addr().to_string());
                let pushes = s.pushes.clone();
                let mut client = s.client.clone();
                async move {
                    let tensors = pushes
                        .iter()
                        .map(|(name, role, at)| (name.as_str(), *role, &out[*at]));
                    client
                        .push(worker, base, false, tensors)
                        .await
                        .map_err(|source| TaskError::Shard {
                            shard: index,
                            addr,
                            source,
                        })
                }
            }))
            .await?;
            for s in &self.shards {
                for (_, _, at) in &s.pushes {
                    pushed_bytes += out[*at].nbytes() as u64;
                }
            }
            let event = replies
                .iter()
                .zip(&self.shards)
                .filter(|(r, _)| {
                    matches!(
                        r.outcome,
                        PushOutcome::DroppedLate | PushOutcome::DroppedStale
                    )
                })
                .map(|(r, s)| format!("shard {}: {}", s.index, r.message))
                .collect::<Vec<_>>()
                .join("; ");
            let report = TaskProgress {
                step: step + 1,
                total_loss: total,
                cross_entropy_loss: xent,
                regularization_loss: reg,
                examples: examples as u32,
                correct: correct as u32,
                seconds: began.elapsed().as_secs_f64(),
                bytes_pulled: pulled_bytes,
                bytes_pushed: pushed_bytes,
                done: false,
                event,
            };
            if progress.send(report).await.is_err() {
                return Err(TaskError::Cancelled);
            }
        }
        let last = TaskProgress {
            step: self.spec.end_step,
            bytes_pulled: pulled_bytes,
            bytes_pushed: pushed_bytes,
            done: true,
            ..Default::default()
        };
        progress.send(last).await.map_err(|_| TaskError::Cancelled)
    }
}
