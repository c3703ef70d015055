//! Training on the in-process cluster: start it, submit the job to its
//! coordinator over gRPC, follow WatchJob with the same progress bar,
//! TensorBoard events, loss plot and summary.json as single-process
//! training.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use psflow_proto::coordinator::coordinator_client::CoordinatorClient;
use psflow_proto::coordinator::{self as pb, job_event::Kind, JobState};
use psflow_worker::run::{
    EventWriter, LossPlot, Losses, ProgressMode, RunDir, StepReport, TrainProgress, TrainSummary,
};
use tonic::transport::Endpoint;

use super::local::LocalCluster;
use super::spec::{job_spec, status_line, ClusterShape};
use crate::trainer::{RunConfig, Trainer};

/// What to train and where to write it.
pub struct ClusterRun<'a> {
    pub cfg: &'a RunConfig,
    pub shape: ClusterShape,
    /// The global step to stop at.
    pub total: u64,
    pub steps_per_epoch: u64,
    /// RUN_DIR (None: nothing written).
    pub out: Option<PathBuf>,
    pub progress: ProgressMode,
    pub log_every: u64,
    pub optimizer_name: String,
    pub data_threads: usize,
    pub eval: bool,
    /// The cluster runs in this process (its tasks share these kernel threads).
    pub local: bool,
}

/// What the job ended with.
pub struct Outcome {
    /// The job's final state.
    pub info: pb::JobInfo,
    /// Its summary, when it succeeded.
    pub summary: Option<TrainSummary>,
}

/// Most bytes of one message to or from the coordinator.
const MAX_MESSAGE: usize = 64 << 20;

pub type Client = CoordinatorClient<tonic::transport::Channel>;

