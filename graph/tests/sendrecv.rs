//! `_Send` / `_Recv` with a `LocalRendezvous`: partitions running in
//! their own threads on a rayon pool smaller than their number, deadlines
//! on dead peers, and checks on what arrives.

mod common;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{f32_t, konst, op, placeholder, t};
use psflow_graph::dtype::dtype_to_proto;
use psflow_graph::{AttrValue, DType, Graph, LocalRendezvous, Node, Rendezvous, Session, Tensor};

fn transfer(node: Node, name: &str, from: usize, to: usize) -> Node {
    node.attr("tensor_name", AttrValue::from_s(name))
        .attr(
            "send_device",
            AttrValue::from_s(format!("/job:worker/task:{from}")),
        )
        .attr("send_device_incarnation", AttrValue::from_i(1))
        .attr(
            "recv_device",
            AttrValue::from_s(format!("/job:worker/task:{to}")),
        )
        .attr("client_terminated", AttrValue::from_b(false))
}

fn send(name: &str, input: &str, edge: &str, from: usize, to: usize) -> Node {
    transfer(op(name, "_Send", &[input]), edge, from, to)
        .attr("T", AttrValue::from_type(dtype_to_proto(DType::F32)))
}

fn recv(name: &str, edge: &str, from: usize, to: usize) -> Node {
    transfer(Node::new(name, "_Recv"), edge, from, to).attr(
        "tensor_type",
        AttrValue::from_type(dtype_to_proto(DType::F32)),
    )
}

fn graph(nodes: Vec<Node>) -> Graph {
    let mut g = Graph::new();
    for n in nodes {
        g.add(n).unwrap();
    }
    g
}

/// Stage i of a pipeline: y = x * 2 + i, received from stage i-1 and sent
/// to stage i+1 (stage 0 reads a placeholder, the last one is fetched).
fn stage(i: usize, last: bool) -> Graph {
    let mut nodes = vec![
        konst("two", &Tensor::scalar(2f32)),
        konst("c", &Tensor::scalar(i as f32)),
    ];
    if i == 0 {
        nodes.push(placeholder("x", DType::F32, &[-1]));
    } else {
        nodes.push(recv("x", &format!("edge_{i}"), i - 1, i));
    }
    nodes.push(f32_t(&op("m", "Mul", &["x", "two"])));
    nodes.push(f32_t(&op("y", "AddV2", &["m", "c"])));
    if !last {
        nodes.push(send("y/send", "y", &format!("edge_{}", i + 1), i, i + 1));
    }
    graph(nodes)
}

#[test]
fn more_partitions_than_pool_threads_run_concurrently() {
    // A pool of 2 threads for 12 stages that each wait on the one before;
    // they are started last stage first, so every one waits.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build_global();
    let stages = 12;
    let r: Arc<LocalRendezvous> = Arc::new(LocalRendezvous::new());
    let x = Tensor::new(vec![3], vec![1f32, -2.0, 0.5]).unwrap();
    for step in 0..3 {
        let mut handles = vec![];
        for i in (0..stages).rev() {
            let session = Session::new(stage(i, i == stages - 1))
                .unwrap()
                .with_rendezvous(r.clone())
                .with_recv_timeout(Duration::from_secs(20));
            let x = x.clone();
            handles.push(thread::spawn(move || {
                if i == 0 {
                    session.run(&[(t("x"), x)], &[], &["y/send".into()])
                } else if i == stages - 1 {
                    session.run(&[], &[t("y")], &[])
                } else {
                    session.run(&[], &[], &["y/send".into()])
                }
            }));
        }
        let outs: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let last = outs[0]
            .as_ref()
            .unwrap_or_else(|e| panic!("step {step}: {e}"));
        for o in &outs {
            o.as_ref().unwrap();
        }
        let mut want = x.to_f64_vec();
        for i in 0..stages {
            want.iter_mut().for_each(|v| *v = *v * 2.0 + i as f64);
        }
        assert_eq!(last[0].to_f64_vec(), want, "step {step}");
        assert_eq!(r.queued(), 0);
    }
}

#[test]
fn a_dead_peer_is_a_timeout_naming_the_key() {
    let session = Session::new(stage(3, true))
        .unwrap()
        .with_rendezvous(Arc::new(LocalRendezvous::new()))
        .with_recv_timeout(Duration::from_millis(100));
    let started = Instant::now();
    let e = session.run(&[], &[t("y")], &[]).unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        e.contains("/job:worker/task:2;0000000000000001;/job:worker/task:3;edge_3;0:0"),
        "{e}"
    );
    assert!(e.contains("no tensor arrived"), "{e}");
}

