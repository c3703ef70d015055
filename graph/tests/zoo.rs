//! The model zoo: MobileNet v1 and ResNet-18/50 graphs with TF-slim names,
//! shapes through the whole network, parameter and multiply-add counts
//! against published figures and hand counts, GraphDef round trips.

use std::collections::BTreeSet;
use std::path::Path;

use psflow_graph::summary::{summarize, Summary};
use psflow_graph::zoo::{
    mobilenet_v1, resnet_v1, Architecture, ConvKind, MobileNetConfig, Model, ModelSpec,
    ResNetConfig, ResNetDepth,
};
use psflow_graph::{Graph, TensorName};

fn mobilenet(alpha: f32, resolution: usize, classes: usize, training: bool) -> Model {
    mobilenet_v1(&MobileNetConfig {
        alpha,
        resolution,
        classes,
        training,
        ..MobileNetConfig::default()
    })
    .unwrap()
}

fn summary(m: &Model) -> Summary {
    summarize(&m.graph).unwrap()
}

/// (stride, depth) of slim's 13 separable blocks.
const BLOCKS: [(usize, usize); 13] = [
    (1, 64),
    (2, 128),
    (1, 128),
    (2, 256),
    (1, 256),
    (2, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (2, 1024),
    (1, 1024),
];

fn depth(d: usize, alpha: f64) -> usize {
    ((d as f64 * alpha).floor() as usize).max(8)
}

/// One expected MobileNet layer: scope, op, output [h, w, c], kernel, MACs.
struct Expected {
    name: String,
    op: &'static str,
    out: [usize; 3],
    kernel: [usize; 4],
    macs: u64,
}

/// MobileNet v1 layer by layer, counted by hand from the architecture
/// (SAME padding: out = ceil(in / stride)).
fn expected_mobilenet(alpha: f64, res: usize, classes: usize, standard: bool) -> Vec<Expected> {
    let mut v = vec![];
    let mut h = res.div_ceil(2);
    let mut c = depth(32, alpha);
    let conv = |name: String, h: usize, k: usize, cin: usize, cout: usize| Expected {
        name,
        op: "Conv2D",
        out: [h, h, cout],
        kernel: [k, k, cin, cout],
        macs: (h * h * k * k * cin * cout) as u64,
    };
    v.push(conv("MobilenetV1/Conv2d_0".into(), h, 3, 3, c));
    for (i, &(s, d)) in BLOCKS.iter().enumerate() {
        let i = i + 1;
        h = h.div_ceil(s);
        let out = depth(d, alpha);
        if standard {
            v.push(conv(format!("MobilenetV1/Conv2d_{i}"), h, 3, c, out));
        } else {
            v.push(Expected {
                name: format!("MobilenetV1/Conv2d_{i}_depthwise"),
                op: "DepthwiseConv2dNative",
                out: [h, h, c],
                kernel: [3, 3, c, 1],
                macs: (h * h * 9 * c) as u64,
            });
            v.push(conv(
                format!("MobilenetV1/Conv2d_{i}_pointwise"),
                h,
                1,
                c,
                out,
            ));
        }
        c = out;
    }
    v.push(conv(
        "MobilenetV1/Logits/Conv2d_1c_1x1".into(),
        1,
        1,
        c,
        classes,
    ));
    v
}

fn check_layers(m: &Model, want: &[Expected]) {
    let s = summary(m);
    let names: Vec<&str> = s.layers.iter().map(|l| l.name.as_str()).collect();
    let want_names: Vec<&str> = want.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, want_names, "{}", m.name);
    for (l, w) in s.layers.iter().zip(want) {
        assert_eq!(l.op, w.op, "{}", w.name);
        let out: Vec<i64> = w.out.iter().map(|&x| x as i64).collect();
        assert_eq!(l.output[1..], out[..], "{} output", w.name);
        assert_eq!(l.output[0], 1, "{} batch", w.name);
        let k: Vec<i64> = w.kernel.iter().map(|&x| x as i64).collect();
        assert_eq!(l.kernel, k, "{} kernel", w.name);
        assert_eq!(l.macs, Some(w.macs), "{} macs", w.name);
    }
    assert_eq!(s.macs, want.iter().map(|w| w.macs).sum::<u64>());
    assert_eq!(s.unknown_mac_layers, 0);
}

#[test]
fn mobilenet_shapes_through_the_network() {
    for (alpha, res) in [
        (1.0, 32),
        (0.5, 24),
        (0.25, 16),
        (0.75, 224),
        (0.3, 8),
        (1.0, 33),
    ] {
        for training in [false, true] {
            let m = mobilenet(alpha, res, 10, training);
            check_layers(&m, &expected_mobilenet(alpha as f64, res, 10, false));
            // The logits are [batch, classes] whatever the resolution.
            let s = psflow_graph::summary::summarize(&m.graph).unwrap();
            assert_eq!(s.layers.last().unwrap().output, vec![1, 1, 1, 10]);
        }
    }
}

