//! Membership, leadership and job state: who is in the cluster, who leads it,
//! and what it is doing.
//!
//! One trait, [`Membership`], with two implementations:
//!
//! - [`EtcdMembership`]: etcd v3 (leases with keep-alive, watches,
//!   transactions, the election API). What real clusters use.
//! - [`MemoryMembership`]: the same semantics inside one process (tokio sync
//!   primitives, leases that expire when not kept alive), for `psflow train
//!   --workers W --ps P`, `psflow quickstart` and fast tests.
//!
//! One conformance suite (`coordinator/tests/membership.rs`) runs against
//! both, so code written against `Arc<dyn Membership>` behaves the same on
//! either.
//!
//! # Keys
//!
//! Everything a cluster stores lives under `/psflow/<cluster>/`:
//!
//! | key                                   | what                                   |
//! |---------------------------------------|----------------------------------------|
//! | `members/<role>/<id>`                 | a [`MemberInfo`] as JSON, on a lease   |
//! | `elections/<name>/…`                  | candidates of an election (etcd's own keys) |
//! | anything else, e.g. `jobs/<id>`       | key-value state ([`Membership::put`] …) |
//!
//! Key-value keys are given relative to the cluster root (`"jobs/j1"`);
//! `members/` and `elections/` are reserved and rejected by the key-value
//! calls, and never returned by [`Membership::list`].
//!
//! # Versions
//!
//! Every stored value carries a version: the store-wide revision of its last
//! write (etcd's `mod_revision`; the in-memory store counts the same way).
//! [`Membership::put_if_version`] writes only if the key is still at the
//! version the caller read, so two coordinators never clobber each other's
//! job records.

mod etcd;
mod lease;
mod memory;
pub mod testing;

use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use futures::Stream;
use serde::{Deserialize, Serialize};

pub use etcd::EtcdMembership;
pub use lease::{Leadership, Registration};
pub use memory::MemoryMembership;

/// Result of membership operations.
pub type Result<T, E = MembershipError> = std::result::Result<T, E>;

/// Stream of member events from [`Membership::watch_members`].
pub type MemberStream = Pin<Box<dyn Stream<Item = Result<MemberEvent>> + Send>>;

/// Longest lease a registration or candidacy may ask for.
pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// What a process does in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Coordinator,
    Ps,
    Worker,
}

impl Role {
    /// Every role, in key order.
    pub const ALL: [Role; 3] = [Role::Coordinator, Role::Ps, Role::Worker];

    /// The name used in keys and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Ps => "ps",
            Role::Worker => "worker",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = MembershipError;

    fn from_str(s: &str) -> Result<Self> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| MembershipError::InvalidName {
                what: "role",
                name: s.to_string(),
                reason: "expected coordinator, ps or worker",
            })
    }
}

/// One process of the cluster, as it registered itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub role: Role,
    /// Unique among members of the same role: `[A-Za-z0-9._:-]`, at most 128 characters.
    pub id: String,
    /// Where its gRPC service listens, e.g. `10.0.0.7:7000`.
    pub addr: String,
    /// Free-form facts (device, version, cores, …).
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
}

impl MemberInfo {
    pub fn new(role: Role, id: impl Into<String>, addr: impl Into<String>) -> Self {
        MemberInfo {
            role,
            id: id.into(),
            addr: addr.into(),
            meta: BTreeMap::new(),
        }
    }

    /// Adds one `meta` entry.
    pub fn with_meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.meta.insert(key.into(), value.into());
        self
    }
}

/// A change of membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// A member registered (or was present when the watch started).
    Joined(MemberInfo),
    /// A member left: closed its registration, or its lease expired because
    /// it stopped keeping it alive (crash, partition). Carries what it had
    /// registered.
    Left(MemberInfo),
}

impl MemberEvent {
    pub fn member(&self) -> &MemberInfo {
        match self {
            MemberEvent::Joined(m) | MemberEvent::Left(m) => m,
        }
    }
}

/// A stored value and its version (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub version: u64,
}

/// What a compare-and-swap did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// Written; the key's new version.
    Written { version: u64 },
    /// Not written: the key was not at the expected version. Carries what is
    /// there now (`None`: the key does not exist).
    Conflict { current: Option<Versioned> },
}

impl CasOutcome {
    pub fn is_written(&self) -> bool {
        matches!(self, CasOutcome::Written { .. })
    }
}

/// Errors of membership operations.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("cannot reach etcd at {endpoints}: {reason}; is etcd running?")]
    Unreachable { endpoints: String, reason: String },
    #[error("etcd {op} at {endpoints} failed: {source}")]
    Etcd {
        op: &'static str,
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },
    #[error(
        "key {key:?} is reserved for psflow's own records (members/, elections/); \
         store state under another prefix such as jobs/"
    )]
    ReservedKey { key: String },
    #[error("invalid ttl {ttl:?}: a lease must last between 1ms and {max:?}", max = MAX_TTL)]
    InvalidTtl { ttl: Duration },
    #[error("corrupt member record at {key}: {reason}")]
    CorruptRecord { key: String, reason: String },
    #[error("member watch fell behind and missed {missed} events; read members() and watch again")]
    WatchLagged { missed: u64 },
    #[error("member watch ended: {reason}; read members() and watch again")]
    WatchEnded { reason: String },
    #[error("the lease of {what} was lost (expired or revoked) before {during} finished")]
    LeaseLost { what: String, during: &'static str },
}

