//! The clients of a running coordinator: `psflow submit`, `psflow status`,
//! `psflow cancel` and `psflow logs`. They speak the coordinator's gRPC
//! protocol; `--coordinator` (or `PSFLOW_COORDINATOR`) says where it is.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use psflow_proto::coordinator::{self as pb, job_event::Kind, JobState};
use psflow_ps::Mode;
use psflow_worker::run::ProgressMode;
use psflow_worker::task::step::PushBatch;
use serde_json::{json, Value};

use super::train::JobArgs;
use crate::cluster::is_final;
use crate::cluster::spec::{status_line, ClusterShape};
use crate::cluster::train::{build_spec, connect, follow, state_word, submit, Client, ClusterRun};
use crate::table::Table;

/// Where the coordinator is.
#[derive(Args, Debug, Clone)]
pub struct CoordinatorArg {
    /// The coordinator's gRPC address, HOST:PORT or http://HOST:PORT.
    #[arg(long, env = "PSFLOW_COORDINATOR", default_value = "127.0.0.1:7070")]
    pub coordinator: String,
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub job: JobArgs,
    #[command(flatten)]
    pub at: CoordinatorArg,
    /// Workers, each taking --batch-size per step.
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    /// Parameter-server shards.
    #[arg(long, default_value_t = 1)]
    pub ps: u32,
    /// Apply the gradients of all workers once per step (the default).
    #[arg(long, conflicts_with = "async_mode")]
    pub sync: bool,
    /// Apply every push at once instead of waiting for all workers.
    #[arg(long = "async")]
    pub async_mode: bool,
    /// Sync mode: apply a step once all but this many workers pushed it.
    #[arg(long, default_value_t = 0)]
    pub backup_workers: u32,
    /// When workers push gradients: `step` (all at once when the step has
    /// produced them), a batch size such as `256KiB` (while the backward
    /// pass runs), or `auto` (`step` for CPU workers whose shards are on
    /// loopback addresses, else 256KiB).
    #[arg(long, default_value = "auto")]
    pub push_batch: PushBatch,
    /// Skip the final evaluation on the test split.
    #[arg(long)]
    pub no_eval: bool,
    /// Follow the job to its end (progress bar; exit status 0 only if it succeeded).
    #[arg(long)]
    pub wait: bool,
    /// With --wait: also write a run directory here (events, loss.svg, summary.json).
    #[arg(long, requires = "wait")]
    pub out: Option<PathBuf>,
    /// TensorBoard scalars every N steps (with --out).
    #[arg(long, default_value_t = 20)]
    pub log_every: u64,
    /// Print JSON: the job id, or with --wait the final job state and summary.
    #[arg(long)]
    pub json: bool,
    /// With --wait: auto, bar, plain or quiet.
    #[arg(long, default_value = "auto", value_parser = ["auto", "bar", "plain", "quiet"])]
    pub progress: String,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// One job (default: every job of the coordinator).
    pub job: Option<String>,
    #[command(flatten)]
    pub at: CoordinatorArg,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CancelArgs {
    pub job: String,
    #[command(flatten)]
    pub at: CoordinatorArg,
    /// Return at once instead of waiting (up to 60 s) for the job to stop.
    #[arg(long)]
    pub no_wait: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    pub job: String,
    #[command(flatten)]
    pub at: CoordinatorArg,
    /// Keep printing new events until the job ends.
    #[arg(short, long)]
    pub follow: bool,
    /// Prefix each line with its time (UTC, RFC 3339).
    #[arg(long)]
    pub timestamps: bool,
    /// One JSON object per event.
    #[arg(long)]
    pub json: bool,
}

type CmdResult = std::result::Result<(), (bool, anyhow::Error)>;

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn state_name(s: JobState) -> &'static str {
    match s {
        JobState::Pending => "pending",
        JobState::Running => "running",
        JobState::Evaluating => "evaluating",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
        JobState::Interrupted => "interrupted",
    }
}

