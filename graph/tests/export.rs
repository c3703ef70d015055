//! Freezing and batch-norm folding (`psflow_graph::export`): hand-built
//! conv + BN graphs (what is folded and what is left alone), and zoo
//! models with non-trivial batch-norm statistics whose exported graphs
//! (frozen, then folded) compute what the variable graph computes.

mod common;

use std::sync::Arc;

use common::{f32_t, konst, max_rel_err, op, placeholder, rand_f32, t};
use psflow_graph::export::{
    export_inference, fold_batch_norms, freeze, ExportOptions, InferenceIo, LOGITS, PROBABILITIES,
};
use psflow_graph::zoo::{Architecture, GraphBuilder, Init, ModelSpec, VarKind};
use psflow_graph::{
    AttrValue, DType, Graph, Node, Registry, ResourceStore, Session, Tensor, TensorName,
};

fn conv_attrs(n: Node) -> Node {
    f32_t(&n)
        .attr("strides", AttrValue::from_ints(vec![1, 1, 1, 1]))
        .attr("padding", AttrValue::from_s("SAME"))
        .attr("data_format", AttrValue::from_s("NHWC"))
        .attr("dilations", AttrValue::from_ints(vec![1, 1, 1, 1]))
}

fn batch_norm(name: &str, x: &str, scope: &str, training: bool) -> Node {
    let inputs: Vec<String> = ["gamma", "beta", "mean", "var"]
        .iter()
        .map(|p| format!("{scope}/{p}"))
        .collect();
    let mut n = op(name, "FusedBatchNormV3", &[x]);
    for i in &inputs {
        n = n.input(i.as_str());
    }
    f32_t(&n)
        .attr(
            "U",
            AttrValue::from_type(psflow_graph::dtype::dtype_to_proto(DType::F32)),
        )
        .attr("epsilon", AttrValue::from_f(0.001))
        .attr("exponential_avg_factor", AttrValue::from_f(1.0))
        .attr("data_format", AttrValue::from_s("NHWC"))
        .attr("is_training", AttrValue::from_b(training))
}

/// Batch-norm parameters far from the identity: γ in [0.5, 1.5], β and μ
/// in [-1, 1), σ² in [0.1, 2.1).
fn bn_params(g: &mut Graph, scope: &str, c: usize, seed: u64) {
    let shift = |t: Tensor, a: f32, b: f32| {
        let v: Vec<f32> = t.f32s("t").unwrap().iter().map(|x| a * x + b).collect();
        Tensor::new(vec![c], v).unwrap()
    };
    let p = [
        ("gamma", shift(rand_f32(&[c], seed), 0.5, 1.0)),
        ("beta", rand_f32(&[c], seed + 1)),
        ("mean", rand_f32(&[c], seed + 2)),
        ("var", shift(rand_f32(&[c], seed + 3), 1.0, 1.1)),
    ];
    for (name, v) in p {
        g.add(konst(&format!("{scope}/{name}"), &v)).unwrap();
    }
}

/// input [-1, 5, 5, 3] → Conv2D 3→4 → BN → Relu6 → depthwise ×2 → BN → Relu6.
fn conv_bn_net(training: bool) -> Graph {
    let mut g = Graph::new();
    g.add(placeholder("input", DType::F32, &[-1, 5, 5, 3]))
        .unwrap();
    g.add(konst("conv/weights", &rand_f32(&[3, 3, 3, 4], 1)))
        .unwrap();
    g.add(conv_attrs(op(
        "conv/Conv2D",
        "Conv2D",
        &["input", "conv/weights"],
    )))
    .unwrap();
    bn_params(&mut g, "conv/BatchNorm", 4, 10);
    g.add(batch_norm(
        "conv/BatchNorm/FusedBatchNormV3",
        "conv/Conv2D",
        "conv/BatchNorm",
        training,
    ))
    .unwrap();
    g.add(f32_t(&op(
        "conv/Relu6",
        "Relu6",
        &["conv/BatchNorm/FusedBatchNormV3"],
    )))
    .unwrap();
    g.add(konst("dw/depthwise_weights", &rand_f32(&[3, 3, 4, 2], 2)))
        .unwrap();
    g.add(conv_attrs(op(
        "dw/depthwise",
        "DepthwiseConv2dNative",
        &["conv/Relu6", "dw/depthwise_weights"],
    )))
    .unwrap();
    bn_params(&mut g, "dw/BatchNorm", 8, 20);
    g.add(batch_norm(
        "dw/BatchNorm/FusedBatchNormV3",
        "dw/depthwise",
        "dw/BatchNorm",
        training,
    ))
    .unwrap();
    g.add(f32_t(&op(
        "dw/Relu6",
        "Relu6",
        &["dw/BatchNorm/FusedBatchNormV3"],
    )))
    .unwrap();
    g
}

