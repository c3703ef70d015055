//! `gradients` checked against central finite differences through Session:
//! for `y = f(x…)` and a random weight `r` of y's shape, the gradient of
//! `<r, y>` w.r.t. each x (the graph's vector-Jacobian product, fed `r` as
//! grad_ys) is compared with `(<r, f(x + h e_j)> - <r, f(x - h e_j)>) / 2h`,
//! the inner products taken in f64 on the host. Ops with f64 kernels run in
//! f64; the nn ops are f32-only and use a step and tolerance for f32.

mod common;

use common::{f32_t, konst, op, placeholder, rand_f32};
use psflow_graph::dtype::dtype_to_proto;
use psflow_graph::{gradients, AttrValue, DType, Graph, Node, Session, Tensor, TensorName};

fn t(s: &str) -> TensorName {
    TensorName::parse(s).unwrap()
}

fn graph(nodes: Vec<Node>) -> Graph {
    let mut g = Graph::new();
    for n in nodes {
        g.add(n).unwrap();
    }
    g
}

fn typed(n: Node, d: DType) -> Node {
    n.attr("T", AttrValue::from_type(dtype_to_proto(d)))
}

fn ints_attr(v: &[i64]) -> AttrValue {
    AttrValue::from_ints(v.to_vec())
}

fn conv(name: &str, op_name: &str, x: &str, f: &str, stride: i64, padding: &str) -> Node {
    f32_t(&op(name, op_name, &[x, f]))
        .attr("strides", ints_attr(&[1, stride, stride, 1]))
        .attr("padding", AttrValue::from_s(padding))
}

fn i32s(v: &[i32]) -> Tensor {
    Tensor::new(vec![v.len()], v.to_vec()).unwrap()
}

fn to_dtype(x: &Tensor, d: DType) -> Tensor {
    let v = x.to_f64_vec();
    match d {
        DType::F64 => Tensor::new(x.shape().to_vec(), v).unwrap(),
        _ => Tensor::new(x.shape().to_vec(), v.iter().map(|&a| a as f32).collect()).unwrap(),
    }
}

/// Tensor with element `j` moved by `d`.
fn nudge(x: &Tensor, j: usize, d: f64) -> Tensor {
    let mut v = x.to_f64_vec();
    v[j] += d;
    to_dtype(&Tensor::new(x.shape().to_vec(), v).unwrap(), x.dtype())
}

fn dot(a: &Tensor, b: &Tensor) -> f64 {
    a.to_f64_vec()
        .iter()
        .zip(b.to_f64_vec())
        .map(|(x, y)| x * y)
        .sum()
}

struct Check {
    h: f64,
    /// Passes when |analytic - numeric| <= atol + rtol * |numeric|.
    atol: f64,
    rtol: f64,
}

const F64: Check = Check {
    h: 1e-6,
    atol: 1e-7,
    rtol: 1e-6,
};
const F32: Check = Check {
    h: 1e-2,
    atol: 3e-4,
    rtol: 3e-3,
};

/// Differentiates `y` w.r.t. the fed placeholders named in `xs` and checks
/// every element against central differences.
fn check(g: Graph, feeds: &[(&str, Tensor)], y: &str, xs: &[&str], c: Check) {
    let feed: Vec<(TensorName, Tensor)> = feeds.iter().map(|(n, v)| (t(n), v.clone())).collect();
    let fwd = Session::new(g.clone()).unwrap();
    let y0 = &fwd.run(&feed, &[t(y)], &[]).unwrap()[0];
    let r = to_dtype(&rand_f32(y0.shape(), 99), y0.dtype());
    let mut gg = g;
    gg.add(konst("grad_y", &r)).unwrap();
    let xs_t: Vec<TensorName> = xs.iter().map(|x| t(x)).collect();
    let grads = gradients(&mut gg, &[t(y)], &xs_t, Some(&[t("grad_y")])).unwrap();
    // The training graph survives a GraphDef round trip.
    let gg = Graph::from_graph_def_bytes(&gg.to_graph_def_bytes()).unwrap();
    let sess = Session::new(gg).unwrap();
    let fetch: Vec<TensorName> = grads
        .iter()
        .map(|g| g.clone().expect("every x is on a path to y"))
        .collect();
    let analytic = sess.run(&feed, &fetch, &[]).unwrap();
    for (xi, x) in xs.iter().enumerate() {
        let k = feeds.iter().position(|(n, _)| n == x).unwrap();
        let x0 = &feeds[k].1;
        assert_eq!(analytic[xi].shape(), x0.shape(), "gradient shape of {x}");
        let a = analytic[xi].to_f64_vec();
        for (j, &aj) in a.iter().enumerate() {
            let f = |d: f64| {
                let mut fd = feed.clone();
                fd[k].1 = nudge(x0, j, d);
                dot(&fwd.run(&fd, &[t(y)], &[]).unwrap()[0], &r)
            };
            let num = (f(c.h) - f(-c.h)) / (2.0 * c.h);
            assert!(
                (aj - num).abs() <= c.atol + c.rtol * num.abs(),
                "d{y}/d{x}[{j}]: gradient {aj}, finite difference {num}"
            );
        }
    }
}

