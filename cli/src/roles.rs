//! The long-running roles: `psflow coordinator`, `psflow ps` and
//! `psflow worker`. Each binds its gRPC address (logging the one it got, so
//! `--listen 127.0.0.1:0` works), serves gRPC health next to its service,
//! registers itself in etcd on a lease kept alive in the background, and on
//! SIGTERM or Ctrl-C leaves the cluster (its entry disappears at once) and
//! stops. A coordinator first campaigns for leadership: a second one waits
//! as a standby and takes over, with the job records, when the first stops.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use psflow_coordinator::job::{self, CoordinatorService, JobManager};
use psflow_coordinator::membership::{
    EtcdMembership, MemberInfo, Membership, Registration, Role, MAX_TTL,
};
use psflow_kernels::cuda::CudaDevice;
use psflow_worker::task::WorkerService;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// How long etcd may take to answer the first time.
const ETCD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopping server may take to finish its open calls.
const DRAIN: Duration = Duration::from_secs(5);
/// The election coordinators campaign in.
pub const LEADER_ELECTION: &str = "coordinator";

/// Flags every role takes.
#[derive(Args, Debug, Clone)]
pub struct RoleArgs {
    /// Address to serve gRPC on, HOST:PORT (port 0: any free port; the
    /// bound address is logged and registered).
    #[arg(long)]
    pub listen: Option<String>,
    /// etcd endpoints, comma-separated (e.g. http://10.0.0.2:2379).
    #[arg(
        long,
        env = "PSFLOW_ETCD_ENDPOINTS",
        value_delimiter = ',',
        required = true
    )]
    pub etcd: Vec<String>,
    /// Name of the cluster: its keys live under /psflow/<cluster>/ in etcd.
    #[arg(long, env = "PSFLOW_CLUSTER", default_value = "default")]
    pub cluster: String,
    /// Member id, unique per role in the cluster (default: host name and port).
    #[arg(long)]
    pub name: Option<String>,
    /// Address other processes reach this one at (default: the bound
    /// address, or this host's name when bound to 0.0.0.0).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Seconds without a keep-alive after which the cluster counts this
    /// process as lost.
    #[arg(long, default_value_t = 10.0)]
    pub lease_ttl: f64,
}

/// `psflow worker`'s own flags.
#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub role: RoleArgs,
    /// auto (a GPU when one is usable, else the CPU), cpu, or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// The device a worker's training steps run on, from `--device`: the CPU,
/// or a CUDA GPU opened now (so a worker that cannot use the GPU it was
/// asked for fails at start, not at its first task). Said in the log.
fn pick_device(flag: &str) -> Result<(String, Option<Arc<CudaDevice>>)> {
    let (gpu, said) = crate::trainer::open_device(flag)?;
    match &gpu {
        None => tracing::info!("device: {said}"),
        Some(_) => tracing::info!(
            "device: {said}; training steps run on the GPU (not yet run on hardware: docs/cuda.md)"
        ),
    }
    let name = gpu
        .as_ref()
        .map_or("cpu".to_string(), |d| format!("cuda:{}", d.ordinal()));
    Ok((name, gpu))
}

pub(crate) fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PSFLOW_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// What a role serves once it is bound.
#[derive(Clone)]
enum Service {
    Coordinator(CoordinatorService),
    Ps,
    Worker(WorkerService),
}

/// Runs `role` until SIGTERM / Ctrl-C (exit 0) or until it can no longer
/// serve (an error: the listener failed, etcd lost its lease).
pub fn run(role: Role, args: &RoleArgs, device: Option<&str>) -> Result<()> {
    init_logging();
    let device = match device {
        Some(d) => Some(pick_device(d)?),
        None => None,
    };
    if !(args.lease_ttl >= 1.0 && args.lease_ttl <= MAX_TTL.as_secs_f64()) {
        bail!(
            "--lease-ttl {} must be between 1 and {} seconds",
            args.lease_ttl,
            MAX_TTL.as_secs()
        );
    }
    let ttl = Duration::from_secs_f64(args.lease_ttl);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve_role(role, args, ttl, device))
}