#[test]
fn a_value_sent_after_a_timeout_waits_for_the_next_run() {
    let r = Arc::new(LocalRendezvous::new());
    let session = Session::new(stage(1, true))
        .unwrap()
        .with_rendezvous(r.clone())
        .with_recv_timeout(Duration::from_millis(50));
    assert!(session.run(&[], &[t("y")], &[]).is_err());
    let key =
        psflow_graph::RendezvousKey::new("/job:worker/task:0", 1, "/job:worker/task:1", "edge_1");
    r.send(&key, Tensor::new(vec![1], vec![5f32]).unwrap())
        .unwrap();
    let y = session.run(&[], &[t("y")], &[]).unwrap();
    assert_eq!(y[0].to_f64_vec(), vec![11.0]);
}

#[test]
fn a_received_tensor_of_the_wrong_dtype_is_an_error() {
    let r = Arc::new(LocalRendezvous::new());
    let session = Session::new(stage(1, true))
        .unwrap()
        .with_rendezvous(r.clone());
    let key =
        psflow_graph::RendezvousKey::new("/job:worker/task:0", 1, "/job:worker/task:1", "edge_1");
    r.send(&key, Tensor::new(vec![1], vec![5i32]).unwrap())
        .unwrap();
    let e = session.run(&[], &[t("y")], &[]).unwrap_err().to_string();
    assert!(e.contains("edge_1") && e.contains("int32"), "{e}");
}

#[test]
fn send_without_a_rendezvous_says_how_to_get_one() {
    let session = Session::new(stage(0, false)).unwrap();
    let x = Tensor::new(vec![1], vec![1f32]).unwrap();
    let e = session
        .run(&[(t("x"), x)], &[], &["y/send".into()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("with_rendezvous") && e.contains("y/send"), "{e}");
}

#[test]
fn a_fed_recv_does_not_wait() {
    let session = Session::new(stage(2, true))
        .unwrap()
        .with_rendezvous(Arc::new(LocalRendezvous::new()))
        .with_recv_timeout(Duration::from_millis(50));
    let x = Tensor::new(vec![1], vec![1f32]).unwrap();
    let y = session.run(&[(t("x"), x)], &[t("y")], &[]).unwrap();
    assert_eq!(y[0].to_f64_vec(), vec![4.0]);
}

#[test]
fn run_in_gives_each_run_its_own_rendezvous() {
    // One session per stage, two steps at once: each step's runs use the
    // step's rendezvous, so the values of the two steps never mix, whatever
    // order the stages start in.
    let sessions: Vec<Arc<Session>> = (0..3)
        .map(|i| {
            Arc::new(
                Session::new(stage(i, i == 2))
                    .unwrap()
                    .with_recv_timeout(Duration::from_secs(20)),
            )
        })
        .collect();
    let steps: Vec<(Arc<LocalRendezvous>, f32)> = (0..2)
        .map(|s| (Arc::new(LocalRendezvous::new()), 10.0 * s as f32 + 1.0))
        .collect();
    let mut handles = vec![];
    for (i, session) in sessions.iter().enumerate().rev() {
        for (r, x) in &steps {
            let (session, r, x) = (session.clone(), r.clone(), *x);
            handles.push(thread::spawn(move || {
                let feeds = if i == 0 {
                    vec![(
                        psflow_graph::TensorName::new("x", 0),
                        Tensor::new(vec![1], vec![x]).unwrap(),
                    )]
                } else {
                    vec![]
                };
                let (fetches, targets) = if i == 2 {
                    (vec![psflow_graph::TensorName::new("y", 0)], vec![])
                } else {
                    (vec![], vec!["y/send".to_string()])
                };
                let out = session.run_in(&*r, &feeds, &fetches, &targets).unwrap();
                (x, out)
            }));
        }
    }
    for h in handles {
        let (x, out) = h.join().unwrap();
        if let Some(y) = out.first() {
            // ((x*2 + 0)*2 + 1)*2 + 2
            assert_eq!(
                y.to_f64_vec(),
                vec![((x * 2.0 * 2.0 + 1.0) * 2.0 + 2.0) as f64]
            );
        }
    }
    for (r, _) in &steps {
        assert_eq!(r.queued(), 0);
    }
    // The session's own rendezvous (none here) is untouched: a plain run
    // of a receiving stage says it has none.
    assert!(sessions[1]
        .run(&[], &[psflow_graph::TensorName::new("y", 0)], &[])
        .is_err());
}