/// f32 values in [-1, 1) kept at least `gap` away from every `kinks` value.
fn away_from(x: Tensor, kinks: &[f32], gap: f32) -> Tensor {
    let v: Vec<f32> = x
        .to_f64_vec()
        .iter()
        .map(|&a| {
            let mut a = a as f32;
            for &k in kinks {
                if (a - k).abs() < gap {
                    a = k + gap.copysign(a - k);
                }
            }
            a
        })
        .collect();
    Tensor::new(x.shape().to_vec(), v).unwrap()
}

fn f64_ph(name: &str, dims: &[i64]) -> Node {
    placeholder(name, DType::F64, dims)
}

fn f32_ph(name: &str, dims: &[i64]) -> Node {
    placeholder(name, DType::F32, dims)
}

fn r64(shape: &[usize], seed: u64) -> Tensor {
    to_dtype(&rand_f32(shape, seed), DType::F64)
}

#[test]
fn conv2d_gradients() {
    for (xs, fs, stride, pad) in [
        ([2, 5, 5, 3], [3, 3, 3, 4], 2, "SAME"),
        ([1, 6, 1, 2], [3, 1, 2, 3], 1, "VALID"),
        ([2, 4, 5, 2], [1, 1, 2, 3], 1, "SAME"),
    ] {
        let g = graph(vec![
            f32_ph("x", &[-1, xs[1], xs[2], xs[3]]),
            f32_ph("f", &fs.map(|d| d as i64)),
            conv("y", "Conv2D", "x", "f", stride, pad),
        ]);
        let x = rand_f32(&xs.map(|d| d as usize), 1);
        let f = rand_f32(&fs.map(|d| d as usize), 2);
        check(g, &[("x", x), ("f", f)], "y", &["x", "f"], F32);
    }
}

#[test]
fn depthwise_gradients() {
    for (xs, fs, stride, pad) in [
        ([2, 5, 5, 3], [3, 3, 3, 2], 2, "SAME"),
        ([1, 5, 4, 2], [3, 3, 2, 1], 1, "VALID"),
    ] {
        let g = graph(vec![
            f32_ph("x", &[-1, xs[1], xs[2], xs[3]]),
            f32_ph("f", &fs.map(|d| d as i64)),
            conv("y", "DepthwiseConv2dNative", "x", "f", stride, pad),
        ]);
        let x = rand_f32(&xs.map(|d| d as usize), 3);
        let f = rand_f32(&fs.map(|d| d as usize), 4);
        check(g, &[("x", x), ("f", f)], "y", &["x", "f"], F32);
    }
}

fn batch_norm(name: &str, x: &str, p: &str, training: bool) -> Node {
    let inputs = [
        x,
        &format!("{p}gamma"),
        &format!("{p}beta"),
        &format!("{p}mean"),
        &format!("{p}var"),
    ];
    let mut n = Node::new(name, "FusedBatchNormV3");
    for i in inputs {
        n = n.input(i);
    }
    f32_t(&n)
        .attr("U", AttrValue::from_type(dtype_to_proto(DType::F32)))
        .attr("epsilon", AttrValue::from_f(0.001))
        .attr("is_training", AttrValue::from_b(training))
        .attr("exponential_avg_factor", AttrValue::from_f(0.01))
        .attr("data_format", AttrValue::from_s("NHWC"))
}

