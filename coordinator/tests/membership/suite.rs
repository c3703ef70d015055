//! The conformance tests, written once against `dyn Membership`; see
//! `membership.rs` for how each runs on both implementations.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use psflow_coordinator::membership::{
    CasOutcome, MemberEvent, MemberInfo, MemberStream, Membership, MembershipError, Role,
};

use super::Backend;

/// Lease ttl used throughout: short, so expiry tests stay quick.
const TTL: Duration = Duration::from_secs(1);
/// Slack on top of a ttl for expiry to be noticed on a loaded machine
/// (etcd checks expiry about twice a second).
const MARGIN: Duration = Duration::from_secs(4);

fn member(role: Role, id: &str) -> MemberInfo {
    MemberInfo::new(role, id, format!("127.0.0.1:{}", 7000 + id.len()))
}

async fn next_event(watch: &mut MemberStream, within: Duration) -> MemberEvent {
    match tokio::time::timeout(within, watch.next()).await {
        Err(_) => panic!("no member event within {within:?}"),
        Ok(None) => panic!("member watch ended"),
        Ok(Some(Err(e))) => panic!("member watch failed: {e}"),
        Ok(Some(Ok(ev))) => ev,
    }
}

/// Asserts that no event arrives for `quiet`.
async fn no_event(watch: &mut MemberStream, quiet: Duration) {
    if let Ok(ev) = tokio::time::timeout(quiet, watch.next()).await {
        panic!("unexpected member event {ev:?}");
    }
}

fn ids(members: &[MemberInfo]) -> Vec<String> {
    members
        .iter()
        .map(|m| format!("{}/{}", m.role, m.id))
        .collect()
}

pub async fn register_list_leave(b: &dyn Backend) {
    let m = b.client().await;
    let other = b.client().await;
    assert!(m.members(None).await.unwrap().is_empty());
    let w0 = member(Role::Worker, "w0").with_meta("device", "cpu");
    let r_w0 = m.register(w0.clone(), TTL).await.unwrap();
    let r_ps1 = m.register(member(Role::Ps, "ps-1"), TTL).await.unwrap();
    let _r_ps0 = m.register(member(Role::Ps, "ps-0"), TTL).await.unwrap();
    let _r_c = other
        .register(member(Role::Coordinator, "c0"), TTL)
        .await
        .unwrap();
    assert_eq!(r_w0.info(), &w0);
    assert!(r_w0.is_alive());

    let all = other.members(None).await.unwrap();
    assert_eq!(
        ids(&all),
        ["coordinator/c0", "ps/ps-0", "ps/ps-1", "worker/w0"]
    );
    assert_eq!(all[3], w0, "meta and address come back as registered");
    let ps = m.members(Some(Role::Ps)).await.unwrap();
    assert_eq!(ids(&ps), ["ps/ps-0", "ps/ps-1"]);

    // A clean leave is immediate, for every client.
    r_ps1.close().await.unwrap();
    r_w0.close().await.unwrap();
    assert_eq!(
        ids(&other.members(None).await.unwrap()),
        ["coordinator/c0", "ps/ps-0"]
    );
    assert!(m.members(Some(Role::Worker)).await.unwrap().is_empty());
}

pub async fn lease_expires_after_abandon(b: &dyn Backend) {
    let m = b.client().await;
    let mut watch = m.watch_members().await.unwrap();
    let kept = m.register(member(Role::Ps, "ps-0"), TTL).await.unwrap();
    let crashed = m.register(member(Role::Worker, "w0"), TTL).await.unwrap();
    let ttl = crashed.ttl();
    assert!(ttl >= TTL, "granted ttl {ttl:?} is shorter than asked");
    assert!(matches!(
        next_event(&mut watch, MARGIN).await,
        MemberEvent::Joined(_)
    ));
    assert!(matches!(
        next_event(&mut watch, MARGIN).await,
        MemberEvent::Joined(_)
    ));

    let abandoned = Instant::now();
    crashed.abandon();
    // Still listed right after the crash: the lease has not run out yet.
    assert_eq!(m.members(Some(Role::Worker)).await.unwrap().len(), 1);
    let ev = next_event(&mut watch, ttl + MARGIN).await;
    assert_eq!(ev, MemberEvent::Left(member(Role::Worker, "w0")));
    let took = abandoned.elapsed();
    assert!(
        took >= ttl.mul_f64(0.5),
        "left after {took:?}, well before its ttl {ttl:?}"
    );
    assert!(m.members(Some(Role::Worker)).await.unwrap().is_empty());

    // Keep-alive works: the other member outlives several ttls.
    tokio::time::sleep(kept.ttl() * 2).await;
    assert!(kept.is_alive());
    assert_eq!(ids(&m.members(None).await.unwrap()), ["ps/ps-0"]);
    no_event(&mut watch, Duration::from_millis(100)).await;
    kept.close().await.unwrap();
}

