//! Running a prepared job on its tasks (see the module docs of `job`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use futures::StreamExt;
use psflow_proto::coordinator::{self as pb, job_event::Kind, JobState};
use psflow_proto::worker::worker_client::WorkerClient;
use psflow_proto::worker::{self as pw, TaskProgress};
use psflow_ps::{Mode, PsClient};
use serde_json::json;
use tokio::sync::mpsc;
use tonic::transport::Endpoint;

use super::prepare::Prepared;
use super::{now, JobError, JobHandle, JobManager, Result};
use crate::membership::{MemberEvent, MemberInfo, Role};

/// How long connecting to a task may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes of a TaskSpec / EvalSpec message (graphs ride in them).
const MAX_SPEC_BYTES: usize = 64 << 20;
/// Steps the images/s figure is averaged over.
const RATE_WINDOW: usize = 20;
/// How often the job record is rewritten while steps go by.
const PERSIST_EVERY: Duration = Duration::from_secs(2);

/// What a worker's RunTask stream said.
enum WorkerMsg {
    Progress(TaskProgress),
    /// The stream failed or ended before `done`.
    Lost(String),
}

/// Runs the job to its end and records the outcome.
pub(super) async fn run(
    manager: Arc<JobManager>,
    handle: Arc<JobHandle>,
    spec: pb::JobSpec,
    prepared: Prepared,
    ps: Vec<MemberInfo>,
    workers: Vec<MemberInfo>,
) {
    let began = Instant::now();
    let mut cancel = handle.cancel.subscribe();
    let outcome = tokio::select! {
        r = drive(&manager, &handle, &spec, prepared, &ps, &workers, began) => r,
        _ = cancel.wait_for(|c| *c) => Err(JobError::Cancelled),
    };
    let info = handle.update(|i| {
        i.finished_at = now();
        match &outcome {
            Ok(summary) => {
                i.set_state(JobState::Succeeded);
                i.summary_json = summary.to_string();
            }
            Err(JobError::Cancelled) => i.set_state(JobState::Cancelled),
            Err(e) => {
                i.set_state(JobState::Failed);
                i.error = e.to_string();
            }
        }
    });
    match &outcome {
        Ok(_) => tracing::info!(job = info.job_id, "job succeeded"),
        Err(e) => tracing::warn!(job = info.job_id, error = %e, "job ended without success"),
    }
    manager.persist(&info).await;
}

fn task_err(task: String) -> impl Fn(String) -> JobError {
    move |detail| JobError::Task {
        task: task.clone(),
        detail,
    }
}

async fn connect_worker(
    addr: &str,
) -> std::result::Result<WorkerClient<tonic::transport::Channel>, String> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let channel = Endpoint::from_shared(uri)
        .map_err(|e| format!("not a valid address: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    Ok(WorkerClient::new(channel)
        .max_decoding_message_size(MAX_SPEC_BYTES)
        .max_encoding_message_size(MAX_SPEC_BYTES))
}