fn bn_params(prefix: &str, c: usize, seed: u64) -> Vec<Node> {
    let gamma = Tensor::new(
        vec![c],
        rand_f32(&[c], seed)
            .to_f64_vec()
            .iter()
            .map(|&v| 1.0 + 0.5 * v as f32)
            .collect(),
    )
    .unwrap();
    let var = Tensor::new(
        vec![c],
        rand_f32(&[c], seed + 2)
            .to_f64_vec()
            .iter()
            .map(|&v| 1.2 + 0.5 * v as f32)
            .collect(),
    )
    .unwrap();
    vec![
        konst(&format!("{prefix}gamma"), &gamma),
        konst(&format!("{prefix}beta"), &rand_f32(&[c], seed + 1)),
        konst(&format!("{prefix}mean"), &rand_f32(&[c], seed + 3)),
        konst(&format!("{prefix}var"), &var),
    ]
}

#[test]
fn fused_batch_norm_gradients() {
    for training in [true, false] {
        let mut nodes = vec![
            f32_ph("x", &[-1, 3, 3, 4]),
            f32_ph("gamma", &[4]),
            f32_ph("beta", &[4]),
        ];
        nodes.extend(bn_params("c_", 4, 7));
        nodes.push(Node::new("mean", "Identity").input("c_mean"));
        nodes.push(Node::new("var", "Identity").input("c_var"));
        nodes.push(batch_norm("bn", "x", "", training));
        let g = graph(nodes);
        let x = to_dtype(&r64(&[2, 3, 3, 4], 5), DType::F32);
        let gamma = Tensor::new(vec![4], vec![1.1f32, 0.7, -0.9, 1.5]).unwrap();
        let beta = rand_f32(&[4], 6);
        let c = Check {
            h: 1e-2,
            atol: 5e-4,
            rtol: 5e-3,
        };
        check(
            g,
            &[("x", x), ("gamma", gamma), ("beta", beta)],
            "bn",
            &["x", "gamma", "beta"],
            c,
        );
    }
}

#[test]
fn activation_gradients() {
    let g = graph(vec![
        f32_ph("x", &[2, 3, 4]),
        f32_t(&op("relu", "Relu", &["x"])),
        f32_t(&op("relu6", "Relu6", &["x"])),
    ]);
    let x = away_from(rand_f32(&[2, 3, 4], 8), &[0.0], 0.05);
    check(g.clone(), &[("x", x)], "relu", &["x"], F32);
    // Relu6 around both kinks: x in (-8, 8) away from 0 and 6.
    let x8 = Tensor::new(
        vec![2, 3, 4],
        rand_f32(&[2, 3, 4], 9)
            .to_f64_vec()
            .iter()
            .map(|&v| 8.0 * v as f32)
            .collect(),
    )
    .unwrap();
    let x8 = away_from(x8, &[0.0, 6.0], 0.05);
    check(g, &[("x", x8)], "relu6", &["x"], F32);
}

fn pool(name: &str, op_name: &str, x: &str, k: i64, s: i64, padding: &str) -> Node {
    f32_t(&op(name, op_name, &[x]))
        .attr("ksize", ints_attr(&[1, k, k, 1]))
        .attr("strides", ints_attr(&[1, s, s, 1]))
        .attr("padding", AttrValue::from_s(padding))
}

#[test]
fn pooling_gradients() {
    let g = graph(vec![
        f32_ph("x", &[-1, 5, 5, 3]),
        pool("avg", "AvgPool", "x", 3, 2, "SAME"),
        pool("avg_valid", "AvgPool", "x", 2, 2, "VALID"),
    ]);
    let x = rand_f32(&[2, 5, 5, 3], 10);
    check(g.clone(), &[("x", x.clone())], "avg", &["x"], F32);
    check(g, &[("x", x)], "avg_valid", &["x"], F32);
    // Max pooling with values 0.1 apart so no perturbation changes the max.
    let n = 4 * 5 * 2;
    let mut v: Vec<f32> = (0..n).map(|i| 0.1 * ((i * 17) % n) as f32).collect();
    v.rotate_left(3);
    let x = Tensor::new(vec![1, 4, 5, 2], v).unwrap();
    let g = graph(vec![
        f32_ph("x", &[1, 4, 5, 2]),
        pool("max", "MaxPool", "x", 2, 2, "VALID"),
        pool("max_same", "MaxPool", "x", 3, 2, "SAME"),
    ]);
    check(g.clone(), &[("x", x.clone())], "max", &["x"], F32);
    check(g, &[("x", x)], "max_same", &["x"], F32);
}

