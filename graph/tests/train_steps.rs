//! Three RMSProp training steps of a small conv net (conv 3x3 s2, depthwise,
//! pointwise, BN in training mode, ReLU6, global average pool, 1x1 logits)
//! built with `train::builder` from the weights TensorFlow started from,
//! compared with what TensorFlow produced after each step: every parameter,
//! RMSProp slot and BN moving statistic. Fixture and net:
//! graph/tests/fixtures/train3 (tools/tf/gen_train_fixture.py).
//!
//! Comparison: for each tensor after each step, max_i |ours_i - tf_i| <=
//! 1e-5 * max(max_i |tf_i|, 1e-3), i.e. an error relative to the tensor's
//! largest magnitude (momentum slots of near-zero gradients would make an
//! element-wise relative error meaningless).

use std::path::PathBuf;

use psflow_graph::dtype::dtype_to_proto;
use psflow_graph::format::npy;
use psflow_graph::train::builder::{build_training_graph, TrainConfig, TrainableVar};
use psflow_graph::{AttrValue, DType, Graph, Node, Session, Tensor, TensorName};
use psflow_proto::tensorflow::TensorShapeProto;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train3")
}

fn load(step: usize, name: &str) -> Tensor {
    let file = format!("{}.npy", name.replace('/', "__"));
    npy::read(dir().join(format!("step{step}")).join(file)).unwrap()
}

fn ty(d: DType) -> AttrValue {
    AttrValue::from_type(dtype_to_proto(d))
}

fn ints(v: &[i64]) -> AttrValue {
    AttrValue::from_ints(v.to_vec())
}

struct Net {
    g: Graph,
}

impl Net {
    fn add(&mut self, n: Node) -> TensorName {
        let name = n.name.clone();
        self.g.add(n).unwrap();
        TensorName::new(name, 0)
    }

    /// A variable as the conventions write it; returns its read.
    fn var(&mut self, name: &str, shape: &[usize]) -> TensorName {
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        self.add(
            Node::new(name, "VarHandleOp")
                .attr("dtype", ty(DType::F32))
                .attr(
                    "shape",
                    AttrValue::from_shape(TensorShapeProto::from_dims(&dims)),
                )
                .attr("shared_name", AttrValue::from_s(name))
                .attr("container", AttrValue::from_s("")),
        );
        self.add(
            Node::new(format!("{name}/Read/ReadVariableOp"), "ReadVariableOp")
                .input(name)
                .attr("dtype", ty(DType::F32)),
        )
    }

    fn f32op(&mut self, name: &str, op: &str, inputs: &[&TensorName]) -> Node {
        let mut n = Node::new(name, op).attr("T", ty(DType::F32));
        for i in inputs {
            n = n.input((*i).clone());
        }
        n
    }

    fn conv(&mut self, name: &str, op: &str, x: &TensorName, w: &TensorName, s: i64) -> TensorName {
        let n = self
            .f32op(name, op, &[x, w])
            .attr("strides", ints(&[1, s, s, 1]))
            .attr("padding", AttrValue::from_s("SAME"))
            .attr("data_format", AttrValue::from_s("NHWC"));
        self.add(n)
    }

    fn bn_relu6(&mut self, scope: &str, x: &TensorName, c: usize) -> TensorName {
        let p = format!("{scope}/BatchNorm");
        let gamma = self.var(&format!("{p}/gamma"), &[c]);
        let beta = self.var(&format!("{p}/beta"), &[c]);
        let mean = self.var(&format!("{p}/moving_mean"), &[c]);
        let var = self.var(&format!("{p}/moving_variance"), &[c]);
        let n = self
            .f32op(
                &format!("{p}/FusedBatchNormV3"),
                "FusedBatchNormV3",
                &[x, &gamma, &beta, &mean, &var],
            )
            .attr("U", ty(DType::F32))
            .attr("epsilon", AttrValue::from_f(0.001))
            .attr("exponential_avg_factor", AttrValue::from_f(0.01))
            .attr("data_format", AttrValue::from_s("NHWC"))
            .attr("is_training", AttrValue::from_b(true));
        let y = self.add(n);
        for (k, v) in [(1, "moving_mean"), (2, "moving_variance")] {
            let assign = Node::new(
                format!("{p}/AssignMovingAvg{}", if k == 1 { "" } else { "_1" }),
                "AssignVariableOp",
            )
            .input(format!("{p}/{v}").as_str())
            .input(TensorName::new(y.node.clone(), k))
            .attr("dtype", ty(DType::F32));
            self.add(assign);
        }
        let r = self.f32op(&format!("{scope}/Relu6"), "Relu6", &[&y]);
        self.add(r)
    }
}

/// The variables in `variables.txt` order: (name, role, shape).
fn variables() -> Vec<(String, String, Vec<usize>)> {
    std::fs::read_to_string(dir().join("variables.txt"))
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let shape = f[2].split(',').map(|d| d.parse().unwrap()).collect();
            (f[0].to_string(), f[1].to_string(), shape)
        })
        .collect()
}

