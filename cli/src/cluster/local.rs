//! A whole cluster inside this process on loopback gRPC: an in-memory
//! membership store, P parameter servers, W workers and a coordinator, each
//! a real tonic server on `127.0.0.1:0` registered with a lease as a
//! separate process would be.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use psflow_coordinator::job::{self, CoordinatorService, JobManager};
use psflow_coordinator::membership::{
    MemberInfo, Membership, MemoryMembership, Registration, Role,
};
use psflow_worker::task::WorkerService;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Lease of the in-process members: a worker that stops keeping it alive
/// is noticed within this long.
pub const LEASE_TTL: Duration = Duration::from_secs(2);

/// One server of the local cluster.
pub struct Member {
    pub addr: String,
    registration: Option<Registration>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
}

impl Member {
    async fn stop(mut self) {
        if let Some(r) = self.registration.take() {
            let _ = r.close().await;
        }
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.server.await;
    }
}

pub struct LocalCluster {
    pub coordinator: Member,
    pub ps: Vec<Member>,
    pub workers: Vec<(WorkerService, Member)>,
}

async fn bind() -> Result<(TcpListener, String)> {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a loopback port")?;
    let addr = l.local_addr()?.to_string();
    Ok((l, addr))
}

impl LocalCluster {
    /// Starts `workers` workers, `ps` parameter servers and a coordinator.
    pub async fn start(workers: usize, ps: usize) -> Result<LocalCluster> {
        // The tasks' logs stay quiet under the progress bar unless asked
        // for (`PSFLOW_LOG=debug` shows each step's timeline).
        if std::env::var_os("PSFLOW_LOG").is_some() {
            crate::roles::init_logging();
        }
        let membership = Arc::new(MemoryMembership::new("local")?);
        let dyn_m: Arc<dyn Membership> = membership.clone();
        let mut ps_members = Vec::new();
        for i in 0..ps {
            let (l, addr) = bind().await?;
            let (stop, rx) = oneshot::channel::<()>();
            let server = tokio::spawn(async move {
                if let Err(e) = psflow_ps::serve(l, async move {
                    let _ = rx.await;
                })
                .await
                {
                    tracing::error!(error = %e, "parameter server stopped");
                }
            });
            let reg = dyn_m
                .register(
                    MemberInfo::new(Role::Ps, format!("ps-{i}"), &addr),
                    LEASE_TTL,
                )
                .await?;
            ps_members.push(Member {
                addr,
                registration: Some(reg),
                stop: Some(stop),
                server,
            });
        }
        let mut worker_members = Vec::new();
        for i in 0..workers {
            let (l, addr) = bind().await?;
            let (stop, rx) = oneshot::channel::<()>();
            let service = WorkerService::new();
            let s = service.clone();
            let server = tokio::spawn(async move {
                if let Err(e) = psflow_worker::task::serve(l, s, async move {
                    let _ = rx.await;
                })
                .await
                {
                    tracing::error!(error = %e, "worker stopped");
                }
            });
            let reg = dyn_m
                .register(
                    MemberInfo::new(Role::Worker, format!("worker-{i}"), &addr),
                    LEASE_TTL,
                )
                .await?;
            worker_members.push((
                service,
                Member {
                    addr,
                    registration: Some(reg),
                    stop: Some(stop),
                    server,
                },
            ));
        }
        let jobs = JobManager::new(dyn_m.clone()).await?;
        let (l, addr) = bind().await?;
        let (stop, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            if let Err(e) = job::serve(l, CoordinatorService::new(jobs), async move {
                let _ = rx.await;
            })
            .await
            {
                tracing::error!(error = %e, "coordinator stopped");
            }
        });
        let reg = dyn_m
            .register(
                MemberInfo::new(Role::Coordinator, "coordinator-0", &addr),
                LEASE_TTL,
            )
            .await?;
        Ok(LocalCluster {
            coordinator: Member {
                addr,
                registration: Some(reg),
                stop: Some(stop),
                server,
            },
            ps: ps_members,
            workers: worker_members,
        })
    }

    /// Stops every server, workers first.
    pub async fn stop(self) {
        for (_, w) in self.workers {
            w.stop().await;
        }
        self.coordinator.stop().await;
        for p in self.ps {
            p.stop().await;
        }
    }
}
