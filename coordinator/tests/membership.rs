//! The membership conformance suite: every test in `membership/suite.rs`
//! runs against `MemoryMembership` and against `EtcdMembership` on a real
//! etcd (one fresh server per test; etcd missing is a failure that says how
//! to install it, never a skip). Then a few etcd-only tests: a restarted
//! etcd keeps job state, an unreachable etcd is a clear error, a dead etcd
//! loses leases.

#[path = "membership/suite.rs"]
mod suite;

use std::sync::Arc;
use std::time::Duration;

use psflow_coordinator::membership::testing::EtcdServer;
use psflow_coordinator::membership::{
    MemberInfo, Membership, MembershipError, MemoryMembership, Role,
};

/// Gives the suite clients of one store.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// A new client of the same store: another process, as far as the
    /// store can tell (etcd), or another handle (memory).
    async fn client(&self) -> Arc<dyn Membership>;
}

struct MemoryBackend(MemoryMembership);

#[async_trait::async_trait]
impl Backend for MemoryBackend {
    async fn client(&self) -> Arc<dyn Membership> {
        Arc::new(self.0.clone())
    }
}

struct EtcdBackend(EtcdServer);

#[async_trait::async_trait]
impl Backend for EtcdBackend {
    async fn client(&self) -> Arc<dyn Membership> {
        Arc::new(
            self.0
                .connect("conformance")
                .await
                .expect("connect to test etcd"),
        )
    }
}

fn etcd() -> EtcdServer {
    EtcdServer::start().unwrap_or_else(|e| panic!("{e}"))
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let store = psflow_coordinator::membership::MemoryMembership::new("conformance")
                        .unwrap();
                    super::suite::$name(&super::MemoryBackend(store)).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::suite::$name(&super::EtcdBackend(super::etcd())).await;
                }
            )*
        }
    };
}

conformance!(
    register_list_leave,
    lease_expires_after_abandon,
    watch_sees_changes_in_order,
    reregistering_an_id_replaces_it,
    kv_put_get_list_delete,
    kv_rejects_reserved_and_bad_keys,
    cas_conflicts,
    cas_counter_under_contention,
    state_survives_its_writer,
    election_passes_on_resign,
    election_passes_on_lease_expiry,
    dropped_campaign_withdraws,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restart_keeps_job_state() {
    let mut server = etcd();
    let writer = server.connect("restart").await.unwrap();
    writer.put("jobs/j1", b"running".to_vec()).await.unwrap();
    let v2 = writer.put("jobs/j2", b"queued".to_vec()).await.unwrap();
    drop(writer);
    server.restart().unwrap();
    let reader = server.connect("restart").await.unwrap();
    let jobs = reader.list("jobs/").await.unwrap();
    let names: Vec<&str> = jobs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["jobs/j1", "jobs/j2"]);
    assert_eq!(jobs[1].1.value, b"queued");
    assert_eq!(jobs[1].1.version, v2, "versions survive a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_clusters_do_not_see_each_other() {
    let server = etcd();
    let a = server.connect("alpha").await.unwrap();
    let b = server.connect("beta").await.unwrap();
    let _r = a
        .register(
            MemberInfo::new(Role::Ps, "ps-0", "127.0.0.1:1"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    a.put("jobs/j1", b"x".to_vec()).await.unwrap();
    assert!(b.members(None).await.unwrap().is_empty());
    assert!(b.list("").await.unwrap().is_empty());
    assert_eq!(a.members(None).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_etcd_is_a_clear_error() {
    // A port nothing listens on: bind one, then let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let err = psflow_coordinator::membership::EtcdMembership::connect(
        std::slice::from_ref(&endpoint),
        "c",
        Duration::from_secs(1),
    )
    .await
    .err()
    .expect("connecting to a closed port must fail");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "gave up too late"
    );
    assert!(
        matches!(err, MembershipError::Unreachable { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("cannot reach etcd at {endpoint}: "))
            && msg.ends_with("is etcd running?"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_is_lost_when_etcd_dies() {
    let mut server = etcd();
    let store = server.connect("dies").await.unwrap();
    let reg = store
        .register(
            MemberInfo::new(Role::Worker, "w0", "127.0.0.1:1"),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    assert!(reg.is_alive());
    server.stop();
    let margin = reg.ttl() + Duration::from_secs(5);
    tokio::time::timeout(margin, reg.lost())
        .await
        .unwrap_or_else(|_| panic!("lease not reported lost {margin:?} after etcd died"));
    assert!(!reg.is_alive());
}