#[test]
fn bias_add_and_mat_mul_gradients() {
    let g = graph(vec![
        f32_ph("x", &[-1, 3, 4]),
        f32_ph("b", &[4]),
        f32_t(&op("y", "BiasAdd", &["x", "b"])),
    ]);
    check(
        g,
        &[("x", rand_f32(&[2, 3, 4], 11)), ("b", rand_f32(&[4], 12))],
        "y",
        &["x", "b"],
        F32,
    );
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let (sa, sb) = (
            if ta { [4, 3] } else { [3, 4] },
            if tb { [5, 4] } else { [4, 5] },
        );
        let g = graph(vec![
            f32_ph("a", &sa.map(|d| d as i64)),
            f32_ph("b", &sb.map(|d| d as i64)),
            f32_t(&op("y", "MatMul", &["a", "b"]))
                .attr("transpose_a", AttrValue::from_b(ta))
                .attr("transpose_b", AttrValue::from_b(tb)),
        ]);
        check(
            g,
            &[("a", rand_f32(&sa, 13)), ("b", rand_f32(&sb, 14))],
            "y",
            &["a", "b"],
            F32,
        );
    }
}

/// Binary ops with broadcasting, with shapes known statically and with
/// unknown dimensions (BroadcastGradientArgs at run time).
#[test]
fn broadcasting_binary_gradients() {
    let cases: [(&[usize], &[usize]); 4] = [
        (&[2, 3, 4], &[3, 1]),
        (&[4], &[2, 1, 4]),
        (&[2, 3], &[]),
        (&[3, 2], &[3, 2]),
    ];
    for op_name in ["Add", "AddV2", "Sub", "Mul", "RealDiv"] {
        for (sa, sb) in cases {
            for dynamic in [false, true] {
                let dims = |s: &[usize]| -> Vec<i64> {
                    s.iter()
                        .map(|&d| if dynamic { -1 } else { d as i64 })
                        .collect()
                };
                let g = graph(vec![
                    f64_ph("a", &dims(sa)),
                    f64_ph("b", &dims(sb)),
                    typed(op("y", op_name, &["a", "b"]), DType::F64),
                ]);
                let b = r64(sb, 16).to_f64_vec().iter().map(|v| v + 2.0).collect();
                let b = Tensor::new(sb.to_vec(), b).unwrap();
                check(g, &[("a", r64(sa, 15)), ("b", b)], "y", &["a", "b"], F64);
            }
        }
    }
}

#[test]
fn add_n_accumulates_repeated_uses() {
    // y = AddN(a, a*b, b) + a: `a` receives gradients along three paths.
    let g = graph(vec![
        f64_ph("a", &[2, 3]),
        f64_ph("b", &[2, 3]),
        typed(op("ab", "Mul", &["a", "b"]), DType::F64),
        typed(op("s", "AddN", &["a", "ab", "b"]), DType::F64).attr("N", AttrValue::from_i(3)),
        typed(op("y", "AddV2", &["s", "a"]), DType::F64),
    ]);
    let mut g2 = g.clone();
    let grads = gradients(&mut g2, &[t("y")], &[t("a")], None).unwrap();
    let ga = grads[0].clone().unwrap();
    assert_eq!(g2.node(&ga.node).unwrap().op, "AddN", "{ga}");
    check(
        g,
        &[("a", r64(&[2, 3], 17)), ("b", r64(&[2, 3], 18))],
        "y",
        &["a", "b"],
        F64,
    );
}

