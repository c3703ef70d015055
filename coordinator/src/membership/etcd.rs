//! [`EtcdMembership`]: membership, leadership and job state in etcd v3.
//!
//! Members are keys on leases kept alive by a background task; the member
//! watch is a prefix watch started at the revision of the snapshot it
//! follows; compare-and-swap is a transaction on `mod_revision`; leadership
//! is etcd's election API (`v3election`) on a lease of its own.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions, Txn,
    TxnOp, TxnOpResponse, WatchOptions, WatchStream,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::lease::{Lease, LeaseBackend};
use super::{
    is_reserved, validate_key, validate_name, validate_prefix, validate_ttl, CasOutcome,
    Leadership, MemberEvent, MemberInfo, MemberStream, Membership, MembershipError, Registration,
    Result, Role, Versioned,
};

/// Member events buffered between the etcd watch and a slow reader.
const WATCH_BUFFER: usize = 256;

/// A membership store in etcd. Clones share one connection.
#[derive(Clone)]
pub struct EtcdMembership {
    client: Client,
    cluster: String,
    /// `/psflow/<cluster>/`
    root: String,
    /// The endpoints, comma-separated, for error messages.
    endpoints: String,
}

impl EtcdMembership {
    /// Connects to etcd at `endpoints` (`host:port` or `http://host:port`)
    /// for cluster `cluster`, and checks within `timeout` that etcd answers.
    pub async fn connect(endpoints: &[String], cluster: &str, timeout: Duration) -> Result<Self> {
        validate_name("cluster name", cluster)?;
        let shown = if endpoints.is_empty() {
            "(no endpoints)".to_string()
        } else {
            endpoints.join(",")
        };
        let unreachable = |reason: String| MembershipError::Unreachable {
            endpoints: shown.clone(),
            reason,
        };
        if endpoints.is_empty() {
            return Err(unreachable("no etcd endpoint was given".into()));
        }
        let urls: Vec<String> = endpoints
            .iter()
            .map(|e| {
                if e.contains("://") {
                    e.clone()
                } else {
                    format!("http://{e}")
                }
            })
            .collect();
        let options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
        let client =
            match tokio::time::timeout(timeout, Client::connect(&urls, Some(options))).await {
                Err(_) => return Err(unreachable(format!("no connection within {timeout:?}"))),
                Ok(Err(e)) => return Err(unreachable(e.to_string())),
                Ok(Ok(c)) => c,
            };
        // Connecting is lazy: ask etcd something to know that it answers.
        let mut probe = client.clone();
        match tokio::time::timeout(timeout, probe.status()).await {
            Err(_) => return Err(unreachable(format!("no answer within {timeout:?}"))),
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Ok(Ok(_)) => {}
        }
        Ok(EtcdMembership {
            client,
            cluster: cluster.to_string(),
            root: format!("/psflow/{cluster}/"),
            endpoints: shown,
        })
    }

    /// The endpoints this client talks to, comma-separated.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    fn fail(&self, op: &'static str) -> impl FnOnce(etcd_client::Error) -> MembershipError + '_ {
        move |source| MembershipError::Etcd {
            op,
            endpoints: self.endpoints.clone(),
            source,
        }
    }

    fn members_prefix(&self) -> String {
        format!("{}members/", self.root)
    }

    fn member_key(&self, info: &MemberInfo) -> String {
        format!("{}members/{}/{}", self.root, info.role, info.id)
    }

    fn kv_key(&self, key: &str) -> String {
        format!("{}{key}", self.root)
    }

    /// Grants a lease of at least `ttl` (etcd counts whole seconds); returns
    /// its id and the ttl granted.
    async fn grant(&self, ttl: Duration) -> Result<(i64, Duration)> {
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let mut c = self.client.clone();
        let granted = c
            .lease_grant(secs.max(1) as i64, None)
            .await
            .map_err(self.fail("lease grant"))?;
        Ok((
            granted.id(),
            Duration::from_secs(granted.ttl().max(1) as u64),
        ))
    }

    fn start_keepalive(&self, id: i64, ttl: Duration) -> Lease {
        let backend = std::sync::Arc::new(Revoker {
            client: self.client.clone(),
            endpoints: self.endpoints.clone(),
        });
        let client = self.client.clone();
        Lease::start(id, ttl, backend, move |alive| {
            keepalive(client, id, ttl, alive)
        })
    }

    fn decode_member(&self, kv: &KeyValue) -> Result<MemberInfo> {
        serde_json::from_slice(kv.value()).map_err(|e| MembershipError::CorruptRecord {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            reason: e.to_string(),
        })
    }

    fn versioned(kv: &KeyValue) -> Versioned {
        Versioned {
            value: kv.value().to_vec(),
            version: kv.mod_revision() as u64,
        }
    }
}