#[test]
fn mobilenet_standard_conv_variant() {
    for (alpha, res) in [(1.0, 32), (0.5, 24)] {
        let m = mobilenet_v1(&MobileNetConfig {
            alpha,
            resolution: res,
            classes: 10,
            conv: ConvKind::Standard,
            ..MobileNetConfig::default()
        })
        .unwrap();
        check_layers(&m, &expected_mobilenet(alpha as f64, res, 10, true));
        assert!(m.name.ends_with("_standard"));
    }
}

/// TF-slim's table (and the MobileNet paper, Table 6/7): 1.0 MobileNet-224
/// has 569 M multiply-adds and 4.2 M parameters; 0.50 MobileNet-160 has
/// 76 M and 1.32 M. The paper's parameter figures are the conv and logits
/// weights and biases without batch norm; psflow's trainable count adds
/// BN's gamma and beta (2 per channel).
#[test]
fn mobilenet_counts_match_published_figures() {
    let close = |got: u64, want: f64, tol: f64| {
        let rel = (got as f64 - want).abs() / want;
        assert!(rel < tol, "{got} vs published {want} ({rel:.4})");
    };
    for (alpha, res, macs, params, hand_macs, hand_params, bn) in [
        (
            1.0,
            224,
            569e6,
            4.2e6,
            568_740_352u64,
            4_210_088u64,
            10_944u64,
        ),
        (0.5, 160, 76e6, 1.32e6, 76_524_800, 1_320_648, 5_472),
    ] {
        let m = mobilenet(alpha, res, 1000, false);
        let s = summary(&m);
        assert_eq!(s.macs, hand_macs, "alpha {alpha} res {res}");
        close(s.macs, macs, 0.01);
        // Trainable: weights and biases + BN gamma and beta.
        assert_eq!(s.trainable_params, hand_params + 2 * bn);
        assert_eq!(m.params, s.trainable_params);
        close(hand_params, params, 0.01);
        // Model parameters add the moving mean and variance.
        assert_eq!(s.params, hand_params + 4 * bn);
        assert_eq!(s.params, m.all_params());
        assert_eq!(s.model_bytes, 4 * s.params);
        assert_eq!(s.unattributed_params, 0);
        let per_layer: u64 = s.layers.iter().map(|l| l.params).sum();
        assert_eq!(per_layer, s.params);
    }
}

/// At 32×32 with slim's strides (feature maps 16, 8, 4, 2, 1) α = 1 costs
/// 11,596,288 multiply-adds with 10 classes (the design document's
/// "about 11.6 M"): 11,586,048 in the convolutions — exactly 1/49 of the
/// 224×224 network's 567,716,352, every map being 7× smaller per side —
/// plus 1024·10 in the logits.
#[test]
fn cifar_mobilenet_count_by_hand() {
    let s = summary(&mobilenet(1.0, 32, 10, false));
    let convs_224 = 568_740_352u64 - 1024 * 1000;
    assert_eq!(convs_224 % 49, 0);
    assert_eq!(s.macs, convs_224 / 49 + 1024 * 10);
    assert_eq!(s.macs, 11_596_288);
    // The alpha / resolution grid of the thesis, by hand (logits included).
    for (alpha, res, macs) in [(0.5, 32, 3_045_632u64), (0.25, 32, 834_688)] {
        assert_eq!(summary(&mobilenet(alpha, res, 10, false)).macs, macs);
    }
}

fn var_names(m: &Model) -> BTreeSet<String> {
    m.variables.iter().map(|v| v.name.clone()).collect()
}

