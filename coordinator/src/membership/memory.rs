//! [`MemoryMembership`]: the membership store inside one process.
//!
//! Same semantics as etcd, so the conformance suite holds for both: leases
//! expire `ttl` after their last keep-alive (a reaper task per lease), every
//! write bumps one store-wide revision that serves as the version of what it
//! wrote, member events are published in the order they were applied, and
//! elections serve candidates in the order they campaigned.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use super::lease::{Lease, LeaseBackend};
use super::{
    is_reserved, validate_key, validate_name, validate_prefix, validate_ttl, CasOutcome,
    Leadership, MemberEvent, MemberInfo, MemberStream, Membership, MembershipError, Registration,
    Result, Role, Versioned,
};

/// Member events buffered per watcher before it counts as fallen behind.
const WATCH_BUFFER: usize = 4096;

/// An in-process membership store. Clones are handles on the same store
/// (what a "second client" is here).
#[derive(Clone)]
pub struct MemoryMembership {
    shared: Arc<Shared>,
}

struct Shared {
    cluster: String,
    state: Mutex<State>,
    /// Member events, sent while `state` is locked so that order is the
    /// order of application.
    events: broadcast::Sender<MemberEvent>,
    /// Bumped (under the lock) whenever an election may have changed.
    elections_changed: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    revision: u64,
    next_lease: i64,
    leases: HashMap<i64, LeaseState>,
    members: BTreeMap<(Role, String), Member>,
    kv: BTreeMap<String, Versioned>,
    /// Candidates per election in campaign order; the first is the leader.
    elections: BTreeMap<String, Vec<Candidate>>,
}

struct LeaseState {
    ttl: Duration,
    deadline: Instant,
}

struct Member {
    info: MemberInfo,
    lease: i64,
}

struct Candidate {
    lease: i64,
    value: String,
}

