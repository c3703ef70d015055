//! Resource variables, optimizer updates and random ops through `Session`:
//! TensorFlow's optimizer steps replayed (fixture written by
//! tools/tf/gen_optim_fixtures.py), init/read/assign, the uninitialised
//! read error, shape inference through handles, random moments, truncation
//! and determinism under seeds.

mod common;

use std::sync::Arc;

use common::*;
use psflow_graph::dtype::dtype_to_proto;
use psflow_graph::train::optimizer::{
    AdamConfig, MomentumConfig, Optimizer, RmsPropConfig, SgdConfig,
};
use psflow_graph::{
    AttrValue, DType, Error, Graph, Node, Registry, ResourceStore, Session, Shape, Tensor,
};
use psflow_proto::tensorflow::TensorShapeProto;
use serde_json::Value;

fn graph(nodes: Vec<Node>) -> Graph {
    let mut g = Graph::new();
    for n in nodes {
        g.add(n).unwrap();
    }
    g
}

fn dtype_attr(d: DType) -> AttrValue {
    AttrValue::from_type(dtype_to_proto(d))
}

/// `VarHandleOp` named `name` (shared_name = name) of `dtype` and `dims`.
fn var_handle(name: &str, dtype: DType, dims: &[i64]) -> Node {
    Node::new(name, "VarHandleOp")
        .attr("dtype", dtype_attr(dtype))
        .attr(
            "shape",
            AttrValue::from_shape(TensorShapeProto::from_dims(dims)),
        )
        .attr("shared_name", AttrValue::from_s(name))
        .attr("container", AttrValue::from_s(""))
}

/// The variable, its Const initializer, `V/Assign` and `V/Read/ReadVariableOp`.
fn variable(name: &str, init: &Tensor) -> Vec<Node> {
    let dims: Vec<i64> = init.shape().iter().map(|&d| d as i64).collect();
    let d = dtype_attr(init.dtype());
    vec![
        var_handle(name, init.dtype(), &dims),
        konst(&format!("{name}/Initializer/Const"), init),
        op(
            &format!("{name}/Assign"),
            "AssignVariableOp",
            &[name, &format!("{name}/Initializer/Const")],
        )
        .attr("dtype", d.clone()),
        op(
            &format!("{name}/Read/ReadVariableOp"),
            "ReadVariableOp",
            &[name],
        )
        .attr("dtype", d),
    ]
}

fn init_op(assigns: &[String]) -> Node {
    let mut n = Node::new("init", "NoOp");
    for a in assigns {
        n = n.control_input(a.as_str());
    }
    n
}

// ------------------------------------------------------ TF fixture replay --

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/optim/tf_optim.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn json_tensor(v: &Value) -> Tensor {
    let shape: Vec<usize> = v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let values: Vec<f32> = v["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    Tensor::new(shape, values).unwrap()
}

/// Our store name of each fixture slot (TF1's slot naming).
fn slot_name(case: &str, slot: &str) -> String {
    let centered = case == "centered_rmsprop";
    match slot {
        "ms" => "V/RMSProp".into(),
        "mg" => "V/RMSProp_1".into(),
        "mom" if centered => "V/RMSProp_2".into(),
        "mom" => "V/RMSProp_1".into(),
        "accum" => "V/Momentum".into(),
        "m" => "V/Adam".into(),
        "v" => "V/Adam_1".into(),
        other => other.into(), // beta1_power, beta2_power
    }
}

fn optimizer_of(case: &Value) -> Optimizer {
    let h = &case["hyper"];
    let f = |k: &str| h[k].as_f64().unwrap() as f32;
    let b = |k: &str| h[k].as_bool().unwrap();
    match case["optimizer"].as_str().unwrap() {
        "rmsprop" => Optimizer::RmsProp(RmsPropConfig {
            decay: f("decay"),
            momentum: f("momentum"),
            epsilon: f("epsilon"),
            centered: b("centered"),
        }),
        "momentum" => Optimizer::Momentum(MomentumConfig {
            momentum: f("momentum"),
            nesterov: b("nesterov"),
        }),
        "sgd" => Optimizer::Sgd(SgdConfig {}),
        "adam" => Optimizer::Adam(AdamConfig {
            beta1: f("beta1"),
            beta2: f("beta2"),
            epsilon: f("epsilon"),
            nesterov: b("nesterov"),
        }),
        o => panic!("unknown optimizer {o}"),
    }
}

/// Largest |a - b| / max(|b|, 1e-6), and whether all bits are equal.
fn compare(got: &Tensor, want: &Tensor) -> (f64, bool) {
    assert_eq!(got.shape(), want.shape());
    let (g, w) = (got.f32s("got").unwrap(), want.f32s("want").unwrap());
    let err = g
        .iter()
        .zip(w)
        .map(|(&a, &b)| (a as f64 - b as f64).abs() / (b as f64).abs().max(1e-6))
        .fold(0.0, f64::max);
    let exact = g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits());
    (err, exact)
}