#[test]
fn mobilenet_uses_tf_slim_names() {
    let m = mobilenet(0.5, 32, 10, false);
    assert_eq!(m.input, TensorName::new("input", 0));
    assert_eq!(
        m.logits,
        TensorName::new("MobilenetV1/Logits/SpatialSqueeze", 0)
    );
    assert_eq!(
        m.predictions,
        TensorName::new("MobilenetV1/Predictions/Softmax", 0)
    );
    assert_eq!(m.init, "init");
    assert!(m.labels.is_none());
    let names = var_names(&m);
    for v in [
        "MobilenetV1/Conv2d_0/weights",
        "MobilenetV1/Conv2d_0/BatchNorm/gamma",
        "MobilenetV1/Conv2d_0/BatchNorm/beta",
        "MobilenetV1/Conv2d_0/BatchNorm/moving_mean",
        "MobilenetV1/Conv2d_0/BatchNorm/moving_variance",
        "MobilenetV1/Conv2d_1_depthwise/depthwise_weights",
        "MobilenetV1/Conv2d_1_depthwise/BatchNorm/gamma",
        "MobilenetV1/Conv2d_1_pointwise/weights",
        "MobilenetV1/Conv2d_13_pointwise/BatchNorm/moving_variance",
        "MobilenetV1/Logits/Conv2d_1c_1x1/weights",
        "MobilenetV1/Logits/Conv2d_1c_1x1/biases",
    ] {
        assert!(names.contains(v), "{v} missing");
    }
    // 27 conv layers with 5 variables each (weights + 4 BN), logits 2.
    assert_eq!(m.variables.len(), 27 * 5 + 2);
    let g = &m.graph;
    for (node, op) in [
        ("MobilenetV1/Conv2d_0/Conv2D", "Conv2D"),
        (
            "MobilenetV1/Conv2d_0/BatchNorm/FusedBatchNormV3",
            "FusedBatchNormV3",
        ),
        ("MobilenetV1/Conv2d_0/Relu6", "Relu6"),
        (
            "MobilenetV1/Conv2d_1_depthwise/depthwise",
            "DepthwiseConv2dNative",
        ),
        ("MobilenetV1/Conv2d_1_pointwise/Conv2D", "Conv2D"),
        ("MobilenetV1/Logits/global_pool", "Mean"),
        ("MobilenetV1/Logits/Conv2d_1c_1x1/BiasAdd", "BiasAdd"),
        ("MobilenetV1/Logits/SpatialSqueeze", "Squeeze"),
        ("MobilenetV1/Conv2d_0/weights", "VarHandleOp"),
        (
            "MobilenetV1/Conv2d_0/weights/Read/ReadVariableOp",
            "ReadVariableOp",
        ),
        ("MobilenetV1/Conv2d_0/weights/Assign", "AssignVariableOp"),
        (
            "MobilenetV1/Conv2d_0/weights/Initializer/truncated_normal/TruncatedNormal",
            "TruncatedNormal",
        ),
        (
            "MobilenetV1/Logits/Conv2d_1c_1x1/weights/Initializer/random_uniform/RandomUniform",
            "RandomUniform",
        ),
        (
            "MobilenetV1/Conv2d_0/BatchNorm/gamma/Initializer/ones",
            "Const",
        ),
        ("init", "NoOp"),
    ] {
        let n = g.node(node).unwrap_or_else(|| panic!("{node} missing"));
        assert_eq!(n.op, op, "{node}");
    }
    // The logits have no batch norm.
    assert!(g
        .nodes()
        .iter()
        .all(|n| !n.name.starts_with("MobilenetV1/Logits/") || !n.name.contains("BatchNorm")));
    // VarHandleOp attrs as TF writes them.
    let v = g.node("MobilenetV1/Conv2d_1_pointwise/weights").unwrap();
    assert_eq!(
        v.attrs["shared_name"].as_s(),
        Some("MobilenetV1/Conv2d_1_pointwise/weights")
    );
    assert_eq!(v.attrs["container"].as_s(), Some(""));
    assert_eq!(
        v.attrs["shape"].as_shape().unwrap().dims(),
        Some(vec![1, 1, 16, 32])
    );
    // init depends on every Assign and nothing else.
    let init: BTreeSet<&str> = g.node("init").unwrap().control_inputs().collect();
    let assigns: BTreeSet<&str> = g
        .nodes()
        .iter()
        .filter(|n| n.name.ends_with("/Assign"))
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(init, assigns);
    assert_eq!(init.len(), m.variables.len());
    // Inference: no dropout, BN in inference mode, no moving-average updates.
    assert!(g.nodes().iter().all(|n| !n.name.contains("Dropout")));
    for n in g.nodes().iter().filter(|n| n.op == "FusedBatchNormV3") {
        assert_eq!(n.attrs["is_training"].as_b(), Some(false), "{}", n.name);
    }
    assert!(m.moving_average_updates.is_empty());
}

#[test]
fn trainable_variables_and_weight_decay() {
    let m = mobilenet(0.25, 16, 10, true);
    let by_name = |name: &str| m.trainable.iter().find(|v| v.name == name);
    // Moving statistics are not trained.
    assert!(by_name("MobilenetV1/Conv2d_0/BatchNorm/moving_mean").is_none());
    assert_eq!(m.trainable.len(), 27 * 3 + 2);
    for v in &m.trainable {
        let want = v.name.ends_with("/weights") && !v.name.contains("depthwise");
        assert_eq!(v.regularize, want, "{}", v.name);
        assert_eq!(v.read.node, format!("{}/Read/ReadVariableOp", v.name));
    }
    let w = by_name("MobilenetV1/Conv2d_1_depthwise/depthwise_weights").unwrap();
    assert_eq!(w.shape, vec![3, 3, 8, 1]);
    assert!(!w.regularize);
    let l = by_name("MobilenetV1/Logits/Conv2d_1c_1x1/weights").unwrap();
    assert_eq!(l.shape, vec![1, 1, 256, 10]);
    assert!(l.regularize);
}