/// A job's info as JSON for programs (the summary parsed, not a string).
pub fn info_json(i: &pb::JobInfo) -> Value {
    let summary: Value = if i.summary_json.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&i.summary_json).unwrap_or(Value::Null)
    };
    json!({
        "job_id": i.job_id,
        "name": i.name,
        "state": state_name(i.state()),
        "step": i.step,
        "steps": i.steps,
        "workers": i.workers,
        "workers_alive": i.workers_alive,
        "ps": i.ps,
        "error": (!i.error.is_empty()).then_some(&i.error),
        "submitted_at": i.submitted_at,
        "finished_at": (i.finished_at > 0.0).then_some(i.finished_at),
        "summary": summary,
    })
}

/// Runs `psflow submit`.
pub fn run_submit(args: &SubmitArgs) -> CmdResult {
    let usage = |e: anyhow::Error| (true, e);
    let mut cfg = args.job.check().map_err(usage)?;
    if args.workers == 0 || args.ps == 0 {
        return Err(usage(anyhow!("--workers and --ps must be at least 1")));
    }
    if args.async_mode && args.backup_workers > 0 {
        return Err(usage(anyhow!(
            "--backup-workers applies to sync mode, not --async"
        )));
    }
    if args.backup_workers >= args.workers {
        return Err(usage(anyhow!(
            "--backup-workers {} leaves none of the {} workers to wait for",
            args.backup_workers,
            args.workers
        )));
    }
    // The workers read the data where the client says it is: make the path
    // absolute so that it does not depend on their working directories.
    if let Some(d) = &cfg.data_dir {
        cfg.data_dir = Some(std::path::absolute(d).unwrap_or_else(|_| d.clone()));
    }
    // Steps per epoch count the training examples: the client reads the
    // dataset's files once (the workers read them again).
    let kind = cfg.dataset_kind().map_err(usage)?;
    let train_len = kind
        .load(cfg.data_dir.as_deref())
        .with_context(|| {
            format!(
                "loading {kind} here to count its examples (the workers read it from the same \
                 --data-dir)"
            )
        })
        .map_err(usage)?
        .train
        .len();
    let per_step = cfg.batch_size * args.workers as usize;
    let steps_per_epoch = (train_len / per_step) as u64;
    if steps_per_epoch == 0 {
        return Err(usage(anyhow!(
            "{} worker(s) × --batch-size {} is more than the {train_len} training examples",
            args.workers,
            cfg.batch_size
        )));
    }
    let total = match (args.job.steps, args.job.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => ((e * steps_per_epoch as f64).round() as u64).max(1),
        (None, None) => unreachable!("clap requires one"),
    };
    let mode = if args.async_mode {
        Mode::Async
    } else {
        Mode::Sync {
            workers: args.workers,
            backup: args.backup_workers,
        }
    };
    let progress = match (args.json, args.progress.as_str()) {
        (true, _) | (_, "quiet") => ProgressMode::Quiet,
        (_, "bar") => ProgressMode::Bar,
        (_, "plain") => ProgressMode::Plain,
        _ => ProgressMode::Auto,
    };
    let run = ClusterRun {
        cfg: &cfg,
        shape: ClusterShape {
            workers: args.workers,
            ps: args.ps,
            mode,
            push_batch: args.push_batch,
        },
        total,
        steps_per_epoch,
        out: args.out.clone(),
        progress,
        log_every: args.log_every,
        optimizer_name: args.job.optimizer.clone(),
        data_threads: args.job.data_threads,
        eval: !args.no_eval,
        local: false,
    };
    let (spec, title) = build_spec(&run).map_err(usage)?;
    let rt = runtime().map_err(|e| (false, e))?;
    rt.block_on(async {
        let mut client = connect(&args.at.coordinator).await.map_err(usage)?;
        let id = submit(&mut client, spec).await.map_err(usage)?;
        if !args.wait {
            if args.json {
                println!("{}", json!({ "job_id": id }));
            } else {
                println!("{id}");
                eprintln!(
                    "submitted; follow it with `psflow logs {id} --follow` or `psflow status {id}`"
                );
            }
            return Ok(());
        }
        if !args.json {
            eprintln!("submitted {id}");
        }
        let outcome = follow(&run, &mut client, &id, &title)
            .await
            .map_err(|e| (false, e))?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&info_json(&outcome.info)).unwrap()
            );
        } else if let Some(s) = &outcome.summary {
            print!("{}", summary_table(&outcome.info, s));
        }
        if outcome.summary.is_none() {
            let i = &outcome.info;
            return Err((
                false,
                anyhow!("job {} {}: {}", i.job_id, state_word(i.state()), i.error),
            ));
        }
        Ok(())
    })
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2} %", 100.0 * v))
}

