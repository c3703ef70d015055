//! The executor on small graphs: feeds, fetches, targets, their errors,
//! feed conversion, buffer release and parallelism.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use psflow_graph::registry::FnKernel;
use psflow_graph::{
    AttrValue, DType, Error, Graph, Node, OpKernel, Registry, Session, Shape, Tensor, TensorInfo,
};
use psflow_kernels::Data;

fn graph(nodes: Vec<Node>) -> Graph {
    let mut g = Graph::new();
    for n in nodes {
        g.add(n).unwrap();
    }
    g
}

/// x [?, 2, 3] → flat = Reshape(x, [-1, 6]); y = Identity(flat).
fn reshape_graph() -> Session {
    Session::new(graph(vec![
        placeholder("x", DType::F32, &[-1, 2, 3]),
        konst("target", &ints(&[-1, 6])),
        op("flat", "Reshape", &["x", "target"]),
        op("y", "Identity", &["flat"]),
        op("shape", "Shape", &["x"]),
    ]))
    .unwrap()
}

#[test]
fn unknown_batch_accepts_any_size() {
    let s = reshape_graph();
    for batch in [1usize, 4, 7] {
        let x = rand_f32(&[batch, 2, 3], batch as u64);
        let out = s
            .run(&[(t("x"), x.clone())], &[t("y"), t("shape")], &[])
            .unwrap();
        assert_eq!(out[0].shape(), &[batch, 6]);
        assert_eq!(out[0].to_f64_vec(), x.to_f64_vec());
        assert_eq!(out[1], ints(&[batch as i32, 2, 3]));
    }
    let info = s.tensor_info(&t("flat")).unwrap();
    assert_eq!(info.shape, Shape::Known(vec![-1, 6]));
}

#[test]
fn feed_shape_that_does_not_fit_names_the_placeholder() {
    let s = reshape_graph();
    let err = s
        .run(&[(t("x"), rand_f32(&[2, 3, 2], 0))], &[t("y")], &[])
        .unwrap_err();
    assert!(matches!(err, Error::FeedShape { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("\"x\"") && msg.contains("[?, 2, 3]") && msg.contains("[2, 3, 2]"),
        "{msg}"
    );
    let err = s
        .run(&[(t("x"), rand_f32(&[6], 0))], &[t("y")], &[])
        .unwrap_err();
    assert!(err.to_string().contains("\"x\""), "{err}");
}

#[test]
fn missing_feed_names_the_placeholder() {
    let s = reshape_graph();
    let msg = s.run(&[], &[t("y")], &[]).unwrap_err().to_string();
    assert!(
        msg.contains("\"x\"") && msg.contains("must be fed") && msg.contains("float32"),
        "{msg}"
    );
}

#[test]
fn unknown_fetches_feeds_and_targets_are_named() {
    let s = reshape_graph();
    let x = rand_f32(&[1, 2, 3], 0);
    let msg = s
        .run(&[(t("x"), x.clone())], &[t("logits")], &[])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("unknown fetch") && msg.contains("logits"),
        "{msg}"
    );
    let msg = s
        .run(&[(t("x"), x.clone())], &[t("y:1")], &[])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("unknown fetch") && msg.contains("y:1"),
        "{msg}"
    );
    let msg = s
        .run(&[(t("x"), x.clone())], &[], &["train".into()])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("train"), "{msg}");
    let msg = s
        .run(&[(t("input:0"), x.clone())], &[t("y")], &[])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("unknown feed") && msg.contains("input:0"),
        "{msg}"
    );
    let msg = s
        .run(&[(t("x"), x.clone()), (t("x:0"), x)], &[t("y")], &[])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("fed twice"), "{msg}");
}

