//! Jobs: a submitted training job is validated, pruned, placed and split
//! ([`prepare`]), then run on live tasks ([`run`]): PS shards initialized,
//! one worker task per worker, progress aggregated, lost workers dropped
//! (sync shards told to wait for fewer), a final evaluation and the
//! summary. [`JobManager`] holds the jobs of one coordinator and keeps each
//! job's record in the membership store (`jobs/<id>`), so a restarted
//! coordinator lists them again ([`JobManager::new`] marks the ones that
//! were still running as interrupted). [`service`] is the gRPC face.

mod error;
pub mod prepare;
mod record;
mod run;
pub mod service;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use psflow_proto::coordinator::{self as pb, JobState};
use tokio::sync::{broadcast, watch};

use crate::membership::{Membership, Role};
pub use error::{JobError, Result};
pub use record::JobRecord;
pub use service::{serve, CoordinatorService};

/// Events kept for slow watchers before they see `lagged`.
const EVENT_BUFFER: usize = 1024;

/// Events of one job kept for `psflow logs` (the oldest are dropped past
/// this; a replay then starts with a line saying how many).
pub const HISTORY_LIMIT: usize = 50_000;

/// What a job has said so far: its kept events, oldest first.
#[derive(Default)]
struct History {
    events: VecDeque<pb::JobEvent>,
    dropped: u64,
}

/// One job of this coordinator.
pub(crate) struct JobHandle {
    info: Mutex<pb::JobInfo>,
    /// Kept events. Its lock is held while an event is sent, so a watcher
    /// that subscribes under it sees every event once: in the replay or live.
    history: Mutex<History>,
    events: broadcast::Sender<pb::JobEvent>,
    cancel: watch::Sender<bool>,
}

impl JobHandle {
    fn new(info: pb::JobInfo) -> JobHandle {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (cancel, _) = watch::channel(false);
        JobHandle {
            info: Mutex::new(info),
            history: Mutex::new(History::default()),
            events,
            cancel,
        }
    }

    pub(crate) fn info(&self) -> pb::JobInfo {
        self.info.lock().expect("job info lock").clone()
    }

    /// Changes the info and tells the watchers.
    pub(crate) fn update(&self, f: impl FnOnce(&mut pb::JobInfo)) -> pb::JobInfo {
        let info = {
            let mut i = self.info.lock().expect("job info lock");
            f(&mut i);
            i.clone()
        };
        self.emit(pb::job_event::Kind::Info(info.clone()));
        info
    }

    pub(crate) fn emit(&self, kind: pb::job_event::Kind) {
        let ev = pb::JobEvent {
            kind: Some(kind),
            time: now(),
        };
        let mut h = self.history.lock().expect("job history lock");
        if h.events.len() == HISTORY_LIMIT {
            h.events.pop_front();
            h.dropped += 1;
        }
        h.events.push_back(ev.clone());
        let _ = self.events.send(ev);
    }

    /// The kept events (with a first line saying how many were dropped, if
    /// any) and a receiver of every later one.
    fn subscribe(&self) -> (Vec<pb::JobEvent>, broadcast::Receiver<pb::JobEvent>) {
        let h = self.history.lock().expect("job history lock");
        let rx = self.events.subscribe();
        let mut v = Vec::with_capacity(h.events.len() + 1);
        if h.dropped > 0 {
            v.push(pb::JobEvent {
                kind: Some(pb::job_event::Kind::Message(format!(
                    "({} earlier events were not kept)",
                    h.dropped
                ))),
                time: h.events.front().map(|e| e.time).unwrap_or_else(now),
            });
        }
        v.extend(h.events.iter().cloned());
        (v, rx)
    }
}

/// Whether a job in this state has ended.
pub fn is_final(state: JobState) -> bool {
    matches!(
        state,
        JobState::Succeeded | JobState::Failed | JobState::Cancelled | JobState::Interrupted
    )
}

pub(crate) fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A job's state, its log so far and its live events ([`JobManager::watch`]).
pub struct Watch {
    pub info: pb::JobInfo,
    pub history: Vec<pb::JobEvent>,
    pub live: broadcast::Receiver<pb::JobEvent>,
}

/// The jobs of one coordinator.
pub struct JobManager {
    membership: Arc<dyn Membership>,
    jobs: Mutex<HashMap<String, Arc<JobHandle>>>,
    seq: AtomicU64,
}

