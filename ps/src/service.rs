//! The `psflow.ps.ParameterServer` gRPC service around one [`Shard`], and
//! [`serve`], which runs it (with gRPC health) on a bound listener until a
//! shutdown future completes.
//!
//! The shard sits behind a mutex; pushes and worker-count changes (which
//! may run the optimizer over the whole shard) run on tokio's blocking
//! pool. Pull snapshots the values under the lock (tensors share their
//! buffers, so this copies nothing) and streams them without it. Pulls
//! waiting for a version subscribe to a `watch` channel that every version
//! change and every Init publishes.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use psflow_graph::dtype::dtype_to_proto;
use psflow_proto::ps as pb;
use psflow_proto::ps::parameter_server_server::{ParameterServer, ParameterServerServer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};

use crate::config::{Mode, ShardConfig};
use crate::fresh::{self, FreshStep, Next, Publisher};
use crate::limits::{
    Limits, CONNECTION_WINDOW_BYTES, MAX_FRAME_BYTES, MAX_MESSAGE_BYTES, MAX_PULL_WAIT_MS,
    STREAM_WINDOW_BYTES,
};
use crate::shard::{Push, Shard};
use crate::shm::{self, Region, Regions};
use crate::wire::{pack_shm, Assembler, Received, RegionLookup, ShmCursor, Start};
use crate::{Error, Result};

/// What waiting pulls watch: which Init is current, its version, and the
/// version a sync step being applied makes (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Progress {
    generation: u64,
    version: u64,
    applying: u64,
}

struct Inner {
    limits: Limits,
    shard: Mutex<Option<Shard>>,
    progress: watch::Sender<Progress>,
    /// The values of the sync step being applied (or last applied).
    fresh: fresh::Current,
    /// The names of the last pull (that named any): sync steps update the
    /// variables in this order.
    pull_order: Mutex<Arc<Vec<String>>>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Shared-memory regions of clients on this host.
    regions: Arc<Regions>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Option<Shard>> {
        self.shard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the shard of job `job` under the lock.
    fn with_shard<T>(&self, job: &str, f: impl FnOnce(&mut Shard) -> Result<T>) -> Result<T> {
        let mut guard = self.lock();
        let shard = guard.as_mut().ok_or(Error::NotInitialized)?;
        if shard.job_id() != job {
            return Err(Error::WrongJob {
                serving: shard.job_id().to_string(),
                requested: job.to_string(),
            });
        }
        let out = f(shard)?;
        let version = shard.version();
        self.progress.send_if_modified(|p| {
            let changed = p.version != version;
            p.version = version;
            changed
        });
        Ok(out)
    }
}

/// The parameter-server service: one shard, replaced by each Init.
#[derive(Clone)]
pub struct PsService {
    inner: Arc<Inner>,
}

impl Default for PsService {
    fn default() -> PsService {
        PsService::new(Limits::default())
    }
}

impl PsService {
    /// A service with `limits`; shared memory is on unless the environment
    /// turns it off ([`shm::ENV`]).
    pub fn new(limits: Limits) -> PsService {
        PsService::with_shm(limits, shm::enabled_by_env())
    }

    /// A service with `limits`, serving shared-memory regions or not.
    pub fn with_shm(limits: Limits, shm: bool) -> PsService {
        PsService {
            inner: Arc::new(Inner {
                limits,
                shard: Mutex::new(None),
                progress: watch::channel(Progress {
                    generation: 0,
                    version: 0,
                    applying: 0,
                })
                .0,
                fresh: fresh::Current::default(),
                pull_order: Mutex::default(),
                bytes_in: AtomicU64::new(0),
                bytes_out: AtomicU64::new(0),
                regions: Arc::new(Regions::new(shm, shm::MAX_PS_REGION_BYTES)),
            }),
        }
    }

    /// Job `job`'s shared-memory region `id`, if this PS made it.
    pub(crate) fn region(&self, job: &str, id: u64) -> Option<Arc<Region>> {
        (id != 0).then(|| self.inner.regions.get(job, id)).flatten()
    }

