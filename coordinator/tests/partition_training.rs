//! The training split: the worker graph, fed the variables a single
//! process holds (through its pulls), computes exactly the gradients and
//! moving statistics the single-process training graph computes; the shard
//! specs carry the optimizer and each variable's role.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use psflow_coordinator::partition::training::{
    split_training, Hyper, PushKind, TrainingPlan, TrainingSplitConfig, VarRole,
};
use psflow_coordinator::placement::PlacementConfig;
use psflow_graph::train::builder::{TrainConfig, TrainGraph};
use psflow_graph::zoo::{Architecture, ModelSpec};
use psflow_graph::{
    Graph, LocalRendezvous, Rendezvous, RendezvousKey, Session, Tensor, TensorName,
};

struct Setup {
    graph: Graph,
    tg: TrainGraph,
    feeds: Vec<(TensorName, Tensor)>,
}

fn setup() -> Setup {
    let mut model = ModelSpec {
        arch: Architecture::MobileNet,
        alpha: 0.25,
        resolution: 16,
        classes: 10,
        training: true,
        seed: 7,
    }
    .build()
    .unwrap();
    let tg = model.add_training(&TrainConfig::default()).unwrap();
    let n = 4 * 16 * 16 * 3;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let feeds = vec![
        (
            model.input.clone(),
            Tensor::new(vec![4, 16, 16, 3], x).unwrap(),
        ),
        (
            model.labels.clone().unwrap(),
            Tensor::new(vec![4], vec![1i32, 3, 5, 7]).unwrap(),
        ),
    ];
    Setup {
        graph: model.graph,
        tg,
        feeds,
    }
}

fn plan(s: &Setup, shards: usize, threshold: u64) -> TrainingPlan {
    split_training(
        &s.graph,
        &TrainingSplitConfig {
            placement: PlacementConfig {
                shards,
                split_threshold: threshold,
            },
            incarnation: 1,
        },
    )
    .unwrap()
}

