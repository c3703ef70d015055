//! Jobs on an in-process cluster over real gRPC on loopback: sync
//! equivalence with single-process training, MobileNet learning on the
//! synthetic dataset, a worker lost mid-job, and bad submissions.

#[path = "cluster/common.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Cluster;
use psflow_graph::train::builder::{build_training_graph, TrainConfig, TrainableVar};
use psflow_graph::train::optimizer::{Optimizer, RmsPropConfig};
use psflow_graph::train::schedule::Schedule;
use psflow_graph::zoo::{GraphBuilder, Init};
use psflow_graph::{DType, Graph, Node, Registry, ResourceStore, Session, Tensor, TensorName};
use psflow_proto::coordinator::{self as pb, job_event::Kind, JobState};
use psflow_proto::worker::DataSpec;
use psflow_ps::{Mode, PsClient, ShardConfig};
use psflow_worker::data::{DatasetKind, Pipeline, PipelineConfig};

/// A small conv net without batch norm: conv 3×3/2 (8) + bias + ReLU,
/// global average pool, 1×1 conv to 10 logits + bias.
struct Net {
    graph: Graph,
    input: TensorName,
    labels: TensorName,
    logits: TensorName,
    train: psflow_graph::train::builder::TrainGraph,
}

fn small_net() -> Net {
    let mut b = GraphBuilder::new(7);
    let input = b.placeholder("input", DType::F32, &[-1, 32, 32, 3]);
    let labels = b.placeholder("labels", DType::I32, &[-1]);
    let h = b.conv2d(
        "conv1",
        &input,
        3,
        8,
        3,
        2,
        Init::glorot_uniform(&[3, 3, 3, 8]),
        true,
    );
    let h = b.relu(&h);
    let h = b.global_avg_pool("pool", &h);
    let h = b.conv2d(
        "logits",
        &h,
        8,
        10,
        1,
        1,
        Init::glorot_uniform(&[1, 1, 8, 10]),
        true,
    );
    let logits = b.spatial_squeeze("squeeze", &h);
    b.add_init_op("init");
    let (mut graph, vars) = b.finish();
    let vars: Vec<TrainableVar> = vars
        .iter()
        .filter(|v| v.trainable)
        .map(|v| TrainableVar {
            name: v.name.clone(),
            shape: v.shape.clone(),
            regularize: v.regularize,
        })
        .collect();
    let train = build_training_graph(
        &mut graph,
        &logits,
        &labels,
        &vars,
        &[],
        &TrainConfig {
            optimizer: Optimizer::RmsProp(RmsPropConfig::default()),
            weight_decay: 4e-5,
            moving_average_decay: None,
        },
    )
    .unwrap();
    Net {
        graph,
        input,
        labels,
        logits,
        train,
    }
}

const LR: f32 = 0.05;

fn data_spec(batch: u32) -> DataSpec {
    DataSpec {
        dataset: "synthetic".into(),
        data_dir: String::new(),
        resolution: 32,
        batch_size: batch,
        seed: 3,
        augment: "none".into(),
        threads: 0,
    }
}

fn spec_of(net: &Net, workers: u32, ps: u32, batch: u32, steps: u64) -> pb::JobSpec {
    let header = ShardConfig {
        job_id: "x".into(),
        shard: 0,
        optimizer: Optimizer::RmsProp(RmsPropConfig::default()),
        schedule: Schedule::Constant(LR),
        mode: Mode::Sync { workers, backup: 0 },
        version: 0,
        moving_average_decay: None,
    }
    .to_header(false);
    pb::JobSpec {
        name: "small".into(),
        training_graph: Some(net.graph.to_graph_def()),
        names: Some(pb::TrainingNames {
            input: net.input.to_string(),
            labels: net.labels.to_string(),
            total_loss: net.train.total_loss.to_string(),
            cross_entropy_loss: net.train.cross_entropy_loss.to_string(),
            regularization_loss: net.train.regularization_loss.to_string(),
            logits: net.logits.to_string(),
            train_op: net.train.train_op.clone(),
            init: "init".into(),
        }),
        inference_graph: None,
        inference_input: String::new(),
        inference_logits: String::new(),
        data: Some(data_spec(batch)),
        optimizer: header.optimizer,
        schedule: header.schedule,
        mode: header.mode,
        workers,
        ps,
        steps,
        steps_per_epoch: 100,
        model: None,
        split_threshold: 0,
        moving_average_decay: 0.0,
        push_batch_bytes: 0,
    }
}