/// Revokes leases for [`Lease`].
struct Revoker {
    client: Client,
    endpoints: String,
}

#[async_trait::async_trait]
impl LeaseBackend for Revoker {
    async fn revoke(&self, lease: i64) -> Result<()> {
        let mut c = self.client.clone();
        match c.lease_revoke(lease).await {
            Ok(_) => Ok(()),
            // Already expired: what revoking wanted.
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("lease not found") => {
                Ok(())
            }
            Err(source) => Err(MembershipError::Etcd {
                op: "lease revoke",
                endpoints: self.endpoints.clone(),
                source,
            }),
        }
    }
}

/// Why a keep-alive stream stopped.
enum KeepAliveEnd {
    /// etcd says the lease no longer exists.
    Gone,
    /// The stream broke (connection, timeout); try again while the lease
    /// may still be alive.
    Broken(String),
}

/// Keeps lease `id` alive three times per ttl; clears `alive` once etcd
/// says it is gone, or once no keep-alive has succeeded for a whole ttl.
async fn keepalive(client: Client, id: i64, ttl: Duration, alive: watch::Sender<bool>) {
    let every = (ttl / 3).max(Duration::from_millis(100));
    let mut expires = Instant::now() + ttl;
    loop {
        match keepalive_stream(&client, id, ttl, every, &mut expires).await {
            KeepAliveEnd::Gone => {
                tracing::warn!(lease = id, "etcd lease is gone");
                break;
            }
            KeepAliveEnd::Broken(why) => {
                if Instant::now() >= expires {
                    tracing::warn!(
                        lease = id,
                        "etcd lease lost: no keep-alive for {ttl:?} ({why})"
                    );
                    break;
                }
                tracing::debug!(lease = id, "etcd keep-alive broke, retrying: {why}");
                tokio::time::sleep(every.min(Duration::from_millis(250))).await;
            }
        }
    }
    let _ = alive.send(false);
}

async fn keepalive_stream(
    client: &Client,
    id: i64,
    ttl: Duration,
    every: Duration,
    expires: &mut Instant,
) -> KeepAliveEnd {
    let mut c = client.clone();
    let sent = Instant::now();
    // Opening the stream sends a first keep-alive and waits for its answer.
    let (mut keeper, mut stream) = match tokio::time::timeout(every, c.lease_keep_alive(id)).await {
        Err(_) => return KeepAliveEnd::Broken("no answer opening the keep-alive stream".into()),
        Ok(Err(etcd_client::Error::LeaseKeepAliveError(m))) if m.contains("not found") => {
            return KeepAliveEnd::Gone
        }
        Ok(Err(e)) => return KeepAliveEnd::Broken(e.to_string()),
        Ok(Ok(pair)) => pair,
    };
    *expires = sent + ttl;
    loop {
        tokio::time::sleep(every).await;
        let sent = Instant::now();
        if let Err(e) = keeper.keep_alive().await {
            return KeepAliveEnd::Broken(e.to_string());
        }
        match tokio::time::timeout(every, stream.message()).await {
            Ok(Ok(Some(r))) if r.ttl() > 0 => *expires = sent + ttl,
            Ok(Ok(Some(_))) => return KeepAliveEnd::Gone,
            Ok(Ok(None)) => {
                return KeepAliveEnd::Broken("etcd closed the keep-alive stream".into())
            }
            Ok(Err(e)) => return KeepAliveEnd::Broken(e.to_string()),
            Err(_) => return KeepAliveEnd::Broken("no answer to a keep-alive".into()),
        }
    }
}