#[test]
fn reduction_gradients() {
    for op_name in ["Mean", "Sum"] {
        for (axes, keep) in [
            (vec![1, 2], false),
            (vec![0], false),
            (vec![-1], true),
            (vec![0, 1, 2], false),
        ] {
            for batch in [2i64, -1] {
                let g = graph(vec![
                    f64_ph("x", &[batch, 3, 4]),
                    konst("axes", &i32s(&axes)),
                    typed(op("y", op_name, &["x", "axes"]), DType::F64)
                        .attr("keep_dims", AttrValue::from_b(keep)),
                ]);
                check(g, &[("x", r64(&[2, 3, 4], 19))], "y", &["x"], F64);
            }
        }
    }
    // Axes fed at run time: the kept-dims shape comes from the graph.
    let g = graph(vec![
        f64_ph("x", &[-1, -1, 4]),
        placeholder("axes", DType::I32, &[-1]),
        typed(op("y", "Mean", &["x", "axes"]), DType::F64),
    ]);
    check(
        g,
        &[("x", r64(&[2, 3, 4], 20)), ("axes", i32s(&[0, 2]))],
        "y",
        &["x"],
        F64,
    );
}

#[test]
fn shape_op_gradients() {
    let g = graph(vec![
        f64_ph("x", &[-1, 3, 4]),
        konst("shape", &i32s(&[-1, 1, 12])),
        typed(op("r", "Reshape", &["x", "shape"]), DType::F64),
        typed(op("sq", "Squeeze", &["r"]), DType::F64).attr("squeeze_dims", ints_attr(&[1])),
        konst("dim", &Tensor::scalar(0i32)),
        typed(op("e", "ExpandDims", &["sq", "dim"]), DType::F64),
        typed(op("i", "Identity", &["e"]), DType::F64),
        konst(
            "pads",
            &Tensor::new(vec![3, 2], vec![1i32, 0, 0, 2, 1, 1]).unwrap(),
        ),
        typed(op("y", "Pad", &["i", "pads"]), DType::F64),
    ]);
    check(g, &[("x", r64(&[2, 3, 4], 21))], "y", &["x"], F64);
    // Paddings fed at run time.
    let g = graph(vec![
        f64_ph("x", &[2, 3]),
        placeholder("pads", DType::I32, &[2, 2]),
        typed(op("y", "Pad", &["x", "pads"]), DType::F64),
    ]);
    let pads = Tensor::new(vec![2, 2], vec![0i32, 1, 2, 1]).unwrap();
    check(
        g,
        &[("x", r64(&[2, 3], 22)), ("pads", pads)],
        "y",
        &["x"],
        F64,
    );
}

#[test]
fn concat_gradients() {
    for dynamic in [false, true] {
        let d =
            |v: &[i64]| -> Vec<i64> { v.iter().map(|&x| if dynamic { -1 } else { x }).collect() };
        let g = graph(vec![
            f64_ph("a", &d(&[2, 3])),
            f64_ph("b", &d(&[2, 1])),
            f64_ph("c", &d(&[2, 2])),
            konst("axis", &Tensor::scalar(-1i32)),
            typed(op("y", "ConcatV2", &["a", "b", "c", "axis"]), DType::F64)
                .attr("N", AttrValue::from_i(3)),
        ]);
        check(
            g,
            &[
                ("a", r64(&[2, 3], 23)),
                ("b", r64(&[2, 1], 24)),
                ("c", r64(&[2, 2], 25)),
            ],
            "y",
            &["a", "b", "c"],
            F64,
        );
    }
}

#[test]
fn square_neg_cast_l2loss_gradients() {
    let g = graph(vec![
        f64_ph("x", &[2, 3]),
        typed(op("sq", "Square", &["x"]), DType::F64),
        typed(op("y", "Neg", &["sq"]), DType::F64),
    ]);
    check(g, &[("x", r64(&[2, 3], 26))], "y", &["x"], F64);
    let g = graph(vec![
        f32_ph("x", &[2, 3]),
        op("c", "Cast", &["x"])
            .attr("SrcT", AttrValue::from_type(dtype_to_proto(DType::F32)))
            .attr("DstT", AttrValue::from_type(dtype_to_proto(DType::F64))),
        typed(op("y", "Square", &["c"]), DType::F64),
        f32_t(&op("l2", "L2Loss", &["x"])),
    ]);
    check(g.clone(), &[("x", rand_f32(&[2, 3], 27))], "y", &["x"], F32);
    check(g, &[("x", rand_f32(&[2, 3], 28))], "l2", &["x"], F32);
}

