//! The generic partitioner: edges across tasks become `_Send`/`_Recv`
//! pairs, and the partitions, run concurrently over a `LocalRendezvous`,
//! compute what the whole graph computes — bit for bit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use proptest::prelude::*;
use psflow_coordinator::partition::{partition, PartitionOptions, Partitions};
use psflow_graph::dtype::dtype_to_proto;
use psflow_graph::tensor_proto::tensor_to_proto;
use psflow_graph::{AttrValue, DType, Graph, LocalRendezvous, Node, Session, Tensor, TensorName};
use psflow_proto::tensorflow::TensorShapeProto;

fn f32_attr() -> AttrValue {
    AttrValue::from_type(dtype_to_proto(DType::F32))
}

fn placeholder(name: &str) -> Node {
    Node::new(name, "Placeholder")
        .attr("dtype", f32_attr())
        .attr(
            "shape",
            AttrValue::from_shape(TensorShapeProto::from_dims(&[2, 2])),
        )
}

fn konst(name: &str, t: &Tensor) -> Node {
    Node::new(name, "Const")
        .attr("dtype", f32_attr())
        .attr("value", AttrValue::from_tensor(tensor_to_proto(t)))
}

fn task(i: usize) -> String {
    format!("/job:worker/replica:0/task:{i}/device:CPU:0")
}

/// Runs every partition in its own thread; returns the fetches by name.
fn run_partitions(
    parts: &Partitions,
    feeds: &[(TensorName, Tensor)],
    fetches: &[TensorName],
) -> BTreeMap<TensorName, Tensor> {
    let r = Arc::new(LocalRendezvous::new());
    let mut handles = vec![];
    for (i, g) in parts.graphs.iter().enumerate() {
        let session = Session::new(g.clone())
            .unwrap()
            .with_rendezvous(r.clone())
            .with_recv_timeout(Duration::from_secs(20));
        let feeds: Vec<_> = feeds
            .iter()
            .filter(|(t, _)| g.node(&t.node).is_some())
            .cloned()
            .collect();
        let fetches: Vec<_> = fetches
            .iter()
            .filter(|t| g.node(&t.node).is_some_and(|n| n.device == parts.tasks[i]))
            .cloned()
            .collect();
        let targets = parts.transfer_nodes(i);
        handles.push(thread::spawn(move || {
            let out = session.run(&feeds, &fetches, &targets).unwrap();
            fetches.into_iter().zip(out).collect::<Vec<_>>()
        }));
    }
    let out = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(r.queued(), 0, "every sent value was received");
    out
}

const OPS: &[&str] = &["AddV2", "Mul", "Sub", "MatMul", "Relu", "Neg", "Maximum"];

#[derive(Debug, Clone)]
struct Spec {
    /// Per op node: (op index, input a, input b, control input).
    ops: Vec<(usize, usize, usize, Option<usize>)>,
    tasks: Vec<usize>,
    x: Vec<f32>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (2usize..12, 1usize..5).prop_flat_map(|(n, t)| {
        let total = n + 3;
        (
            proptest::collection::vec(
                (
                    0..OPS.len(),
                    any::<prop::sample::Index>(),
                    any::<prop::sample::Index>(),
                    proptest::option::weighted(0.3, any::<prop::sample::Index>()),
                ),
                n,
            ),
            proptest::collection::vec(0..t, total),
            proptest::collection::vec(-1.0f32..1.0, 12),
        )
            .prop_map(move |(ops, tasks, x)| Spec {
                ops: ops
                    .into_iter()
                    .enumerate()
                    .map(|(i, (op, a, b, c))| {
                        let before = i + 3;
                        (
                            op,
                            a.index(before),
                            b.index(before),
                            c.map(|c| c.index(before)),
                        )
                    })
                    .collect(),
                tasks,
                x,
            })
    })
}