    /// The tonic server for this service, with the protocol's message-size
    /// limits set both ways.
    pub fn into_server(self) -> ParameterServerServer<PsService> {
        ParameterServerServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Runs `f` on the job's shard on the blocking pool (it may apply the
    /// optimizer to every variable).
    ///
    /// The lock is taken on the blocking thread and `f` then runs on a
    /// kernel-pool thread, so the kernels' parallel loops start inside the
    /// pool: called from outside it, each of a step's ~140 updates would be
    /// handed to the pool and waited for on its own (two context switches
    /// each). No pool thread ever waits for the lock, so a pool thread that
    /// holds it cannot, while it joins its loops, pick up work that waits
    /// for it.
    async fn blocking<T: Send + 'static>(
        &self,
        job: String,
        f: impl FnOnce(&mut Shard) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.with_shard(&job, |s| rayon::scope(|_| f(s))))
            .await
            .map_err(|e| Error::Invalid(format!("the shard task failed: {e}")))?
    }

    /// What a Pull answers: waits until the shard reaches
    /// `req.min_version` (at most `req.deadline_ms`, capped), then takes
    /// the version and the values asked for (sharing their buffers). When
    /// a sync step making exactly that version is being applied, and the
    /// pull names only variables, the answer is that step's values as it
    /// makes them ([`PullAnswer::Streaming`]).
    pub async fn pull_values(&self, req: &pb::PullRequest) -> Result<PullAnswer, Status> {
        let inner = &self.inner;
        inner.remember_pull_order(&req.names);
        let wait_ms = req.deadline_ms.min(MAX_PULL_WAIT_MS);
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        // A step being applied holds the shard lock: look for its values
        // first, without the lock.
        if let Some(answer) = inner.streaming(req, deadline) {
            return Ok(answer);
        }
        // Under the shard lock, which Init also holds while publishing.
        let generation =
            inner.with_shard(&req.job_id, |_| Ok(inner.progress.borrow().generation))?;
        let mut rx = inner.progress.subscribe();
        let reached = |p: &Progress| {
            p.generation != generation
                || p.version >= req.min_version
                || p.applying == req.min_version
        };
        let timed_out = tokio::time::timeout_at(deadline.into(), rx.wait_for(|p| reached(p)))
            .await
            .is_err();
        if !timed_out && rx.borrow().generation == generation {
            if let Some(answer) = inner.streaming(req, deadline) {
                return Ok(answer);
            }
            // The step ended meanwhile: wait for its version.
            let _ = tokio::time::timeout_at(
                deadline.into(),
                rx.wait_for(|p| p.generation != generation || p.version >= req.min_version),
            )
            .await;
        }
        let progress = *rx.borrow();
        if progress.generation != generation {
            return Err(Error::Replaced {
                job: req.job_id.clone(),
            }
            .into());
        }
        if progress.version < req.min_version {
            return Err(Error::Deadline {
                want: req.min_version,
                have: progress.version,
                waited_ms: wait_ms,
            }
            .into());
        }
        let (version, values) =
            inner.with_shard(&req.job_id, |s| Ok((s.version(), s.pull(&req.names)?)))?;
        Ok(PullAnswer::Ready(version, values))
    }

    /// The values of a Pull's answer in the order asked for, in batches as
    /// they become ready (one batch, when they all were); counts the bytes.
    pub(crate) fn pull_batches(
        &self,
        job: String,
        answer: PullAnswer,
    ) -> (
        u64,
        impl Stream<Item = Result<Values, Status>> + Send + 'static,
    ) {
        let inner = self.inner.clone();
        let count = move |values: &Values| {
            let bytes: u64 = values.iter().map(|(_, t)| t.nbytes() as u64).sum();
            inner.bytes_out.fetch_add(bytes, Ordering::Relaxed);
            bytes
        };
        match answer {
            PullAnswer::Ready(version, values) => {
                let bytes = count(&values);
                tracing::debug!(job, version, bytes, "pull");
                let once = futures::stream::iter([Ok(values)]);
                (version, futures::future::Either::Left(once))
            }
            PullAnswer::Streaming {
                fresh,
                names,
                deadline,
            } => {
                let version = fresh.version();
                tracing::debug!(job, version, "pull, streamed as the step applies");
                let rx = fresh.subscribe();
                let batches = futures::stream::unfold(
                    (fresh, names, 0usize, rx),
                    move |(fresh, names, from, mut rx)| {
                        let count = count.clone();
                        async move {
                            if from == names.len() {
                                return None;
                            }
                            loop {
                                // Marks the state seen before looking at it.
                                rx.borrow_and_update();
                                match fresh.next(&names, from) {
                                    Next::Values(v) => {
                                        count(&v);
                                        let from = from + v.len();
                                        return Some((Ok(v), (fresh, names, from, rx)));
                                    }
                                    Next::Failed(e) => {
                                        let e = Status::internal(format!(
                                            "applying version {}: {e}",
                                            fresh.version()
                                        ));
                                        let end = names.len();
                                        return Some((Err(e), (fresh, names, end, rx)));
                                    }
                                    Next::Wait => {}
                                }
                                let waited =
                                    tokio::time::timeout_at(deadline.into(), rx.changed()).await;
                                if !matches!(waited, Ok(Ok(()))) {
                                    let e = Status::deadline_exceeded(format!(
                                        "version {} was still being applied at the pull's \
                                         deadline",
                                        fresh.version()
                                    ));
                                    let end = names.len();
                                    return Some((Err(e), (fresh, names, end, rx)));
                                }
                            }
                        }
                    },
                );
                (version, futures::future::Either::Right(batches))
            }
        }
    }
}