#[test]
fn training_variant_updates_moving_statistics() {
    let m = mobilenet(0.5, 24, 10, true);
    let g = &m.graph;
    assert_eq!(m.labels, Some(TensorName::new("labels", 0)));
    let labels = g.node("labels").unwrap();
    assert_eq!(
        labels.attrs["shape"].as_shape().unwrap().dims(),
        Some(vec![-1])
    );
    let bns: Vec<_> = g
        .nodes()
        .iter()
        .filter(|n| n.op == "FusedBatchNormV3")
        .collect();
    assert_eq!(bns.len(), 27);
    for n in &bns {
        assert_eq!(n.attrs["is_training"].as_b(), Some(true));
        assert_eq!(n.attrs["exponential_avg_factor"].as_f(), Some(0.01));
        assert_eq!(n.attrs["epsilon"].as_f(), Some(0.001));
    }
    assert_eq!(m.moving_average_updates.len(), 54);
    let a = g
        .node("MobilenetV1/Conv2d_3_pointwise/BatchNorm/AssignMovingAvg")
        .unwrap();
    assert_eq!(a.op, "AssignVariableOp");
    let inputs: Vec<String> = a.data_inputs().map(|t| t.to_input_string()).collect();
    assert_eq!(
        inputs,
        [
            "MobilenetV1/Conv2d_3_pointwise/BatchNorm/moving_mean",
            "MobilenetV1/Conv2d_3_pointwise/BatchNorm/FusedBatchNormV3:1"
        ]
    );
    let a1 = g
        .node("MobilenetV1/Conv2d_3_pointwise/BatchNorm/AssignMovingAvg_1")
        .unwrap();
    assert_eq!(
        a1.inputs[1].to_string(),
        "MobilenetV1/Conv2d_3_pointwise/BatchNorm/FusedBatchNormV3:2"
    );
    for u in &m.moving_average_updates {
        assert_eq!(g.node(u).unwrap().op, "AssignVariableOp");
    }
    // Dropout before the logits, keep_prob 0.999: x / keep * floor(keep + U).
    let d = "MobilenetV1/Logits/Dropout_1b/dropout";
    assert_eq!(
        g.node(&format!("{d}/random_uniform/RandomUniform"))
            .unwrap()
            .op,
        "RandomUniform"
    );
    let kp = g.node(&format!("{d}/keep_prob")).unwrap();
    let kp =
        psflow_graph::tensor_proto::tensor_from_proto("kp", kp.attrs["value"].as_tensor().unwrap())
            .unwrap();
    assert_eq!(kp.f32s("t").unwrap(), &[0.999]);
    let conv = g.node("MobilenetV1/Logits/Conv2d_1c_1x1/Conv2D").unwrap();
    assert_eq!(conv.inputs[0].to_string(), format!("{d}/mul"));
    // Same counts as inference (dropout has no multiply-adds).
    let s = summary(&m);
    assert_eq!(s.macs, summary(&mobilenet(0.5, 24, 10, false)).macs);
}

#[test]
fn random_initialisers_are_seeded() {
    let m = mobilenet(0.25, 16, 10, false);
    let mut seeds = BTreeSet::new();
    for n in m
        .graph
        .nodes()
        .iter()
        .filter(|n| n.op == "TruncatedNormal" || n.op == "RandomUniform")
    {
        assert_eq!(n.attrs["seed"].as_i(), Some(0));
        assert!(seeds.insert(n.attrs["seed2"].as_i().unwrap()), "{}", n.name);
    }
    // 27 conv weights + the logits.
    assert_eq!(seeds.len(), 28);
    let stddev = m
        .graph
        .node("MobilenetV1/Conv2d_0/weights/Initializer/truncated_normal/stddev")
        .unwrap();
    let t = psflow_graph::tensor_proto::tensor_from_proto(
        "sd",
        stddev.attrs["value"].as_tensor().unwrap(),
    )
    .unwrap();
    assert_eq!(t.f32s("t").unwrap(), &[0.09]);
    // Same config, same graph; another seed changes only the seeds.
    let again = mobilenet(0.25, 16, 10, false);
    assert_eq!(again.graph, m.graph);
    let other = mobilenet_v1(&MobileNetConfig {
        alpha: 0.25,
        resolution: 16,
        classes: 10,
        seed: 7,
        ..MobileNetConfig::default()
    })
    .unwrap();
    assert_ne!(other.graph, m.graph);
    assert_eq!(other.graph.len(), m.graph.len());
}

