//! Model parallelism over real gRPC: a graph cut by the partitioner across
//! two worker tasks, each partition registered on its own worker service
//! (RegisterGraph) and run for a step on both at once (RunGraph); the
//! edges between them travel through RecvTensor. What they fetch equals
//! the whole graph run in one session, bit for bit.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use psflow_coordinator::partition::{partition, PartitionOptions, Partitions};
use psflow_graph::dtype::dtype_to_proto;
use psflow_graph::tensor_proto::{tensor_from_proto, tensor_to_proto};
use psflow_graph::{AttrValue, DType, Graph, Node, Session, Tensor, TensorName};
use psflow_proto::tensorflow::TensorShapeProto;
use psflow_proto::worker::worker_client::WorkerClient;
use psflow_proto::worker::{
    DeregisterGraphRequest, NamedTensor, RecvTensorRequest, RegisterGraphRequest, RunGraphRequest,
};
use psflow_worker::task::{serve, WorkerService};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic::Code;

fn f32_attr() -> AttrValue {
    AttrValue::from_type(dtype_to_proto(DType::F32))
}

fn placeholder(name: &str, dims: &[i64]) -> Node {
    Node::new(name, "Placeholder")
        .attr("dtype", f32_attr())
        .attr(
            "shape",
            AttrValue::from_shape(TensorShapeProto::from_dims(dims)),
        )
}

fn konst(name: &str, t: &Tensor) -> Node {
    Node::new(name, "Const")
        .attr("dtype", f32_attr())
        .attr("value", AttrValue::from_tensor(tensor_to_proto(t)))
}

fn task(i: usize) -> String {
    format!("/job:worker/replica:0/task:{i}")
}

fn device(i: usize) -> String {
    format!("{}/device:CPU:0", task(i))
}

/// One worker service on 127.0.0.1:0; stops when the test's runtime ends.
async fn start_worker() -> (String, WorkerService) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let service = WorkerService::new();
    tokio::spawn(serve(listener, service.clone(), std::future::pending()));
    (addr, service)
}

async fn client(addr: &str) -> WorkerClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match WorkerClient::connect(format!("http://{addr}")).await {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("worker at {addr}: {e}"),
        }
    }
}

/// x [4,3] → m1 = x·w1 (task 0) → r = relu(m1) (task 1) → m2 = r·w2
/// (task 1) → out = m2 + b (task 0); `neg` = −x runs on task 1 and `out`
/// waits for it by a control edge.
fn two_matmuls() -> (Graph, Vec<(TensorName, Tensor)>, Vec<TensorName>) {
    let mut g = Graph::new();
    let w1: Vec<f32> = (0..15).map(|i| (i as f32 - 7.0) * 0.13).collect();
    let w2: Vec<f32> = (0..10).map(|i| (i as f32 - 4.5) * 0.21).collect();
    g.add(placeholder("x", &[4, 3])).unwrap();
    g.add(konst("w1", &Tensor::new(vec![3, 5], w1).unwrap()))
        .unwrap();
    g.add(konst("w2", &Tensor::new(vec![5, 2], w2).unwrap()))
        .unwrap();
    g.add(konst(
        "b",
        &Tensor::new(vec![2], vec![0.5f32, -0.25]).unwrap(),
    ))
    .unwrap();
    g.add(
        Node::new("m1", "MatMul")
            .input("x")
            .input("w1")
            .attr("T", f32_attr()),
    )
    .unwrap();
    g.add(Node::new("r", "Relu").input("m1").attr("T", f32_attr()))
        .unwrap();
    g.add(
        Node::new("m2", "MatMul")
            .input("r")
            .input("w2")
            .attr("T", f32_attr()),
    )
    .unwrap();
    g.add(Node::new("neg", "Neg").input("x").attr("T", f32_attr()))
        .unwrap();
    g.add(
        Node::new("out", "AddV2")
            .input("m2")
            .input("b")
            .control_input("neg")
            .attr("T", f32_attr()),
    )
    .unwrap();
    let feeds = vec![(TensorName::new("x", 0), x_value(0))];
    let fetches = vec![
        TensorName::new("out", 0),
        TensorName::new("m2", 0),
        TensorName::new("neg", 0),
    ];
    (g, feeds, fetches)
}