impl MemoryMembership {
    /// A new, empty store for cluster `cluster`.
    pub fn new(cluster: &str) -> Result<Self> {
        validate_name("cluster name", cluster)?;
        Ok(MemoryMembership {
            shared: Arc::new(Shared {
                cluster: cluster.to_string(),
                state: Mutex::new(State::default()),
                events: broadcast::channel(WATCH_BUFFER).0,
                elections_changed: watch::channel(0).0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    /// Grants a lease and starts its reaper and keep-alive.
    fn grant(&self, state: &mut State, ttl: Duration) -> i64 {
        state.next_lease += 1;
        let id = state.next_lease;
        state.leases.insert(
            id,
            LeaseState {
                ttl,
                deadline: Instant::now() + ttl,
            },
        );
        tokio::spawn(reap(Arc::downgrade(&self.shared), id));
        id
    }

    fn start_keepalive(&self, id: i64, ttl: Duration) -> Lease {
        let weak = Arc::downgrade(&self.shared);
        let backend: Arc<dyn LeaseBackend> = self.shared.clone();
        Lease::start(id, ttl, backend, move |alive| {
            keepalive(weak, id, ttl, alive)
        })
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data behind
        // (every mutation is a few map operations), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends a lease: its members leave, its candidacies end.
    fn end_lease(&self, id: i64) {
        let mut st = self.lock();
        if st.leases.remove(&id).is_none() {
            return;
        }
        let gone: Vec<(Role, String)> = st
            .members
            .iter()
            .filter(|(_, m)| m.lease == id)
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            if let Some(m) = st.members.remove(&key) {
                st.revision += 1;
                let _ = self.events.send(MemberEvent::Left(m.info));
            }
        }
        let mut elections_changed = false;
        for candidates in st.elections.values_mut() {
            let before = candidates.len();
            candidates.retain(|c| c.lease != id);
            elections_changed |= candidates.len() != before;
        }
        if elections_changed {
            st.elections.retain(|_, c| !c.is_empty());
            st.revision += 1;
            self.elections_changed.send_modify(|n| *n += 1);
        }
    }

    /// Extends a lease by its ttl; false when it has already expired.
    fn refresh(&self, id: i64) -> bool {
        let expired = {
            let mut st = self.lock();
            match st.leases.get_mut(&id) {
                None => return false,
                Some(l) => {
                    let now = Instant::now();
                    if now >= l.deadline {
                        true
                    } else {
                        l.deadline = now + l.ttl;
                        false
                    }
                }
            }
        };
        if expired {
            self.end_lease(id);
        }
        !expired
    }
}

#[async_trait::async_trait]
impl LeaseBackend for Shared {
    async fn revoke(&self, lease: i64) -> Result<()> {
        self.end_lease(lease);
        Ok(())
    }
}

/// Ends lease `id` once its deadline passes without a refresh.
async fn reap(shared: Weak<Shared>, id: i64) {
    loop {
        let Some(s) = shared.upgrade() else { return };
        let deadline = match s.lock().leases.get(&id) {
            None => return,
            Some(l) => l.deadline,
        };
        if Instant::now() >= deadline {
            s.end_lease(id);
            return;
        }
        drop(s);
        tokio::time::sleep_until(deadline).await;
    }
}

/// Refreshes lease `id` three times per ttl until it is gone.
async fn keepalive(shared: Weak<Shared>, id: i64, ttl: Duration, alive: watch::Sender<bool>) {
    let every = ttl / 3;
    loop {
        tokio::time::sleep(every).await;
        let ok = shared.upgrade().is_some_and(|s| s.refresh(id));
        if !ok {
            let _ = alive.send(false);
            return;
        }
    }
}

#[async_trait::async_trait]
impl Membership for MemoryMembership {
    fn cluster(&self) -> &str {
        &self.shared.cluster
    }

    async fn register(&self, info: MemberInfo, ttl: Duration) -> Result<Registration> {
        validate_name("member id", &info.id)?;
        validate_ttl(ttl)?;
        let id = {
            let mut st = self.lock();
            let lease = self.grant(&mut st, ttl);
            st.revision += 1;
            let key = (info.role, info.id.clone());
            let new = Member {
                info: info.clone(),
                lease,
            };
            if let Some(old) = st.members.insert(key, new) {
                let _ = self.shared.events.send(MemberEvent::Left(old.info));
            }
            let _ = self.shared.events.send(MemberEvent::Joined(info.clone()));
            lease
        };
        Ok(Registration {
            info,
            lease: self.start_keepalive(id, ttl),
        })
    }

    async fn members(&self, role: Option<Role>) -> Result<Vec<MemberInfo>> {
        Ok(self
            .lock()
            .members
            .values()
            .filter(|m| role.is_none_or(|r| m.info.role == r))
            .map(|m| m.info.clone())
            .collect())
    }

    async fn watch_members(&self) -> Result<MemberStream> {
        let (snapshot, rx) = {
            let st = self.lock();
            let rx = self.shared.events.subscribe();
            let snapshot: Vec<MemberInfo> = st.members.values().map(|m| m.info.clone()).collect();
            (snapshot, rx)
        };
        let current = futures::stream::iter(
            snapshot
                .into_iter()
                .map(|m| Ok(MemberEvent::Joined(m)))
                .collect::<Vec<_>>(),
        );
        let live = futures::stream::unfold(Some(rx), |rx| async move {
            let mut rx = rx?;
            match rx.recv().await {
                Ok(ev) => Some((Ok(ev), Some(rx))),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    Some((Err(MembershipError::WatchLagged { missed }), None))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
        Ok(Box::pin(futures::StreamExt::chain(current, live)))
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64> {
        validate_key(key)?;
        let mut st = self.lock();
        st.revision += 1;
        let version = st.revision;
        st.kv.insert(key.to_string(), Versioned { value, version });
        Ok(version)
    }

    async fn get(&self, key: &str) -> Result<Option<Versioned>> {
        validate_key(key)?;
        Ok(self.lock().kv.get(key).cloned())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        let mut st = self.lock();
        let existed = st.kv.remove(key).is_some();
        if existed {
            st.revision += 1;
        }
        Ok(existed)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>> {
        validate_prefix(prefix)?;
        let st = self.lock();
        Ok(st
            .kv
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| !is_reserved(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn put_if_version(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Vec<u8>,
    ) -> Result<CasOutcome> {
        validate_key(key)?;
        let mut st = self.lock();
        let current = st.kv.get(key);
        if current.map(|v| v.version) != expected {
            return Ok(CasOutcome::Conflict {
                current: current.cloned(),
            });
        }
        st.revision += 1;
        let version = st.revision;
        st.kv.insert(key.to_string(), Versioned { value, version });
        Ok(CasOutcome::Written { version })
    }

    async fn delete_if_version(&self, key: &str, version: u64) -> Result<bool> {
        validate_key(key)?;
        let mut st = self.lock();
        if st.kv.get(key).map(|v| v.version) != Some(version) {
            return Ok(false);
        }
        st.kv.remove(key);
        st.revision += 1;
        Ok(true)
    }

    async fn campaign(&self, name: &str, value: &str, ttl: Duration) -> Result<Leadership> {
        validate_name("election name", name)?;
        validate_ttl(ttl)?;
        let id = {
            let mut st = self.lock();
            let id = self.grant(&mut st, ttl);
            st.revision += 1;
            st.elections
                .entry(name.to_string())
                .or_default()
                .push(Candidate {
                    lease: id,
                    value: value.to_string(),
                });
            id
        };
        let mut lease = self.start_keepalive(id, ttl);
        lease.set_revoke_on_drop(true);
        loop {
            // Subscribe before looking, so a change in between still wakes us.
            let mut changed = self.shared.elections_changed.subscribe();
            {
                let st = self.lock();
                if !st.leases.contains_key(&id) {
                    return Err(MembershipError::LeaseLost {
                        what: format!("candidate {value:?} of election {name:?}"),
                        during: "the campaign",
                    });
                }
                let first = st.elections.get(name).and_then(|c| c.first());
                if first.is_some_and(|c| c.lease == id) {
                    break;
                }
            }
            // The sender lives in `self.shared`, which outlives this call.
            let _ = changed.changed().await;
        }
        lease.set_revoke_on_drop(false);
        Ok(Leadership {
            name: name.to_string(),
            value: value.to_string(),
            lease,
        })
    }

    async fn leader(&self, name: &str) -> Result<Option<String>> {
        validate_name("election name", name)?;
        Ok(self
            .lock()
            .elections
            .get(name)
            .and_then(|c| c.first())
            .map(|c| c.value.clone()))
    }
}