#[test]
fn graph_def_round_trips() {
    for m in [
        mobilenet(0.5, 32, 10, false),
        mobilenet(0.25, 24, 100, true),
        resnet(ResNetDepth::R18, 32, 10, true),
    ] {
        let bytes = m.graph.to_graph_def_bytes();
        let back = Graph::from_graph_def_bytes(&bytes).unwrap();
        assert_eq!(back, m.graph, "{}", m.name);
        assert_eq!(summary(&m), summarize(&back).unwrap());
    }
}

#[test]
fn bad_configs_are_errors() {
    for alpha in [0.0, -0.5, 1.01, f32::NAN] {
        let e = mobilenet_v1(&MobileNetConfig {
            alpha,
            ..MobileNetConfig::default()
        })
        .unwrap_err();
        assert_eq!(e.field, "alpha", "{e}");
        assert!(e.to_string().contains("(0, 1]"), "{e}");
    }
    let e = mobilenet_v1(&MobileNetConfig {
        resolution: 7,
        ..MobileNetConfig::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("at least 8"), "{e}");
    let e = mobilenet_v1(&MobileNetConfig {
        classes: 0,
        ..MobileNetConfig::default()
    })
    .unwrap_err();
    assert_eq!(e.field, "classes");
    let e = ModelSpec {
        arch: Architecture::ResNet18,
        alpha: 0.5,
        resolution: 32,
        classes: 10,
        training: false,
        seed: 0,
    }
    .build()
    .unwrap_err();
    assert_eq!(e.field, "alpha");
    assert!("resnet34".parse::<Architecture>().is_err());
    for a in Architecture::ALL {
        assert_eq!(a.name().parse::<Architecture>(), Ok(a));
    }
}

fn resnet(depth: ResNetDepth, resolution: usize, classes: usize, training: bool) -> Model {
    resnet_v1(&ResNetConfig {
        depth,
        resolution,
        classes,
        training,
        seed: 0,
    })
    .unwrap()
}

/// ResNet by hand: (params without BN, BN channels, MACs) at 32×32.
fn resnet_by_hand(depth: ResNetDepth, classes: usize) -> (u64, u64, u64) {
    let (mut params, mut bn, mut macs) = (0u64, 0u64, 0u64);
    let mut conv = |h: usize, k: usize, cin: usize, cout: usize| {
        params += (k * k * cin * cout) as u64;
        bn += cout as u64;
        macs += (h * h * k * k * cin * cout) as u64;
    };
    let mut h = 32;
    conv(h, 3, 3, 64);
    let mut c = 64;
    let units = depth.units();
    for (blk, base) in [64usize, 128, 256, 512].into_iter().enumerate() {
        for u in 0..units[blk] {
            let s = if blk > 0 && u == 0 { 2 } else { 1 };
            let hin = h;
            h = h.div_ceil(s);
            let out = match depth {
                ResNetDepth::R18 => {
                    conv(h, 3, c, base);
                    conv(h, 3, base, base);
                    base
                }
                ResNetDepth::R50 => {
                    conv(hin, 1, c, base);
                    conv(h, 3, base, base);
                    conv(h, 1, base, 4 * base);
                    4 * base
                }
            };
            if s != 1 || c != out {
                conv(h, 1, c, out);
            }
            c = out;
        }
    }
    params += (c * classes + classes) as u64;
    macs += (c * classes) as u64;
    (params, bn, macs)
}

/// The CIFAR ResNets (3×3 stride-1 stem, no max pool, stride 2 on the
/// first unit of blocks 2–4) have 11,173,962 (ResNet-18) and 23,520,842
/// (ResNet-50) trainable parameters with 10 classes — the figures of the
/// widely used PyTorch CIFAR ResNets (kuangliu/pytorch-cifar) with the
/// same layout — and 0.56 G / 1.30 G multiply-adds.
#[test]
fn resnet_counts() {
    for (depth, published, gmacs) in [
        (ResNetDepth::R18, 11_173_962u64, 0.556),
        (ResNetDepth::R50, 23_520_842, 1.30),
    ] {
        let m = resnet(depth, 32, 10, false);
        let s = summary(&m);
        let (params, bn, macs) = resnet_by_hand(depth, 10);
        assert_eq!(s.trainable_params, params + 2 * bn, "{}", m.name);
        assert_eq!(s.trainable_params, published, "{}", m.name);
        assert_eq!(s.params, params + 4 * bn);
        assert_eq!(s.macs, macs, "{}", m.name);
        let rel = (macs as f64 / 1e9 - gmacs).abs() / gmacs;
        assert!(rel < 0.01, "{} {macs}", m.name);
        assert_eq!(s.unattributed_params, 0);
        assert_eq!(s.layers.last().unwrap().output, vec![1, 1, 1, 10]);
    }
}

#[test]
fn resnet_names_and_shapes() {
    let m = resnet(ResNetDepth::R18, 32, 10, true);
    let s = summary(&m);
    let names: Vec<&str> = s.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names[0], "resnet_v1_18/conv1");
    assert_eq!(names[1], "resnet_v1_18/block1/unit_1/basic_v1/conv1");
    assert!(names.contains(&"resnet_v1_18/block2/unit_1/basic_v1/shortcut"));
    assert!(!names.contains(&"resnet_v1_18/block1/unit_1/basic_v1/shortcut"));
    assert_eq!(*names.last().unwrap(), "resnet_v1_18/logits");
    // 1 + 8 × 2 convs + 3 shortcuts + logits.
    assert_eq!(names.len(), 21);
    let out = |n: &str| {
        s.layers
            .iter()
            .find(|l| l.name == n)
            .unwrap()
            .output
            .clone()
    };
    assert_eq!(out("resnet_v1_18/conv1"), vec![1, 32, 32, 64]);
    assert_eq!(
        out("resnet_v1_18/block4/unit_2/basic_v1/conv2"),
        vec![1, 4, 4, 512]
    );
    assert_eq!(m.logits, TensorName::new("resnet_v1_18/SpatialSqueeze", 0));
    assert_eq!(m.moving_average_updates.len(), 2 * 20);
    let m50 = resnet(ResNetDepth::R50, 24, 100, false);
    let s50 = summary(&m50);
    let out50 = |n: &str| {
        s50.layers
            .iter()
            .find(|l| l.name == n)
            .unwrap()
            .output
            .clone()
    };
    assert_eq!(
        out50("resnet_v1_50/block1/unit_1/bottleneck_v1/shortcut"),
        vec![1, 24, 24, 256]
    );
    assert_eq!(
        out50("resnet_v1_50/block4/unit_3/bottleneck_v1/conv3"),
        vec![1, 3, 3, 2048]
    );
    // 1 + 16 × 3 + 4 shortcuts + logits.
    assert_eq!(s50.layers.len(), 54);
}