#[test]
fn lossless_feeds_are_cast_and_lossy_ones_refused() {
    let s = reshape_graph();
    let exact = Tensor::new(vec![1, 2, 3], vec![0.5f64, -1., 2., 0.25, 1e3, 0.]).unwrap();
    let out = s.run(&[(t("x"), exact.clone())], &[t("y")], &[]).unwrap();
    assert_eq!(out[0].dtype(), DType::F32);
    assert_eq!(out[0].to_f64_vec(), exact.to_f64_vec());
    let ints64 = Tensor::new(vec![1, 2, 3], vec![1i64, 2, 3, 4, 5, -6]).unwrap();
    let out = s.run(&[(t("x"), ints64)], &[t("y")], &[]).unwrap();
    assert_eq!(out[0].to_f64_vec(), [1., 2., 3., 4., 5., -6.]);

    let lossy = Tensor::new(vec![1, 2, 3], vec![0.1f64, 0., 0., 0., 0., 0.]).unwrap();
    let err = s.run(&[(t("x"), lossy)], &[t("y")], &[]).unwrap_err();
    assert!(matches!(err, Error::FeedDType { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("\"x\"") && msg.contains("float64") && msg.contains("0.1"),
        "{msg}"
    );

    // An int32 placeholder takes int64 values that fit, not ones that do not.
    let s = Session::new(graph(vec![
        placeholder("labels", DType::I32, &[-1]),
        op("l", "Identity", &["labels"]),
    ]))
    .unwrap();
    let ok = Tensor::new(vec![3], vec![0i64, 9, 99]).unwrap();
    let out = s.run(&[(t("labels"), ok)], &[t("l")], &[]).unwrap();
    assert_eq!(out[0], Tensor::new(vec![3], vec![0i32, 9, 99]).unwrap());
    let big = Tensor::new(vec![1], vec![1i64 << 33]).unwrap();
    let msg = s
        .run(&[(t("labels"), big)], &[t("l")], &[])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("\"labels\"") && msg.contains("8589934592"),
        "{msg}"
    );
    let b = Tensor::new(vec![1], vec![true]).unwrap();
    assert!(s.run(&[(t("labels"), b)], &[t("l")], &[]).is_err());
}

#[test]
fn placeholder_with_default_is_optional() {
    let s = Session::new(graph(vec![
        konst("d", &Tensor::new(vec![2], vec![1f32, 2.]).unwrap()),
        op("p", "PlaceholderWithDefault", &["d"])
            .attr(
                "dtype",
                AttrValue::from_type(psflow_proto::tensorflow::DataType::DtFloat),
            )
            .attr(
                "shape",
                AttrValue::from_shape(Shape::Known(vec![-1]).to_proto()),
            ),
        konst("two", &ints(&[2, 1])),
        op("r", "Reshape", &["p", "two"]),
    ]))
    .unwrap();
    let out = s.run(&[], &[t("r")], &[]).unwrap();
    assert_eq!(out[0], Tensor::new(vec![2, 1], vec![1f32, 2.]).unwrap());
    let fed = Tensor::new(vec![2], vec![5f32, 6.]).unwrap();
    let out = s.run(&[(t("p"), fed)], &[t("r")], &[]).unwrap();
    assert_eq!(out[0], Tensor::new(vec![2, 1], vec![5f32, 6.]).unwrap());
    // Feeding the default's value changes nothing about the static shape,
    // which stays what the placeholder declares.
    assert_eq!(
        s.tensor_info(&t("p")).unwrap().shape,
        Shape::Known(vec![-1])
    );
    let ph = s.placeholders();
    assert_eq!(ph.len(), 1);
    assert!(ph[0].has_default);
}

#[test]
fn fetching_fed_tensors_and_running_targets() {
    let s = reshape_graph();
    let x = rand_f32(&[2, 2, 3], 3);
    // Feeding an intermediate tensor replaces its producer.
    let flat = rand_f32(&[5, 6], 4);
    let out = s
        .run(&[(t("flat"), flat.clone())], &[t("y"), t("flat")], &[])
        .unwrap();
    assert_eq!(out[0], flat);
    assert_eq!(out[1], flat);
    // Targets run but return nothing; the same fetch twice is fine.
    let out = s
        .run(&[(t("x"), x.clone())], &[t("y"), t("y")], &["shape".into()])
        .unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0], out[1]);
}

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

/// A test op recording whether it got the only reference to its input.
fn check_unique(_: &Node) -> psflow_graph::Result<Box<dyn OpKernel>> {
    FnKernel::boxed(
        1,
        |_| Ok(vec![TensorInfo::new(DType::Bool, Shape::scalar())]),
        |ctx| {
            let unique = match ctx.input(0).data() {
                Data::F32(a) => std::sync::Arc::strong_count(a) == 1,
                _ => false,
            };
            UNIQUE.fetch_add(unique as usize, Ordering::SeqCst);
            Ok(vec![Tensor::scalar(unique)])
        },
    )
}