fn x_value(step: u64) -> Tensor {
    let v: Vec<f32> = (0..12)
        .map(|i| ((i as f32 + step as f32 * 1.7) * 0.37).sin())
        .collect();
    Tensor::new(vec![4, 3], v).unwrap()
}

fn two_matmuls_task(n: &Node) -> String {
    device(usize::from(matches!(
        n.name.as_str(),
        "r" | "w2" | "m2" | "neg"
    )))
}

/// The partitions registered on their workers.
struct Cluster {
    parts: Partitions,
    clients: Vec<WorkerClient<Channel>>,
    handles: Vec<String>,
}

async fn register(parts: Partitions, addrs: &[String], recv_timeout_ms: u64) -> Cluster {
    let peers: BTreeMap<String, String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| (task(i), a.clone()))
        .collect();
    let mut clients = vec![];
    let mut handles = vec![];
    for (i, g) in parts.graphs.iter().enumerate() {
        let mut c = client(&addrs[i]).await;
        let h = c
            .register_graph(RegisterGraphRequest {
                session: "test".into(),
                task: parts.tasks[i].clone(),
                graph: Some(g.to_graph_def()),
                peers: peers.clone(),
                recv_timeout_ms,
            })
            .await
            .unwrap()
            .into_inner()
            .graph_handle;
        clients.push(c);
        handles.push(h);
    }
    Cluster {
        parts,
        clients,
        handles,
    }
}

