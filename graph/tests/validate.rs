//! Validation errors name the node (and attribute) at fault.

mod common;

use common::*;
use psflow_graph::{validate, AttrValue, DType, Error, Graph, Node, Registry, Tensor};

fn check(g: &Graph) -> Result<(), String> {
    validate(g, &Registry::standard())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn graph(nodes: Vec<Node>) -> Graph {
    let mut g = Graph::new();
    for n in nodes {
        g.add(n).unwrap();
    }
    g
}

fn conv(name: &str) -> Node {
    f32_t(&op(name, "Conv2D", &["x", "w"]))
        .attr("strides", AttrValue::from_ints(vec![1, 1, 1, 1]))
        .attr("padding", AttrValue::from_s("SAME"))
}

fn conv_inputs() -> Vec<Node> {
    vec![
        placeholder("x", DType::F32, &[-1, 8, 8, 3]),
        placeholder("w", DType::F32, &[3, 3, 3, 4]),
    ]
}

#[test]
fn unknown_ops_are_listed_together() {
    let g = graph(vec![
        placeholder("x", DType::F32, &[2]),
        op("a", "Erf", &["x"]),
        op("b", "Relu", &["a"]),
        op("c", "TopKV2", &["b"]),
    ]);
    match validate(&g, &Registry::standard()) {
        Err(Error::UnknownOps { ops }) => assert_eq!(
            ops,
            vec![("a".into(), "Erf".into()), ("c".into(), "TopKV2".into())]
        ),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("validated"),
    }
    let msg = check(&g).unwrap_err();
    assert!(
        msg.contains("Erf (node \"a\")") && msg.contains("TopKV2 (node \"c\")"),
        "{msg}"
    );
}

#[test]
fn dangling_inputs_name_the_node() {
    let g = graph(vec![
        placeholder("x", DType::F32, &[2]),
        op("r", "Relu", &["x", "^ghost"]),
    ]);
    let msg = check(&g).unwrap_err();
    assert!(msg.contains("\"r\"") && msg.contains("^ghost"), "{msg}");
    let g = graph(vec![op("r", "Relu", &["nothing:1"])]);
    let msg = check(&g).unwrap_err();
    assert!(msg.contains("\"r\"") && msg.contains("nothing:1"), "{msg}");
}

#[test]
fn bad_ports_name_producer_and_consumer() {
    let g = graph(vec![
        placeholder("x", DType::F32, &[2]),
        op("r", "Relu", &["x:1"]),
    ]);
    let msg = check(&g).unwrap_err();
    assert!(
        msg.contains("\"r\"") && msg.contains("\"x\"") && msg.contains("1 output"),
        "{msg}"
    );
}

#[test]
fn cycles_name_their_nodes() {
    let g = graph(vec![
        placeholder("x", DType::F32, &[2]),
        op("a", "AddV2", &["x", "c"]),
        op("b", "Relu", &["a"]),
        op("c", "Neg", &["b"]),
        op("d", "Relu", &["c"]),
    ]);
    match validate(&g, &Registry::standard()) {
        Err(Error::Cycle { nodes }) => {
            let mut core: Vec<_> = nodes[..nodes.len() - 1].to_vec();
            core.sort();
            assert_eq!(core, ["a", "b", "c"]);
            assert_eq!(nodes.first(), nodes.last());
        }
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("validated"),
    }
    // A control edge closes a cycle too.
    let g = graph(vec![op("p", "NoOp", &["^q"]), op("q", "NoOp", &["^p"])]);
    assert!(check(&g).unwrap_err().contains("cycle"));
}

#[test]
fn shape_mismatches_name_the_node() {
    let mut nodes = conv_inputs();
    nodes[1] = placeholder("w", DType::F32, &[3, 3, 5, 4]);
    nodes.push(conv("conv1"));
    let msg = check(&graph(nodes)).unwrap_err();
    assert!(
        msg.contains("\"conv1\"") && msg.contains("3 channels") && msg.contains('5'),
        "{msg}"
    );

    let g = graph(vec![
        placeholder("a", DType::F32, &[-1, 4]),
        placeholder("b", DType::F32, &[5, 2]),
        f32_t(&op("mm", "MatMul", &["a", "b"])),
    ]);
    let msg = check(&g).unwrap_err();
    assert!(
        msg.contains("\"mm\"") && msg.contains("inner dimensions"),
        "{msg}"
    );

    let g = graph(vec![
        placeholder("a", DType::F32, &[-1, 4]),
        placeholder("b", DType::F32, &[3]),
        op("add", "AddV2", &["a", "b"]),
    ]);
    let msg = check(&g).unwrap_err();
    assert!(
        msg.contains("\"add\"") && msg.contains("broadcast"),
        "{msg}"
    );

    let g = graph(vec![
        placeholder("a", DType::F32, &[-1, 4]),
        placeholder("b", DType::I32, &[4]),
        op("add", "AddV2", &["a", "b"]),
    ]);
    let msg = check(&g).unwrap_err();
    assert!(msg.contains("\"add\"") && msg.contains("int32"), "{msg}");

    let g = graph(vec![
        placeholder("a", DType::F32, &[6, 4]),
        konst("s", &ints(&[5, -1])),
        op("r", "Reshape", &["a", "s"]),
    ]);
    let msg = check(&g).unwrap_err();
    assert!(msg.contains("\"r\"") && msg.contains("24"), "{msg}");
}

#[test]
fn shapes_propagate_through_partial_dims() {
    let mut nodes = conv_inputs();
    nodes.push(conv("c").attr("strides", AttrValue::from_ints(vec![1, 2, 2, 1])));
    nodes.push(konst("s", &ints(&[-1, 64])));
    nodes.push(op("r", "Reshape", &["c", "s"]));
    let g = graph(nodes);
    let v = validate(&g, &Registry::standard()).unwrap();
    let id = g.id("c").unwrap();
    assert_eq!(v.infos[id][0].shape.to_string(), "[?, 4, 4, 4]");
    let id = g.id("r").unwrap();
    assert_eq!(v.infos[id][0].shape.to_string(), "[?, 64]");
}

#[test]
fn attrs_that_change_results_are_refused() {
    let cases: Vec<(Node, &str, &str)> = vec![
        (
            conv("c").attr("data_format", AttrValue::from_s("NCHW")),
            "data_format",
            "NCHW",
        ),
        (
            conv("c").attr("dilations", AttrValue::from_ints(vec![1, 2, 2, 1])),
            "dilations",
            "2",
        ),
        (
            conv("c").attr("padding", AttrValue::from_s("FULL")),
            "padding",
            "FULL",
        ),
        (
            conv("c").attr(
                "T",
                AttrValue::from_type(psflow_proto::tensorflow::DataType::DtHalf),
            ),
            "T",
            "float16",
        ),
        (
            conv("c").attr("strides", AttrValue::from_ints(vec![2, 1, 1, 1])),
            "strides",
            "[2, 1, 1, 1]",
        ),
        (
            conv("c").attr("strides", AttrValue::from_i(1)),
            "strides",
            "list",
        ),
    ];
    for (node, attr, what) in cases {
        let mut nodes = conv_inputs();
        nodes.push(node);
        let msg = check(&graph(nodes)).unwrap_err();
        assert!(
            msg.contains("\"c\"") && msg.contains(&format!("{attr:?}")) && msg.contains(what),
            "{msg}"
        );
    }
    let mut nodes = conv_inputs();
    let mut c = conv("c");
    c.attrs.remove("padding");
    nodes.push(c);
    let msg = check(&graph(nodes)).unwrap_err();
    assert!(
        msg.contains("\"padding\"") && msg.contains("missing"),
        "{msg}"
    );
}

#[test]
fn harmless_tf_attrs_are_accepted() {
    let mut nodes = conv_inputs();
    nodes.push(
        conv("c")
            .attr("data_format", AttrValue::from_s("NHWC"))
            .attr("dilations", AttrValue::from_ints(vec![1, 1, 1, 1]))
            .attr("use_cudnn_on_gpu", AttrValue::from_b(true))
            .attr("explicit_paddings", AttrValue::from_ints(vec![]))
            .attr("_output_shapes", AttrValue::from_ints(vec![]))
            .attr("_class", AttrValue::from_s("loc:@x")),
    );
    check(&graph(nodes)).unwrap();
}

#[test]
fn unsupported_dtypes_name_the_node() {
    let g = graph(vec![Node::new("s", "Placeholder").attr(
        "dtype",
        AttrValue::from_type(psflow_proto::tensorflow::DataType::DtString),
    )]);
    let msg = check(&g).unwrap_err();
    assert!(msg.contains("\"s\"") && msg.contains("string"), "{msg}");
    let _ = Tensor::scalar(0f32);
}
