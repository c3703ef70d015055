//! The `psflow.coordinator.Coordinator` gRPC service and [`serve`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use psflow_proto::coordinator as pb;
use psflow_proto::coordinator::coordinator_server::{Coordinator, CoordinatorServer};
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use super::{is_final, JobError, JobManager, Watch};

/// Most bytes of one encoded SubmitJob (the graphs ride in it).
pub const MAX_SUBMIT_BYTES: usize = 64 << 20;

#[derive(Clone)]
pub struct CoordinatorService {
    jobs: Arc<JobManager>,
}

impl CoordinatorService {
    pub fn new(jobs: Arc<JobManager>) -> CoordinatorService {
        CoordinatorService { jobs }
    }

    pub fn jobs(&self) -> &Arc<JobManager> {
        &self.jobs
    }

    pub fn into_server(self) -> CoordinatorServer<CoordinatorService> {
        CoordinatorServer::new(self)
            .max_decoding_message_size(MAX_SUBMIT_BYTES)
            .max_encoding_message_size(MAX_SUBMIT_BYTES)
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    type WatchJobStream = EventStream;

    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let spec = request.into_inner().spec.ok_or_else(|| {
            Status::from(JobError::InvalidSpec("the request has no job spec".into()))
        })?;
        let job_id = self.jobs.submit(spec).await.inspect_err(|e| {
            tracing::info!(error = %e, "job refused");
        })?;
        Ok(Response::new(pb::SubmitJobResponse { job_id }))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::JobInfo>, Status> {
        Ok(Response::new(self.jobs.get(&request.into_inner().job_id)?))
    }

    async fn list_jobs(
        &self,
        _request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        Ok(Response::new(pb::ListJobsResponse {
            jobs: self.jobs.list(),
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let state = self.jobs.cancel(&request.into_inner().job_id)?;
        Ok(Response::new(pb::CancelJobResponse {
            state: state as i32,
        }))
    }

    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let req = request.into_inner();
        let w = self.jobs.watch(&req.job_id)?;
        Ok(Response::new(event_stream(w, req.history, !req.no_follow)))
    }
}

/// The job's kept events (with `history`), its info now, then (with
/// `follow`, unless it has ended) its live events until one carries a final
/// state.
fn event_stream(w: Watch, history: bool, follow: bool) -> EventStream {
    let ended = is_final(w.info.state());
    let mut head: Vec<pb::JobEvent> = if history { w.history } else { vec![] };
    head.push(pb::JobEvent {
        kind: Some(pb::job_event::Kind::Info(w.info)),
        time: super::now(),
    });
    let head = futures::stream::iter(head.into_iter().map(Ok));
    if ended || !follow {
        return Box::pin(head);
    }
    let tail = futures::stream::unfold(Some(w.live), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Ok(ev) => {
                let last =
                    matches!(&ev.kind, Some(pb::job_event::Kind::Info(i)) if is_final(i.state()));
                Some((Ok(ev), (!last).then_some(rx)))
            }
            Err(RecvError::Lagged(n)) => Some((
                Ok(pb::JobEvent {
                    kind: Some(pb::job_event::Kind::Message(format!(
                        "this watcher fell behind and missed {n} events"
                    ))),
                    time: super::now(),
                }),
                Some(rx),
            )),
            Err(RecvError::Closed) => None,
        }
    });
    Box::pin(head.chain(tail))
}

/// Serves `service` (and gRPC health) on `listener` until `shutdown`
/// completes.
pub async fn serve(
    listener: TcpListener,
    service: CoordinatorService,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<CoordinatorServer<CoordinatorService>>()
        .await;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "coordinator listening");
    }
    Server::builder()
        .tcp_nodelay(true)
        .add_service(health)
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}