/// Membership, leadership and key-value state of one cluster.
///
/// Implementations are cheap to share (`Arc<dyn Membership>`); every method
/// may be called concurrently.
#[async_trait::async_trait]
pub trait Membership: Send + Sync {
    /// The cluster name all keys live under.
    fn cluster(&self) -> &str;

    /// Registers a member on a fresh lease of `ttl`, kept alive in the
    /// background until [`Registration::close`] (a clean leave: the member
    /// disappears at once) or until the handle is dropped or
    /// [`Registration::abandon`]ed (the lease then expires within its ttl,
    /// as when the process dies).
    ///
    /// Registering an id that is already registered replaces the old entry
    /// (a restarted process reclaiming its id): watchers see `Left(old)`
    /// then `Joined(new)`, and the old registration's lease no longer
    /// controls the entry.
    async fn register(&self, info: MemberInfo, ttl: Duration) -> Result<Registration>;

    /// Live members, all or of one role, ordered by role then id.
    async fn members(&self, role: Option<Role>) -> Result<Vec<MemberInfo>>;

    /// Membership changes. The stream starts with one `Joined` per member
    /// present now (ordered by role then id), then yields every later change
    /// in the order the store applied it, with nothing missed in between. An
    /// `Err` item (watch fell behind, connection to etcd lost) is the last
    /// one; the caller re-reads [`Membership::members`] and watches again.
    async fn watch_members(&self) -> Result<MemberStream>;

    /// Writes `value` at `key`; returns the new version.
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64>;

    /// Reads `key`.
    async fn get(&self, key: &str) -> Result<Option<Versioned>>;

    /// Deletes `key`; whether it existed.
    async fn delete(&self, key: &str) -> Result<bool>;

    /// Every key-value entry whose key starts with `prefix` (`""`: all), in
    /// key order. Reserved keys (members, elections) are never listed.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>>;

    /// Writes `value` at `key` only if the key is at version `expected`
    /// (`None`: only if the key does not exist).
    async fn put_if_version(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Vec<u8>,
    ) -> Result<CasOutcome>;

    /// Deletes `key` only if it is at `version`; whether it was deleted.
    async fn delete_if_version(&self, key: &str, version: u64) -> Result<bool>;

    /// Becomes leader of election `name`, announcing `value` (typically the
    /// candidate's address), on a lease of `ttl` kept alive in the
    /// background. Waits until every earlier candidate has resigned or lost
    /// its lease; candidates are served in the order they campaigned.
    /// Dropping the future before it completes withdraws the candidacy.
    async fn campaign(&self, name: &str, value: &str, ttl: Duration) -> Result<Leadership>;

    /// The value announced by the current leader of `name`, if any.
    async fn leader(&self, name: &str) -> Result<Option<String>>;
}

/// Reserved first segments of keys under the cluster root.
const RESERVED: [&str; 2] = ["members/", "elections/"];

/// Checks a member id, cluster or election name: a single path segment.
pub(crate) fn validate_name(what: &'static str, name: &str) -> Result<()> {
    let bad = |reason| {
        Err(MembershipError::InvalidName {
            what,
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("must not be empty");
    }
    if name.len() > 128 {
        return bad("must be at most 128 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
    {
        return bad("may only contain letters, digits, '.', '_', ':' and '-'");
    }
    Ok(())
}

/// Checks a key-value key (relative to the cluster root).
pub(crate) fn validate_key(key: &str) -> Result<()> {
    let bad = |reason| {
        Err(MembershipError::InvalidName {
            what: "key",
            name: key.to_string(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("must not be empty");
    }
    if key.starts_with('/') {
        return bad("is relative to the cluster root and must not start with '/'");
    }
    if key.len() > 1024 {
        return bad("must be at most 1024 bytes");
    }
    if is_reserved(key) {
        return Err(MembershipError::ReservedKey {
            key: key.to_string(),
        });
    }
    Ok(())
}

/// Checks a listing prefix: like a key, but may be empty.
pub(crate) fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        Ok(())
    } else {
        validate_key(prefix)
    }
}

/// Whether a key (relative to the cluster root) is one of psflow's own.
pub(crate) fn is_reserved(key: &str) -> bool {
    RESERVED.iter().any(|r| key.starts_with(r))
}

pub(crate) fn validate_ttl(ttl: Duration) -> Result<()> {
    if ttl < Duration::from_millis(1) || ttl > MAX_TTL {
        return Err(MembershipError::InvalidTtl { ttl });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_round_trips_through_its_name() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        let err = "chief".parse::<Role>().unwrap_err().to_string();
        assert!(err.contains("chief") && err.contains("worker"), "{err}");
    }

    #[test]
    fn names_are_single_segments() {
        assert!(validate_name("id", "worker-0:7000").is_ok());
        assert!(validate_name("id", "").is_err());
        assert!(validate_name("id", "a/b").is_err());
        assert!(validate_name("id", &"x".repeat(129)).is_err());
    }

    #[test]
    fn reserved_keys_are_rejected() {
        assert!(validate_key("jobs/j1").is_ok());
        assert!(matches!(
            validate_key("members/worker/w0"),
            Err(MembershipError::ReservedKey { .. })
        ));
        assert!(validate_key("/jobs/j1").is_err());
        assert!(validate_prefix("").is_ok());
        assert!(validate_key("").is_err());
    }

    #[test]
    fn member_info_json_has_lowercase_roles() {
        let m = MemberInfo::new(Role::Ps, "ps-0", "127.0.0.1:1").with_meta("shard", "0");
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"role\":\"ps\""), "{json}");
        assert_eq!(serde_json::from_str::<MemberInfo>(&json).unwrap(), m);
    }
}