fn build() -> (Graph, psflow_graph::train::builder::TrainGraph) {
    let mut net = Net { g: Graph::new() };
    let f32_ph = |name: &str, dims: &[i64], d: DType| {
        Node::new(name, "Placeholder").attr("dtype", ty(d)).attr(
            "shape",
            AttrValue::from_shape(TensorShapeProto::from_dims(dims)),
        )
    };
    let x = net.add(f32_ph("input", &[-1, 8, 8, 3], DType::F32));
    let labels = net.add(f32_ph("labels", &[-1], DType::I32));
    let w0 = net.var("net/conv0/weights", &[3, 3, 3, 8]);
    let h = net.conv("net/conv0/Conv2D", "Conv2D", &x, &w0, 2);
    let h = net.bn_relu6("net/conv0", &h, 8);
    let dw = net.var("net/dw/depthwise_weights", &[3, 3, 8, 1]);
    let h = net.conv("net/dw/depthwise", "DepthwiseConv2dNative", &h, &dw, 1);
    let h = net.bn_relu6("net/dw", &h, 8);
    let pw = net.var("net/pw/weights", &[1, 1, 8, 16]);
    let h = net.conv("net/pw/Conv2D", "Conv2D", &h, &pw, 1);
    let h = net.bn_relu6("net/pw", &h, 16);
    let axes = net.add(
        Node::new("net/pool/reduction_indices", "Const")
            .attr("dtype", ty(DType::I32))
            .attr(
                "value",
                AttrValue::from_tensor(psflow_graph::tensor_proto::tensor_to_proto(
                    &Tensor::new(vec![2], vec![1i32, 2]).unwrap(),
                )),
            ),
    );
    let n = net
        .f32op("net/pool", "Mean", &[&h, &axes])
        .attr("keep_dims", AttrValue::from_b(true))
        .attr("Tidx", ty(DType::I32));
    let h = net.add(n);
    let wl = net.var("net/logits/weights", &[1, 1, 16, 5]);
    let bl = net.var("net/logits/biases", &[5]);
    let h = net.conv("net/logits/Conv2D", "Conv2D", &h, &wl, 1);
    let n = net.f32op("net/logits/BiasAdd", "BiasAdd", &[&h, &bl]);
    let h = net.add(n);
    let n = net
        .f32op("net/logits/SpatialSqueeze", "Squeeze", &[&h])
        .attr("squeeze_dims", ints(&[1, 2]));
    let logits = net.add(n);

    let vars: Vec<TrainableVar> = variables()
        .into_iter()
        .filter(|(_, role, _)| role != "statistic")
        .map(|(name, role, shape)| TrainableVar {
            name,
            shape,
            regularize: role == "regularized",
        })
        .collect();
    let mut g = net.g;
    let tg = build_training_graph(
        &mut g,
        &logits,
        &labels,
        &vars,
        &[],
        &TrainConfig::default(),
    )
    .unwrap();
    (g, tg)
}

#[test]
fn three_rmsprop_steps_match_tensorflow() {
    let (g, tg) = build();
    // The training graph is a GraphDef that survives bytes.
    let g = Graph::from_graph_def_bytes(&g.to_graph_def_bytes()).unwrap();
    let sess = Session::new(g).unwrap();
    sess.run(&[], &[], &["init".to_string()]).unwrap();
    let store = sess.resources();
    let vars = variables();
    for (name, _, _) in &vars {
        store.set(name, load(0, name));
    }
    // The slots start where TF's do (ms at ones, momentum at zeros).
    for (name, role, _) in &vars {
        if role != "statistic" {
            for s in ["RMSProp", "RMSProp_1"] {
                let slot = format!("{name}/{s}");
                assert_eq!(store.get(&slot).unwrap(), load(0, &slot), "{slot} at start");
            }
        }
    }
    let feeds = vec![
        (
            TensorName::new("input", 0),
            npy::read(dir().join("input.npy")).unwrap(),
        ),
        (
            TensorName::new("labels", 0),
            npy::read(dir().join("labels.npy")).unwrap(),
        ),
        (
            tg.learning_rate.clone(),
            npy::read(dir().join("learning_rate.npy")).unwrap(),
        ),
    ];
    let tf_losses = npy::read(dir().join("losses.npy")).unwrap().to_f64_vec();
    let fetches = [
        tg.total_loss.clone(),
        tg.cross_entropy_loss.clone(),
        tg.regularization_loss.clone(),
    ];
    let mut worst = 0f64;
    for step in 1..=3 {
        let losses = sess
            .run(&feeds, &fetches, std::slice::from_ref(&tg.train_op))
            .unwrap();
        for (k, l) in losses.iter().enumerate() {
            let (ours, tf) = (l.to_f64_vec()[0], tf_losses[(step - 1) * 3 + k]);
            assert!(
                (ours - tf).abs() <= 1e-5 * tf.abs().max(1e-3),
                "step {step} loss {k}: {ours} vs TF {tf}"
            );
        }
        let mut names: Vec<String> = vec![];
        for (name, role, _) in &vars {
            names.push(name.clone());
            if role != "statistic" {
                names.push(format!("{name}/RMSProp"));
                names.push(format!("{name}/RMSProp_1"));
            }
        }
        for name in &names {
            let ours = store.get(name).unwrap();
            let tf = load(step, name);
            assert_eq!(ours.shape(), tf.shape(), "{name}");
            let (a, b) = (ours.to_f64_vec(), tf.to_f64_vec());
            let scale = b.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-3);
            let err = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max)
                / scale;
            worst = worst.max(err);
            assert!(
                err <= 1e-5,
                "step {step}: {name}: error {err:e} relative to its largest value {scale}"
            );
        }
        let gs = store.get(&tg.global_step).unwrap();
        assert_eq!(
            gs,
            load(step, "global_step"),
            "global_step after step {step}"
        );
    }
    eprintln!("worst relative error over 3 steps: {worst:e}");
}