/// Every TensorFlow case, replayed step by step through the graph that
/// `Optimizer::add_to_graph` builds: every variable and slot after every
/// step within 1e-6 relative of TensorFlow's.
#[test]
fn optimizer_steps_match_tensorflow() {
    let doc = fixture();
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 7);
    let mut inexact = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let var0 = json_tensor(&case["var"]);
        let mut nodes = variable("V", &var0);
        nodes.push(placeholder("grad", DType::F32, &[3, 5]));
        nodes.push(placeholder("learning_rate", DType::F32, &[]));
        let mut g = graph(nodes);
        let opt = optimizer_of(case);
        let ops = opt
            .add_to_graph(&mut g, &[("V".into(), t("grad"))], &t("learning_rate"))
            .unwrap();
        let mut assigns = vec!["V/Assign".to_string()];
        assigns.extend(ops.init_assigns.iter().cloned());
        g.add(init_op(&assigns)).unwrap();
        let mut train = Node::new("train_op", "NoOp");
        for u in &ops.update_nodes {
            train = train.control_input(u.as_str());
        }
        g.add(train).unwrap();
        let slots = case["slots"].as_object().unwrap();
        let mut want_slots: Vec<String> = slots.keys().map(|s| slot_name(name, s)).collect();
        want_slots.sort();
        let mut got_slots = ops.slot_variables.clone();
        got_slots.sort();
        assert_eq!(got_slots, want_slots, "{name}: slot variables");

        let s = Session::new(g).unwrap();
        s.run(&[], &[], &["init".into()]).unwrap();
        let store = s.resources();
        // The optimizer's initializers give TF1's initial slot values.
        for (slot, v) in slots {
            let got = store.get(&slot_name(name, slot)).unwrap();
            assert_eq!(got, json_tensor(v), "{name}: initial {slot}");
        }
        let grads = case["grads"].as_array().unwrap();
        let lrs = case["lrs"].as_array().unwrap();
        for (k, step) in case["steps"].as_array().unwrap().iter().enumerate() {
            let feeds = [
                (t("grad"), json_tensor(&grads[k])),
                (
                    t("learning_rate"),
                    Tensor::scalar(lrs[k].as_f64().unwrap() as f32),
                ),
            ];
            s.run(&feeds, &[], &["train_op".into()]).unwrap();
            let read = s.run(&[], &[t("V/Read/ReadVariableOp")], &[]).unwrap();
            let mut check = |what: &str, got: &Tensor, want: &Value| {
                let (err, exact) = compare(got, &json_tensor(want));
                assert!(
                    err <= 1e-6,
                    "{name} step {k} {what}: relative error {err:e}"
                );
                if !exact {
                    inexact.push(format!("{name}/{k}/{what} ({err:.1e})"));
                }
            };
            check("var", &read[0], &step["var"]);
            for (slot, v) in step["slots"].as_object().unwrap() {
                check(slot, &store.get(&slot_name(name, slot)).unwrap(), v);
            }
        }
    }
    // The kernels evaluate the same IEEE operations in the same order as
    // TF's Eigen expressions (no FMA contraction, true sqrt and division),
    // so the results are not just close but the same bits.
    assert!(
        inexact.is_empty(),
        "within 1e-6 but not bit-identical to TensorFlow: {inexact:?}"
    );
}

// ----------------------------------------------- variables through Session --