/// TensorFlow's own MobileNet (Keras, α = 0.25, 32×32, 10 classes, frozen:
/// weights are Consts) has exactly the parameters and multiply-adds of
/// psflow's MobileNet with the same settings, layer by layer.
#[test]
fn frozen_tensorflow_mobilenet_counts_like_ours() {
    let ours = summary(&mobilenet(0.25, 32, 10, false));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for file in ["mobilenet_fusedbn_a025.pb", "mobilenet_keras3_a025.pb"] {
        let g = Graph::load(dir.join(file)).unwrap();
        let s = summarize(&g).unwrap();
        assert_eq!(s.macs, ours.macs, "{file}");
        assert_eq!(s.params, ours.params, "{file}");
        assert_eq!(s.layers.len(), ours.layers.len(), "{file}");
        assert_eq!(s.unattributed_params, 0, "{file}");
        for (a, b) in s.layers.iter().zip(&ours.layers) {
            assert_eq!(a.output, b.output, "{file} {}", a.name);
            assert_eq!(a.kernel, b.kernel, "{file} {}", a.name);
            assert_eq!(a.params, b.params, "{file} {}", a.name);
            assert_eq!(a.macs, b.macs, "{file} {}", a.name);
        }
        // FusedBatchNormV3's mean and variance inputs are statistics; the
        // Keras 3 graph lowers batch norm to element-wise ops, so all its
        // constants look trainable.
        let trainable = if file.contains("fusedbn") {
            ours.trainable_params
        } else {
            ours.params
        };
        assert_eq!(s.trainable_params, trainable, "{file}");
        assert_eq!(s.inputs.len(), 1);
        assert_eq!(s.inputs[0].name, "input");
    }
}

fn random_images(n: usize, res: usize, seed: u64) -> psflow_graph::Tensor {
    let mut s = seed;
    let v: Vec<f32> = (0..n * res * res * 3)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    psflow_graph::Tensor::new(vec![n, res, res, 3], v).unwrap()
}

fn mean_std(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / n;
    (m, var.sqrt())
}