fn run(g: &Graph, fetches: &[TensorName], x: &Tensor) -> Vec<Tensor> {
    Session::new(g.clone())
        .unwrap()
        .run(&[(t("input"), x.clone())], fetches, &[])
        .unwrap()
}

fn ops(g: &Graph) -> Vec<&str> {
    g.nodes().iter().map(|n| n.op.as_str()).collect()
}

#[test]
fn folds_conv_and_depthwise_batch_norms_and_keeps_outputs() {
    let g = conv_bn_net(false);
    let out = [t("dw/Relu6")];
    let (folded, n) = fold_batch_norms(&g, &out).unwrap();
    assert_eq!(n, 2);
    assert!(!ops(&folded).iter().any(|o| o.starts_with("FusedBatchNorm")));
    // The batch norms' names now hold BiasAdds on folded biases; the
    // filters keep their names; ReLU6 stays.
    let bn = folded.node("conv/BatchNorm/FusedBatchNormV3").unwrap();
    assert_eq!(bn.op, "BiasAdd");
    assert_eq!(bn.attr_str("data_format").unwrap(), "NHWC");
    assert!(folded.node("conv/BatchNorm/folded_bias").is_some());
    assert!(folded.node("dw/BatchNorm/folded_bias").is_some());
    assert_eq!(folded.node("conv/weights").unwrap().op, "Const");
    assert_eq!(folded.node("dw/Relu6").unwrap().op, "Relu6");
    assert!(
        folded.node("conv/BatchNorm/gamma").is_none(),
        "unused γ pruned"
    );

    let x = rand_f32(&[3, 5, 5, 3], 7);
    let want = run(&g, &out, &x);
    let got = run(&folded, &out, &x);
    let err = max_rel_err(&got[0], &want[0]);
    assert!(err < 1e-5, "folded differs by {err}");
    // ReLU6 clips: make sure the comparison is not all zeros or sixes.
    let v = want[0].f32s("t").unwrap();
    assert!(v.iter().filter(|&&y| y > 0.0 && y < 6.0).count() > v.len() / 4);
}

#[test]
fn leaves_batch_norms_that_cannot_be_folded() {
    // Training mode normalises with batch statistics: not foldable.
    let g = conv_bn_net(true);
    assert_eq!(fold_batch_norms(&g, &[t("dw/Relu6")]).unwrap().1, 0);

    // The conv output is also an output: folding would change it.
    let g = conv_bn_net(false);
    let (_, n) = fold_batch_norms(&g, &[t("dw/Relu6"), t("conv/Conv2D")]).unwrap();
    assert_eq!(n, 1, "only the depthwise one");

    // A consumer of a statistics output (port 1).
    let mut g = conv_bn_net(false);
    g.add(f32_t(&op(
        "stat",
        "Identity",
        &["dw/BatchNorm/FusedBatchNormV3:1"],
    )))
    .unwrap();
    let (_, n) = fold_batch_norms(&g, &[t("dw/Relu6"), t("stat")]).unwrap();
    assert_eq!(n, 1, "only the conv one");

    // A filter shared with another conv.
    let mut g = conv_bn_net(false);
    g.add(conv_attrs(op(
        "other",
        "Conv2D",
        &["input", "conv/weights"],
    )))
    .unwrap();
    let (_, n) = fold_batch_norms(&g, &[t("dw/Relu6"), t("other")]).unwrap();
    assert_eq!(n, 1, "only the depthwise one");
}