/// Tensors by name.
pub(crate) type Values = Vec<(String, psflow_kernels::Tensor)>;

/// How a Pull is answered (see [`PsService::pull_values`]).
pub enum PullAnswer {
    /// Every value asked for, of this version.
    Ready(u64, Values),
    /// The values of `fresh`'s version as its step makes them.
    Streaming {
        fresh: Arc<FreshStep>,
        names: Vec<String>,
        deadline: Instant,
    },
}

impl Inner {
    /// The observer of a push to job `job`'s shard of `variables`: a sync
    /// step it applies becomes current, marked as being applied, and its
    /// values go to the pulls waiting for them.
    fn publisher(&self, job: &str, variables: Arc<HashSet<String>>) -> Publisher<'_> {
        Publisher::new(&self.fresh, job, variables, |version| {
            self.progress.send_modify(|p| p.applying = version)
        })
    }

    /// Keeps the order of a pull's names for the next sync step.
    fn remember_pull_order(&self, names: &[String]) {
        let mut order = self
            .pull_order
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if order.as_slice() != names && !names.is_empty() {
            *order = Arc::new(names.to_vec());
        }
    }

    /// The values of the sync step making exactly `req.min_version`, if
    /// one is being applied (not yet ended) and will have every name
    /// asked for (a pull of every variable, naming none, waits for the
    /// version).
    fn streaming(&self, req: &pb::PullRequest, deadline: Instant) -> Option<PullAnswer> {
        let p = *self.progress.borrow();
        if req.names.is_empty() || p.version >= req.min_version || p.applying != req.min_version {
            return None;
        }
        let fresh = self.fresh.get(req.min_version)?;
        fresh
            .serves(&req.job_id, &req.names)
            .then(|| PullAnswer::Streaming {
                fresh,
                names: req.names.clone(),
                deadline,
            })
    }
}

/// Reads a client stream: the header from the first message, every tensor
/// from the chunks (their data in the messages, or in the shared-memory
/// regions `regions` finds for the header).
async fn receive<M, H>(
    mut stream: Streaming<M>,
    limits: Limits,
    split: impl Fn(M) -> (Option<H>, Vec<pb::TensorChunk>),
    on_header: impl FnOnce(&H) -> Result<()>,
    regions: impl FnOnce(&H) -> Option<RegionLookup>,
) -> Result<(H, Vec<Received>, u64)> {
    let status = |s: Status| Error::Invalid(format!("reading the request stream: {}", s.message()));
    let first = stream
        .message()
        .await
        .map_err(status)?
        .ok_or_else(|| Error::Invalid("the request stream is empty (no header)".into()))?;
    let (header, mut chunks) = split(first);
    let header =
        header.ok_or_else(|| Error::Invalid("the first message carries no header".into()))?;
    on_header(&header)?;
    let mut assembler = Assembler::new(limits);
    if let Some(lookup) = regions(&header) {
        assembler = assembler.with_regions(lookup);
    }
    let mut tensors = Vec::new();
    loop {
        for c in chunks {
            tensors.extend(assembler.add(c)?);
        }
        match stream.message().await.map_err(status)? {
            Some(m) => {
                let (h, c) = split(m);
                if h.is_some() {
                    return Err(Error::Invalid(
                        "only the first message of the stream may carry a header".into(),
                    ));
                }
                chunks = c;
            }
            None => break,
        }
    }
    assembler.finish()?;
    Ok((header, tensors, assembler.bytes()))
}