fn build(spec: &Spec) -> (Graph, Vec<(TensorName, Tensor)>, Vec<TensorName>) {
    let mut g = Graph::new();
    let name = |i: usize| match i {
        0 => "x".to_string(),
        1 => "y".to_string(),
        2 => "c".to_string(),
        i => format!("n{}", i - 3),
    };
    g.add(placeholder("x")).unwrap();
    g.add(placeholder("y")).unwrap();
    g.add(konst(
        "c",
        &Tensor::new(vec![2, 2], spec.x[8..12].to_vec()).unwrap(),
    ))
    .unwrap();
    let mut consumed = vec![false; spec.ops.len() + 3];
    for (i, &(op, a, b, c)) in spec.ops.iter().enumerate() {
        let mut n = Node::new(name(i + 3), OPS[op]).input(name(a).as_str());
        consumed[a] = true;
        if !matches!(OPS[op], "Relu" | "Neg") {
            n = n.input(name(b).as_str());
            consumed[b] = true;
        }
        if let Some(c) = c {
            n = n.control_input(name(c));
            consumed[c] = true;
        }
        g.add(n.attr("T", f32_attr())).unwrap();
    }
    let feeds = vec![
        (
            TensorName::new("x", 0),
            Tensor::new(vec![2, 2], spec.x[0..4].to_vec()).unwrap(),
        ),
        (
            TensorName::new("y", 0),
            Tensor::new(vec![2, 2], spec.x[4..8].to_vec()).unwrap(),
        ),
    ];
    // Every unconsumed op and the last op.
    let mut fetches: Vec<TensorName> = (3..spec.ops.len() + 3)
        .filter(|&i| !consumed[i] || i == spec.ops.len() + 2)
        .map(|i| TensorName::new(name(i), 0))
        .collect();
    fetches.dedup();
    (g, feeds, fetches)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn partitions_compute_what_the_whole_graph_computes(spec in spec()) {
        let (g, feeds, fetches) = build(&spec);
        let whole = Session::new(g.clone()).unwrap().run(&feeds, &fetches, &[]).unwrap();
        let ids: Vec<String> = g.nodes().iter().map(|n| n.name.clone()).collect();
        let tasks = spec.tasks.clone();
        let parts = partition(
            &g,
            &|n: &Node| task(tasks[ids.iter().position(|x| *x == n.name).unwrap()]),
            &PartitionOptions::default(),
        )
        .unwrap();
        // One send per (tensor, destination), one receive per send.
        let mut seen = std::collections::BTreeSet::new();
        for t in &parts.transfers {
            prop_assert!(seen.insert((t.tensor.clone(), t.to_task.clone())));
        }
        let got = run_partitions(&parts, &feeds, &fetches);
        for (t, w) in fetches.iter().zip(&whole) {
            let p = &got[t];
            let (a, b): (Vec<u32>, Vec<u32>) = (
                p.f32s("test").unwrap().iter().map(|v| v.to_bits()).collect(),
                w.f32s("test").unwrap().iter().map(|v| v.to_bits()).collect(),
            );
            prop_assert_eq!(a, b, "fetch {}", t);
        }
    }
}

fn diamond() -> Graph {
    // x (task 0) feeds a, b, c (task 1); d (task 0) waits on ^a.
    let mut g = Graph::new();
    g.add(placeholder("x").attr("_task", AttrValue::from_i(0)))
        .unwrap();
    for n in ["a", "b", "c"] {
        g.add(Node::new(n, "Neg").input("x").attr("T", f32_attr()))
            .unwrap();
    }
    g.add(
        Node::new("d", "AddV2")
            .input("x")
            .input("x")
            .control_input("a")
            .attr("T", f32_attr()),
    )
    .unwrap();
    g
}

fn diamond_task(n: &Node) -> String {
    task(usize::from(matches!(n.name.as_str(), "a" | "b" | "c")))
}

#[test]
fn one_send_per_tensor_and_destination_and_control_edges_carried() {
    let g = diamond();
    let parts = partition(&g, &diamond_task, &PartitionOptions::default()).unwrap();
    assert_eq!(parts.tasks, vec![task(0), task(1)]);
    let data: Vec<_> = parts
        .transfers
        .iter()
        .filter(|t| !t.tensor.starts_with('^'))
        .collect();
    assert_eq!(data.len(), 1, "{:?}", parts.transfers);
    assert_eq!(data[0].tensor, "x:0");
    assert_eq!(
        data[0].key,
        format!("{};0000000000000001;{};x:0;0:0", task(0), task(1))
    );
    let ctrl: Vec<_> = parts
        .transfers
        .iter()
        .filter(|t| t.tensor == "^a")
        .collect();
    assert_eq!(ctrl.len(), 1);
    assert_eq!(
        (ctrl[0].from_task.as_str(), ctrl[0].to_task.as_str()),
        (task(1).as_str(), task(0).as_str())
    );
    // d waits on the control receive.
    let d = parts.graphs[0].node("d").unwrap();
    assert!(d.control_inputs().any(|c| c == ctrl[0].recv_node), "{d:?}");
    // And it runs.
    let x = Tensor::new(vec![2, 2], vec![1f32, 2.0, 3.0, 4.0]).unwrap();
    let feeds = vec![(TensorName::new("x", 0), x)];
    let fetches = vec![TensorName::new("c", 0), TensorName::new("d", 0)];
    let got = run_partitions(&parts, &feeds, &fetches);
    assert_eq!(got[&fetches[0]].to_f64_vec(), vec![-1.0, -2.0, -3.0, -4.0]);
    assert_eq!(got[&fetches[1]].to_f64_vec(), vec![2.0, 4.0, 6.0, 8.0]);
}

#[test]
fn bad_graphs_and_tasks_are_clear_errors() {
    let mut g = diamond();
    g.add(Node::new("z", "NoSuchOp").input("x")).unwrap();
    let e = partition(&g, &diamond_task, &PartitionOptions::default()).unwrap_err();
    assert!(e.to_string().contains("NoSuchOp"), "{e}");

    let mut g = Graph::new();
    g.add(Node::new("p", "Neg").input("q").attr("T", f32_attr()))
        .unwrap();
    g.add(Node::new("q", "Neg").input("p").attr("T", f32_attr()))
        .unwrap();
    let e = partition(&g, &diamond_task, &PartitionOptions::default()).unwrap_err();
    assert!(e.to_string().contains("cycle"), "{e}");

    let e = partition(
        &diamond(),
        &|_: &Node| "a;b".to_string(),
        &PartitionOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("a;b"), "{e}");
}