/// x [-1, 2] · w [2, 3], w a resource variable.
fn matmul_with_variable() -> (Graph, TensorName) {
    let mut b = GraphBuilder::new(1);
    let x = b.placeholder("input", DType::F32, &[-1, 2]);
    let w = b.variable("w", &[2, 3], Init::ZEROS, VarKind::TRAINED);
    let y = b.op_f32(
        "y",
        "MatMul",
        &[&x, &w.read],
        vec![
            ("transpose_a", AttrValue::from_b(false)),
            ("transpose_b", AttrValue::from_b(false)),
        ],
    );
    b.add_init_op("init");
    (b.finish().0, y)
}

#[test]
fn freeze_turns_variable_reads_into_constants() {
    let (g, y) = matmul_with_variable();
    let w = Tensor::new(vec![2, 3], vec![1f32, 2., 3., 4., 5., 6.]).unwrap();
    let frozen = freeze(&g, std::slice::from_ref(&y), &|k| {
        (k == "w").then(|| w.clone())
    })
    .unwrap();
    assert_eq!(frozen.variables, vec!["w".to_string()]);
    assert_eq!(frozen.graph.node("w").unwrap().op, "Const");
    let left: Vec<&str> = ops(&frozen.graph);
    for gone in ["VarHandleOp", "ReadVariableOp", "AssignVariableOp", "NoOp"] {
        assert!(!left.contains(&gone), "{gone} left in {left:?}");
    }
    let x = Tensor::new(vec![1, 2], vec![1f32, -1.]).unwrap();
    let out = run(&frozen.graph, &[y], &x);
    assert_eq!(out[0].f32s("t").unwrap(), &[-3., -3., -3.]);
}

#[test]
fn freeze_errors_name_the_variable() {
    let (g, y) = matmul_with_variable();
    let err = freeze(&g, std::slice::from_ref(&y), &|_| None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"w\"") && err.contains("no value"), "{err}");

    let wrong = Tensor::new(vec![3, 2], vec![0f32; 6]).unwrap();
    let err = freeze(&g, &[y], &|_| Some(wrong.clone()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"w\"") && err.contains("shape"), "{err}");

    // A variable assigned in the graph (a training graph's update).
    let err = freeze(&g, &[t("w/Assign")], &|_| Some(Tensor::scalar(0f32)))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("AssignVariableOp") && err.contains("only read"),
        "{err}"
    );
}

