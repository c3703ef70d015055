//! The `psflow.worker.Worker` gRPC service and [`serve`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::Stream;
use psflow_proto::worker as pb;
use psflow_proto::worker::worker_server::{Worker, WorkerServer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use psflow_graph::RendezvousKey;
use psflow_kernels::cuda::CudaDevice;
use psflow_proto::ps::TensorRole;

use super::eval::evaluate;
use super::graphs::{Graphs, MAX_RECV_WAIT};
use super::step::Task;
use super::TaskError;

/// Most bytes of one encoded request (a TaskSpec or EvalSpec carries a
/// graph; variables never ride in it).
pub const MAX_SPEC_BYTES: usize = 64 << 20;

#[derive(Default)]
struct State {
    next: AtomicU64,
    running: Mutex<HashMap<u64, (String, AbortHandle)>>,
    started: AtomicU64,
    finished: AtomicU64,
    failed: AtomicU64,
}

/// A worker: runs the tasks the coordinator hands it, and the graph
/// partitions registered with it. Cloning shares the state.
#[derive(Clone, Default)]
pub struct WorkerService {
    state: Arc<State>,
    graphs: Arc<Graphs>,
    /// The GPU training steps run on (None: the CPU).
    gpu: Option<Arc<CudaDevice>>,
}

impl WorkerService {
    pub fn new() -> WorkerService {
        WorkerService::default()
    }

    /// A worker whose tasks' training steps run on `device`.
    pub fn on_gpu(device: Arc<CudaDevice>) -> WorkerService {
        WorkerService {
            gpu: Some(device),
            ..WorkerService::default()
        }
    }

    /// Stops every running task at once (its RunTask stream ends with an
    /// error): what a worker dying looks like to the coordinator.
    pub fn abort_all(&self) {
        let running = std::mem::take(&mut *self.state.running.lock().expect("running lock"));
        for (_, (job, h)) in running {
            tracing::warn!(job, "task aborted");
            h.abort();
        }
    }

    /// Job ids of the running tasks.
    pub fn running(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .state
            .running
            .lock()
            .expect("running lock")
            .values()
            .map(|(j, _)| j.clone())
            .collect();
        v.sort();
        v
    }

    /// Handles of the registered graphs.
    pub fn graph_handles(&self) -> Vec<String> {
        self.graphs.handles()
    }

    pub fn into_server(self) -> WorkerServer<WorkerService> {
        WorkerServer::new(self)
            .max_decoding_message_size(MAX_SPEC_BYTES)
            .max_encoding_message_size(MAX_SPEC_BYTES)
    }
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::TaskProgress, Status>> + Send>>;
type RecvStream = Pin<Box<dyn Stream<Item = Result<pb::RecvTensorResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Worker for WorkerService {
    type RunTaskStream = ProgressStream;
    type RecvTensorStream = RecvStream;

    async fn run_task(
        &self,
        request: Request<pb::TaskSpec>,
    ) -> Result<Response<Self::RunTaskStream>, Status> {
        let spec = request.into_inner();
        let job = spec.job_id.clone();
        let worker = spec.worker;
        tracing::info!(
            job,
            worker,
            steps = spec.end_step - spec.start_step.min(spec.end_step),
            "task starting"
        );
        let task = Task::prepare(spec, self.gpu.clone()).await?;
        let (tx, rx) = mpsc::channel::<Result<pb::TaskProgress, Status>>(16);
        let (ptx, mut prx) = mpsc::channel(16);
        let state = self.state.clone();
        let id = state.next.fetch_add(1, Ordering::Relaxed);
        state.started.fetch_add(1, Ordering::Relaxed);
        let forward_tx = tx.clone();
        // Progress to the stream, as it comes.
        tokio::spawn(async move {
            while let Some(p) = prx.recv().await {
                if forward_tx.send(Ok(p)).await.is_err() {
                    break;
                }
            }
        });
        let handle = tokio::spawn({
            let state = state.clone();
            let job = job.clone();
            async move {
                let r = task.run(ptx).await;
                state.running.lock().expect("running lock").remove(&id);
                match r {
                    Ok(()) => {
                        state.finished.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(job, worker, "task finished");
                    }
                    Err(TaskError::Cancelled) => {
                        state.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(job, worker, "task cancelled: nobody follows it");
                    }
                    Err(e) => {
                        state.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(job, worker, error = %e, "task failed");
                        let _ = tx.send(Err(e.into())).await;
                    }
                }
            }
        });
        state
            .running
            .lock()
            .expect("running lock")
            .insert(id, (job, handle.abort_handle()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn evaluate(
        &self,
        request: Request<pb::EvalSpec>,
    ) -> Result<Response<pb::EvalResult>, Status> {
        let spec = request.into_inner();
        tracing::info!(job = spec.job_id, "evaluating");
        Ok(Response::new(evaluate(spec).await?))
    }

    async fn recv_tensor(
        &self,
        request: Request<pb::RecvTensorRequest>,
    ) -> Result<Response<Self::RecvTensorStream>, Status> {
        let request = request.into_inner();
        let key = RendezvousKey::parse(&request.key)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let wait = match request.deadline_ms {
            0 => psflow_graph::executor::DEFAULT_RECV_TIMEOUT,
            ms if ms > MAX_RECV_WAIT.as_millis() as u64 => {
                return Err(Status::invalid_argument(format!(
                    "RecvTensor deadline_ms {ms} is over the limit of {} ms",
                    MAX_RECV_WAIT.as_millis()
                )))
            }
            ms => std::time::Duration::from_millis(ms),
        };
        let value = self.graphs.recv(request.step_id, &key, wait).await?;
        // One tensor, used only once whole: full-size messages.
        let messages = psflow_ps::wire::pack(
            [(key.tensor_name.as_str(), TensorRole::Gradient, &value)],
            psflow_ps::wire::Start::Full,
        );
        let stream = futures::stream::iter(
            messages
                .into_iter()
                .map(|chunks| Ok(pb::RecvTensorResponse { chunks })),
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn register_graph(
        &self,
        request: Request<pb::RegisterGraphRequest>,
    ) -> Result<Response<pb::RegisterGraphResponse>, Status> {
        let graph_handle = self.graphs.register(request.into_inner())?;
        Ok(Response::new(pb::RegisterGraphResponse { graph_handle }))
    }

    async fn run_graph(
        &self,
        request: Request<pb::RunGraphRequest>,
    ) -> Result<Response<pb::RunGraphResponse>, Status> {
        let request = request.into_inner();
        let span = tracing::info_span!(
            "run_graph",
            handle = request.graph_handle,
            step = request.step_id
        );
        Ok(Response::new(
            self.graphs.run(request).instrument(span).await?,
        ))
    }

    async fn deregister_graph(
        &self,
        request: Request<pb::DeregisterGraphRequest>,
    ) -> Result<Response<pb::DeregisterGraphResponse>, Status> {
        self.graphs.deregister(&request.into_inner().graph_handle)?;
        Ok(Response::new(pb::DeregisterGraphResponse {}))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let s = &self.state;
        Ok(Response::new(pb::StatusResponse {
            running: self.running(),
            tasks_started: s.started.load(Ordering::Relaxed),
            tasks_finished: s.finished.load(Ordering::Relaxed),
            tasks_failed: s.failed.load(Ordering::Relaxed),
        }))
    }
}

/// Serves `service` (and gRPC health) on `listener` until `shutdown`
/// completes; running tasks are aborted then.
pub async fn serve(
    listener: TcpListener,
    service: WorkerService,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<WorkerServer<WorkerService>>().await;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "worker listening");
    }
    let keep = service.clone();
    let r = Server::builder()
        .add_service(health)
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(psflow_proto::net::incoming(listener), shutdown)
        .await;
    keep.abort_all();
    r
}