impl JobManager {
    /// A manager over `membership`'s cluster. Job records already in the
    /// store are loaded; those that had not ended belong to a coordinator
    /// that stopped, and are marked interrupted.
    pub async fn new(membership: Arc<dyn Membership>) -> Result<Arc<JobManager>> {
        let mut jobs = HashMap::new();
        for (key, v) in membership.list("jobs/").await? {
            let rec: JobRecord = match serde_json::from_slice(&v.value) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(key, error = %e, "ignoring an unreadable job record");
                    continue;
                }
            };
            let mut info = rec.to_info();
            if !is_final(info.state()) {
                info.set_state(JobState::Interrupted);
                info.error = "the coordinator running it stopped before it ended".into();
                info.finished_at = now();
                let rec = JobRecord::from_info(&info);
                membership.put(&key, rec.to_json()).await?;
            }
            jobs.insert(info.job_id.clone(), Arc::new(JobHandle::new(info)));
        }
        Ok(Arc::new(JobManager {
            membership,
            seq: AtomicU64::new(jobs.len() as u64),
            jobs: Mutex::new(jobs),
        }))
    }

    pub fn membership(&self) -> &Arc<dyn Membership> {
        &self.membership
    }

    /// Validates, prepares and starts `spec`; returns the job id. Errors
    /// (a bad graph, too few live tasks) come back here and leave no job.
    pub async fn submit(self: &Arc<Self>, spec: pb::JobSpec) -> Result<String> {
        let id = format!(
            "job-{}-{}",
            (now() * 1000.0) as u64,
            self.seq.fetch_add(1, Ordering::Relaxed)
        );
        let ps = self.membership.members(Some(Role::Ps)).await?;
        let workers = self.membership.members(Some(Role::Worker)).await?;
        for (role, wanted, alive) in [
            ("ps", spec.ps, ps.len()),
            ("worker", spec.workers, workers.len()),
        ] {
            if (alive as u32) < wanted {
                return Err(JobError::NotEnoughTasks {
                    role,
                    wanted,
                    alive: alive as u32,
                });
            }
        }
        let prepared = {
            let (id, spec) = (id.clone(), spec.clone());
            tokio::task::spawn_blocking(move || prepare::prepare(&id, &spec))
                .await
                .map_err(|e| JobError::Internal(format!("preparing the job panicked: {e}")))??
        };
        let info = pb::JobInfo {
            job_id: id.clone(),
            name: spec.name.clone(),
            state: JobState::Pending as i32,
            step: 0,
            steps: spec.steps,
            workers: spec.workers,
            workers_alive: spec.workers,
            ps: spec.ps,
            error: String::new(),
            summary_json: String::new(),
            submitted_at: now(),
            finished_at: 0.0,
        };
        let handle = Arc::new(JobHandle::new(info.clone()));
        handle.emit(pb::job_event::Kind::Message(format!(
            "job {id} submitted: {} worker(s), {} PS shard(s), {} steps",
            spec.workers, spec.ps, spec.steps
        )));
        self.persist(&info).await;
        self.jobs
            .lock()
            .expect("jobs lock")
            .insert(id.clone(), handle.clone());
        let ps = ps.into_iter().take(spec.ps as usize).collect();
        let workers = workers.into_iter().take(spec.workers as usize).collect();
        tokio::spawn(run::run(self.clone(), handle, spec, prepared, ps, workers));
        tracing::info!(job = id, "job submitted");
        Ok(id)
    }

    fn handle(&self, id: &str) -> Result<Arc<JobHandle>> {
        self.jobs
            .lock()
            .expect("jobs lock")
            .get(id)
            .cloned()
            .ok_or_else(|| JobError::NotFound(id.to_string()))
    }

    pub fn get(&self, id: &str) -> Result<pb::JobInfo> {
        Ok(self.handle(id)?.info())
    }

    /// Every job, oldest first.
    pub fn list(&self) -> Vec<pb::JobInfo> {
        let mut v: Vec<pb::JobInfo> = self
            .jobs
            .lock()
            .expect("jobs lock")
            .values()
            .map(|h| h.info())
            .collect();
        v.sort_by(|a, b| a.submitted_at.total_cmp(&b.submitted_at));
        v
    }

    /// Asks a running job to stop; returns its state now.
    pub fn cancel(&self, id: &str) -> Result<JobState> {
        let h = self.handle(id)?;
        let state = h.info().state();
        if !is_final(state) {
            let _ = h.cancel.send(true);
        }
        Ok(state)
    }

    /// The job's info now, the events it kept (its log so far) and a
    /// receiver of its later events.
    pub fn watch(&self, id: &str) -> Result<Watch> {
        let h = self.handle(id)?;
        // Subscribe first: no event between the snapshot and the stream is lost.
        let (history, rx) = h.subscribe();
        Ok(Watch {
            info: h.info(),
            history,
            live: rx,
        })
    }

    /// Marks every job that has not ended as interrupted (this coordinator
    /// is stopping) and stores their records; their workers see the task
    /// streams close and stop.
    pub async fn shutdown(&self) {
        let handles: Vec<Arc<JobHandle>> = self
            .jobs
            .lock()
            .expect("jobs lock")
            .values()
            .cloned()
            .collect();
        for h in handles {
            if is_final(h.info().state()) {
                continue;
            }
            let info = h.update(|i| {
                i.set_state(JobState::Interrupted);
                i.error = "the coordinator running it was stopped".into();
                i.finished_at = now();
            });
            self.persist(&info).await;
            tracing::info!(
                job = info.job_id,
                "job interrupted: the coordinator is stopping"
            );
        }
    }

    /// Writes the job's record to the store (failures are logged: the job
    /// goes on without its record being current).
    pub(crate) async fn persist(&self, info: &pb::JobInfo) {
        let key = format!("jobs/{}", info.job_id);
        if let Err(e) = self
            .membership
            .put(&key, JobRecord::from_info(info).to_json())
            .await
        {
            tracing::warn!(job = info.job_id, error = %e, "could not store the job record");
        }
    }
}