pub async fn watch_sees_changes_in_order(b: &dyn Backend) {
    let m = b.client().await;
    let watcher = b.client().await;
    let a = member(Role::Ps, "a");
    let _ra = m.register(a.clone(), TTL).await.unwrap();

    // The stream starts with who is there now.
    let mut watch = watcher.watch_members().await.unwrap();
    assert_eq!(next_event(&mut watch, MARGIN).await, MemberEvent::Joined(a));

    let (bm, cm) = (member(Role::Worker, "b"), member(Role::Worker, "c"));
    let rb = m.register(bm.clone(), TTL).await.unwrap();
    let rc = m.register(cm.clone(), TTL).await.unwrap();
    rb.close().await.unwrap();
    rc.abandon();
    let d = member(Role::Worker, "d");
    let rd = m.register(d.clone(), TTL).await.unwrap();

    let expected = [
        MemberEvent::Joined(bm.clone()),
        MemberEvent::Joined(cm.clone()),
        MemberEvent::Left(bm),
        MemberEvent::Joined(d.clone()),
        MemberEvent::Left(cm),
    ];
    for want in expected {
        assert_eq!(next_event(&mut watch, TTL + MARGIN).await, want);
    }
    rd.close().await.unwrap();
    assert_eq!(next_event(&mut watch, MARGIN).await, MemberEvent::Left(d));

    // A second watch started now begins from the current set.
    let mut again = watcher.watch_members().await.unwrap();
    assert_eq!(
        next_event(&mut again, MARGIN).await,
        MemberEvent::Joined(member(Role::Ps, "a"))
    );
    no_event(&mut again, Duration::from_millis(200)).await;
}

pub async fn reregistering_an_id_replaces_it(b: &dyn Backend) {
    let m = b.client().await;
    let mut watch = m.watch_members().await.unwrap();
    let old = member(Role::Worker, "w0");
    let new = MemberInfo::new(Role::Worker, "w0", "127.0.0.1:9999");
    let r_old = m.register(old.clone(), TTL).await.unwrap();
    let r_new = m.register(new.clone(), TTL).await.unwrap();
    assert_eq!(
        next_event(&mut watch, MARGIN).await,
        MemberEvent::Joined(old.clone())
    );
    assert_eq!(next_event(&mut watch, MARGIN).await, MemberEvent::Left(old));
    assert_eq!(
        next_event(&mut watch, MARGIN).await,
        MemberEvent::Joined(new.clone())
    );
    // The old lease no longer controls the entry.
    r_old.close().await.unwrap();
    no_event(&mut watch, Duration::from_millis(300)).await;
    assert_eq!(m.members(None).await.unwrap(), std::slice::from_ref(&new));
    r_new.close().await.unwrap();
    assert_eq!(next_event(&mut watch, MARGIN).await, MemberEvent::Left(new));
}

pub async fn kv_put_get_list_delete(b: &dyn Backend) {
    let m = b.client().await;
    let _r = m.register(member(Role::Ps, "ps-0"), TTL).await.unwrap();
    assert_eq!(m.get("jobs/j1").await.unwrap(), None);
    let v1 = m.put("jobs/j1", b"one".to_vec()).await.unwrap();
    let v2 = m.put("jobs/j2", b"two".to_vec()).await.unwrap();
    let v3 = m.put("jobsx", b"not a job".to_vec()).await.unwrap();
    assert!(v1 < v2 && v2 < v3, "versions grow: {v1} {v2} {v3}");
    let got = m.get("jobs/j1").await.unwrap().unwrap();
    assert_eq!((got.value.as_slice(), got.version), (&b"one"[..], v1));

    let v4 = m.put("jobs/j1", b"uno".to_vec()).await.unwrap();
    assert!(v4 > v3);
    assert_eq!(m.get("jobs/j1").await.unwrap().unwrap().version, v4);

    let jobs = m.list("jobs/").await.unwrap();
    let keys: Vec<&str> = jobs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["jobs/j1", "jobs/j2"]);
    assert_eq!(jobs[0].1.value, b"uno");
    // The whole namespace, without psflow's own member records.
    let all = m.list("").await.unwrap();
    let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["jobs/j1", "jobs/j2", "jobsx"]);

    assert!(m.delete("jobs/j1").await.unwrap());
    assert!(!m.delete("jobs/j1").await.unwrap());
    assert_eq!(m.get("jobs/j1").await.unwrap(), None);
    assert_eq!(m.list("jobs/").await.unwrap().len(), 1);
    // Values are bytes, not text.
    m.put("blob", vec![0, 255, 7]).await.unwrap();
    assert_eq!(m.get("blob").await.unwrap().unwrap().value, [0, 255, 7]);
}