/// What a member key names, for a delete event without its previous value.
fn member_from_key(key: &[u8], prefix: &str) -> Option<MemberInfo> {
    let key = std::str::from_utf8(key).ok()?.strip_prefix(prefix)?;
    let (role, id) = key.split_once('/')?;
    Some(MemberInfo::new(role.parse().ok()?, id, ""))
}

/// Forwards member events from an etcd watch until the reader goes away.
async fn forward_events(
    store: EtcdMembership,
    mut ws: WatchStream,
    tx: mpsc::Sender<Result<MemberEvent>>,
) {
    let prefix = store.members_prefix();
    let end = |reason: String| Err(MembershipError::WatchEnded { reason });
    loop {
        let msg = tokio::select! {
            _ = tx.closed() => return,
            m = ws.message() => m,
        };
        let resp = match msg {
            Ok(Some(r)) => r,
            Ok(None) => {
                let _ = tx.send(end("etcd closed the watch stream".into())).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(end(format!("etcd watch failed: {e}"))).await;
                return;
            }
        };
        if resp.canceled() {
            let reason = format!(
                "etcd cancelled the watch (compacted at revision {}) {}",
                resp.compact_revision(),
                resp.cancel_reason()
            );
            let _ = tx.send(end(reason)).await;
            return;
        }
        for ev in resp.events() {
            let mut items = Vec::with_capacity(2);
            match (ev.event_type(), ev.kv()) {
                (EventType::Put, Some(kv)) => {
                    if let Some(prev) = ev.prev_kv() {
                        items.push(store.decode_member(prev).map(MemberEvent::Left));
                    }
                    items.push(store.decode_member(kv).map(MemberEvent::Joined));
                }
                (EventType::Delete, kv) => {
                    let left = match (ev.prev_kv(), kv) {
                        (Some(prev), _) => store.decode_member(prev),
                        (None, Some(kv)) => member_from_key(kv.key(), &prefix).ok_or_else(|| {
                            MembershipError::CorruptRecord {
                                key: String::from_utf8_lossy(kv.key()).into_owned(),
                                reason: "not a member key".into(),
                            }
                        }),
                        (None, None) => continue,
                    };
                    items.push(left.map(MemberEvent::Left));
                }
                (EventType::Put, None) => continue,
            }
            for item in items {
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Membership for EtcdMembership {
    fn cluster(&self) -> &str {
        &self.cluster
    }

    async fn register(&self, info: MemberInfo, ttl: Duration) -> Result<Registration> {
        validate_name("member id", &info.id)?;
        validate_ttl(ttl)?;
        let value = serde_json::to_vec(&info).map_err(|e| MembershipError::CorruptRecord {
            key: self.member_key(&info),
            reason: e.to_string(),
        })?;
        let (id, granted) = self.grant(ttl).await?;
        let mut c = self.client.clone();
        let put = c
            .put(
                self.member_key(&info),
                value,
                Some(PutOptions::new().with_lease(id)),
            )
            .await;
        if let Err(e) = put {
            let _ = c.lease_revoke(id).await;
            return Err(self.fail("put member")(e));
        }
        Ok(Registration {
            info,
            lease: self.start_keepalive(id, granted),
        })
    }

    async fn members(&self, role: Option<Role>) -> Result<Vec<MemberInfo>> {
        let prefix = match role {
            Some(r) => format!("{}{r}/", self.members_prefix()),
            None => self.members_prefix(),
        };
        let mut c = self.client.clone();
        let resp = c
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(self.fail("get members"))?;
        let mut members = resp
            .kvs()
            .iter()
            .map(|kv| self.decode_member(kv))
            .collect::<Result<Vec<_>>>()?;
        members.sort_by(|a, b| (a.role, &a.id).cmp(&(b.role, &b.id)));
        Ok(members)
    }

    async fn watch_members(&self) -> Result<MemberStream> {
        let prefix = self.members_prefix();
        let mut c = self.client.clone();
        let resp = c
            .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(self.fail("get members"))?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut snapshot = resp
            .kvs()
            .iter()
            .map(|kv| self.decode_member(kv))
            .collect::<Result<Vec<_>>>()?;
        snapshot.sort_by(|a, b| (a.role, &a.id).cmp(&(b.role, &b.id)));
        let options = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(revision + 1);
        let ws = c
            .watch(prefix, Some(options))
            .await
            .map_err(self.fail("watch members"))?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(forward_events(self.clone(), ws, tx));
        let current = futures::stream::iter(
            snapshot
                .into_iter()
                .map(|m| Ok(MemberEvent::Joined(m)))
                .collect::<Vec<_>>(),
        );
        Ok(Box::pin(futures::StreamExt::chain(
            current,
            ReceiverStream::new(rx),
        )))
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64> {
        validate_key(key)?;
        let mut c = self.client.clone();
        let resp = c
            .put(self.kv_key(key), value, None)
            .await
            .map_err(self.fail("put"))?;
        Ok(resp.header().map_or(0, |h| h.revision()) as u64)
    }

    async fn get(&self, key: &str) -> Result<Option<Versioned>> {
        validate_key(key)?;
        let mut c = self.client.clone();
        let resp = c
            .get(self.kv_key(key), None)
            .await
            .map_err(self.fail("get"))?;
        Ok(resp.kvs().first().map(Self::versioned))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        let mut c = self.client.clone();
        let resp = c
            .delete(self.kv_key(key), None)
            .await
            .map_err(self.fail("delete"))?;
        Ok(resp.deleted() > 0)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>> {
        validate_prefix(prefix)?;
        let mut c = self.client.clone();
        let resp = c
            .get(self.kv_key(prefix), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(self.fail("list"))?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let key = std::str::from_utf8(kv.key()).ok()?;
                let key = key.strip_prefix(&self.root)?;
                (!is_reserved(key)).then(|| (key.to_string(), Self::versioned(kv)))
            })
            .collect())
    }

    async fn put_if_version(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Vec<u8>,
    ) -> Result<CasOutcome> {
        validate_key(key)?;
        let k = self.kv_key(key);
        let guard = match expected {
            // A key that does not exist has version 0.
            None => Compare::version(k.clone(), CompareOp::Equal, 0),
            Some(v) => Compare::mod_revision(k.clone(), CompareOp::Equal, v as i64),
        };
        let txn = Txn::new()
            .when([guard])
            .and_then([TxnOp::put(k.clone(), value, None)])
            .or_else([TxnOp::get(k, None)]);
        let mut c = self.client.clone();
        let resp = c.txn(txn).await.map_err(self.fail("compare-and-swap"))?;
        if resp.succeeded() {
            let version = resp.header().map_or(0, |h| h.revision()) as u64;
            return Ok(CasOutcome::Written { version });
        }
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g.kvs().first().map(Self::versioned)),
            _ => None,
        });
        Ok(CasOutcome::Conflict {
            current: current.flatten(),
        })
    }

    async fn delete_if_version(&self, key: &str, version: u64) -> Result<bool> {
        validate_key(key)?;
        let k = self.kv_key(key);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                k.clone(),
                CompareOp::Equal,
                version as i64,
            )])
            .and_then([TxnOp::delete(k, None)]);
        let mut c = self.client.clone();
        let resp = c.txn(txn).await.map_err(self.fail("compare-and-delete"))?;
        Ok(resp.succeeded())
    }

    async fn campaign(&self, name: &str, value: &str, ttl: Duration) -> Result<Leadership> {
        validate_name("election name", name)?;
        validate_ttl(ttl)?;
        let (id, granted) = self.grant(ttl).await?;
        let mut lease = self.start_keepalive(id, granted);
        // Until we win, dropping this future withdraws the candidacy.
        lease.set_revoke_on_drop(true);
        let mut c = self.client.clone();
        let election = format!("{}elections/{name}", self.root);
        tokio::select! {
            won = c.campaign(election, value, lease.id()) => {
                won.map_err(self.fail("campaign"))?;
            }
            _ = lease.lost() => {
                return Err(MembershipError::LeaseLost {
                    what: format!("candidate {value:?} of election {name:?}"),
                    during: "the campaign",
                });
            }
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
        let mut c = self.client.clone();
        match c.leader(format!("{}elections/{name}", self.root)).await {
            Ok(r) => Ok(r
                .kv()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())),
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("no leader") => Ok(None),
            Err(e) => Err(self.fail("leader")(e)),
        }
    }
}