async fn serve_role(
    role: Role,
    args: &RoleArgs,
    ttl: Duration,
    device: Option<(String, Option<Arc<CudaDevice>>)>,
) -> Result<()> {
    let listen = args.listen.clone().unwrap_or_else(|| match role {
        Role::Coordinator => "127.0.0.1:7070".into(),
        _ => "127.0.0.1:0".into(),
    });
    let listener = TcpListener::bind(&listen).await.with_context(|| {
        format!("cannot listen on {listen} (is another process using the port? --listen HOST:0 picks a free one)")
    })?;
    let bound: SocketAddr = listener.local_addr()?;
    let advertise = match &args.advertise {
        Some(a) => a.clone(),
        None if bound.ip().is_unspecified() => format!("{}:{}", host_name(), bound.port()),
        None => bound.to_string(),
    };
    let id = args.name.clone().unwrap_or_else(|| {
        format!("{}-{}", host_name(), bound.port())
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._:-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    });
    tracing::info!(
        "psflow {role} {id} listening on {bound} (advertised as {advertise}; cluster {:?}, etcd {})",
        args.cluster,
        args.etcd.join(",")
    );
    let membership: Arc<dyn Membership> = Arc::new(
        EtcdMembership::connect(&args.etcd, &args.cluster, ETCD_TIMEOUT)
            .await
            .with_context(|| {
                format!(
                    "psflow {role} needs etcd at {} (start it, or point --etcd / PSFLOW_ETCD_ENDPOINTS at it)",
                    args.etcd.join(",")
                )
            })?,
    );

    let service = match role {
        // Served at once as a standby (UNAVAILABLE naming the leader,
        // health NOT_SERVING) until it wins the election below.
        Role::Coordinator => Service::Coordinator(CoordinatorService::standby(
            &membership
                .leader(LEADER_ELECTION)
                .await?
                .unwrap_or_default(),
        )),
        Role::Ps => Service::Ps,
        Role::Worker => Service::Worker(match device.as_ref().and_then(|d| d.1.clone()) {
            Some(gpu) => WorkerService::on_gpu(gpu),
            None => WorkerService::new(),
        }),
    };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stop_rx.await;
    };
    let server = tokio::spawn(serve(service.clone(), listener, shutdown));

    let mut info = MemberInfo::new(role, &id, &advertise)
        .with_meta("version", env!("CARGO_PKG_VERSION"))
        .with_meta("pid", std::process::id().to_string())
        .with_meta("threads", psflow_kernels::threads::current().to_string())
        .with_meta(
            "pinned_threads",
            psflow_kernels::threads::pinned().to_string(),
        );
    if let Some((d, _)) = &device {
        info = info.with_meta("device", d.as_str());
    }
    let registration: Registration = membership
        .register(info, ttl)
        .await
        .with_context(|| format!("registering {role} {id} in etcd"))?;
    tracing::info!(
        "registered as {role} {id} (lease {:.0} s)",
        ttl.as_secs_f64()
    );

    // A coordinator leads before it serves jobs.
    let mut leadership = None;
    if let Service::Coordinator(coordinator) = &service {
        if let Some(leader) = membership.leader(LEADER_ELECTION).await? {
            tracing::info!("{leader} leads the cluster: waiting as a standby");
        }
        let campaign = membership.campaign(LEADER_ELECTION, &advertise, ttl);
        let won = tokio::select! {
            l = campaign => Some(l.context("campaigning for leadership in etcd")?),
            s = stop_signal() => {
                tracing::info!("stopping ({s}) before becoming the leader");
                None
            }
        };
        match won {
            Some(l) => {
                let jobs = JobManager::new(membership.clone())
                    .await
                    .context("loading the job records from etcd")?;
                coordinator.lead(jobs);
                tracing::info!("leading the cluster");
                leadership = Some(l);
            }
            None => {
                let _ = registration.close().await;
                let _ = stop_tx.send(());
                let _ = tokio::time::timeout(DRAIN, server).await;
                return Ok(());
            }
        }
    }

    let lost_leadership = async {
        match &leadership {
            Some(l) => l.lost().await,
            None => std::future::pending().await,
        }
    };
    let outcome: Result<()> = tokio::select! {
        s = stop_signal() => {
            tracing::info!("stopping ({s})");
            Ok(())
        }
        _ = registration.lost() => Err(anyhow!(
            "lost the etcd lease of {role} {id} (etcd unreachable for longer than --lease-ttl); \
             exiting so that a supervisor restarts it"
        )),
        _ = lost_leadership => Err(anyhow!(
            "lost the coordinator leadership (etcd unreachable for longer than --lease-ttl); \
             exiting so that a standby takes over"
        )),
    };
    if let Some(jobs) = match &service {
        Service::Coordinator(c) => c.jobs(),
        _ => None,
    } {
        jobs.shutdown().await;
    }
    if let Err(e) = registration.close().await {
        tracing::warn!(error = %e, "could not remove this member from etcd (its lease will expire)");
    }
    if let Some(l) = leadership {
        if let Err(e) = l.resign().await {
            tracing::warn!(error = %e, "could not resign the leadership (its lease will expire)");
        }
    }
    let _ = stop_tx.send(());
    match tokio::time::timeout(DRAIN, server).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the server stopped with an error"),
        Ok(_) => {}
        Err(_) => tracing::info!(
            "open calls did not finish within {} s; stopping anyway",
            DRAIN.as_secs()
        ),
    }
    if outcome.is_ok() {
        tracing::info!("stopped");
    }
    outcome
}

async fn serve(
    service: Service,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    match service {
        Service::Coordinator(c) => job::serve(listener, c, shutdown).await,
        Service::Ps => psflow_ps::serve(listener, shutdown).await,
        Service::Worker(w) => psflow_worker::task::serve(listener, w, shutdown).await,
    }
}

/// Completes on SIGTERM or SIGINT, naming it.
async fn stop_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}