#[test]
fn softmax_and_cross_entropy_gradients() {
    let g = graph(vec![
        f32_ph("logits", &[-1, 5]),
        konst("labels", &i32s(&[4, 0, 2])),
        f32_t(&op(
            "xent",
            "SparseSoftmaxCrossEntropyWithLogits",
            &["logits", "labels"],
        ))
        .attr("Tlabels", AttrValue::from_type(dtype_to_proto(DType::I32))),
        f32_t(&op("sm", "Softmax", &["logits"])),
    ]);
    let logits = rand_f32(&[3, 5], 29);
    let c = Check {
        h: 1e-2,
        atol: 5e-4,
        rtol: 5e-3,
    };
    check(
        g.clone(),
        &[("logits", logits.clone())],
        "xent",
        &["logits"],
        c,
    );
    let c = Check {
        h: 1e-2,
        atol: 5e-4,
        rtol: 5e-3,
    };
    check(g, &[("logits", logits)], "sm", &["logits"], c);
}

#[test]
fn unconnected_inputs_get_no_gradient_and_no_nodes() {
    let mut g = graph(vec![
        f32_ph("x", &[-1, 4, 4, 2]),
        f32_ph("f", &[3, 3, 2, 2]),
        f32_ph("other", &[2]),
        conv("y", "Conv2D", "x", "f", 1, "SAME"),
        f32_t(&op("l", "L2Loss", &["y"])),
    ]);
    let grads = gradients(&mut g, &[t("l")], &[t("f"), t("other")], None).unwrap();
    assert!(grads[0].is_some());
    assert_eq!(grads[1], None);
    let ops: Vec<&str> = g.nodes().iter().map(|n| n.op.as_str()).collect();
    assert!(ops.contains(&"Conv2DBackpropFilter"));
    assert!(
        !ops.contains(&"Conv2DBackpropInput"),
        "x is not differentiated, so no input gradient: {ops:?}"
    );
    assert!(g
        .nodes()
        .iter()
        .any(|n| n.name == "gradients/y_grad/Conv2DBackpropFilter"));
    // A second call uses a fresh scope.
    let again = gradients(&mut g, &[t("l")], &[t("f")], None).unwrap();
    assert!(
        again[0].as_ref().unwrap().node.starts_with("gradients_1/"),
        "{:?}",
        again[0]
    );
}

#[test]
fn an_op_without_gradient_is_named() {
    let mut g = graph(vec![
        f32_ph("x", &[3]),
        f32_t(&op("e", "Exp", &["x"])),
        f32_t(&op("l", "L2Loss", &["e"])),
    ]);
    let err = gradients(&mut g, &[t("l")], &[t("x")], None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"e\"") && err.contains("Exp") && err.contains("no gradient"),
        "{err}"
    );
    // StopGradient cuts the path: no gradient, no error.
    let mut g = graph(vec![
        f32_ph("x", &[3]),
        f32_t(&op("s", "StopGradient", &["x"])),
        f32_t(&op("e", "Exp", &["s"])),
        f32_t(&op("l", "L2Loss", &["e"])),
    ]);
    assert_eq!(
        gradients(&mut g, &[t("l")], &[t("x")], None).unwrap(),
        vec![None]
    );
}

