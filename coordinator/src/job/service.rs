//! The `psflow.coordinator.Coordinator` gRPC service and [`serve`].

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};

use futures::{Stream, StreamExt};
use psflow_proto::coordinator as pb;
use psflow_proto::coordinator::coordinator_server::{Coordinator, CoordinatorServer};
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::RecvError;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use super::{is_final, JobError, JobManager, Watch};

/// Most bytes of one encoded SubmitJob (the graphs ride in it).
pub const MAX_SUBMIT_BYTES: usize = 64 << 20;

/// The coordinator's gRPC face. A standby coordinator (one waiting for
/// the leadership) serves it too, answering every call `UNAVAILABLE` with
/// the leader's address, and reports NOT_SERVING on health until
/// [`CoordinatorService::lead`] hands it the jobs.
#[derive(Clone)]
pub struct CoordinatorService {
    jobs: Arc<OnceLock<Arc<JobManager>>>,
    /// Who leads while this one waits, for the `UNAVAILABLE` message.
    leader: Arc<Mutex<String>>,
    /// Becomes true when it leads (health follows it).
    leading: Arc<tokio::sync::watch::Sender<bool>>,
}

impl CoordinatorService {
    pub fn new(jobs: Arc<JobManager>) -> CoordinatorService {
        let s = CoordinatorService::standby("");
        s.lead(jobs);
        s
    }

    /// A service that answers `UNAVAILABLE` (naming `leader`, if known)
    /// until [`CoordinatorService::lead`].
    pub fn standby(leader: &str) -> CoordinatorService {
        CoordinatorService {
            jobs: Arc::new(OnceLock::new()),
            leader: Arc::new(Mutex::new(leader.to_string())),
            leading: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }

    /// This coordinator now leads: serve `jobs`.
    pub fn lead(&self, jobs: Arc<JobManager>) {
        let _ = self.jobs.set(jobs);
        self.leading.send_replace(true);
    }

    /// Whether it leads (serves jobs).
    pub fn is_leading(&self) -> bool {
        self.jobs.get().is_some()
    }

    pub fn jobs(&self) -> Option<&Arc<JobManager>> {
        self.jobs.get()
    }

    fn manager(&self) -> Result<&Arc<JobManager>, Status> {
        self.jobs.get().ok_or_else(|| {
            let leader = self.leader.lock().expect("leader lock").clone();
            Status::unavailable(if leader.is_empty() {
                "this coordinator is a standby waiting for the leadership; use the leader".into()
            } else {
                format!("this coordinator is a standby; the leader is at {leader}")
            })
        })
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
        let job_id = self.manager()?.submit(spec).await.inspect_err(|e| {
            tracing::info!(error = %e, "job refused");
        })?;
        Ok(Response::new(pb::SubmitJobResponse { job_id }))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::JobInfo>, Status> {
        Ok(Response::new(
            self.manager()?.get(&request.into_inner().job_id)?,
        ))
    }

    async fn list_jobs(
        &self,
        _request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        Ok(Response::new(pb::ListJobsResponse {
            jobs: self.manager()?.list(),
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let state = self.manager()?.cancel(&request.into_inner().job_id)?;
        Ok(Response::new(pb::CancelJobResponse {
            state: state as i32,
        }))
    }

    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let req = request.into_inner();
        let w = self.manager()?.watch(&req.job_id)?;
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
    if service.is_leading() {
        reporter
            .set_serving::<CoordinatorServer<CoordinatorService>>()
            .await;
    } else {
        // NOT_SERVING (overall and for the service) until it leads.
        reporter
            .set_not_serving::<CoordinatorServer<CoordinatorService>>()
            .await;
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let mut leading = service.leading.subscribe();
        tokio::spawn(async move {
            if leading.wait_for(|l| *l).await.is_err() {
                return;
            }
            reporter
                .set_serving::<CoordinatorServer<CoordinatorService>>()
                .await;
            reporter
                .set_service_status("", tonic_health::ServingStatus::Serving)
                .await;
        });
    }
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "coordinator listening");
    }
    Server::builder()
        .add_service(health)
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(psflow_proto::net::incoming(listener), shutdown)
        .await
}