#[test]
fn last_consumer_gets_the_buffer() {
    let mut r = Registry::standard();
    r.register("CheckUnique", check_unique);
    let g = graph(vec![
        placeholder("x", DType::F32, &[2]),
        op("ones", "OnesLike", &["x"]),
        op("check", "CheckUnique", &["ones"]),
        op("twos", "OnesLike", &["x"]),
        op("check_fetched", "CheckUnique", &["twos"]),
    ]);
    let s = Session::with_registry(g, &r).unwrap();
    let x = rand_f32(&[2], 0);
    let out = s
        .run(
            &[(t("x"), x)],
            &[t("check"), t("check_fetched"), t("twos")],
            &[],
        )
        .unwrap();
    // `ones` has one consumer and is not fetched: handed over, not copied.
    assert_eq!(out[0], Tensor::scalar(true));
    // `twos` is also fetched, so the run keeps a reference.
    assert_eq!(out[1], Tensor::scalar(false));
}

static ARRIVED: AtomicUsize = AtomicUsize::new(0);

/// A test op that waits (up to 5 s) until two instances have started:
/// true only if they ran at the same time.
fn rendezvous(_: &Node) -> psflow_graph::Result<Box<dyn OpKernel>> {
    FnKernel::boxed(
        1,
        |_| Ok(vec![TensorInfo::new(DType::Bool, Shape::scalar())]),
        |_| {
            ARRIVED.fetch_add(1, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(5);
            while ARRIVED.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(vec![Tensor::scalar(ARRIVED.load(Ordering::SeqCst) >= 2)])
        },
    )
}

#[test]
fn independent_nodes_run_in_parallel() {
    let mut r = Registry::standard();
    r.register("Rendezvous", rendezvous);
    let g = graph(vec![
        op("start", "NoOp", &[]),
        op("a", "Rendezvous", &["^start"]),
        op("b", "Rendezvous", &["^start"]),
    ]);
    let s = Session::with_registry(g, &r).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let out = pool.install(|| s.run(&[], &[t("a"), t("b")], &[])).unwrap();
    assert_eq!(out, vec![Tensor::scalar(true), Tensor::scalar(true)]);
}

/// A test op that always fails.
fn fail(_: &Node) -> psflow_graph::Result<Box<dyn OpKernel>> {
    FnKernel::boxed(
        1,
        |_| Ok(vec![TensorInfo::unknown()]),
        |ctx| {
            let failed: psflow_kernels::Result<()> =
                Err(psflow_kernels::Error::invalid("Fail", "always"));
            ctx.k(failed)?;
            Ok(vec![])
        },
    )
}

#[test]
fn kernel_errors_name_the_node_and_stop_the_run() {
    let mut r = Registry::standard();
    r.register("Fail", fail);
    let g = graph(vec![
        placeholder("x", DType::F32, &[2]),
        op("bad", "Fail", &["x"]),
        op("after", "Identity", &["bad"]),
    ]);
    let s = Session::with_registry(g, &r).unwrap();
    let msg = s
        .run(&[(t("x"), rand_f32(&[2], 0))], &[t("after")], &[])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("\"bad\"") && msg.contains("always"), "{msg}");
}

#[test]
fn filled_constants_broadcast_their_single_value() {
    // TensorFlow writes tf.fill / zeros / ones constants with one value.
    let proto = psflow_proto::tensorflow::TensorProto {
        dtype: psflow_proto::tensorflow::DataType::DtFloat as i32,
        tensor_shape: Some(Shape::known(&[2, 3]).to_proto()),
        float_val: vec![0.5],
        ..Default::default()
    };
    let s = Session::new(graph(vec![
        Node::new("c", "Const")
            .attr(
                "dtype",
                AttrValue::from_type(psflow_proto::tensorflow::DataType::DtFloat),
            )
            .attr("value", AttrValue::from_tensor(proto)),
        op("y", "Identity", &["c"]),
    ]))
    .unwrap();
    let out = s.run(&[], &[t("y")], &[]).unwrap();
    assert_eq!(out[0], Tensor::full(vec![2, 3], 0.5f32));
}

#[test]
fn a_fed_placeholder_reached_by_a_control_edge_does_not_run() {
    let s = Session::new(graph(vec![
        placeholder("x", DType::F32, &[1]),
        op("after", "NoOp", &["^x"]),
        op("y", "Identity", &["x", "^after"]),
    ]))
    .unwrap();
    let x = Tensor::new(vec![1], vec![3f32]).unwrap();
    let out = s.run(&[(t("x"), x.clone())], &[t("y")], &[]).unwrap();
    assert_eq!(out[0], x);
    let msg = s.run(&[], &[], &["after".into()]).unwrap_err().to_string();
    assert!(
        msg.contains("\"x\"") && msg.contains("must be fed"),
        "{msg}"
    );
}
