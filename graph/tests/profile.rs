//! `Session::run_profiled` on a real training step (MobileNet α 0.25 at
//! 16×16): every node that computes is timed exactly once, the totals add
//! up, and profiling does not change the step's result.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use psflow_graph::train::builder::{TrainConfig, TrainGraph};
use psflow_graph::zoo::{mobilenet_v1, MobileNetConfig, Model};
use psflow_graph::{Profile, Registry, ResourceStore, Schedule, Session, Tensor, TensorName};

const BATCH: usize = 4;
const RES: usize = 16;

fn training_session() -> (Session, Model, TrainGraph) {
    let mut model = mobilenet_v1(&MobileNetConfig {
        alpha: 0.25,
        resolution: RES,
        classes: 10,
        training: true,
        ..MobileNetConfig::default()
    })
    .unwrap();
    let tg = model.add_training(&TrainConfig::default()).unwrap();
    let session = Session::with_resources(
        model.graph.clone(),
        &Registry::standard(),
        Arc::new(ResourceStore::new()),
    )
    .unwrap();
    session
        .run(&[], &[], std::slice::from_ref(&model.init))
        .unwrap();
    (session, model, tg)
}

fn feeds(model: &Model, tg: &TrainGraph) -> Vec<(TensorName, Tensor)> {
    let images: Vec<f32> = (0..BATCH * RES * RES * 3)
        .map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0)
        .collect();
    let labels: Vec<i32> = (0..BATCH as i32).map(|i| (i * 3) % 10).collect();
    vec![
        (
            model.input.clone(),
            Tensor::new(vec![BATCH, RES, RES, 3], images).unwrap(),
        ),
        (
            model.labels.clone().unwrap(),
            Tensor::new(vec![BATCH], labels).unwrap(),
        ),
        (tg.learning_rate.clone(), Tensor::scalar(0.01f32)),
    ]
}

#[test]
fn profile_covers_every_computed_node_once_and_adds_up() {
    let (session, model, tg) = training_session();
    for schedule in [Schedule::Parallel, Schedule::Serial] {
        let p = check_step_profile(&session, &model, &tg, schedule);
        assert_eq!(p.schedule, schedule);
        if schedule == Schedule::Serial {
            // One kernel at a time: the intervals follow each other.
            let mut spans: Vec<_> = p.nodes.iter().map(|n| (n.start, n.end)).collect();
            spans.sort();
            assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "{p:?}");
            assert_eq!(p.busy(), p.kernel_total());
        }
    }
}

fn check_step_profile(
    session: &Session,
    model: &Model,
    tg: &TrainGraph,
    schedule: Schedule,
) -> Profile {
    let feeds = feeds(model, tg);
    let fetches = [tg.total_loss.clone(), model.logits.clone()];
    let targets = [tg.train_op.clone()];
    let (out, profile) = session
        .run_profiled(&feeds, &fetches, &targets, schedule)
        .unwrap();

    // Every planned node except the fed placeholders computes, once.
    let fed: BTreeSet<&str> = feeds.iter().map(|(t, _)| t.node.as_str()).collect();
    let feed_names: Vec<TensorName> = feeds.iter().map(|(t, _)| t.clone()).collect();
    let planned: BTreeSet<String> = session
        .plan_nodes(&feed_names, &fetches, &targets)
        .unwrap()
        .into_iter()
        .filter(|n| !fed.contains(n.as_str()))
        .collect();
    let profiled: Vec<&str> = profile.nodes.iter().map(|n| n.node.as_str()).collect();
    let unique: BTreeSet<String> = profiled.iter().map(|s| s.to_string()).collect();
    assert_eq!(unique.len(), profiled.len(), "a node was timed twice");
    assert_eq!(unique, planned);
    assert!(planned.len() > 300, "a training graph: {}", planned.len());

    // Ops and output shapes are the graph's and the outputs'.
    for n in &profile.nodes {
        assert_eq!(session.graph().node(&n.node).unwrap().op, n.op);
    }
    let by_name: HashMap<&str, _> = profile.nodes.iter().map(|n| (n.node.as_str(), n)).collect();
    assert_eq!(
        by_name[tg.total_loss.node.as_str()].output_shapes[tg.total_loss.port],
        out[0].shape()
    );
    assert_eq!(
        by_name[model.logits.node.as_str()].output_shapes[model.logits.port],
        vec![BATCH, 10]
    );

    // Intervals lie inside the run; self times inside the intervals; on
    // each thread self times never overlap, so they sum to at most the
    // wall time.
    let mut per_thread: HashMap<Option<usize>, Duration> = HashMap::new();
    for n in &profile.nodes {
        assert!(n.start <= n.end && n.end <= profile.wall, "{n:?}");
        assert!(n.self_time <= n.wall(), "{n:?}");
        *per_thread.entry(n.thread).or_default() += n.self_time;
    }
    for (thread, total) in &per_thread {
        assert!(*total <= profile.wall, "thread {thread:?}: {total:?}");
    }
    let busy = profile.busy();
    assert!(busy > Duration::ZERO && busy <= profile.wall);
    // Every busy moment is some node's self time on some thread.
    assert!(profile.kernel_total() >= busy, "{profile:?}");

    // Per-op totals partition the nodes.
    let ops = profile.by_op();
    assert_eq!(
        ops.iter().map(|o| o.count).sum::<usize>(),
        profile.nodes.len()
    );
    assert_eq!(
        ops.iter().map(|o| o.total).sum::<Duration>(),
        profile.kernel_total()
    );
    assert!(ops.windows(2).all(|w| w[0].total >= w[1].total));
    for name in ["Conv2D", "DepthwiseConv2dNative", "Conv2DBackpropFilter"] {
        assert!(ops.iter().any(|o| o.op == name), "no {name} in {ops:?}");
    }
    let top = profile.top_nodes(15);
    assert_eq!(top.len(), 15);
    assert!(top.windows(2).all(|w| w[0].self_time >= w[1].self_time));
    profile
}

/// Profiling only observes: a profiled step gives the same losses and
/// variables, bit for bit, as a plain one from the same start.
#[test]
fn profiled_step_equals_plain_step() {
    let (plain, model, tg) = training_session();
    let (profiled, _, _) = training_session();
    let feeds = feeds(&model, &tg);
    let fetches = [tg.total_loss.clone()];
    let targets = [tg.train_op.clone()];
    for schedule in [Schedule::Parallel, Schedule::Serial] {
        let a = plain.run(&feeds, &fetches, &targets).unwrap();
        let (b, _) = profiled
            .run_profiled(&feeds, &fetches, &targets, schedule)
            .unwrap();
        assert_eq!(a, b);
    }
    let (a, b) = (plain.resources(), profiled.resources());
    for name in a.names() {
        assert_eq!(a.get(&name), b.get(&name), "{name}");
    }
}