/// Follows `id` to its end; returns the final info.
async fn wait(cluster: &Cluster, id: &str) -> pb::JobInfo {
    let mut client = cluster.client().await;
    let mut s = client
        .watch_job(pb::WatchJobRequest {
            job_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let fut = async {
        loop {
            let ev = s
                .message()
                .await
                .unwrap()
                .expect("the stream ends with a final state");
            if let Some(Kind::Info(i)) = ev.kind {
                if psflow_coordinator::job::is_final(i.state()) {
                    return i;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(600), fut)
        .await
        .expect("job ends in time")
}

/// Every variable on the cluster's shards, by stored name.
async fn shard_values(cluster: &Cluster, id: &str) -> Vec<(String, Tensor)> {
    let mut out = vec![];
    for p in &cluster.ps {
        let mut c = PsClient::connect(&p.addr, id, Duration::from_secs(5))
            .await
            .unwrap();
        out.extend(c.pull(&[], 0, Duration::ZERO).await.unwrap().tensors);
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn close(name: &str, a: &Tensor, b: &Tensor) {
    let (a, b) = (a.f32s("a").unwrap(), b.f32s("b").unwrap());
    let scale = b.iter().fold(1e-3f32, |m, x| m.max(x.abs()));
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst <= 1e-5 * scale,
        "{name}: differs by {worst} (scale {scale})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_sync_workers_of_64_equal_one_process_of_128() {
    let net = small_net();
    let cluster = Cluster::start(2, 2).await;
    let mut client = cluster.client().await;
    let id = client
        .submit_job(pb::SubmitJobRequest {
            spec: Some(spec_of(&net, 2, 2, 64, 5)),
        })
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let info = wait(&cluster, &id).await;
    assert_eq!(info.state(), JobState::Succeeded, "{}", info.error);
    let got = shard_values(&cluster, &id).await;

    // The same 5 steps in one process, batch 128 from the same data order.
    let store = Arc::new(ResourceStore::new());
    let session =
        Session::with_resources(net.graph.clone(), &Registry::standard(), store.clone()).unwrap();
    session.run(&[], &[], &["init".to_string()]).unwrap();
    let data = DatasetKind::Synthetic(Default::default())
        .load(None)
        .unwrap();
    let mut pc = PipelineConfig::train(128, 3);
    pc.augment = psflow_worker::task::data::augment_for("none", 32, &data.train).unwrap();
    pc.threads = 0;
    let mut pipeline = Pipeline::new(Arc::new(data.train), pc).unwrap();
    for _ in 0..5 {
        let b = pipeline.next_batch().unwrap().unwrap();
        session
            .run(
                &[
                    (net.input.clone(), b.images),
                    (net.labels.clone(), b.labels),
                    (net.train.learning_rate.clone(), Tensor::scalar(LR)),
                ],
                &[],
                std::slice::from_ref(&net.train.train_op),
            )
            .unwrap();
    }
    let mut compared = 0;
    for (name, t) in &got {
        if t.dtype() != DType::F32 {
            continue;
        }
        let want = store
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in the single process"));
        close(name, t, &want);
        compared += 1;
    }
    assert_eq!(
        compared, 4,
        "conv1 weights/biases and logits weights/biases"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_submissions_get_clear_errors_and_the_coordinator_keeps_serving() {
    let net = small_net();
    let cluster = Cluster::start(1, 1).await;
    let mut client = cluster.client().await;
    let submit = |spec: pb::JobSpec| {
        let mut c = client.clone();
        async move {
            c.submit_job(pb::SubmitJobRequest { spec: Some(spec) })
                .await
        }
    };
    // More workers than alive.
    let e = submit(spec_of(&net, 3, 1, 8, 1)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(
        e.message().contains("3 worker") && e.message().contains("only 1"),
        "{}",
        e.message()
    );
    // An unknown op.
    let mut g = net.graph.clone();
    g.add(Node::new("mystery", "FrobnicateV9").input(net.logits.clone()))
        .unwrap();
    let mut spec = spec_of(&net, 1, 1, 8, 1);
    spec.training_graph = Some(g.to_graph_def());
    let e = submit(spec).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("FrobnicateV9"), "{}", e.message());
    // A cycle.
    let mut def = net.graph.to_graph_def();
    def.node.push(
        Node::new("a", "Identity")
            .input(TensorName::new("b", 0))
            .to_node_def(),
    );
    def.node.push(
        Node::new("b", "Identity")
            .input(TensorName::new("a", 0))
            .to_node_def(),
    );
    let mut spec = spec_of(&net, 1, 1, 8, 1);
    spec.training_graph = Some(def);
    let e = submit(spec).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().to_lowercase().contains("cycle"),
        "{}",
        e.message()
    );
    // A dataset that does not exist: the job fails, naming it.
    let mut spec = spec_of(&net, 1, 1, 8, 1);
    spec.data.as_mut().unwrap().dataset = "imagenet-77".into();
    let id = submit(spec).await.unwrap().into_inner().job_id;
    let info = wait(&cluster, &id).await;
    assert_eq!(info.state(), JobState::Failed);
    assert!(info.error.contains("imagenet-77"), "{}", info.error);
    // Still serving: a good job runs.
    let id = client
        .submit_job(pb::SubmitJobRequest {
            spec: Some(spec_of(&net, 1, 1, 8, 2)),
        })
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let info = wait(&cluster, &id).await;
    assert_eq!(info.state(), JobState::Succeeded, "{}", info.error);
    let list = client
        .list_jobs(pb::ListJobsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.jobs.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_lost_mid_job_in_sync_mode_does_not_stop_it() {
    let net = small_net();
    let mut cluster = Cluster::start(2, 1).await;
    let mut client = cluster.client().await;
    let id = client
        .submit_job(pb::SubmitJobRequest {
            spec: Some(spec_of(&net, 2, 1, 16, 60)),
        })
        .await
        .unwrap()
        .into_inner()
        .job_id;
    // Wait until a few steps ran, then worker 1 dies (its tasks stop, its
    // server goes away, its lease expires).
    let mut s = client
        .watch_job(pb::WatchJobRequest {
            job_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    loop {
        if let Some(Kind::Step(r)) = s.message().await.unwrap().unwrap().kind {
            if r.step >= 5 {
                break;
            }
        }
    }
    let (service, server) = &mut cluster.workers[1];
    service.abort_all();
    server.crash();
    let info = wait(&cluster, &id).await;
    assert_eq!(info.state(), JobState::Succeeded, "{}", info.error);
    assert_eq!(info.workers_alive, 1);
    let summary: serde_json::Value = serde_json::from_str(&info.summary_json).unwrap();
    assert_eq!(summary["workers_lost"], 1);
    assert_eq!(summary["steps"], 60);
}