/// The inference graph runs in a Session once `init` has run: variables
/// hold what their initialisers say, predictions are probabilities, and
/// the same seed gives the same weights.
#[test]
fn inference_graph_runs_after_init() {
    use psflow_graph::Session;
    let m = mobilenet(0.25, 16, 10, false);
    let session = Session::new(m.graph.clone()).unwrap();
    session
        .run(&[], &[], std::slice::from_ref(&m.init))
        .unwrap();
    let res = session.resources();
    // Besides the variables, each random op keeps its run counter there.
    let vars = res
        .names()
        .into_iter()
        .filter(|n| !n.ends_with("/rng_counter"))
        .count();
    assert_eq!(vars, m.variables.len());
    for v in &m.variables {
        let t = res
            .get(&v.name)
            .unwrap_or_else(|| panic!("{} uninitialised", v.name));
        assert_eq!(t.shape(), &v.shape[..], "{}", v.name);
        let x = t.f32s("test").unwrap();
        let last = v.name.rsplit('/').next().unwrap();
        match last {
            "gamma" | "moving_variance" => assert!(x.iter().all(|&x| x == 1.0), "{}", v.name),
            "beta" | "moving_mean" | "biases" => {
                assert!(x.iter().all(|&x| x == 0.0), "{}", v.name)
            }
            _ if v.name.contains("Logits") => {
                // Glorot uniform: limit sqrt(6 / (256 + 10)).
                let limit = (6.0f32 / 266.0).sqrt();
                assert!(x.iter().all(|&x| x.abs() <= limit), "{}", v.name);
                let (_, sd) = mean_std(x);
                let want = limit as f64 / 3f64.sqrt();
                assert!((sd - want).abs() < 0.1 * want, "{} sd {sd}", v.name);
            }
            _ => {
                // Truncated normal sigma 0.09: within 2 sigma, sd 0.0792.
                assert!(x.iter().all(|&x| x.abs() <= 0.18), "{}", v.name);
                if x.len() >= 4096 {
                    let (mean, sd) = mean_std(x);
                    assert!(mean.abs() < 0.01, "{} mean {mean}", v.name);
                    assert!((sd - 0.0792).abs() < 0.004, "{} sd {sd}", v.name);
                }
            }
        }
    }
    let images = random_images(3, 16, 5);
    let out = session
        .run(
            &[(m.input.clone(), images.clone())],
            &[m.logits.clone(), m.predictions.clone()],
            &[],
        )
        .unwrap();
    assert_eq!(out[0].shape(), &[3, 10]);
    let p = out[1].f32s("test").unwrap();
    for row in p.chunks(10) {
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "{row:?}");
    }
    let logits = out[0].f32s("test").unwrap();
    assert!(logits.iter().all(|x| x.is_finite()));
    assert!(logits.iter().any(|&x| x != logits[0]), "{logits:?}");

    // Another session of the same graph initialises the same weights.
    let again = Session::new(m.graph.clone()).unwrap();
    again.run(&[], &[], std::slice::from_ref(&m.init)).unwrap();
    let w = "MobilenetV1/Conv2d_3_pointwise/weights";
    assert_eq!(again.resources().get(w), res.get(w));
    let out2 = again
        .run(
            &[(m.input.clone(), images)],
            std::slice::from_ref(&m.logits),
            &[],
        )
        .unwrap();
    assert_eq!(out2[0], out[0]);
}

/// The training forward graph runs: batch statistics normalise, the
/// moving-average assigns move the moving statistics by 1 - decay toward
/// the batch's, and dropout keeps or zeroes each value (scaled by 1/keep).
#[test]
fn training_graph_runs_and_updates_moving_statistics() {
    use psflow_graph::{Session, Tensor};
    let m = mobilenet_v1(&MobileNetConfig {
        alpha: 0.25,
        resolution: 16,
        classes: 10,
        training: true,
        dropout_keep_prob: 0.5,
        ..MobileNetConfig::default()
    })
    .unwrap();
    let session = Session::new(m.graph.clone()).unwrap();
    session
        .run(&[], &[], std::slice::from_ref(&m.init))
        .unwrap();
    let images = random_images(4, 16, 9);
    let labels = Tensor::new(vec![4], vec![1i32, 2, 3, 4]).unwrap();
    let conv0 = TensorName::new("MobilenetV1/Conv2d_0/Conv2D", 0);
    let pool = TensorName::new("MobilenetV1/Logits/global_pool", 0);
    let dropped = TensorName::new("MobilenetV1/Logits/Dropout_1b/dropout/mul", 0);
    let out = session
        .run(
            &[
                (m.input.clone(), images),
                (m.labels.clone().unwrap(), labels),
            ],
            &[conv0, pool, dropped, m.logits.clone()],
            &m.moving_average_updates,
        )
        .unwrap();
    assert_eq!(out[3].shape(), &[4, 10]);
    // Conv2d_0's moving mean: 0.99 * 0 + 0.01 * batch mean per channel.
    let x = out[0].f32s("test").unwrap();
    let c = 8;
    let n = (x.len() / c) as f64;
    let mm = session
        .resources()
        .get("MobilenetV1/Conv2d_0/BatchNorm/moving_mean")
        .unwrap();
    let mv = session
        .resources()
        .get("MobilenetV1/Conv2d_0/BatchNorm/moving_variance")
        .unwrap();
    for ch in 0..c {
        let vals: Vec<f64> = x.iter().skip(ch).step_by(c).map(|&v| v as f64).collect();
        let mean = vals.iter().sum::<f64>() / n;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        let got_m = mm.f32s("t").unwrap()[ch] as f64;
        let got_v = mv.f32s("t").unwrap()[ch] as f64;
        assert!(
            (got_m - 0.01 * mean).abs() < 1e-6,
            "ch {ch}: {got_m} vs {mean}"
        );
        // Bessel-corrected batch variance, as TF's FusedBatchNormV3.
        assert!(
            (got_v - (0.99 + 0.01 * var)).abs() < 1e-5,
            "ch {ch}: {got_v} vs {var}"
        );
    }
    // Dropout with keep 0.5: each value is 0 or doubled, some of each.
    let pooled = out[1].f32s("test").unwrap();
    let d = out[2].f32s("test").unwrap();
    let (mut kept, mut zeroed) = (0, 0);
    for (&p, &q) in pooled.iter().zip(d) {
        if q == 0.0 {
            zeroed += 1;
        } else {
            assert!((q - 2.0 * p).abs() <= 1e-6 * p.abs().max(1.0), "{q} vs {p}");
            kept += 1;
        }
    }
    assert!(kept > 0 && zeroed > 0, "kept {kept}, zeroed {zeroed}");
}

