//! Leases shared by both implementations: a lease id, a background task that
//! keeps it alive, and the handles users hold ([`Registration`],
//! [`Leadership`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{MemberInfo, Result};

/// What an implementation must do for a lease besides keeping it alive.
#[async_trait::async_trait]
pub(crate) trait LeaseBackend: Send + Sync + 'static {
    /// Ends the lease now; everything attached to it disappears.
    async fn revoke(&self, lease: i64) -> Result<()>;
}

/// A granted lease and its keep-alive task.
pub(crate) struct Lease {
    id: i64,
    ttl: Duration,
    keepalive: Option<JoinHandle<()>>,
    /// `true` while the keep-alive task believes the lease is alive.
    alive: watch::Receiver<bool>,
    backend: Arc<dyn LeaseBackend>,
    /// Set while campaigning: a dropped campaign withdraws its candidacy.
    revoke_on_drop: bool,
}

impl Lease {
    /// Starts `keepalive` (given the sender to clear when the lease is lost)
    /// on the current runtime.
    pub(crate) fn start<F>(
        id: i64,
        ttl: Duration,
        backend: Arc<dyn LeaseBackend>,
        keepalive: impl FnOnce(watch::Sender<bool>) -> F,
    ) -> Lease
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = watch::channel(true);
        let task = tokio::spawn(keepalive(tx));
        Lease {
            id,
            ttl,
            keepalive: Some(task),
            alive: rx,
            backend,
            revoke_on_drop: false,
        }
    }

    pub(crate) fn id(&self) -> i64 {
        self.id
    }

    pub(crate) fn set_revoke_on_drop(&mut self, on: bool) {
        self.revoke_on_drop = on;
    }

    fn is_alive(&self) -> bool {
        *self.alive.borrow()
    }

    pub(crate) async fn lost(&self) {
        let mut rx = self.alive.clone();
        // Err: the keep-alive task is gone, which also means lost.
        let _ = rx.wait_for(|alive| !*alive).await;
    }

    fn stop(&mut self) {
        if let Some(task) = self.keepalive.take() {
            task.abort();
        }
    }

    async fn revoke(mut self) -> Result<()> {
        self.stop();
        self.revoke_on_drop = false;
        self.backend.revoke(self.id).await
    }

    fn abandon(mut self) {
        self.stop();
        self.revoke_on_drop = false;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop();
        if self.revoke_on_drop {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let backend = self.backend.clone();
                let id = self.id;
                rt.spawn(async move {
                    if let Err(e) = backend.revoke(id).await {
                        tracing::warn!(lease = id, "withdrawing a dropped candidacy: {e}");
                    }
                });
            }
        }
    }
}

/// A member's presence in the cluster: its lease, kept alive in the
/// background while this handle lives.
///
/// - [`close`](Registration::close): clean leave; watchers see `Left` at once.
/// - drop or [`abandon`](Registration::abandon): keep-alive stops, the lease
///   expires within its ttl and watchers then see `Left` — what a crash does.
pub struct Registration {
    pub(crate) info: MemberInfo,
    pub(crate) lease: Lease,
}

impl Registration {
    pub fn info(&self) -> &MemberInfo {
        &self.info
    }

    /// The ttl the store granted (etcd rounds up to whole seconds and may
    /// raise it to its minimum).
    pub fn ttl(&self) -> Duration {
        self.lease.ttl
    }

    /// The store's lease id (for logs).
    pub fn lease_id(&self) -> i64 {
        self.lease.id
    }

    /// Whether keep-alive still succeeds.
    pub fn is_alive(&self) -> bool {
        self.lease.is_alive()
    }

    /// Resolves when the lease is lost (keep-alive failed for longer than
    /// the ttl, or the lease was revoked behind our back). A process should
    /// re-register, or stop, when this happens.
    pub async fn lost(&self) {
        self.lease.lost().await
    }

    /// Leaves cleanly: revokes the lease, removing the member at once.
    pub async fn close(self) -> Result<()> {
        self.lease.revoke().await
    }

    /// Stops keep-alive without revoking, as a crashed process would: the
    /// member disappears when its lease expires. For tests; the same as
    /// dropping the handle.
    pub fn abandon(self) {
        self.lease.abandon()
    }
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("info", &self.info)
            .field("lease", &self.lease.id)
            .field("ttl", &self.lease.ttl)
            .finish()
    }
}

/// Leadership of one election, held while this handle's lease is alive.
pub struct Leadership {
    pub(crate) name: String,
    pub(crate) value: String,
    pub(crate) lease: Lease,
}

impl Leadership {
    /// The election's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value this leader announced.
    pub fn value(&self) -> &str {
        &self.value
    }

    pub fn ttl(&self) -> Duration {
        self.lease.ttl
    }

    /// Whether the lease behind the leadership is still kept alive.
    pub fn is_leader(&self) -> bool {
        self.lease.is_alive()
    }

    /// Resolves when leadership is lost with the lease; a leader must stop
    /// acting as one when this happens.
    pub async fn lost(&self) {
        self.lease.lost().await
    }

    /// Steps down: the next candidate becomes leader at once.
    pub async fn resign(self) -> Result<()> {
        self.lease.revoke().await
    }

    /// Stops keep-alive without resigning, as a crashed leader would: the
    /// next candidate takes over when the lease expires. For tests; the
    /// same as dropping the handle.
    pub fn abandon(self) {
        self.lease.abandon()
    }
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("name", &self.name)
            .field("value", &self.value)
            .field("lease", &self.lease.id)
            .finish()
    }
}