/// The result table of a finished job (`submit --wait`, `quickstart`).
pub(crate) fn summary_table(info: &pb::JobInfo, s: &psflow_worker::run::TrainSummary) -> String {
    let mib = |k: &str| {
        s.extra
            .get(k)
            .and_then(|v| v.as_u64())
            .map_or("-".into(), |b| {
                format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
            })
    };
    let mut t = Table::new(&["result", "value"]);
    t.row(vec!["job".into(), info.job_id.clone()]);
    t.row(vec![
        "model".into(),
        format!("{} ({} parameters)", s.model, s.params),
    ]);
    t.row(vec![
        "cluster".into(),
        format!(
            "{} worker(s) × batch {}, {} PS shard(s), {}",
            info.workers,
            s.batch_size,
            info.ps,
            s.extra
                .get("mode")
                .and_then(|m| m.as_str())
                .unwrap_or("sync")
        ),
    ]);
    t.row(vec![
        "steps".into(),
        format!("{} ({:.2} epochs)", s.steps, s.epochs),
    ]);
    t.row(vec!["test accuracy (top-1)".into(), pct(s.top1)]);
    t.row(vec!["test accuracy (top-5)".into(), pct(s.top5)]);
    t.row(vec!["images/s".into(), format!("{:.0}", s.images_per_sec)]);
    t.row(vec![
        "training time".into(),
        format!("{:.1} s", s.wall_seconds),
    ]);
    t.row(vec!["bytes pushed".into(), mib("bytes_pushed")]);
    t.row(vec!["bytes pulled".into(), mib("bytes_pulled")]);
    t.render()
}

