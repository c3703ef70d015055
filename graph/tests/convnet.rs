//! A tiny conv net built in Rust and run by the executor must equal the
//! same kernels called by hand; inference-time shape arithmetic (Keras'
//! dynamic reshape) must resolve per run.

mod common;

use common::*;
use psflow_graph::{AttrValue, DType, Graph, Node, Session, Shape, Tensor};
use psflow_kernels::ops::{
    activation, batchnorm, conv, depthwise, elementwise, matmul, reduce, shape_ops, softmax,
};
use psflow_kernels::{BatchNormParams, BinaryOp, Conv2dParams, Padding};

fn ksize_attrs(n: Node, strides: i64, padding: &str) -> Node {
    f32_t(&n)
        .attr(
            "strides",
            AttrValue::from_ints(vec![1, strides, strides, 1]),
        )
        .attr("padding", AttrValue::from_s(padding))
        .attr("data_format", AttrValue::from_s("NHWC"))
        .attr("dilations", AttrValue::from_ints(vec![1, 1, 1, 1]))
}

struct Weights {
    w1: Tensor,
    b1: Tensor,
    gamma: Tensor,
    beta: Tensor,
    mean: Tensor,
    var: Tensor,
    dw: Tensor,
    fc: Tensor,
    scale: Tensor,
}

fn weights() -> Weights {
    let pos = |t: Tensor| {
        Tensor::new(
            t.shape().to_vec(),
            t.to_f64_vec()
                .iter()
                .map(|&x| 1.0 + 0.5 * x as f32)
                .collect(),
        )
        .unwrap()
    };
    Weights {
        w1: rand_f32(&[3, 3, 3, 4], 1),
        b1: rand_f32(&[4], 2),
        gamma: pos(rand_f32(&[4], 3)),
        beta: rand_f32(&[4], 4),
        mean: rand_f32(&[4], 5),
        var: pos(rand_f32(&[4], 6)),
        dw: rand_f32(&[3, 3, 4, 2], 7),
        fc: rand_f32(&[8, 5], 8),
        scale: Tensor::scalar(0.5f32),
    }
}

/// x [?, 9, 9, 3] → Conv2D 3×3 s2 SAME → BiasAdd → FusedBatchNormV3
/// (inference) → Relu6 → Pad → DepthwiseConv2dNative 3×3 ×2 VALID →
/// Mean(1, 2) → Reshape([batch, -1] built from Shape/StridedSlice/Pack) →
/// MatMul → Mul(scale) → Softmax.
fn net(w: &Weights) -> Graph {
    let mut g = Graph::new();
    let nodes = vec![
        placeholder("x", DType::F32, &[-1, 9, 9, 3]),
        konst("w1", &w.w1),
        konst("b1", &w.b1),
        konst("gamma", &w.gamma),
        konst("beta", &w.beta),
        konst("mean", &w.mean),
        konst("var", &w.var),
        konst("dw", &w.dw),
        konst("fc", &w.fc),
        konst("scale", &w.scale),
        konst(
            "paddings",
            &Tensor::new(vec![4, 2], vec![0i32, 0, 0, 1, 0, 1, 0, 0]).unwrap(),
        ),
        konst("axes", &ints(&[1, 2])),
        konst("b0", &ints(&[0])),
        konst("e1", &ints(&[1])),
        konst("s1", &ints(&[1])),
        konst("minus1", &Tensor::scalar(-1i32)),
        ksize_attrs(op("conv", "Conv2D", &["x", "w1"]), 2, "SAME"),
        f32_t(&op("bias", "BiasAdd", &["conv", "b1"])),
        f32_t(&op(
            "bn",
            "FusedBatchNormV3",
            &["bias", "gamma", "beta", "mean", "var"],
        ))
        .attr(
            "U",
            AttrValue::from_type(psflow_proto::tensorflow::DataType::DtFloat),
        )
        .attr("epsilon", AttrValue::from_f(0.001))
        .attr("is_training", AttrValue::from_b(false)),
        f32_t(&op("relu", "Relu6", &["bn"])),
        op("pad", "Pad", &["relu", "paddings"]),
        ksize_attrs(
            op("dwconv", "DepthwiseConv2dNative", &["pad", "dw"]),
            1,
            "VALID",
        ),
        op("pool", "Mean", &["dwconv", "axes"]).attr("keep_dims", AttrValue::from_b(false)),
        op("shape", "Shape", &["pool"]),
        op("batch", "StridedSlice", &["shape", "b0", "e1", "s1"])
            .attr("shrink_axis_mask", AttrValue::from_i(1)),
        op("target", "Pack", &["batch", "minus1"]).attr("N", AttrValue::from_i(2)),
        op("flat", "Reshape", &["pool", "target"]),
        f32_t(&op("logits", "MatMul", &["flat", "fc"])),
        op("scaled", "Mul", &["logits", "scale"]),
        f32_t(&op("probs", "Softmax", &["scaled"])),
    ];
    for n in nodes {
        g.add(n).unwrap();
    }
    g
}