pub async fn kv_rejects_reserved_and_bad_keys(b: &dyn Backend) {
    let m = b.client().await;
    let err = m.put("members/worker/w0", b"x".to_vec()).await.unwrap_err();
    assert!(matches!(err, MembershipError::ReservedKey { .. }), "{err}");
    assert!(err.to_string().contains("jobs/"), "says what to use: {err}");
    assert!(m.delete("elections/leader").await.is_err());
    assert!(m.list("members/").await.is_err());
    assert!(m.put("", b"x".to_vec()).await.is_err());
    assert!(m.get("/abs").await.is_err());
    let err = m
        .register(MemberInfo::new(Role::Worker, "a/b", "x"), TTL)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("\"a/b\""), "{err}");
    let err = m
        .register(member(Role::Worker, "w0"), Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(err, MembershipError::InvalidTtl { .. }), "{err}");
    assert!(m.members(None).await.unwrap().is_empty());
}

pub async fn cas_conflicts(b: &dyn Backend) {
    // Two coordinators racing for the same job record.
    let one = b.client().await;
    let two = b.client().await;
    let created = one
        .put_if_version("jobs/j1", None, b"one:queued".to_vec())
        .await
        .unwrap();
    let CasOutcome::Written { version: v1 } = created else {
        panic!("create failed: {created:?}")
    };
    match two
        .put_if_version("jobs/j1", None, b"two:queued".to_vec())
        .await
        .unwrap()
    {
        CasOutcome::Conflict { current: Some(cur) } => {
            assert_eq!(
                (cur.value.as_slice(), cur.version),
                (&b"one:queued"[..], v1)
            )
        }
        other => panic!("second create must conflict, got {other:?}"),
    }
    let v2 = match one
        .put_if_version("jobs/j1", Some(v1), b"one:running".to_vec())
        .await
        .unwrap()
    {
        CasOutcome::Written { version } => version,
        other => panic!("update at the current version must succeed, got {other:?}"),
    };
    assert!(v2 > v1);
    // `two` still holds v1: its write is refused, nothing is clobbered.
    let stale = two
        .put_if_version("jobs/j1", Some(v1), b"two:running".to_vec())
        .await
        .unwrap();
    assert!(
        matches!(&stale, CasOutcome::Conflict { current: Some(c) } if c.version == v2),
        "{stale:?}"
    );
    assert_eq!(
        two.get("jobs/j1").await.unwrap().unwrap().value,
        b"one:running"
    );
    // Updating a key that does not exist at a version conflicts with None.
    assert_eq!(
        two.put_if_version("jobs/none", Some(v1), b"x".to_vec())
            .await
            .unwrap(),
        CasOutcome::Conflict { current: None }
    );
    assert!(!two.delete_if_version("jobs/j1", v1).await.unwrap());
    assert!(two.get("jobs/j1").await.unwrap().is_some());
    assert!(two.delete_if_version("jobs/j1", v2).await.unwrap());
    assert_eq!(one.get("jobs/j1").await.unwrap(), None);
}

pub async fn cas_counter_under_contention(b: &dyn Backend) {
    // Eight writers each add 5 by read–compare-and-swap: no lost updates.
    const WRITERS: u64 = 8;
    const ADDS: u64 = 5;
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let m = b.client().await;
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u64;
            for _ in 0..ADDS {
                loop {
                    let cur = m.get("counter").await.unwrap();
                    let n: u64 = cur
                        .as_ref()
                        .map_or(0, |v| String::from_utf8_lossy(&v.value).parse().unwrap());
                    let next = (n + 1).to_string().into_bytes();
                    // Let the others run between read and write, so races
                    // happen in the in-memory store too.
                    tokio::task::yield_now().await;
                    let out = m
                        .put_if_version("counter", cur.map(|v| v.version), next)
                        .await
                        .unwrap();
                    if out.is_written() {
                        break;
                    }
                    conflicts += 1;
                }
            }
            conflicts
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let m = b.client().await;
    let total = m.get("counter").await.unwrap().unwrap().value;
    assert_eq!(
        String::from_utf8(total).unwrap(),
        (WRITERS * ADDS).to_string()
    );
}