#[test]
fn variables_initialise_read_assign_and_update() {
    let w0 = Tensor::new(vec![2, 3], vec![1f32, 2., 3., 4., 5., 6.]).unwrap();
    let mut nodes = variable("w", &w0);
    nodes.extend(variable("global_step", &Tensor::scalar(0i64)));
    nodes.extend([
        konst("one", &Tensor::scalar(1i64)),
        op("step_inc", "AssignAddVariableOp", &["global_step", "one"])
            .attr("dtype", dtype_attr(DType::I64)),
        konst("delta", &Tensor::full(vec![2, 3], 0.5f32)),
        op("w_sub", "AssignSubVariableOp", &["w", "delta"]).attr("dtype", dtype_attr(DType::F32)),
        op("w_add", "AssignAddVariableOp", &["w", "delta"]).attr("dtype", dtype_attr(DType::F32)),
        konst("new_w", &Tensor::full(vec![2, 3], 7f32)),
        op("w_set", "AssignVariableOp", &["w", "new_w"]).attr("dtype", dtype_attr(DType::F32)),
        op("w_is_init", "VarIsInitializedOp", &["w"]),
        op("handle_copy", "Identity", &["w"]),
        op("read_via_identity", "ReadVariableOp", &["handle_copy"])
            .attr("dtype", dtype_attr(DType::F32)),
        init_op(&["w/Assign".into(), "global_step/Assign".into()]),
    ]);
    let s = Session::new(graph(nodes)).unwrap();
    // Shape inference sees through the handle (and an Identity of it).
    let info = s.tensor_info(&t("read_via_identity")).unwrap();
    assert_eq!(info.shape, Shape::Known(vec![2, 3]));
    assert_eq!(info.dtype, Some(DType::F32));
    assert!(info.value.is_none(), "reads are never constant-folded");

    let is_init = |s: &Session| s.run(&[], &[t("w_is_init")], &[]).unwrap()[0].clone();
    assert_eq!(is_init(&s), Tensor::scalar(false));
    s.run(&[], &[], &["init".into()]).unwrap();
    assert_eq!(is_init(&s), Tensor::scalar(true));
    let read = |s: &Session| s.run(&[], &[t("read_via_identity")], &[]).unwrap()[0].clone();
    assert_eq!(read(&s), w0);

    for _ in 0..3 {
        s.run(&[], &[], &["step_inc".into()]).unwrap();
    }
    assert_eq!(s.resources().get("global_step"), Some(Tensor::scalar(3i64)));

    let before = read(&s); // held across the update: must not change
    s.run(&[], &[], &["w_sub".into()]).unwrap();
    assert_eq!(before, w0);
    let want: Vec<f32> = w0.f32s("").unwrap().iter().map(|x| x - 0.5).collect();
    assert_eq!(read(&s).f32s("").unwrap(), &want[..]);
    s.run(&[], &[], &["w_add".into()]).unwrap();
    assert_eq!(read(&s), w0);
    s.run(&[], &[], &["w_set".into()]).unwrap();
    assert_eq!(read(&s), Tensor::full(vec![2, 3], 7f32));
    // Running init again resets.
    s.run(&[], &[], &["init".into()]).unwrap();
    assert_eq!(read(&s), w0);
    assert_eq!(s.resources().get("global_step"), Some(Tensor::scalar(0i64)));
}