/// The chunks of a Pull's answer, message by message: pulls start with
/// small messages ([`Start::Growing`]); an answer with no values is one
/// empty message (it still carries the version). With `shm`, the values'
/// data go to the client's region while they fit.
pub(crate) fn pull_messages(
    values: &[(String, psflow_kernels::Tensor)],
    shm: Option<ShmCursor<'_>>,
) -> Vec<Vec<pb::TensorChunk>> {
    let messages = pack_shm(
        values
            .iter()
            .map(|(n, t)| (n.as_str(), pb::TensorRole::Gradient, t)),
        Start::Growing,
        shm,
    );
    if messages.is_empty() {
        vec![vec![]]
    } else {
        messages
    }
}

type PullStream = Pin<Box<dyn Stream<Item = Result<pb::PullResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ParameterServer for PsService {
    async fn init(
        &self,
        request: Request<Streaming<pb::InitRequest>>,
    ) -> Result<Response<pb::InitResponse>, Status> {
        let inner = &self.inner;
        // Refuse a duplicate Init before its data arrive.
        let check = |shard: Option<&Shard>, h: &pb::InitHeader| match shard {
            Some(s) if s.job_id() == h.job_id && !h.force => Err(Error::AlreadyInitialized {
                job: h.job_id.clone(),
                shard: s.config().shard,
            }),
            _ => Ok(()),
        };
        let (header, tensors, bytes) = receive(
            request.into_inner(),
            inner.limits,
            |m: pb::InitRequest| (m.header, m.chunks),
            |h| {
                ShardConfig::from_header(h)?;
                check(inner.lock().as_ref(), h)
            },
            |_| None,
        )
        .await?;
        let config = ShardConfig::from_header(&header)?;
        let values: Vec<_> = tensors.into_iter().map(|t| (t.name, t.value)).collect();
        let variables = values.len() as u32;
        let shard = tokio::task::spawn_blocking(move || Shard::new(config, values))
            .await
            .map_err(|e| Status::internal(format!("building the shard failed: {e}")))??;
        let version = shard.version();
        {
            let mut guard = inner.lock();
            check(guard.as_ref(), &header)?;
            *guard = Some(shard);
            inner.fresh.clear();
            inner.regions.keep_only(&header.job_id);
            inner.progress.send_modify(|p| {
                p.generation += 1;
                p.version = version;
                p.applying = 0;
            });
        }
        inner.bytes_in.fetch_add(bytes, Ordering::Relaxed);
        tracing::info!(job = %header.job_id, shard = header.shard, variables, bytes, version, "shard initialized");
        Ok(Response::new(pb::InitResponse {
            version,
            variables,
            bytes,
        }))
    }

    type PullStream = PullStream;

    async fn pull(
        &self,
        request: Request<pb::PullRequest>,
    ) -> Result<Response<PullStream>, Status> {
        // `serve_with` answers Pull in `raw_pull` without this copy-making
        // encoder; this is the same answer for anyone serving
        // `into_server()` alone.
        let req = request.into_inner();
        let answer = self.pull_values(&req).await?;
        let region = self.region(&req.job_id, req.shm_region);
        let mut cursor = 0;
        let (version, batches) = self.pull_batches(req.job_id, answer);
        let messages = batches.flat_map(move |batch| {
            let messages: Vec<_> = match batch {
                Ok(values) => pull_messages(&values, region.as_deref().map(|r| (r, &mut cursor)))
                    .into_iter()
                    .map(|chunks| Ok(pb::PullResponse { version, chunks }))
                    .collect(),
                Err(status) => vec![Err(status)],
            };
            futures::stream::iter(messages)
        });
        Ok(Response::new(Box::pin(messages)))
    }

    async fn push(
        &self,
        request: Request<Streaming<pb::PushRequest>>,
    ) -> Result<Response<pb::PushResponse>, Status> {
        let inner = &self.inner;
        let (header, tensors, bytes) = receive(
            request.into_inner(),
            inner.limits,
            |m: pb::PushRequest| (m.header, m.chunks),
            // Fail fast on a wrong job, before the data arrive.
            |h: &pb::PushHeader| inner.with_shard(&h.job_id, |_| Ok(())),
            |h: &pb::PushHeader| {
                let (regions, job) = (inner.regions.clone(), h.job_id.clone());
                Some(Box::new(move |id| regions.get(&job, id)))
            },
        )
        .await?;
        inner.bytes_in.fetch_add(bytes, Ordering::Relaxed);
        let push = Push {
            worker: header.worker,
            base_version: header.base_version,
            partial: header.partial,
            tensors,
        };
        let received = Instant::now();
        let inner2 = self.inner.clone();
        let job = header.job_id.clone();
        let reply = self
            .blocking(header.job_id.clone(), move |s| {
                // Pulls waiting for the version this push may make get
                // each variable as soon as it is updated.
                let order = inner2
                    .pull_order
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                s.set_pull_order(order);
                let publisher = inner2.publisher(&job, s.variable_names().clone());
                let reply = s.push_observed(push, &publisher);
                publisher.finish(|| match &reply {
                    Ok(_) => s.pull(&[]).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                });
                reply
            })
            .await?;
        tracing::debug!(
            job = %header.job_id,
            worker = header.worker,
            step = header.base_version,
            apply_ms = received.elapsed().as_secs_f64() * 1e3,
            outcome = ?reply.outcome,
            version = reply.version,
            "push"
        );
        Ok(Response::new(pb::PushResponse {
            outcome: reply.outcome as i32,
            version: reply.version,
            message: reply.message,
        }))
    }

    async fn stats(
        &self,
        _request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let inner = &self.inner;
        let mut r = pb::StatsResponse {
            bytes_in: inner.bytes_in.load(Ordering::Relaxed),
            bytes_out: inner.bytes_out.load(Ordering::Relaxed),
            shm_regions: inner.regions.count() as u32,
            shm_bytes: inner.regions.bytes(),
            ..Default::default()
        };
        if let Some(s) = inner.lock().as_ref() {
            let c = s.counters();
            r.initialized = true;
            r.job_id = s.job_id().to_string();
            r.version = s.version();
            r.pushes_accepted = c.pushes_accepted;
            r.pushes_dropped_late = c.pushes_dropped_late;
            r.pushes_dropped_stale = c.pushes_dropped_stale;
            r.updates_applied = c.updates_applied;
            if let Mode::Sync { workers, .. } = s.config().mode {
                r.workers = workers;
            }
            r.step_workers_done = s.step_workers_done();
            r.variables = s
                .variables()
                .into_iter()
                .map(|v| pb::VariableStats {
                    name: v.name,
                    dtype: dtype_to_proto(v.dtype) as i32,
                    shape: v.shape.iter().map(|&d| d as u64).collect(),
                    bytes: v.bytes,
                    slot_bytes: v.slot_bytes,
                })
                .collect();
        }
        Ok(Response::new(r))
    }

    async fn open_region(
        &self,
        request: Request<pb::OpenRegionRequest>,
    ) -> Result<Response<pb::OpenRegionResponse>, Status> {
        let req = request.into_inner();
        // Only for the job this PS serves.
        self.inner.with_shard(&req.job_id, |_| Ok(()))?;
        let region = self.inner.regions.open(&req.job_id, req.bytes)?;
        tracing::debug!(job = %req.job_id, region = region.id(), bytes = region.capacity(), "shared-memory region opened");
        Ok(Response::new(pb::OpenRegionResponse {
            region: region.id(),
            pid: std::process::id(),
            fd: region.raw_fd(),
            token: region.token().to_vec().into(),
            bytes: region.capacity() as u64,
        }))
    }

    async fn close_region(
        &self,
        request: Request<pb::CloseRegionRequest>,
    ) -> Result<Response<pb::CloseRegionResponse>, Status> {
        let req = request.into_inner();
        if !self.inner.regions.close(&req.job_id, req.region) {
            return Err(Status::not_found(format!(
                "job `{}` has no shared-memory region {} here",
                req.job_id, req.region
            )));
        }
        Ok(Response::new(pb::CloseRegionResponse {}))
    }

    async fn set_workers(
        &self,
        request: Request<pb::SetWorkersRequest>,
    ) -> Result<Response<pb::SetWorkersResponse>, Status> {
        let req = request.into_inner();
        let workers = req.workers;
        let version = self
            .blocking(req.job_id.clone(), move |s| {
                s.set_workers(workers)?;
                Ok(s.version())
            })
            .await?;
        tracing::info!(job = %req.job_id, workers, version, "sync workers changed");
        Ok(Response::new(pb::SetWorkersResponse { version }))
    }
}

