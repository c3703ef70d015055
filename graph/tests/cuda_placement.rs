//! Where `CudaSession` runs each node of a training step, computed without
//! a GPU (`psflow_graph::cuda::place::plan`, the rule the session applies
//! at run time): every convolution, batch norm, activation, loss and
//! optimizer update of MobileNet on the device, and no device value read
//! back on the host inside the step.

use std::sync::Arc;

use psflow_graph::cuda::place::{self, Where};
use psflow_graph::train::builder::{TrainConfig, TrainGraph};
use psflow_graph::zoo::{Architecture, Model, ModelSpec};
use psflow_graph::{Registry, ResourceStore, Session};

fn training_model(alpha: f32, arch: &str) -> (Model, TrainGraph) {
    let mut m = ModelSpec {
        arch: arch.parse::<Architecture>().unwrap(),
        alpha,
        resolution: 32,
        classes: 10,
        training: true,
        seed: 1,
    }
    .build()
    .unwrap();
    // As `psflow train` builds it: with the weight averages.
    let g = m
        .add_training(&TrainConfig {
            moving_average_decay: Some(0.9999),
            ..TrainConfig::default()
        })
        .unwrap();
    (m, g)
}

fn step_placement(m: &Model, g: &TrainGraph) -> place::Placement {
    let session = Session::with_resources(
        m.graph.clone(),
        &Registry::standard(),
        Arc::new(ResourceStore::new()),
    )
    .unwrap();
    let feeds = [
        m.input.clone(),
        m.labels.clone().unwrap(),
        g.learning_rate.clone(),
    ];
    let fetches = [
        g.total_loss.clone(),
        g.cross_entropy_loss.clone(),
        g.regularization_loss.clone(),
        m.logits.clone(),
    ];
    place::plan(
        &session,
        &feeds,
        &fetches,
        std::slice::from_ref(&g.train_op),
    )
    .unwrap()
}

#[test]
fn mobilenet_training_step_stays_on_the_device() {
    for alpha in [0.5, 0.25] {
        let (m, g) = training_model(alpha, "mobilenet");
        let p = step_placement(&m, &g);
        assert!(
            p.downloads.is_empty(),
            "α={alpha}: device values read on the host: {:#?}",
            p.downloads
        );
        // The heavy ops and every update run on the device.
        for (name, op, w) in &p.nodes {
            let must = [
                "Conv2D",
                "Conv2DBackpropInput",
                "Conv2DBackpropFilter",
                "DepthwiseConv2dNative",
                "DepthwiseConv2dNativeBackpropInput",
                "DepthwiseConv2dNativeBackpropFilter",
                "FusedBatchNormV3",
                "FusedBatchNormGradV3",
                "Relu6",
                "Relu6Grad",
                "ResourceApplyRMSProp",
                "SparseSoftmaxCrossEntropyWithLogits",
                "ReadVariableOp",
                "L2Loss",
                "AddN",
                "AssignSubVariableOp",
            ];
            // The averages' decay is scalar arithmetic on the int64
            // global step, which lives on the host.
            let scalar_decay = name.starts_with("ExponentialMovingAverage/");
            if must.contains(&op.as_str()) && !scalar_decay {
                assert_eq!(*w, Where::Device, "α={alpha}: {name} ({op}) on the host");
            }
        }
        let device = p.nodes.iter().filter(|n| n.2 == Where::Device).count();
        assert!(device > 300, "only {device} nodes on the device");
        // What the host sends per step: the fed images once (the labels
        // and the learning rate are read on the host), the dropout mask
        // (host random numbers, as on the CPU, so both draw the same), and
        // small results of the gradient graph's scalar arithmetic (one per
        // weight-decay term, the loss mean's and the pool's divisors), and
        // the weight averages' rate.
        let fed: Vec<_> = p
            .uploads
            .iter()
            .filter(|t| t.tensor == m.input.to_string())
            .collect();
        assert_eq!(fed.len(), 1, "{:#?}", p.uploads);
        assert!(p
            .uploads
            .iter()
            .any(|t| t.tensor.contains("Dropout_1b/dropout/Floor")));
        let big = p.uploads.iter().filter(|t| {
            t.tensor != m.input.to_string()
                && !t.tensor.contains("Dropout_1b/dropout/Floor")
                && !t.tensor.starts_with("gradients/")
                // The averages' rate, a scalar, once per step.
                && t.tensor != "ExponentialMovingAverage/sub:0"
        });
        assert_eq!(big.count(), 0, "{:#?}", p.uploads);
        assert!(p.uploads.len() <= 24, "{:#?}", p.uploads);
        eprintln!(
            "α={alpha}: {} nodes on the device, host ops {:?}, uploads {:?}, {} constants",
            device,
            p.host_ops(),
            p.uploads
                .iter()
                .map(|t| format!("{} → {}", t.tensor, t.node))
                .collect::<Vec<_>>(),
            p.constants
        );
    }
}