/// Joins row-parts back into one tensor (dimension 0).
fn join(parts: &[Tensor]) -> Tensor {
    let mut shape = parts[0].shape().to_vec();
    shape[0] = parts.iter().map(|p| p.shape()[0]).sum();
    let v: Vec<f32> = parts
        .iter()
        .flat_map(|p| p.f32s("join").unwrap().to_vec())
        .collect();
    Tensor::new(shape, v).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.f32s("bits")
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn the_worker_graph_gives_the_single_process_gradients() {
    let s = setup();
    // A 4 KiB threshold splits the larger 3x3 filters across 2 shards.
    let plan = plan(&s, 2, 4 << 10);
    assert!(
        plan.pulls.iter().any(|p| p.part.is_some()),
        "something is split"
    );
    assert!(plan.worker.nodes().iter().all(|n| n.op != "VarHandleOp"
        && !n.op.starts_with("ResourceApply")
        && n.op != "AssignVariableOp"));

    // The single process: init, then one forward/backward.
    let reference = Session::new(s.graph.clone()).unwrap();
    reference.run(&[], &[], &["init".into()]).unwrap();
    let assign_values: Vec<TensorName> =
        s.tg.moving_average_updates
            .iter()
            .map(|a| {
                s.graph
                    .node(a)
                    .unwrap()
                    .data_inputs()
                    .nth(1)
                    .unwrap()
                    .clone()
            })
            .collect();
    let mut fetches: Vec<TensorName> = s.tg.gradients.iter().map(|(_, g)| g.clone()).collect();
    fetches.extend(assign_values.iter().cloned());
    fetches.push(s.tg.total_loss.clone());
    let want = reference.run(&s.feeds, &fetches, &[]).unwrap();
    let store = reference.resources().clone();

    // The worker: pulls from the single process's variables, then a step.
    let r = Arc::new(LocalRendezvous::new());
    for (key, value) in plan.pull_values(&s.graph, &store).unwrap() {
        r.send(&RendezvousKey::parse(&key).unwrap(), value).unwrap();
    }
    let worker = Session::new(plan.worker.clone())
        .unwrap()
        .with_rendezvous(r.clone())
        .with_recv_timeout(Duration::from_secs(30));
    let loss = worker
        .run(
            &s.feeds,
            std::slice::from_ref(&s.tg.total_loss),
            &plan.worker_targets,
        )
        .unwrap();
    assert_eq!(bits(&loss[0]), bits(want.last().unwrap()), "total_loss");

    // Every push, re-joined per variable.
    let mut got: BTreeMap<(String, PushKind), Vec<Tensor>> = BTreeMap::new();
    let far = Instant::now() + Duration::from_secs(5);
    for p in &plan.pushes {
        let t = r.recv(&RendezvousKey::parse(&p.key).unwrap(), far).unwrap();
        got.entry((p.variable.clone(), p.kind)).or_default().push(t);
    }
    assert_eq!(r.queued(), 0);
    for ((var, _), w) in s.tg.gradients.iter().zip(&want) {
        let g = join(&got[&(var.clone(), PushKind::Gradient)]);
        assert_eq!(g.shape(), w.shape(), "{var}");
        assert_eq!(bits(&g), bits(w), "gradient of {var}");
    }
    for (a, w) in
        s.tg.moving_average_updates
            .iter()
            .zip(&want[s.tg.gradients.len()..])
    {
        let var = s
            .graph
            .node(a)
            .unwrap()
            .data_inputs()
            .next()
            .unwrap()
            .node
            .clone();
        let v = join(&got[&(var.clone(), PushKind::Assign)]);
        assert_eq!(bits(&v), bits(w), "moving statistic {var}");
    }
    assert_eq!(
        got.len(),
        s.tg.gradients.len() + s.tg.moving_average_updates.len()
    );
}

#[test]
fn shard_specs_carry_the_optimizer_and_roles() {
    let s = setup();
    let plan = plan(&s, 3, 4 << 10);
    assert_eq!(plan.shards.len(), 3);
    let vars: Vec<_> = plan.shards.iter().flat_map(|s| &s.vars).collect();
    let w = vars
        .iter()
        .find(|v| {
            v.variable == "MobilenetV1/Conv2d_0/weights"
                && v.part.as_ref().is_none_or(|p| p.index == 0)
        })
        .expect("the first conv's weights are placed");
    assert_eq!(w.role, VarRole::Trainable);
    let opt = w.optimizer.as_ref().unwrap();
    assert_eq!(opt.op, "ResourceApplyRMSProp");
    assert_eq!(opt.hyper["lr"], Hyper::Fed("learning_rate:0".into()));
    assert_eq!(opt.hyper["rho"], Hyper::Const(0.9));
    assert_eq!(opt.hyper["momentum"], Hyper::Const(0.9));
    assert_eq!(opt.hyper["epsilon"], Hyper::Const(1.0));
    let slots: Vec<&str> = w.slots.iter().map(|s| s.variable.as_str()).collect();
    assert_eq!(
        slots,
        vec![
            "MobilenetV1/Conv2d_0/weights/RMSProp",
            "MobilenetV1/Conv2d_0/weights/RMSProp_1"
        ]
    );
    let mm = vars
        .iter()
        .find(|v| v.variable.ends_with("moving_mean"))
        .unwrap();
    assert_eq!(mm.role, VarRole::AssignOnly);
    assert!(mm.optimizer.is_none() && mm.slots.is_empty());
    let gs = vars.iter().find(|v| v.variable == "global_step").unwrap();
    assert_eq!((gs.role, gs.increment), (VarRole::Counter, Some(1)));
    // Slot variables are not placed on their own.
    assert!(!vars.iter().any(|v| v.variable.ends_with("/RMSProp")));
    // Parts carry sliced shapes and part-named slots.
    let part = vars.iter().find(|v| v.part.is_some()).unwrap();
    let p = part.part.as_ref().unwrap();
    assert_eq!(part.shape[0], p.rows.len());
    assert_eq!(part.stored, format!("{}/part_{}", part.variable, p.index));
    assert!(part.slots[0].stored.starts_with(&part.stored));
    // Shard values: every variable and slot, sliced for parts.
    let reference = Session::new(s.graph.clone()).unwrap();
    reference.run(&[], &[], &["init".into()]).unwrap();
    let values = plan.shard_values(&s.graph, reference.resources()).unwrap();
    let v = &values
        .iter()
        .find(|m| m.contains_key(&part.stored))
        .unwrap()[&part.stored];
    assert_eq!(v.shape(), &part.shape[..]);
    let ms = &values
        .iter()
        .find(|m| m.contains_key(&part.slots[0].stored))
        .unwrap()[&part.slots[0].stored];
    assert!(
        ms.f32s("ms").unwrap().iter().all(|&x| x == 1.0),
        "TF1 RMSProp ms starts at ones"
    );
    // Deterministic and serializable.
    let again = plan_json(&plan);
    assert_eq!(again, plan_json(&self::plan(&s, 3, 4 << 10)));
    assert!(again.contains("\"assign_only\""));
}

fn plan_json(p: &TrainingPlan) -> String {
    serde_json::to_string(p).unwrap()
}

#[test]
fn one_shard_without_splits_still_runs_the_step() {
    let s = setup();
    let plan = plan(&s, 1, 4 << 20);
    assert!(plan.pulls.iter().all(|p| p.part.is_none() && p.shard == 0));
    assert_eq!(plan.worker_targets, vec!["train_op".to_string()]);
    let reference = Session::new(s.graph.clone()).unwrap();
    reference.run(&[], &[], &["init".into()]).unwrap();
    let r = Arc::new(LocalRendezvous::new());
    for (key, value) in plan.pull_values(&s.graph, reference.resources()).unwrap() {
        r.send(&RendezvousKey::parse(&key).unwrap(), value).unwrap();
    }
    let worker = Session::new(plan.worker.clone())
        .unwrap()
        .with_rendezvous(r.clone());
    worker.run(&s.feeds, &[], &plan.worker_targets).unwrap();
    assert_eq!(r.queued(), plan.pushes.len());
}

/// The worker graph on a GPU (`CudaSession`, placement computed without
/// one): the pulled variables go up as their `_Recv`s deliver them, every
/// convolution and batch norm runs on the device, and the only device
/// values read back on the host are the pushed tensors (one per `_Send`,
/// what a parameter server needs) — nothing else leaves the device.
#[test]
fn on_a_gpu_the_worker_step_downloads_only_what_it_pushes() {
    use psflow_graph::cuda::place::{self, Where};
    let s = setup();
    let plan = plan(&s, 2, 4 << 10);
    let worker = Session::new(plan.worker.clone()).unwrap();
    let feeds: Vec<TensorName> = s.feeds.iter().map(|(t, _)| t.clone()).collect();
    let p = place::plan(
        &worker,
        &feeds,
        std::slice::from_ref(&s.tg.total_loss),
        &plan.worker_targets,
    )
    .unwrap();
    let sends = plan
        .worker
        .nodes()
        .iter()
        .filter(|n| n.op == "_Send")
        .count();
    assert_eq!(sends, plan.pushes.len());
    assert!(
        p.downloads.iter().all(|t| t.op == "_Send"),
        "{:#?}",
        p.downloads
    );
    assert_eq!(p.downloads.len(), sends, "{:#?}", p.downloads);
    for (name, op, w) in &p.nodes {
        if [
            "Conv2D",
            "DepthwiseConv2dNative",
            "FusedBatchNormV3",
            "FusedBatchNormGradV3",
        ]
        .contains(&op.as_str())
        {
            assert_eq!(*w, Where::Device, "{name} ({op})");
        }
    }
    let recvs = plan
        .worker
        .nodes()
        .iter()
        .filter(|n| n.op == "_Recv")
        .count();
    let pulled_up = p.uploads.iter().filter(|t| {
        let producer = t.tensor.split(':').next().unwrap();
        plan.worker.node(producer).is_some_and(|n| n.op == "_Recv")
    });
    assert!(pulled_up.count() <= recvs);
}