/// Serves a parameter server with default [`Limits`] on `listener` until
/// `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    serve_with(listener, PsService::default(), shutdown).await
}

/// Serves `service` (and gRPC health, reporting it serving) on `listener`
/// until `shutdown` completes; in-flight calls finish first.
pub async fn serve_with(
    listener: TcpListener,
    service: PsService,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<ParameterServerServer<PsService>>()
        .await;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "parameter server listening");
    }
    Server::builder()
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .add_service(health)
        .add_service(crate::raw_pull::PsHttp::new(service))
        .serve_with_incoming_shutdown(psflow_proto::net::incoming(listener), shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::StepObserver;
    use psflow_kernels::Tensor;

    fn t(v: f32) -> Tensor {
        Tensor::new(vec![1], vec![v]).unwrap()
    }

    fn pull_request(names: &[&str], min_version: u64) -> pb::PullRequest {
        pb::PullRequest {
            job_id: "job".into(),
            names: names.iter().map(|s| s.to_string()).collect(),
            min_version,
            deadline_ms: 5_000,
            shm_region: 0,
        }
    }

    /// Whether `s` yields nothing for 50 ms.
    async fn quiet<S: Stream + Unpin>(s: &mut S) -> bool {
        tokio::time::timeout(Duration::from_millis(50), s.next())
            .await
            .is_err()
    }

    /// A service holding a shard of `a`, `b` and `c`, a step making
    /// version 1 begun on it (as a push that completes a sync step does).
    fn service_applying() -> (PsService, Arc<HashSet<String>>) {
        let service = PsService::default();
        let vars = ["a", "b", "c"].map(|n| (n.to_string(), t(0.0))).to_vec();
        let shard = Shard::new(ShardConfig::new("job", 1.0, 1), vars).unwrap();
        let names = shard.variable_names().clone();
        *service.inner.lock() = Some(shard);
        (service, names)
    }

    #[tokio::test]
    async fn a_pull_for_the_version_being_applied_gets_each_value_as_it_is_made() {
        let (service, names) = service_applying();
        let inner = service.inner.clone();
        let publisher = inner.publisher("job", names);
        let pull = {
            let service = service.clone();
            tokio::spawn(async move {
                service
                    .pull_values(&pull_request(&["b", "a", "c"], 1))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!pull.is_finished(), "nothing of version 1 exists yet");
        publisher.begin(1);
        let answer = pull.await.unwrap().unwrap();
        assert!(matches!(answer, PullAnswer::Streaming { .. }));
        let (version, batches) = service.pull_batches("job".into(), answer);
        assert_eq!(version, 1);
        let mut batches = Box::pin(batches);
        // `b` first, as asked; `a` alone is not enough.
        publisher.updated("a", &t(1.0));
        assert!(
            quiet(&mut batches).await,
            "a batch came before `b` was made"
        );
        publisher.updated("b", &t(2.0));
        let batch = batches.next().await.unwrap().unwrap();
        assert_eq!(
            batch,
            [("b".to_string(), t(2.0)), ("a".to_string(), t(1.0))]
        );
        // `c` comes with the step's end.
        assert!(quiet(&mut batches).await, "nothing is ready");
        publisher.finish(|| Ok(vec![("c".to_string(), t(3.0))]));
        let batch = batches.next().await.unwrap().unwrap();
        assert_eq!(batch, [("c".to_string(), t(3.0))]);
        assert!(batches.next().await.is_none());
        // A pull of every variable (no names) waits for the version itself.
        let whole = tokio::time::timeout(
            Duration::from_millis(50),
            service.pull_values(&pull_request(&[], 1)),
        )
        .await;
        assert!(whole.is_err(), "version 1 is not complete");
    }

    #[tokio::test]
    async fn a_step_that_fails_while_streamed_fails_the_pull() {
        let (service, names) = service_applying();
        let inner = service.inner.clone();
        let publisher = inner.publisher("job", names);
        publisher.begin(1);
        let answer = service
            .pull_values(&pull_request(&["a", "c"], 1))
            .await
            .unwrap();
        let (_, batches) = service.pull_batches("job".into(), answer);
        let mut batches = Box::pin(batches);
        publisher.updated("a", &t(1.0));
        assert_eq!(batches.next().await.unwrap().unwrap().len(), 1);
        publisher.finish(|| Err("the optimizer failed".into()));
        let e = batches.next().await.unwrap().unwrap_err();
        assert!(e.message().contains("the optimizer failed"), "{e}");
        assert!(batches.next().await.is_none());
    }
}