pub async fn connect(addr: &str) -> Result<Client> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let channel = Endpoint::from_shared(uri.clone())
        .with_context(|| format!("{addr:?} is not a valid address"))?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| {
            format!("cannot reach the coordinator at {uri}; is `psflow coordinator` running there?")
        })?;
    Ok(CoordinatorClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

/// The job spec of `run` and the model's title for plots.
pub fn build_spec(run: &ClusterRun<'_>) -> Result<(pb::JobSpec, String)> {
    // The shards keep the weight averages (the job spec asks for them);
    // the training graph the workers run has none.
    let trainer = Trainer::build(&RunConfig {
        moving_average_decay: None,
        ..run.cfg.clone()
    })?;
    let mut spec = job_spec(
        run.cfg,
        &trainer,
        run.shape,
        run.total,
        run.steps_per_epoch,
        &run.optimizer_name,
        run.data_threads,
    )?;
    if !run.eval {
        spec.inference_graph = None;
    }
    Ok((
        spec,
        format!("{} on {}", trainer.model.name, run.cfg.dataset),
    ))
}

/// Runs `run` on a fresh in-process cluster (see the module docs); an
/// error unless the job succeeded.
pub fn train(run: &ClusterRun<'_>) -> Result<Outcome> {
    let (spec, title) = build_spec(run)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let outcome = rt.block_on(async {
        let cluster = LocalCluster::start(run.shape.workers as usize, run.shape.ps as usize)
            .await
            .context("starting the local cluster")?;
        let r = async {
            let mut client = connect(&cluster.coordinator.addr).await?;
            let id = submit(&mut client, spec).await?;
            follow(run, &mut client, &id, &title).await
        }
        .await;
        cluster.stop().await;
        r
    })?;
    if outcome.summary.is_none() {
        let i = &outcome.info;
        bail!("job {} {}: {}", i.job_id, state_word(i.state()), i.error);
    }
    Ok(outcome)
}

/// Submits `spec`; returns the job id.
pub async fn submit(client: &mut Client, spec: pb::JobSpec) -> Result<String> {
    Ok(client
        .submit_job(pb::SubmitJobRequest { spec: Some(spec) })
        .await
        .map_err(|s| anyhow!("the coordinator refused the job: {}", status_line(&s)))?
        .into_inner()
        .job_id)
}

/// Follows job `id` to its end with a progress bar, writing `run.out`
/// (TensorBoard events, loss plot, summary.json) when set. `title` names
/// the plot.
pub async fn follow(
    run: &ClusterRun<'_>,
    client: &mut Client,
    id: &str,
    title: &str,
) -> Result<Outcome> {
    let id = id.to_string();
    let mut stream = client
        .watch_job(pb::WatchJobRequest {
            job_id: id.clone(),
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow!("watching {id}: {}", status_line(&s)))?
        .into_inner();

    let run_dir = match &run.out {
        Some(p) => Some(RunDir::create(p).with_context(|| format!("creating {}", p.display()))?),
        None => None,
    };
    let mut events = match &run_dir {
        Some(d) => {
            let mut e = EventWriter::create(d.events())?;
            e.add_session_start(0)?;
            Some(e)
        }
        None => None,
    };
    let log_every = run.log_every.max(1);
    let mut progress = TrainProgress::new(run.total, 0, run.progress);
    let (mut window, mut window_n) = (Losses::new(0.0, 0.0, 0.0), 0u64);
    let (mut correct, mut seen) = (0.0f64, 0u64);
    let (mut loss_points, mut xent_points) = (vec![], vec![]);
    let mut last = None;
    let info = loop {
        let ev = stream
            .message()
            .await
            .map_err(|s| anyhow!("following {id}: {}", status_line(&s)))?
            .ok_or_else(|| anyhow!("the coordinator stopped reporting {id} before it ended"))?;
        match ev.kind {
            Some(Kind::Step(r)) => {
                let losses = Losses::new(r.total_loss, r.cross_entropy_loss, r.regularization_loss);
                window = Losses::new(
                    window.total + losses.total,
                    window.cross_entropy + losses.cross_entropy,
                    window.regularization + losses.regularization,
                );
                window_n += 1;
                correct += r.accuracy * r.examples as f64;
                seen += r.examples;
                let mean = Losses::new(
                    window.total / window_n as f64,
                    window.cross_entropy / window_n as f64,
                    window.regularization / window_n as f64,
                );
                let report = StepReport {
                    step: r.step,
                    epoch: r.step as f64 / run.steps_per_epoch.max(1) as f64,
                    losses: mean,
                    learning_rate: r.learning_rate,
                    images_per_sec: (r.images_per_sec > 0.0).then_some(r.images_per_sec),
                };
                progress.update(&report);
                if r.step % log_every == 0 || r.step == run.total {
                    if let Some(e) = events.as_mut() {
                        e.add_scalars(
                            r.step as i64,
                            &[
                                ("loss/total", mean.total as f32),
                                ("loss/cross_entropy", mean.cross_entropy as f32),
                                ("loss/regularization", mean.regularization as f32),
                                ("learning_rate", r.learning_rate as f32),
                                ("accuracy/train", (correct / seen.max(1) as f64) as f32),
                                ("cluster/images_per_sec", r.images_per_sec as f32),
                            ],
                        )?;
                    }
                    loss_points.push((r.step as f64, mean.total));
                    xent_points.push((r.step as f64, mean.cross_entropy));
                    (window, window_n, correct, seen) = (Losses::new(0.0, 0.0, 0.0), 0, 0.0, 0);
                }
                last = Some(r);
            }
            Some(Kind::Message(m)) => progress.println(&m),
            Some(Kind::Info(i)) if super::is_final(i.state()) => break i,
            Some(Kind::Info(_)) | None => {}
        }
    };
    if info.state() != JobState::Succeeded {
        progress.finish(&format!(
            "job {id} {}: {}",
            state_word(info.state()),
            info.error
        ));
        return Ok(Outcome {
            info,
            summary: None,
        });
    }
    let mut summary: TrainSummary = serde_json::from_str(&info.summary_json)
        .with_context(|| format!("job {id}: reading its summary"))?;
    if run.local {
        summary.threads = psflow_kernels::threads::current() as u32;
    }
    progress.finish(&format!(
        "trained to step {} in {:.1} s ({:.1} images/s) on {} worker(s) and {} PS shard(s)",
        run.total, summary.wall_seconds, summary.images_per_sec, run.shape.workers, run.shape.ps
    ));
    if let (Some(top1), Some(top5), Some(loss)) = (summary.top1, summary.top5, summary.eval_loss) {
        eprintln!("eval: top-1 {top1:.4}, top-5 {top5:.4}, loss {loss:.4}");
        if let Some(e) = events.as_mut() {
            e.add_scalars(
                run.total as i64,
                &[
                    ("accuracy/eval_top1", top1 as f32),
                    ("accuracy/eval_top5", top5 as f32),
                    ("loss/eval_cross_entropy", loss as f32),
                ],
            )?;
        }
    }
    if let Some(e) = events.as_mut() {
        e.flush()?;
    }
    if let Some(d) = &run_dir {
        if !loss_points.is_empty() {
            LossPlot::new(title)
                .with_series("total loss", loss_points)
                .with_series("cross-entropy", xent_points)
                .write(&d.loss_plot())?;
        }
        summary.write(&d.summary())?;
    }
    let _ = last;
    Ok(Outcome {
        info,
        summary: Some(summary),
    })
}

pub fn state_word(s: JobState) -> &'static str {
    match s {
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "was cancelled",
        JobState::Interrupted => "was interrupted",
        _ => "did not succeed",
    }
}