#[test]
fn an_op_without_a_cuda_kernel_is_a_counted_download() {
    // MaxPool has no CUDA kernel: a device value it reads comes back to
    // the host, and the plan names it.
    use psflow_graph::dtype::dtype_to_proto;
    use psflow_graph::{AttrValue, Graph, Node};
    use psflow_proto::tensorflow::TensorShapeProto;
    let f32_attr = AttrValue::from_type(dtype_to_proto(psflow_graph::DType::F32));
    let mut g = Graph::new();
    for n in [
        Node::new("v", "VarHandleOp")
            .attr("dtype", f32_attr.clone())
            .attr(
                "shape",
                AttrValue::from_shape(TensorShapeProto::from_dims(&[1, 4, 4, 1])),
            )
            .attr("shared_name", AttrValue::from_s("v"))
            .attr("container", AttrValue::from_s("")),
        Node::new("read", "ReadVariableOp")
            .input(psflow_graph::TensorName::new("v", 0))
            .attr("dtype", f32_attr.clone()),
        Node::new("relu", "Relu")
            .input(psflow_graph::TensorName::new("read", 0))
            .attr("T", f32_attr.clone()),
        Node::new("pool", "MaxPool")
            .input(psflow_graph::TensorName::new("relu", 0))
            .attr("T", f32_attr)
            .attr("ksize", AttrValue::from_ints(vec![1, 2, 2, 1]))
            .attr("strides", AttrValue::from_ints(vec![1, 2, 2, 1]))
            .attr("padding", AttrValue::from_s("VALID")),
    ] {
        g.add(n).unwrap();
    }
    let session = Session::new(g).unwrap();
    let p = place::plan(
        &session,
        &[],
        &[psflow_graph::TensorName::new("pool", 0)],
        &[],
    )
    .unwrap();
    let w: Vec<_> = p.nodes.iter().map(|n| (n.0.as_str(), n.2)).collect();
    assert_eq!(
        w,
        [
            ("v", Where::Host),
            ("read", Where::Device),
            ("relu", Where::Device),
            ("pool", Where::Host)
        ]
    );
    assert_eq!(p.downloads.len(), 1, "{:#?}", p.downloads);
    assert_eq!(p.downloads[0].tensor, "relu:0");
    assert_eq!(p.downloads[0].node, "pool");
}

#[test]
fn decide_follows_the_inputs() {
    use place::decide;
    assert_eq!(
        decide("Mul", &[Where::Host, Where::Host], true),
        Where::Host
    );
    assert_eq!(
        decide("Mul", &[Where::Host, Where::Device], true),
        Where::Device
    );
    // Integer shape arithmetic stays on the host.
    assert_eq!(
        decide("Mul", &[Where::Device, Where::Host], false),
        Where::Host
    );
    // A device op whose only device input is a parameter (sizes) is a host op.
    assert_eq!(
        decide("Reshape", &[Where::Host, Where::Device], true),
        Where::Host
    );
    assert_eq!(
        decide("ReadVariableOp", &[Where::Host], true),
        Where::Device
    );
    assert_eq!(decide("ReadVariableOp", &[Where::Host], false), Where::Host);
    assert_eq!(decide("MaxPool", &[Where::Device], true), Where::Host);
    assert_eq!(decide("Shape", &[Where::Device], false), Where::Host);
}