/// Builds `arch`'s inference model, initialises it, gives every batch norm
/// random statistics, and checks that the exported graph (folded and not)
/// computes the model's logits and probabilities for batches of 1 and 3.
fn export_matches_the_variable_graph(arch: Architecture, alpha: f32, resolution: usize) {
    let model = ModelSpec {
        arch,
        alpha,
        resolution,
        classes: 5,
        training: false,
        seed: 3,
    }
    .build()
    .unwrap();
    let store = Arc::new(ResourceStore::new());
    let session =
        Session::with_resources(model.graph.clone(), &Registry::standard(), store.clone()).unwrap();
    session
        .run(&[], &[], std::slice::from_ref(&model.init))
        .unwrap();
    let mut bns = 0;
    for (i, v) in model.variables.iter().enumerate() {
        let c = v.shape[0];
        let r = rand_f32(&[c], 100 + i as u64);
        let r = r.f32s("t").unwrap();
        let value: Option<Vec<f32>> = match v.name.rsplit('/').next().unwrap() {
            "gamma" => Some(r.iter().map(|x| 1.0 + 0.5 * x).collect()),
            "beta" | "moving_mean" => Some(r.iter().map(|x| 0.5 * x).collect()),
            "moving_variance" => Some(r.iter().map(|x| 1.1 + x).collect()),
            _ => None,
        };
        if let Some(value) = value {
            bns += usize::from(v.name.ends_with("gamma"));
            store.set(&v.name, Tensor::new(vec![c], value).unwrap());
        }
    }
    let io = InferenceIo {
        input: model.input.clone(),
        logits: model.logits.clone(),
        probabilities: Some(model.predictions.clone()),
    };
    let value = |k: &str| store.get(k);
    let outs = [
        TensorName::new(LOGITS, 0),
        TensorName::new(PROBABILITIES, 0),
    ];
    for batch in [1, 3] {
        let x = rand_f32(&[batch, resolution, resolution, 3], 9 + batch as u64);
        let feeds = [(model.input.clone(), x.clone())];
        let want = session
            .run(
                &feeds,
                &[model.logits.clone(), model.predictions.clone()],
                &[],
            )
            .unwrap();
        for fold in [false, true] {
            let e = export_inference(
                &model.graph,
                &io,
                &value,
                ExportOptions {
                    fold_batch_norm: fold,
                },
            )
            .unwrap();
            assert_eq!(e.batch_norms_folded, if fold { bns } else { 0 });
            assert_eq!(e.batch_norms_left, if fold { 0 } else { bns });
            assert_eq!(e.variables, model.variables.len());
            // Through the wire format, as `psflow run` and TensorFlow read it.
            let g = Graph::from_graph_def_bytes(&e.graph.to_graph_def_bytes()).unwrap();
            for n in g.nodes() {
                assert!(
                    !["VarHandleOp", "ReadVariableOp", "AssignVariableOp", "NoOp"]
                        .contains(&n.op.as_str()),
                    "{} ({}) left in the export",
                    n.name,
                    n.op
                );
            }
            let got = run(&g, &outs, &x);
            for (w, g) in want.iter().zip(&got) {
                let err = max_rel_err(g, w);
                assert!(
                    err < 1e-4,
                    "{arch} fold={fold} batch {batch}: differs by {err}"
                );
            }
            // The logits are not trivially small: the check means something.
            let spread = want[0]
                .f32s("t")
                .unwrap()
                .iter()
                .fold(0f32, |m, x| m.max(x.abs()));
            assert!(spread > 1e-3, "logits all ~0 ({spread})");
        }
    }
}

#[test]
fn exported_mobilenet_matches_the_variable_graph() {
    export_matches_the_variable_graph(Architecture::MobileNet, 0.25, 16);
}

#[test]
fn exported_resnet18_matches_the_variable_graph() {
    export_matches_the_variable_graph(Architecture::ResNet18, 1.0, 8);
}

#[test]
fn export_refuses_a_training_graph() {
    let model = ModelSpec {
        arch: Architecture::MobileNet,
        alpha: 0.25,
        resolution: 8,
        classes: 3,
        training: true,
        seed: 1,
    }
    .build()
    .unwrap();
    let io = InferenceIo {
        input: model.input.clone(),
        logits: model.logits.clone(),
        probabilities: None,
    };
    let ones = |_: &str| None::<Tensor>;
    let err = export_inference(&model.graph, &io, &ones, ExportOptions::default())
        .unwrap_err()
        .to_string();
    // Either the training batch norm or the missing values are named; the
    // batch-norm check comes after freezing, which needs values.
    assert!(err.contains("no value"), "{err}");
    let store = ResourceStore::new();
    let s = Session::with_resources(model.graph.clone(), &Registry::standard(), Arc::new(store))
        .unwrap();
    s.run(&[], &[], std::slice::from_ref(&model.init)).unwrap();
    let value = |k: &str| s.resources().get(k);
    let err = export_inference(&model.graph, &io, &value, ExportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("is_training"), "{err}");
}