/// The small MobileNet of the issue, weights as placeholders: conv 3x3 s2
/// -> BN(training) -> ReLU6 -> depthwise 3x3 -> BN -> ReLU6 -> pointwise
/// 1x1 -> BN -> ReLU6 -> global average pool (Mean) -> 1x1 logits conv +
/// bias -> squeeze -> mean cross-entropy + L2 weight decay. Every weight's
/// gradient of the total loss is checked against finite differences.
#[test]
fn small_mobilenet_gradients_match_finite_differences() {
    use psflow_graph::train::loss;
    let mut nodes = vec![
        f32_ph("input", &[-1, 8, 8, 3]),
        placeholder("labels", DType::I32, &[-1]),
        f32_ph("w0", &[3, 3, 3, 4]),
        f32_ph("dw", &[3, 3, 4, 1]),
        f32_ph("pw", &[1, 1, 4, 6]),
        f32_ph("wl", &[1, 1, 6, 5]),
        f32_ph("bl", &[5]),
    ];
    for (p, c) in [("b0_", 4), ("b1_", 4), ("b2_", 6)] {
        nodes.push(f32_ph(&format!("{p}gamma"), &[c]));
        nodes.push(f32_ph(&format!("{p}beta"), &[c]));
        nodes.extend(bn_params(&format!("{p}c_"), c as usize, 40));
        nodes.push(Node::new(format!("{p}mean"), "Identity").input(format!("{p}c_mean").as_str()));
        nodes.push(Node::new(format!("{p}var"), "Identity").input(format!("{p}c_var").as_str()));
    }
    nodes.extend([
        conv("conv0", "Conv2D", "input", "w0", 2, "SAME"),
        batch_norm("bn0", "conv0", "b0_", true),
        f32_t(&op("relu0", "Relu6", &["bn0"])),
        conv("dwconv", "DepthwiseConv2dNative", "relu0", "dw", 1, "SAME"),
        batch_norm("bn1", "dwconv", "b1_", true),
        f32_t(&op("relu1", "Relu6", &["bn1"])),
        conv("pwconv", "Conv2D", "relu1", "pw", 1, "SAME"),
        batch_norm("bn2", "pwconv", "b2_", true),
        f32_t(&op("relu2", "Relu6", &["bn2"])),
        konst("pool_axes", &i32s(&[1, 2])),
        f32_t(&op("pool", "Mean", &["relu2", "pool_axes"]))
            .attr("keep_dims", AttrValue::from_b(true)),
        conv("logits_conv", "Conv2D", "pool", "wl", 1, "SAME"),
        f32_t(&op("logits_bias", "BiasAdd", &["logits_conv", "bl"])),
        f32_t(&op("logits", "Squeeze", &["logits_bias"])).attr("squeeze_dims", ints_attr(&[1, 2])),
    ]);
    let mut g = graph(nodes);
    let xent = loss::cross_entropy_loss(&mut g, &t("logits"), &t("labels")).unwrap();
    // A large decay so the regularisation term shows in the gradients.
    let reg = loss::regularization_loss(&mut g, &[t("w0"), t("pw"), t("wl")], 0.05).unwrap();
    let total = loss::total_loss(&mut g, &xent, &reg).unwrap();
    assert_eq!(total, t("total_loss"));

    let scaled = |shape: &[usize], seed: u64, s: f32| {
        let v = rand_f32(shape, seed)
            .to_f64_vec()
            .iter()
            .map(|&x| s * x as f32)
            .collect();
        Tensor::new(shape.to_vec(), v).unwrap()
    };
    let ones_ish = |c: usize, seed: u64| {
        let v = rand_f32(&[c], seed)
            .to_f64_vec()
            .iter()
            .map(|&x| 1.0 + 0.3 * x as f32)
            .collect();
        Tensor::new(vec![c], v).unwrap()
    };
    let feeds = vec![
        ("input", rand_f32(&[3, 8, 8, 3], 50)),
        ("labels", i32s(&[1, 4, 0])),
        ("w0", scaled(&[3, 3, 3, 4], 51, 0.5)),
        ("dw", scaled(&[3, 3, 4, 1], 52, 0.5)),
        ("pw", scaled(&[1, 1, 4, 6], 53, 0.5)),
        ("wl", scaled(&[1, 1, 6, 5], 54, 0.5)),
        ("bl", scaled(&[5], 55, 0.1)),
        ("b0_gamma", ones_ish(4, 56)),
        ("b0_beta", scaled(&[4], 57, 0.5)),
        ("b1_gamma", ones_ish(4, 58)),
        ("b1_beta", scaled(&[4], 59, 0.5)),
        ("b2_gamma", ones_ish(6, 60)),
        ("b2_beta", scaled(&[6], 61, 0.5)),
    ];
    let xs: Vec<&str> = feeds[2..].iter().map(|(n, _)| *n).collect();
    // Central differences of a loss through batch norm and ReLU6 in f32: a
    // step small enough not to cross many kinks, a tolerance for f32 noise.
    let c = Check {
        h: 2e-3,
        atol: 1e-4,
        rtol: 2e-2,
    };
    check(g, &feeds, "total_loss", &xs, c);
}