pub async fn state_survives_its_writer(b: &dyn Backend) {
    // A coordinator writes its jobs and goes away; the next one finds them.
    {
        let first = b.client().await;
        first
            .put("jobs/j1", b"{\"step\":10}".to_vec())
            .await
            .unwrap();
        first
            .put("jobs/j2", b"{\"step\":0}".to_vec())
            .await
            .unwrap();
        let _leader = first.campaign("coordinator", "first", TTL).await.unwrap();
        // Dropped here without resigning, as a crash would.
    }
    let second = b.client().await;
    let jobs = second.list("jobs/").await.unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0].1.value, b"{\"step\":10}");
    // And becomes leader once the dead one's lease has run out.
    let lead = tokio::time::timeout(TTL + MARGIN, second.campaign("coordinator", "second", TTL))
        .await
        .expect("leadership not handed over after the old leader's lease")
        .unwrap();
    assert_eq!(
        second.leader("coordinator").await.unwrap().as_deref(),
        Some("second")
    );
    lead.resign().await.unwrap();
}

/// Starts a campaign in the background.
fn campaign_in_background(
    m: Arc<dyn Membership>,
    value: &'static str,
    ttl: Duration,
) -> tokio::task::JoinHandle<psflow_coordinator::membership::Leadership> {
    tokio::spawn(async move { m.campaign("coordinator", value, ttl).await.unwrap() })
}

pub async fn election_passes_on_resign(b: &dyn Backend) {
    let (a, c) = (b.client().await, b.client().await);
    assert_eq!(a.leader("coordinator").await.unwrap(), None);
    let first = a
        .campaign("coordinator", "10.0.0.1:9000", TTL)
        .await
        .unwrap();
    assert!(first.is_leader());
    assert_eq!(first.value(), "10.0.0.1:9000");
    assert_eq!(
        c.leader("coordinator").await.unwrap().as_deref(),
        Some("10.0.0.1:9000")
    );
    let mut second = campaign_in_background(c.clone(), "10.0.0.2:9000", TTL);
    // The second candidate waits, for longer than a ttl: the first keeps
    // its lease alive.
    let waited = tokio::time::timeout(TTL * 2, &mut second).await;
    assert!(waited.is_err(), "second candidate won while the first led");
    assert_eq!(
        a.leader("coordinator").await.unwrap().as_deref(),
        Some("10.0.0.1:9000")
    );
    // Other elections are independent.
    let other = c.campaign("other", "x", TTL).await.unwrap();

    first.resign().await.unwrap();
    let second = tokio::time::timeout(MARGIN, second)
        .await
        .expect("second candidate not leader after the first resigned")
        .unwrap();
    assert_eq!(second.value(), "10.0.0.2:9000");
    assert_eq!(
        a.leader("coordinator").await.unwrap().as_deref(),
        Some("10.0.0.2:9000")
    );
    second.resign().await.unwrap();
    assert_eq!(a.leader("coordinator").await.unwrap(), None);
    assert_eq!(a.leader("other").await.unwrap().as_deref(), Some("x"));
    other.resign().await.unwrap();
}

pub async fn election_passes_on_lease_expiry(b: &dyn Backend) {
    let (a, c) = (b.client().await, b.client().await);
    let first = a.campaign("coordinator", "first", TTL).await.unwrap();
    let ttl = first.ttl();
    let second = campaign_in_background(c.clone(), "second", TTL);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let crashed = Instant::now();
    first.abandon();
    let second = tokio::time::timeout(ttl + MARGIN, second)
        .await
        .expect("second candidate not leader after the first leader's lease expired")
        .unwrap();
    assert!(
        crashed.elapsed() >= ttl.mul_f64(0.5),
        "took over after {:?}, before the old lease (ttl {ttl:?}) ran out",
        crashed.elapsed()
    );
    assert!(second.is_leader());
    assert_eq!(
        c.leader("coordinator").await.unwrap().as_deref(),
        Some("second")
    );
    second.resign().await.unwrap();
}

pub async fn dropped_campaign_withdraws(b: &dyn Backend) {
    // A long ttl: if the dropped candidacy were not withdrawn it would
    // become leader for the whole ttl.
    let long = Duration::from_secs(30);
    let (a, c) = (b.client().await, b.client().await);
    let first = a.campaign("coordinator", "first", long).await.unwrap();
    let waiting = campaign_in_background(c.clone(), "quitter", long);
    tokio::time::sleep(Duration::from_millis(300)).await;
    waiting.abort();
    let _ = waiting.await;
    // Give the withdrawal (a revoke in the background) a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.resign().await.unwrap();
    let deadline = Instant::now() + MARGIN;
    loop {
        match c.leader("coordinator").await.unwrap() {
            None => break,
            Some(v) if Instant::now() > deadline => panic!("{v:?} still leads"),
            Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