fn age(since: f64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(since);
    let s = (now - since).max(0.0) as u64;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn not_found_hint(e: tonic::Status, what: &str) -> anyhow::Error {
    if e.code() == tonic::Code::NotFound {
        anyhow!(
            "{}; `psflow status` lists the coordinator's jobs",
            status_line(&e)
        )
    } else {
        anyhow!("{what}: {}", status_line(&e))
    }
}

/// Runs `psflow status [JOB]`.
pub fn run_status(args: &StatusArgs) -> CmdResult {
    let rt = runtime().map_err(|e| (false, e))?;
    rt.block_on(async {
        let mut client = connect(&args.at.coordinator).await.map_err(|e| (true, e))?;
        let jobs = match &args.job {
            Some(id) => vec![client
                .get_job(pb::GetJobRequest { job_id: id.clone() })
                .await
                .map_err(|e| (true, not_found_hint(e, "reading the job")))?
                .into_inner()],
            None => {
                client
                    .list_jobs(pb::ListJobsRequest {})
                    .await
                    .map_err(|e| (false, anyhow!("listing jobs: {}", status_line(&e))))?
                    .into_inner()
                    .jobs
            }
        };
        if args.json {
            let v = match &args.job {
                Some(_) => info_json(&jobs[0]),
                None => Value::Array(jobs.iter().map(info_json).collect()),
            };
            println!("{}", serde_json::to_string_pretty(&v).unwrap());
            return Ok(());
        }
        if args.job.is_some() {
            let i = &jobs[0];
            let mut t = Table::new(&["field", "value"]);
            let s: Value = serde_json::from_str(&i.summary_json).unwrap_or(Value::Null);
            t.row(vec!["job".into(), i.job_id.clone()]);
            t.row(vec!["name".into(), i.name.clone()]);
            t.row(vec!["state".into(), state_name(i.state()).into()]);
            t.row(vec!["step".into(), format!("{} / {}", i.step, i.steps)]);
            t.row(vec![
                "workers".into(),
                format!("{} alive of {}", i.workers_alive, i.workers),
            ]);
            t.row(vec!["ps shards".into(), i.ps.to_string()]);
            t.row(vec![
                "submitted".into(),
                format!("{} ago", age(i.submitted_at)),
            ]);
            if i.finished_at > 0.0 {
                t.row(vec![
                    "ran for".into(),
                    format!("{:.1} s", i.finished_at - i.submitted_at),
                ]);
            }
            if !i.error.is_empty() {
                t.row(vec!["error".into(), i.error.clone()]);
            }
            if !s.is_null() {
                t.row(vec!["test top-1".into(), pct(s["top1"].as_f64())]);
                t.row(vec!["test top-5".into(), pct(s["top5"].as_f64())]);
                t.row(vec![
                    "images/s".into(),
                    s["images_per_sec"]
                        .as_f64()
                        .map_or("-".into(), |v| format!("{v:.0}")),
                ]);
            }
            print!("{}", t.render());
            return Ok(());
        }
        if jobs.is_empty() {
            eprintln!("no jobs (submit one with `psflow submit`)");
            return Ok(());
        }
        let mut t = Table::new(&[
            "JOB", "NAME", "STATE", "STEP", "WORKERS", "PS", "TOP-1", "AGE",
        ])
        .right_align(&[3, 4, 5, 6, 7]);
        for i in &jobs {
            let s: Value = serde_json::from_str(&i.summary_json).unwrap_or(Value::Null);
            t.row(vec![
                i.job_id.clone(),
                i.name.clone(),
                state_name(i.state()).into(),
                format!("{}/{}", i.step, i.steps),
                format!("{}/{}", i.workers_alive, i.workers),
                i.ps.to_string(),
                pct(s["top1"].as_f64()),
                age(i.submitted_at),
            ]);
        }
        print!("{}", t.render());
        Ok(())
    })
}

/// Runs `psflow cancel JOB`.
pub fn run_cancel(args: &CancelArgs) -> CmdResult {
    let rt = runtime().map_err(|e| (false, e))?;
    rt.block_on(async {
        let mut client = connect(&args.at.coordinator).await.map_err(|e| (true, e))?;
        let before = client
            .cancel_job(pb::CancelJobRequest {
                job_id: args.job.clone(),
            })
            .await
            .map_err(|e| (true, not_found_hint(e, "cancelling the job")))?
            .into_inner()
            .state();
        let mut info = None;
        if !is_final(before) && !args.no_wait {
            info = Some(
                wait_final(&mut client, &args.job, Duration::from_secs(60))
                    .await
                    .map_err(|e| (false, e))?,
            );
        }
        let now = info.as_ref().map(|i| i.state());
        if args.json {
            println!(
                "{}",
                json!({
                    "job_id": args.job,
                    "state_before": state_name(before),
                    "state": now.map(state_name),
                })
            );
        } else if is_final(before) {
            println!(
                "job {} had already ended ({}); nothing to cancel",
                args.job,
                state_name(before)
            );
        } else {
            match now {
                Some(s) => println!(
                    "job {}: {} (was {})",
                    args.job,
                    state_name(s),
                    state_name(before)
                ),
                None => println!("job {}: cancelling (was {})", args.job, state_name(before)),
            }
        }
        Ok(())
    })
}

/// Follows job `id` until it ends (or `limit` passes: an error).
async fn wait_final(client: &mut Client, id: &str, limit: Duration) -> Result<pb::JobInfo> {
    let mut stream = client
        .watch_job(pb::WatchJobRequest {
            job_id: id.to_string(),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow!("watching {id}: {}", status_line(&e)))?
        .into_inner();
    let wait = async {
        while let Some(ev) = stream
            .message()
            .await
            .map_err(|e| anyhow!("watching {id}: {}", status_line(&e)))?
        {
            if let Some(Kind::Info(i)) = ev.kind {
                if is_final(i.state()) {
                    return Ok(i);
                }
            }
        }
        Err(anyhow!(
            "the coordinator stopped reporting {id} before it ended"
        ))
    };
    tokio::time::timeout(limit, wait)
        .await
        .map_err(|_| anyhow!("job {id} did not stop within {} s", limit.as_secs()))?
}

/// Runs `psflow logs JOB [--follow]`.
pub fn run_logs(args: &LogsArgs) -> CmdResult {
    let rt = runtime().map_err(|e| (false, e))?;
    rt.block_on(async {
        let mut client = connect(&args.at.coordinator)
            .await
            .map_err(|e| (true, e))?;
        let mut stream = client
            .watch_job(pb::WatchJobRequest {
                job_id: args.job.clone(),
                history: true,
                no_follow: !args.follow,
            })
            .await
            .map_err(|e| (true, not_found_hint(e, "reading the job's log")))?
            .into_inner();
        let mut last_state = None;
        while let Some(ev) = stream.message().await.map_err(|e| {
            (
                false,
                anyhow!("following {}: {}", args.job, status_line(&e)),
            )
        })? {
            if args.json {
                println!("{}", event_json(&ev));
                continue;
            }
            let line = match &ev.kind {
                Some(Kind::Step(r)) => format!(
                    "step {:>6}  loss {:.4} (xent {:.4}, reg {:.4})  train acc {:.3}  lr {:.5}  {:.0} img/s",
                    r.step,
                    r.total_loss,
                    r.cross_entropy_loss,
                    r.regularization_loss,
                    r.accuracy,
                    r.learning_rate,
                    r.images_per_sec
                ),
                Some(Kind::Message(m)) => m.clone(),
                Some(Kind::Info(i)) => {
                    // State lines only when the state changes.
                    if last_state == Some(i.state()) {
                        continue;
                    }
                    last_state = Some(i.state());
                    let mut l = format!(
                        "state {} (step {}/{}, {} of {} workers alive)",
                        state_name(i.state()),
                        i.step,
                        i.steps,
                        i.workers_alive,
                        i.workers
                    );
                    if !i.error.is_empty() {
                        l.push_str(&format!(": {}", i.error));
                    }
                    if let Ok(s) = serde_json::from_str::<Value>(&i.summary_json) {
                        if let Some(t) = s["top1"].as_f64() {
                            l.push_str(&format!("; test top-1 {t:.4}"));
                        }
                    }
                    l
                }
                None => continue,
            };
            if args.timestamps {
                println!("{} {line}", rfc3339(ev.time));
            } else {
                println!("{line}");
            }
        }
        Ok(())
    })
}

fn event_json(ev: &pb::JobEvent) -> Value {
    let mut v = match &ev.kind {
        Some(Kind::Step(r)) => json!({
            "kind": "step",
            "step": r.step,
            "total_loss": r.total_loss,
            "cross_entropy_loss": r.cross_entropy_loss,
            "regularization_loss": r.regularization_loss,
            "accuracy": r.accuracy,
            "learning_rate": r.learning_rate,
            "images_per_sec": r.images_per_sec,
            "examples": r.examples,
            "bytes_pulled": r.bytes_pulled,
            "bytes_pushed": r.bytes_pushed,
        }),
        Some(Kind::Message(m)) => json!({ "kind": "message", "message": m }),
        Some(Kind::Info(i)) => json!({ "kind": "state", "job": info_json(i) }),
        None => json!({ "kind": "unknown" }),
    };
    v["time"] = json!(ev.time);
    v
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn rfc3339(t: f64) -> String {
    let secs = t.floor() as i64;
    let ms = ((t - secs as f64) * 1000.0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400.5), "2000-02-29T00:00:00.500Z");
        assert_eq!(rfc3339(1_796_446_799.25), "2026-12-05T04:59:59.250Z");
    }
}