impl Cluster {
    /// Runs step `step` on every worker at once; the fetches by name.
    async fn step(
        &self,
        step: u64,
        feeds: &[(TensorName, Tensor)],
        fetches: &[TensorName],
    ) -> Result<BTreeMap<TensorName, Tensor>, tonic::Status> {
        let mut calls = vec![];
        for (i, g) in self.parts.graphs.iter().enumerate() {
            let mine: Vec<TensorName> = fetches
                .iter()
                .filter(|t| {
                    g.node(&t.node)
                        .is_some_and(|n| n.device == self.parts.tasks[i])
                })
                .cloned()
                .collect();
            let request = RunGraphRequest {
                graph_handle: self.handles[i].clone(),
                step_id: step,
                feeds: feeds
                    .iter()
                    .filter(|(t, _)| g.node(&t.node).is_some())
                    .map(|(t, v)| NamedTensor {
                        name: t.to_string(),
                        tensor: Some(tensor_to_proto(v)),
                    })
                    .collect(),
                fetches: mine.iter().map(|t| t.to_string()).collect(),
                targets: self.parts.transfer_nodes(i),
            };
            let mut c = self.clients[i].clone();
            calls.push(tokio::spawn(async move {
                let out = c.run_graph(request).await?.into_inner();
                Ok::<_, tonic::Status>(mine.into_iter().zip(out.fetched).collect::<Vec<_>>())
            }));
        }
        let mut got = BTreeMap::new();
        for c in calls {
            for (name, t) in c.await.unwrap()? {
                assert_eq!(t.name, name.to_string());
                got.insert(
                    name,
                    tensor_from_proto(&t.name, t.tensor.as_ref().unwrap()).unwrap(),
                );
            }
        }
        Ok(got)
    }
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.f32s("test")
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

fn assert_same(whole: &[Tensor], got: &BTreeMap<TensorName, Tensor>, fetches: &[TensorName]) {
    for (t, w) in fetches.iter().zip(whole) {
        let p = got.get(t).unwrap_or_else(|| panic!("{t} was not fetched"));
        assert_eq!(p.shape(), w.shape(), "fetch {t}");
        assert_eq!(bits(p), bits(w), "fetch {t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_on_two_workers_compute_the_whole_graph_bit_for_bit() {
    let (g, feeds, fetches) = two_matmuls();
    let parts = partition(&g, &two_matmuls_task, &PartitionOptions::default()).unwrap();
    assert_eq!(parts.tasks, vec![device(0), device(1)]);
    assert!(
        parts.transfers.iter().any(|t| t.tensor == "^neg"),
        "{:?}",
        parts.transfers
    );
    let (a0, w0) = start_worker().await;
    let (a1, _w1) = start_worker().await;
    let cluster = register(parts, &[a0, a1], 20_000).await;
    assert_eq!(w0.graph_handles(), vec![cluster.handles[0].clone()]);
    let whole = Session::new(g).unwrap();

    // Two steps in a row, then two at once with different inputs: each
    // step's values stay in their step.
    for step in [7u64, 8] {
        let feeds = vec![(feeds[0].0.clone(), x_value(step))];
        let got = cluster.step(step, &feeds, &fetches).await.unwrap();
        assert_same(&whole.run(&feeds, &fetches, &[]).unwrap(), &got, &fetches);
    }
    let feeds_a = vec![(feeds[0].0.clone(), x_value(100))];
    let feeds_b = vec![(feeds[0].0.clone(), x_value(200))];
    let (a, b) = tokio::join!(
        cluster.step(100, &feeds_a, &fetches),
        cluster.step(200, &feeds_b, &fetches)
    );
    assert_same(
        &whole.run(&feeds_a, &fetches, &[]).unwrap(),
        &a.unwrap(),
        &fetches,
    );
    assert_same(
        &whole.run(&feeds_b, &fetches, &[]).unwrap(),
        &b.unwrap(),
        &fetches,
    );

    // Deregistered: RunGraph says the handle is unknown.
    let mut c = cluster.clients[0].clone();
    c.deregister_graph(DeregisterGraphRequest {
        graph_handle: cluster.handles[0].clone(),
    })
    .await
    .unwrap();
    assert!(w0.graph_handles().is_empty());
    let e = c
        .run_graph(RunGraphRequest {
            graph_handle: cluster.handles[0].clone(),
            step_id: 9,
            ..Default::default()
        })
        .await
        .unwrap_err();
    eprintln!("{e}");
    assert_eq!(e.code(), Code::NotFound, "{e}");
    assert!(
        e.message().contains(&cluster.handles[0]) && e.message().contains("RegisterGraph"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_is_down_is_a_clear_error_before_the_deadline() {
    let (g, feeds, fetches) = two_matmuls();
    let parts = partition(&g, &two_matmuls_task, &PartitionOptions::default()).unwrap();
    let (a0, _w0) = start_worker().await;
    // An address nobody listens on any more.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let peers: BTreeMap<String, String> = [(task(0), a0.clone()), (task(1), dead.clone())].into();
    let mut c = client(&a0).await;
    let handle = c
        .register_graph(RegisterGraphRequest {
            session: String::new(),
            task: task(0),
            graph: Some(parts.graphs[0].to_graph_def()),
            peers,
            recv_timeout_ms: 20_000,
        })
        .await
        .unwrap()
        .into_inner()
        .graph_handle;
    let began = Instant::now();
    let e = c
        .run_graph(RunGraphRequest {
            graph_handle: handle,
            step_id: 1,
            feeds: vec![NamedTensor {
                name: "x:0".into(),
                tensor: Some(tensor_to_proto(&feeds[0].1)),
            }],
            fetches: vec![fetches[0].to_string()],
            targets: parts.transfer_nodes(0),
        })
        .await
        .unwrap_err();
    assert!(
        began.elapsed() < Duration::from_secs(15),
        "{:?}",
        began.elapsed()
    );
    eprintln!("{e}");
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    let from_1 = parts
        .transfers
        .iter()
        .find(|t| t.to_task == device(0))
        .unwrap();
    assert!(e.message().contains(&dead), "{e}");
    assert!(e.message().contains(&task(1)), "{e}");
    assert!(
        parts
            .transfers
            .iter()
            .filter(|t| t.to_task == device(0))
            .any(|t| e.message().contains(&t.key)),
        "{e} (keys from task 1 such as {})",
        from_1.key
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_runs_its_step_is_a_deadline_naming_the_key() {
    let (g, feeds, fetches) = two_matmuls();
    let parts = partition(&g, &two_matmuls_task, &PartitionOptions::default()).unwrap();
    let (a0, _w0) = start_worker().await;
    let (a1, _w1) = start_worker().await;
    let cluster = register(parts, &[a0, a1], 500).await;
    let mut c = cluster.clients[0].clone();
    let began = Instant::now();
    // Only task 0 runs step 3: its receives from task 1 wait in vain.
    let e = c
        .run_graph(RunGraphRequest {
            graph_handle: cluster.handles[0].clone(),
            step_id: 3,
            feeds: vec![NamedTensor {
                name: "x:0".into(),
                tensor: Some(tensor_to_proto(&feeds[0].1)),
            }],
            fetches: vec![fetches[0].to_string()],
            targets: cluster.parts.transfer_nodes(0),
        })
        .await
        .unwrap_err();
    let waited = began.elapsed();
    eprintln!("{e}");
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e}");
    assert!(
        cluster
            .parts
            .transfers
            .iter()
            .filter(|t| t.to_task == device(0))
            .any(|t| e.message().contains(&t.key)),
        "{e}"
    );
    // The step after works: nothing of step 3 is left in the way.
    let feeds = vec![(feeds[0].0.clone(), x_value(4))];
    let got = cluster.step(4, &feeds, &fetches).await.unwrap();
    let whole = Session::new(g).unwrap().run(&feeds, &fetches, &[]).unwrap();
    assert_same(&whole, &got, &fetches);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_tensor_of_a_key_nobody_sends_times_out_naming_it() {
    let (addr, _w) = start_worker().await;
    let mut c = client(&addr).await;
    let key = format!("{};0000000000000001;{};nobody:0;0:0", device(0), device(1));
    let began = Instant::now();
    let r = c
        .recv_tensor(RecvTensorRequest {
            key: key.clone(),
            deadline_ms: 300,
            step_id: 5,
        })
        .await;
    let e = match r {
        Ok(mut stream) => stream.get_mut().message().await.unwrap_err(),
        Err(e) => e,
    };
    let waited = began.elapsed();
    eprintln!("{e}");
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e}");
    assert!(
        e.message().contains(&key) && e.message().contains("step 5"),
        "{e}"
    );

    // Bad keys and deadlines are INVALID_ARGUMENT, naming the problem.
    let e = c
        .recv_tensor(RecvTensorRequest {
            key: "a;b".into(),
            deadline_ms: 10,
            step_id: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("a;b"), "{e}");
    let e = c
        .recv_tensor(RecvTensorRequest {
            key,
            deadline_ms: 3_600_000,
            step_id: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("deadline_ms"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_graph_checks_tasks_and_peers() {
    let (g, _, _) = two_matmuls();
    let parts = partition(&g, &two_matmuls_task, &PartitionOptions::default()).unwrap();
    let (addr, _w) = start_worker().await;
    let mut c = client(&addr).await;
    let request = |task: String, peers: BTreeMap<String, String>| RegisterGraphRequest {
        session: String::new(),
        task,
        graph: Some(parts.graphs[0].to_graph_def()),
        peers,
        recv_timeout_ms: 0,
    };
    // No address for task 1, which task 0's partition receives from.
    let e = c
        .register_graph(request(task(0), BTreeMap::new()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(
        e.message().contains(&task(1)) && e.message().contains("peers"),
        "{e}"
    );
    // The wrong task for the partition.
    let peers: BTreeMap<String, String> = [(task(0), addr.clone())].into();
    let e = c.register_graph(request(task(1), peers)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains(&task(1)), "{e}");
    // No task at all.
    let e = c
        .register_graph(request(String::new(), BTreeMap::new()))
        .await
        .unwrap_err();
    assert!(e.message().contains("names no task"), "{e}");
}