#[test]
fn reading_an_uninitialised_variable_names_it_and_says_to_run_init() {
    let nodes = variable("MobilenetV1/Conv2d_0/weights", &Tensor::full(vec![3], 1f32));
    let s = Session::new(graph(nodes)).unwrap();
    let err = s
        .run(
            &[],
            &[t("MobilenetV1/Conv2d_0/weights/Read/ReadVariableOp")],
            &[],
        )
        .unwrap_err();
    assert!(matches!(err, Error::Resource { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("MobilenetV1/Conv2d_0/weights"), "{msg}");
    assert!(
        msg.contains("not initialized") && msg.contains("`init`"),
        "{msg}"
    );
}

#[test]
fn updating_with_an_uninitialised_slot_names_the_slot() {
    let mut nodes = variable("V", &Tensor::full(vec![2], 1f32));
    nodes.extend([
        var_handle("V/Momentum", DType::F32, &[2]),
        konst("lr", &Tensor::scalar(0.1f32)),
        konst("mu", &Tensor::scalar(0.9f32)),
        konst("g", &Tensor::full(vec![2], 1f32)),
        op(
            "apply",
            "ResourceApplyMomentum",
            &["V", "V/Momentum", "lr", "g", "mu"],
        )
        .attr("T", dtype_attr(DType::F32)),
    ]);
    let s = Session::new(graph(nodes)).unwrap();
    s.run(&[], &[], &["V/Assign".into()]).unwrap();
    let err = s.run(&[], &[], &["apply".into()]).unwrap_err().to_string();
    assert!(
        err.contains("V/Momentum") && err.contains("not initialized"),
        "{err}"
    );
    // The failed update left the variable as it was.
    assert_eq!(s.resources().get("V"), Some(Tensor::full(vec![2], 1f32)));
}

#[test]
fn shape_and_dtype_mismatches_are_clear_errors() {
    // Assigning a value of the wrong shape is caught by validation.
    let mut nodes = variable("V", &Tensor::full(vec![2, 2], 1f32));
    nodes.extend([
        konst("bad", &Tensor::full(vec![3], 1f32)),
        op("assign_bad", "AssignVariableOp", &["V", "bad"]).attr("dtype", dtype_attr(DType::F32)),
    ]);
    let err = Session::new(graph(nodes)).err().unwrap().to_string();
    assert!(err.contains("assign_bad") && err.contains("[3]"), "{err}");

    // A gradient of the wrong shape.
    let mut nodes = variable("V", &Tensor::full(vec![2, 2], 1f32));
    nodes.extend([
        konst("lr", &Tensor::scalar(0.1f32)),
        konst("g", &Tensor::full(vec![4], 1f32)),
        op("sgd", "ResourceApplyGradientDescent", &["V", "lr", "g"])
            .attr("T", dtype_attr(DType::F32)),
    ]);
    let err = Session::new(graph(nodes)).err().unwrap().to_string();
    assert!(err.contains("sgd") && err.contains("grad"), "{err}");

    // Reading as the wrong dtype.
    let mut nodes = variable("V", &Tensor::full(vec![2], 1f32));
    nodes.push(op("r64", "ReadVariableOp", &["V"]).attr("dtype", dtype_attr(DType::F64)));
    let err = Session::new(graph(nodes)).err().unwrap().to_string();
    assert!(err.contains("r64") && err.contains("float"), "{err}");

    // A non-handle where a handle belongs.
    let nodes = vec![
        konst("x", &Tensor::full(vec![2], 1f32)),
        op("r", "ReadVariableOp", &["x"]).attr("dtype", dtype_attr(DType::F32)),
    ];
    let s = Session::new(graph(nodes)).unwrap();
    let err = s.run(&[], &[t("r")], &[]).unwrap_err().to_string();
    assert!(err.contains("resource handle"), "{err}");
}

#[test]
fn variables_live_in_a_shared_store() {
    let store = Arc::new(ResourceStore::new());
    let nodes = || variable("shared", &Tensor::scalar(5f32));
    let a = Session::with_resources(graph(nodes()), &Registry::standard(), store.clone()).unwrap();
    let b = Session::with_resources(graph(nodes()), &Registry::standard(), store.clone()).unwrap();
    a.run(&[], &[], &["shared/Assign".into()]).unwrap();
    let v = b.run(&[], &[t("shared/Read/ReadVariableOp")], &[]).unwrap();
    assert_eq!(v[0], Tensor::scalar(5f32));
    assert!(store.names().contains(&"shared".to_string()));
}

// ------------------------------------------------------------ random ops --

fn random_node(name: &str, op_name: &str, seed: i64, seed2: i64) -> Node {
    op(name, op_name, &["dims"])
        .attr("dtype", dtype_attr(DType::F32))
        .attr("T", dtype_attr(DType::I32))
        .attr("seed", AttrValue::from_i(seed))
        .attr("seed2", AttrValue::from_i(seed2))
}

fn random_session(op_name: &str, dims: &[i32], seed: i64, seed2: i64) -> Session {
    Session::new(graph(vec![
        konst("dims", &ints(dims)),
        random_node("r", op_name, seed, seed2),
    ]))
    .unwrap()
}

fn draw(s: &Session) -> Vec<f64> {
    s.run(&[], &[t("r")], &[]).unwrap()[0].to_f64_vec()
}

fn moments(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var)
}

/// Mean and variance within 5 standard errors of the distribution's.
fn check_moments(what: &str, v: &[f64], mean: f64, var: f64, fourth: f64) {
    let n = v.len() as f64;
    let (m, s2) = moments(v);
    let se_mean = (var / n).sqrt();
    let se_var = ((fourth - var * var) / n).sqrt();
    assert!(
        (m - mean).abs() < 5.0 * se_mean,
        "{what}: mean {m}, want {mean}"
    );
    assert!(
        (s2 - var).abs() < 5.0 * se_var,
        "{what}: variance {s2}, want {var}"
    );
}

#[test]
fn random_ops_have_the_right_moments() {
    let dims = [1000, 201]; // 201,000 values, odd sizes
    let u = draw(&random_session("RandomUniform", &dims, 7, 1));
    assert_eq!(u.len(), 201_000);
    assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
    check_moments("uniform", &u, 0.5, 1.0 / 12.0, 1.0 / 80.0);

    let z = draw(&random_session("RandomStandardNormal", &dims, 7, 2));
    check_moments("normal", &z, 0.0, 1.0, 3.0);
    let tail = z.iter().filter(|x| x.abs() > 2.0).count() as f64 / z.len() as f64;
    assert!((tail - 0.0455).abs() < 0.003, "P(|z| > 2) = {tail}");

    let tz = draw(&random_session("TruncatedNormal", &dims, 7, 3));
    assert!(tz.iter().all(|x| x.abs() < 2.0), "truncated at 2 sigma");
    // N(0, 1) truncated to (-2, 2): variance 1 - 4 φ(2) / (Φ(2) - Φ(-2)),
    // fourth moment 3 - (2·2³ + 3·2·2) φ(2) / (Φ(2) - Φ(-2)).
    let phi2 = (-2.0f64).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let mass = 0.954_499_736_103_642;
    let var = 1.0 - 4.0 * phi2 / mass;
    let fourth = 3.0 - (16.0 + 12.0) * phi2 / mass;
    check_moments("truncated normal", &tz, 0.0, var, fourth);
    // Not clipped: the mass near the bounds is a truncated normal's,
    // 2 (Φ(2) - Φ(1.9)) / (Φ(2) - Φ(-2)) = 0.012503.
    let near = tz.iter().filter(|x| x.abs() > 1.9).count() as f64 / tz.len() as f64;
    let (p, n) = (0.012503, tz.len() as f64);
    let se = (p * (1.0 - p) / n).sqrt();
    assert!(
        (near - p).abs() < 5.0 * se,
        "P(|z| > 1.9) = {near}, want {p}"
    );
}

#[test]
fn random_uniform_int_covers_its_range_evenly() {
    for (dtype, dims) in [(DType::I32, [300, 301]), (DType::I64, [7, 11])] {
        let (lo, hi): (Tensor, Tensor) = match dtype {
            DType::I32 => (Tensor::scalar(-3i32), Tensor::scalar(4i32)),
            _ => (Tensor::scalar(-3i64), Tensor::scalar(4i64)),
        };
        let s = Session::new(graph(vec![
            konst("dims", &ints(&dims)),
            konst("lo", &lo),
            konst("hi", &hi),
            op("r", "RandomUniformInt", &["dims", "lo", "hi"])
                .attr("Tout", dtype_attr(dtype))
                .attr("T", dtype_attr(DType::I32))
                .attr("seed", AttrValue::from_i(3))
                .attr("seed2", AttrValue::from_i(4)),
        ]))
        .unwrap();
        let out = s.run(&[], &[t("r")], &[]).unwrap().remove(0);
        assert_eq!(out.dtype(), dtype);
        assert_eq!(out.shape(), &[dims[0] as usize, dims[1] as usize]);
        let v = out.to_f64_vec();
        let mut counts = [0usize; 7];
        for x in &v {
            assert!((-3.0..4.0).contains(x), "{x} outside [-3, 4)");
            counts[(*x + 3.0) as usize] += 1;
        }
        if v.len() > 10_000 {
            let expect = v.len() as f64 / 7.0;
            let chi2: f64 = counts
                .iter()
                .map(|&c| (c as f64 - expect).powi(2) / expect)
                .sum();
            assert!(
                chi2 < 22.5,
                "chi² {chi2} over 6 degrees of freedom: {counts:?}"
            );
        }
    }
}

#[test]
fn random_ops_are_deterministic_under_seeds_and_advance_per_run() {
    for op_name in ["RandomUniform", "RandomStandardNormal", "TruncatedNormal"] {
        let a = random_session(op_name, &[5, 7], 11, 12);
        let b = random_session(op_name, &[5, 7], 11, 12);
        let (a1, a2) = (draw(&a), draw(&a));
        assert_ne!(a1, a2, "{op_name}: each run draws new values");
        assert_eq!(
            (a1.clone(), a2),
            (draw(&b), draw(&b)),
            "{op_name}: same seeds, same stream"
        );
        assert_ne!(a1, draw(&random_session(op_name, &[5, 7], 11, 13)));
        assert_ne!(a1, draw(&random_session(op_name, &[5, 7], 12, 12)));
        // Seeds (0, 0): seeded from the OS, as TensorFlow.
        let x = draw(&random_session(op_name, &[5, 7], 0, 0));
        let y = draw(&random_session(op_name, &[5, 7], 0, 0));
        assert_ne!(x, y, "{op_name}: unseeded ops differ between sessions");
        // A value does not depend on the tensor's size: the first elements
        // of a larger draw are the same (counter-based generator).
        let small = draw(&random_session(op_name, &[4], 11, 12));
        let large = draw(&random_session(op_name, &[40_000], 11, 12));
        assert_eq!(&large[..4], &small[..]);
    }
}

#[test]
fn random_ops_are_never_folded_and_infer_their_shape() {
    let s = random_session("TruncatedNormal", &[3, 3, 8, 16], 1, 2);
    let info = s.tensor_info(&t("r")).unwrap();
    assert_eq!(info.shape, Shape::Known(vec![3, 3, 8, 16]));
    assert_eq!(info.dtype, Some(DType::F32));
    assert!(info.value.is_none());
    // The run counter lives in the store (checkpointed with the variables).
    draw(&s);
    draw(&s);
    assert_eq!(
        s.resources().get("r/rng_counter"),
        Some(Tensor::scalar(2i64))
    );

    let nodes = vec![
        konst("dims", &ints(&[2, -1])),
        random_node("r", "RandomUniform", 1, 2),
    ];
    let err = Session::new(graph(nodes)).err().unwrap().to_string();
    assert!(err.contains("negative"), "{err}");
}

#[test]
fn state_and_random_ops_are_registered() {
    let r = Registry::standard();
    let ops = "VarHandleOp ReadVariableOp AssignVariableOp AssignAddVariableOp \
        AssignSubVariableOp VarIsInitializedOp ResourceApplyGradientDescent \
        ResourceApplyMomentum ResourceApplyRMSProp ResourceApplyCenteredRMSProp \
        ResourceApplyAdam TruncatedNormal RandomStandardNormal RandomUniform RandomUniformInt";
    let missing: Vec<_> = ops.split_whitespace().filter(|o| !r.contains(o)).collect();
    assert!(missing.is_empty(), "not registered: {missing:?}");
}

/// A training graph (variable, TruncatedNormal initializer, RMSProp slots
/// and update) survives GraphDef bytes and trains after the round trip.
#[test]
fn training_graph_round_trips_through_graph_def_bytes() {
    let mut g = graph(vec![
        var_handle("W", DType::F32, &[4, 3]),
        konst("W/Initializer/shape", &ints(&[4, 3])),
        op(
            "W/Initializer/TruncatedNormal",
            "TruncatedNormal",
            &["W/Initializer/shape"],
        )
        .attr("dtype", dtype_attr(DType::F32))
        .attr("T", dtype_attr(DType::I32))
        .attr("seed", AttrValue::from_i(1))
        .attr("seed2", AttrValue::from_i(2)),
        op(
            "W/Assign",
            "AssignVariableOp",
            &["W", "W/Initializer/TruncatedNormal"],
        )
        .attr("dtype", dtype_attr(DType::F32)),
        op("W/Read/ReadVariableOp", "ReadVariableOp", &["W"]).attr("dtype", dtype_attr(DType::F32)),
        placeholder("learning_rate", DType::F32, &[]),
        // loss = sum(W²)/2, so grad = W.
        op("grad", "Identity", &["W/Read/ReadVariableOp"]),
    ]);
    let ops = Optimizer::default()
        .add_to_graph(&mut g, &[("W".into(), t("grad"))], &t("learning_rate"))
        .unwrap();
    let mut assigns = vec!["W/Assign".to_string()];
    assigns.extend(ops.init_assigns);
    g.add(init_op(&assigns)).unwrap();
    let mut train = Node::new("train_op", "NoOp");
    for u in &ops.update_nodes {
        train = train.control_input(u.as_str());
    }
    g.add(train).unwrap();
    let g = Graph::from_graph_def_bytes(&g.to_graph_def_bytes()).unwrap();
    let s = Session::new(g).unwrap();
    s.run(&[], &[], &["init".into()]).unwrap();
    let w0 = s.resources().get("W").unwrap();
    assert!(w0.to_f64_vec().iter().all(|x| x.abs() < 2.0));
    let lr = [(t("learning_rate"), Tensor::scalar(0.1f32))];
    for _ in 0..5 {
        s.run(&lr, &[], &["train_op".into()]).unwrap();
    }
    let norm = |t: &Tensor| t.to_f64_vec().iter().map(|x| x * x).sum::<f64>();
    let w5 = s.resources().get("W").unwrap();
    assert!(norm(&w5) < 0.9 * norm(&w0), "RMSProp shrinks W toward 0");
}