fn by_hand(w: &Weights, x: &Tensor) -> Tensor {
    let p = |s: usize, padding| Conv2dParams {
        strides: [s, s],
        padding,
    };
    let y = conv::conv2d(x, &w.w1, &p(2, Padding::Same)).unwrap();
    let y = matmul::bias_add(&y, &w.b1).unwrap();
    let bn = BatchNormParams {
        epsilon: 0.001,
        exponential_avg_factor: 1.0,
        is_training: false,
    };
    let y = batchnorm::fused_batch_norm(&y, &w.gamma, &w.beta, &w.mean, &w.var, &bn)
        .unwrap()
        .y;
    let y = activation::relu6(&y).unwrap();
    let y = shape_ops::pad(&y, &[(0, 0), (0, 1), (0, 1), (0, 0)], None).unwrap();
    let y = depthwise::depthwise_conv2d(&y, &w.dw, &p(1, Padding::Valid)).unwrap();
    let y = reduce::mean(&y, &[1, 2], false).unwrap();
    let y = matmul::matmul(&y, &w.fc, false, false).unwrap();
    let y = elementwise::binary(BinaryOp::Mul, &y, &w.scale).unwrap();
    softmax::softmax(&y).unwrap()
}

#[test]
fn executor_matches_kernels_called_by_hand() {
    let w = weights();
    let s = Session::new(net(&w)).unwrap();
    // Static shapes: batch unknown, the rest inferred through the graph.
    assert_eq!(
        s.tensor_info(&t("conv")).unwrap().shape,
        Shape::Known(vec![-1, 5, 5, 4])
    );
    assert_eq!(
        s.tensor_info(&t("dwconv")).unwrap().shape,
        Shape::Known(vec![-1, 4, 4, 8])
    );
    assert_eq!(s.tensor_info(&t("batch")).unwrap().shape, Shape::scalar());
    // The reshape target is only known per run; MatMul restores the columns.
    let flat = &s.tensor_info(&t("flat")).unwrap().shape;
    assert_eq!(flat, &Shape::Known(vec![-1, -1]));
    let probs = &s.tensor_info(&t("probs")).unwrap().shape;
    assert_eq!(probs, &Shape::Known(vec![-1, 5]));
    for batch in [1, 3] {
        let x = rand_f32(&[batch, 9, 9, 3], 100 + batch as u64);
        let out = s
            .run(&[(t("x"), x.clone())], &[t("probs"), t("bn:1")], &[])
            .unwrap();
        let want = by_hand(&w, &x);
        assert_eq!(out[0].shape(), &[batch, 5]);
        assert_eq!(
            out[0].to_f64_vec(),
            want.to_f64_vec(),
            "bit-identical to the same kernels"
        );
        // Inference-mode batch norm returns the given mean.
        assert_eq!(out[1], w.mean);
    }
}

#[test]
fn shape_arithmetic_folds_when_shapes_are_known() {
    let w = weights();
    let mut g = net(&w);
    // Pin the batch: the dynamic reshape target becomes a known constant.
    let mut nodes: Vec<Node> = g.nodes().to_vec();
    nodes[0] = placeholder("x", DType::F32, &[2, 9, 9, 3]);
    g = Graph::new();
    for n in nodes {
        g.add(n).unwrap();
    }
    let s = Session::new(g).unwrap();
    let target = s.tensor_info(&t("target")).unwrap();
    assert_eq!(target.value, Some(ints(&[2, -1])));
    assert_eq!(
        s.tensor_info(&t("probs")).unwrap().shape,
        Shape::Known(vec![2, 5])
    );
    // A wrong batch is refused at the feed, naming the placeholder.
    let msg = s
        .run(&[(t("x"), rand_f32(&[3, 9, 9, 3], 0))], &[t("probs")], &[])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("\"x\"") && msg.contains("[2, 9, 9, 3]"),
        "{msg}"
    );
}

#[test]
fn kernel_shape_errors_at_run_time_name_the_node() {
    // A Reshape whose target only fails for some batch sizes.
    let mut g = Graph::new();
    for n in [
        placeholder("x", DType::F32, &[-1, 3]),
        konst("target", &ints(&[-1, 2])),
        op("r", "Reshape", &["x", "target"]),
        op("y", "AddV2", &["r", "r"]),
    ] {
        g.add(n).unwrap();
    }
    let s = Session::new(g).unwrap();
    assert!(s
        .run(&[(t("x"), rand_f32(&[2, 3], 0))], &[t("y")], &[])
        .is_ok());
    let msg = s
        .run(&[(t("x"), rand_f32(&[3, 3], 0))], &[t("y")], &[])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("\"r\"") && msg.contains("Reshape"), "{msg}");
}