/// One step's reports so far.
#[derive(Default)]
struct StepAcc {
    reports: u32,
    total: f64,
    xent: f64,
    reg: f64,
    examples: u64,
    correct: u64,
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    manager: &Arc<JobManager>,
    handle: &Arc<JobHandle>,
    spec: &pb::JobSpec,
    prepared: Prepared,
    ps: &[MemberInfo],
    workers: &[MemberInfo],
    began: Instant,
) -> Result<serde_json::Value> {
    let job = handle.info().job_id;
    // Watch membership before anything starts: no loss goes unseen.
    let mut member_events = manager.membership().watch_members().await?;
    tracing::info!(
        job,
        shards = ps.len(),
        "initializing the parameter-server shards"
    );

    // Initialize every shard.
    let shards: Vec<pw::ShardAddr> = ps
        .iter()
        .enumerate()
        .map(|(i, m)| pw::ShardAddr {
            index: i as u32,
            addr: m.addr.clone(),
        })
        .collect();
    let clients = try_join_all(ps.iter().enumerate().map(|(i, m)| {
        let mut cfg = prepared.shard_config.clone();
        cfg.shard = i as u32;
        let values = &prepared.shard_values[i];
        let fail = task_err(format!("parameter server {} ({}) shard {i}", m.id, m.addr));
        let job = job.clone();
        async move {
            let mut c = PsClient::connect(&m.addr, job, CONNECT_TIMEOUT)
                .await
                .map_err(|e| fail(e.to_string()))?;
            c.init(&cfg, values, false)
                .await
                .map_err(|e| fail(format!("Init: {e}")))?;
            Ok::<_, JobError>(c)
        }
    }))
    .await?;
    handle.emit(Kind::Message(format!(
        "{} shard(s) initialized ({} bytes of variables); starting {} worker(s)",
        ps.len(),
        prepared.plan.shards.iter().map(|s| s.bytes).sum::<u64>(),
        workers.len()
    )));
    tracing::info!(
        job,
        workers = workers.len(),
        "shards initialized; starting the workers"
    );
    let info = handle.update(|i| i.set_state(JobState::Running));
    manager.persist(&info).await;

    // Start every worker's task.
    let (tx, mut rx) = mpsc::channel::<(usize, WorkerMsg)>(256);
    let mut tasks = Vec::new();
    for (w, m) in workers.iter().enumerate() {
        let mut task = prepared.task.clone();
        task.worker = w as u32;
        task.shards = shards.clone();
        let (tx, addr) = (tx.clone(), m.addr.clone());
        tasks.push(tokio::spawn(async move {
            let lost = |why: String| (w, WorkerMsg::Lost(why));
            let mut client = match connect_worker(&addr).await {
                Ok(c) => c,
                Err(e) => return drop(tx.send(lost(e)).await),
            };
            let mut stream = match client.run_task(task).await {
                Ok(s) => s.into_inner(),
                Err(s) => return drop(tx.send(lost(s.message().to_string())).await),
            };
            loop {
                match stream.message().await {
                    Ok(Some(p)) => {
                        let done = p.done;
                        if tx.send((w, WorkerMsg::Progress(p))).await.is_err() || done {
                            return;
                        }
                    }
                    Ok(None) => {
                        return drop(tx.send(lost("its task stream ended early".into())).await)
                    }
                    Err(s) => return drop(tx.send(lost(s.message().to_string())).await),
                }
            }
        }));
    }
    drop(tx);
    // Stop the worker streams (and so their tasks) whatever happens below.
    struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            for t in &self.0 {
                t.abort();
            }
        }
    }
    let _tasks = AbortOnDrop(tasks);

    let sync = matches!(prepared.shard_config.mode, Mode::Sync { .. });
    let n = workers.len();
    let mut alive = vec![true; n];
    let mut done = vec![false; n];
    let mut bytes = vec![(0u64, 0u64); n];
    let mut pending: BTreeMap<u64, StepAcc> = BTreeMap::new();
    let mut emitted = 0u64;
    let mut window: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut first_step_at: Option<Instant> = None;
    let mut examples_after_first = 0u64;
    let mut last_losses = None;
    let mut last_persist = Instant::now();
    let mut lost_count = 0u32;

    loop {
        let alive_n = alive.iter().filter(|a| **a).count();
        if (0..n).all(|w| !alive[w] || done[w]) {
            break;
        }
        let mut lost: Option<(usize, String)> = None;
        tokio::select! {
            msg = rx.recv() => match msg {
                None => return Err(JobError::Internal("every worker stream ended".into())),
                Some((w, WorkerMsg::Lost(why))) => lost = Some((w, why)),
                Some((w, WorkerMsg::Progress(p))) => {
                    if !alive[w] {
                        continue;
                    }
                    bytes[w] = (p.bytes_pulled, p.bytes_pushed);
                    if p.done {
                        done[w] = true;
                    } else {
                        if !p.event.is_empty() {
                            handle.emit(Kind::Message(format!("worker {w}: {}", p.event)));
                        }
                        let a = pending.entry(p.step).or_default();
                        a.reports += 1;
                        a.total += p.total_loss;
                        a.xent += p.cross_entropy_loss;
                        a.reg += p.regularization_loss;
                        a.examples += p.examples as u64;
                        a.correct += p.correct as u64;
                    }
                }
            },
            ev = member_events.next() => match ev {
                Some(Ok(MemberEvent::Left(m))) if m.role == Role::Worker => {
                    if let Some(w) = workers.iter().position(|x| x.id == m.id) {
                        lost = Some((w, format!("its membership lease ended ({})", m.addr)));
                    }
                }
                Some(Ok(MemberEvent::Left(m))) if m.role == Role::Ps
                    && ps.iter().any(|x| x.id == m.id) => {
                    return Err(JobError::Task {
                        task: format!("parameter server {} ({})", m.id, m.addr),
                        detail: "its membership lease ended; the job cannot continue without its shard".into(),
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(job, error = %e, "membership watch ended; rewatching");
                    member_events = manager.membership().watch_members().await?;
                }
                None => member_events = manager.membership().watch_members().await?,
            },
        }
        if let Some((w, why)) = lost {
            if alive[w] && !done[w] {
                alive[w] = false;
                lost_count += 1;
                let left = alive_n - 1;
                if left == 0 {
                    return Err(JobError::Task {
                        task: format!("worker {} ({})", workers[w].id, workers[w].addr),
                        detail: format!("{why}; no worker is left"),
                    });
                }
                if sync {
                    for c in &clients {
                        let mut c = c.clone();
                        c.set_workers(left as u32)
                            .await
                            .map_err(|e| JobError::Task {
                                task: format!("parameter server at {}", c.addr()),
                                detail: format!("SetWorkers({left}): {e}"),
                            })?;
                    }
                }
                let msg = format!(
                    "worker {} ({}) lost: {why}; continuing with {left} worker(s)",
                    workers[w].id, workers[w].addr
                );
                tracing::warn!(job, "{msg}");
                handle.emit(Kind::Message(msg));
                let info = handle.update(|i| i.workers_alive = left as u32);
                manager.persist(&info).await;
            }
        }
        // Emit every step that all live workers have reported.
        let alive_n = alive.iter().filter(|a| **a).count() as u32;
        while let Some(a) = pending.get(&(emitted + 1)) {
            if a.reports < alive_n {
                break;
            }
            let a = pending.remove(&(emitted + 1)).expect("present");
            emitted += 1;
            let r = a.reports.max(1) as f64;
            let now_t = Instant::now();
            match first_step_at {
                None => first_step_at = Some(now_t),
                Some(_) => examples_after_first += a.examples,
            }
            window.push_back((now_t, a.examples));
            if window.len() > RATE_WINDOW {
                window.pop_front();
            }
            let rate = match (window.front(), window.back()) {
                (Some(f), Some(l)) if window.len() > 1 => {
                    let ex: u64 = window.iter().skip(1).map(|(_, e)| e).sum();
                    ex as f64 / l.0.duration_since(f.0).as_secs_f64().max(1e-9)
                }
                _ => 0.0,
            };
            let losses = (a.total / r, a.xent / r, a.reg / r);
            last_losses = Some(losses);
            let (pulled, pushed) = bytes.iter().fold((0, 0), |s, b| (s.0 + b.0, s.1 + b.1));
            handle.emit(Kind::Step(pb::StepReport {
                step: emitted,
                total_loss: losses.0,
                cross_entropy_loss: losses.1,
                regularization_loss: losses.2,
                accuracy: a.correct as f64 / a.examples.max(1) as f64,
                learning_rate: prepared.schedule.at(emitted - 1) as f64,
                images_per_sec: rate,
                examples: a.examples,
                bytes_pulled: pulled,
                bytes_pushed: pushed,
            }));
            let step = emitted;
            let info = {
                let mut i = handle.info.lock().expect("job info lock");
                i.step = step;
                i.clone()
            };
            if last_persist.elapsed() >= PERSIST_EVERY {
                last_persist = Instant::now();
                manager.persist(&info).await;
            }
        }
    }
    let train_wall = began.elapsed().as_secs_f64();
    let images_per_sec = match (first_step_at, window.back()) {
        (Some(f), Some(l)) if l.0 > f => {
            examples_after_first as f64 / l.0.duration_since(f).as_secs_f64()
        }
        _ => 0.0,
    };
    let (pulled, pushed) = bytes.iter().fold((0, 0), |s, b| (s.0 + b.0, s.1 + b.1));
    let mut stats = vec![];
    for c in &clients {
        if let Ok(s) = c.clone().stats().await {
            stats.push(json!({
                "version": s.version,
                "updates_applied": s.updates_applied,
                "pushes_dropped_late": s.pushes_dropped_late,
                "bytes_in": s.bytes_in,
                "bytes_out": s.bytes_out,
            }));
        }
    }

    // Evaluate on the first live worker.
    let eval = match prepared.eval.clone() {
        None => None,
        Some(mut e) => {
            let w = (0..n).find(|&w| alive[w]).expect("a worker is alive");
            let info = handle.update(|i| i.set_state(JobState::Evaluating));
            manager.persist(&info).await;
            handle.emit(Kind::Message(format!(
                "evaluating on worker {}",
                workers[w].id
            )));
            e.shards = shards.clone();
            let fail = task_err(format!("worker {} ({})", workers[w].id, workers[w].addr));
            let mut client = connect_worker(&workers[w].addr).await.map_err(&fail)?;
            let r = client
                .evaluate(e)
                .await
                .map_err(|s| fail(format!("Evaluate: {}", s.message())))?
                .into_inner();
            Some(r)
        }
    };

    let model = spec.model.clone().unwrap_or_default();
    let data = spec.data.clone().unwrap_or_default();
    let steps = spec.steps;
    Ok(json!({
        "model": model.model,
        "alpha": model.alpha,
        "resolution": model.resolution,
        "conv": model.conv,
        "dataset": data.dataset,
        "classes": model.classes,
        "top1": eval.as_ref().map(|e| e.top1),
        "top5": eval.as_ref().map(|e| e.top5),
        "eval_loss": eval.as_ref().map(|e| e.loss),
        "params": model.params,
        "model_bytes": model.params * 4,
        "images_per_sec": images_per_sec,
        "steps": steps,
        "epochs": if spec.steps_per_epoch > 0 { steps as f64 / spec.steps_per_epoch as f64 } else { 0.0 },
        "wall_seconds": train_wall,
        "batch_size": data.batch_size,
        "optimizer": model.optimizer,
        "optimizer_config": serde_json::from_str::<serde_json::Value>(&model.optimizer_config_json).unwrap_or(serde_json::Value::Null),
        "final_learning_rate": Some(prepared.schedule.at(steps.saturating_sub(1)) as f64),
        "final_losses": last_losses.map(|(t, x, r)| json!({"total": t, "cross_entropy": x, "regularization": r})),
        "resumed_from_step": serde_json::Value::Null,
        "threads": 0,
        "psflow_version": env!("CARGO_PKG_VERSION"),
        "job_id": job,
        "workers": workers.len(),
        "workers_lost": lost_count,
        "ps": ps.len(),
        "mode": if sync { "sync" } else { "async" },
        "bytes_pulled": pulled,
        "bytes_pushed": pushed,
        "shards": stats,
        "weights": if spec.moving_average_decay > 0.0 { "moving_average" } else { "last" },
        "moving_average_decay": (spec.moving_average_decay > 0.0)
            .then(|| psflow_graph::train::as_written(spec.moving_average_decay)),
    }))
}
