//! An in-process cluster for tests: in-memory membership, P parameter
//! servers, W workers and a coordinator, each a real tonic server on
//! `127.0.0.1:0` registered with a short lease.

use std::sync::Arc;
use std::time::Duration;

use psflow_coordinator::job::{self, CoordinatorService, JobManager};
use psflow_coordinator::membership::{
    MemberInfo, Membership, MemoryMembership, Registration, Role,
};
use psflow_proto::coordinator::coordinator_client::CoordinatorClient;
use psflow_worker::task::WorkerService;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub const TTL: Duration = Duration::from_millis(600);

pub struct Server {
    pub addr: String,
    pub registration: Option<Registration>,
    stop: Option<oneshot::Sender<()>>,
}

impl Server {
    /// Stops serving without leaving the membership cleanly: the lease
    /// expires as a crashed process's would.
    pub fn crash(&mut self) {
        if let Some(r) = self.registration.take() {
            r.abandon();
        }
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub struct Cluster {
    #[allow(dead_code)]
    pub membership: Arc<MemoryMembership>,
    pub coordinator: Server,
    pub ps: Vec<Server>,
    pub workers: Vec<(WorkerService, Server)>,
}

async fn bind() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap().to_string();
    (l, a)
}

async fn register(m: &Arc<dyn Membership>, role: Role, id: String, addr: &str) -> Registration {
    m.register(MemberInfo::new(role, id, addr), TTL)
        .await
        .unwrap()
}

impl Cluster {
    pub async fn start(workers: usize, ps: usize) -> Cluster {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let membership = Arc::new(MemoryMembership::new("test").unwrap());
        let m: Arc<dyn Membership> = membership.clone();
        let mut ps_servers = vec![];
        for i in 0..ps {
            let (l, addr) = bind().await;
            let (stop, rx) = oneshot::channel::<()>();
            tokio::spawn(psflow_ps::serve(l, async move {
                let _ = rx.await;
            }));
            let reg = register(&m, Role::Ps, format!("ps-{i}"), &addr).await;
            ps_servers.push(Server {
                addr,
                registration: Some(reg),
                stop: Some(stop),
            });
        }
        let mut worker_servers = vec![];
        for i in 0..workers {
            let (l, addr) = bind().await;
            let (stop, rx) = oneshot::channel::<()>();
            let service = WorkerService::new();
            tokio::spawn(psflow_worker::task::serve(l, service.clone(), async move {
                let _ = rx.await;
            }));
            let reg = register(&m, Role::Worker, format!("worker-{i}"), &addr).await;
            worker_servers.push((
                service,
                Server {
                    addr,
                    registration: Some(reg),
                    stop: Some(stop),
                },
            ));
        }
        let jobs = JobManager::new(m.clone()).await.unwrap();
        let (l, addr) = bind().await;
        let (stop, rx) = oneshot::channel::<()>();
        tokio::spawn(job::serve(l, CoordinatorService::new(jobs), async move {
            let _ = rx.await;
        }));
        let reg = register(&m, Role::Coordinator, "coordinator-0".into(), &addr).await;
        Cluster {
            membership,
            coordinator: Server {
                addr,
                registration: Some(reg),
                stop: Some(stop),
            },
            ps: ps_servers,
            workers: worker_servers,
        }
    }

    pub async fn client(&self) -> CoordinatorClient<Channel> {
        CoordinatorClient::connect(format!("http://{}", self.coordinator.addr))
            .await
            .unwrap()
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }
}