/// ResNets and the standard-conv MobileNet run too (residual adds,
/// shortcuts, stride-2 units at a tiny resolution).
#[test]
fn other_models_run() {
    use psflow_graph::Session;
    let models = [
        resnet(ResNetDepth::R18, 8, 5, false),
        resnet(ResNetDepth::R50, 8, 5, true),
        mobilenet_v1(&MobileNetConfig {
            alpha: 0.25,
            resolution: 8,
            classes: 5,
            conv: ConvKind::Standard,
            ..MobileNetConfig::default()
        })
        .unwrap(),
    ];
    for m in models {
        let session = Session::new(m.graph.clone()).unwrap();
        session
            .run(&[], &[], std::slice::from_ref(&m.init))
            .unwrap();
        let mut feeds = vec![(m.input.clone(), random_images(2, 8, 3))];
        if let Some(l) = &m.labels {
            feeds.push((
                l.clone(),
                psflow_graph::Tensor::new(vec![2], vec![0i32, 4]).unwrap(),
            ));
        }
        let out = session
            .run(
                &feeds,
                std::slice::from_ref(&m.predictions),
                &m.moving_average_updates,
            )
            .unwrap();
        assert_eq!(out[0].shape(), &[2, 5], "{}", m.name);
        let p = out[0].f32s("test").unwrap();
        assert!(p.iter().all(|x| x.is_finite() && *x >= 0.0), "{}", m.name);
    }
}

/// Gradient ops in a graph count as backward multiply-adds, not layers.
#[test]
fn summary_separates_gradient_ops() {
    use psflow_graph::{AttrValue, Node};
    let m = mobilenet(0.25, 16, 10, false);
    let before = summary(&m);
    let mut g = m.graph.clone();
    let conv = "MobilenetV1/Conv2d_1_pointwise/Conv2D";
    let w = "MobilenetV1/Conv2d_1_pointwise/weights/Read/ReadVariableOp";
    let sizes = psflow_graph::tensor_proto::tensor_to_proto(
        &psflow_graph::Tensor::new(vec![4], vec![1i32, 8, 8, 8]).unwrap(),
    );
    let f32_t = AttrValue::from_type(psflow_proto::tensorflow::DataType::DtFloat);
    g.add(
        Node::new("gradients/sizes", "Const")
            .attr(
                "dtype",
                AttrValue::from_type(psflow_proto::tensorflow::DataType::DtInt32),
            )
            .attr("value", AttrValue::from_tensor(sizes)),
    )
    .unwrap();
    g.add(
        Node::new(
            "gradients/Conv2D_grad/Conv2DBackpropInput",
            "Conv2DBackpropInput",
        )
        .input("gradients/sizes")
        .input(w)
        .input(conv)
        .attr("T", f32_t)
        .attr("strides", AttrValue::from_ints(vec![1, 1, 1, 1]))
        .attr("padding", AttrValue::from_s("SAME")),
    )
    .unwrap();
    let after = summarize(&g).unwrap();
    assert_eq!(after.layers, before.layers);
    assert_eq!(after.macs, before.macs);
    let pointwise = before
        .layers
        .iter()
        .find(|l| l.node == conv)
        .unwrap()
        .macs
        .unwrap();
    assert_eq!(pointwise, 8 * 8 * 8 * 16);
    assert_eq!(after.backward_macs, pointwise);
}
