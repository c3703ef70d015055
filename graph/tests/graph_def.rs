//! GraphDef import/export: byte round trips and TensorFlow's wire layout.

mod common;

use common::*;
use psflow_graph::{AttrValue, DType, Graph, Input, Tensor, TensorName};
use psflow_proto::tensorflow::{GraphDef, VersionDef};
use psflow_proto::Message;

fn sample() -> Graph {
    let mut g = Graph::new();
    g.versions = Some(VersionDef {
        producer: 1645,
        min_consumer: 12,
        bad_consumers: vec![],
    });
    g.add(placeholder("x", DType::F32, &[-1, 4])).unwrap();
    g.add(konst("w", &rand_f32(&[4, 3], 1))).unwrap();
    g.add(konst("shape", &ints(&[-1, 3]))).unwrap();
    g.add(op("init", "NoOp", &[])).unwrap();
    g.add(
        op("mm", "MatMul", &["x", "w", "^init"])
            .attr("transpose_a", AttrValue::from_b(false))
            .attr(
                "T",
                AttrValue::from_type(psflow_proto::tensorflow::DataType::DtFloat),
            ),
    )
    .unwrap();
    g.add(op("out", "IdentityN", &["mm:0", "shape"])).unwrap();
    g
}

#[test]
fn bytes_round_trip_exactly() {
    let g = sample();
    let bytes = g.to_graph_def_bytes();
    let back = Graph::from_graph_def_bytes(&bytes).unwrap();
    assert_eq!(back, g);
    assert_eq!(back.to_graph_def_bytes(), bytes);
    let mm = back.node("mm").unwrap();
    assert_eq!(
        mm.inputs,
        vec![
            Input::Data(TensorName::new("x", 0)),
            Input::Data(TensorName::new("w", 0)),
            Input::Control("init".into())
        ]
    );
    // Port 0 is written the way TensorFlow writes it: the bare node name.
    let def = GraphDef::decode(bytes.as_slice()).unwrap();
    assert_eq!(def.node[5].input, vec!["mm", "shape"]);
    assert_eq!(def.node[4].input, vec!["x", "w", "^init"]);
    assert_eq!(def.versions.unwrap().producer, 1645);
}

/// A GraphDef encoded by hand with TensorFlow's field numbers (as
/// `tf.Graph.as_graph_def().SerializeToString()` lays it out) decodes into
/// the expected graph.
#[test]
fn decodes_tensorflow_wire_layout() {
    fn field(num: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![((num << 3) | 2) as u8, payload.len() as u8];
        v.extend_from_slice(payload);
        v
    }
    // AttrValue { type: DT_FLOAT (field 6, varint 1) }
    let attr_type = vec![0x30, 0x01];
    // map entry { key (1): "dtype", value (2): AttrValue }
    let entry = [field(1, b"dtype"), field(2, &attr_type)].concat();
    // NodeDef { name (1), op (2), attr (5) }
    let placeholder = [field(1, b"x"), field(2, b"Placeholder"), field(5, &entry)].concat();
    // NodeDef { name, op, input (3): "x", device (4) }
    let identity = [
        field(1, b"y"),
        field(2, b"Identity"),
        field(3, b"x"),
        field(4, b"/cpu:0"),
    ]
    .concat();
    // GraphDef { node (1) ×2, versions (4) { producer (1): 27 } }
    let versions = vec![0x08, 27];
    let bytes = [
        field(1, &placeholder),
        field(1, &identity),
        field(4, &versions),
    ]
    .concat();
    let g = Graph::from_graph_def_bytes(&bytes).unwrap();
    assert_eq!(g.len(), 2);
    let x = g.node("x").unwrap();
    assert_eq!(x.op, "Placeholder");
    assert_eq!(x.attr_dtype("dtype").unwrap(), DType::F32);
    let y = g.node("y").unwrap();
    assert_eq!(y.inputs, vec![Input::Data(TensorName::new("x", 0))]);
    assert_eq!(y.device, "/cpu:0");
    assert_eq!(g.versions.as_ref().unwrap().producer, 27);
    // And our encoder writes exactly these bytes back.
    assert_eq!(g.to_graph_def_bytes(), bytes);
}

#[test]
fn unknown_fields_are_skipped() {
    // Field 2 of GraphDef (the function library) is not modelled.
    let mut bytes = sample().to_graph_def_bytes();
    bytes.extend_from_slice(&[0x12, 0x02, 0x0a, 0x00]);
    let g = Graph::from_graph_def_bytes(&bytes).unwrap();
    assert_eq!(g.len(), sample().len());
}

#[test]
fn non_graph_bytes_are_a_clear_error() {
    let npy = psflow_graph::format::npy::to_bytes(&Tensor::scalar(1f32));
    for bytes in [&npy[..], b"\x08\x96\x01", b"\xff\xff\xff"] {
        let err = Graph::from_graph_def_bytes(bytes).unwrap_err().to_string();
        assert!(err.contains("is not a TensorFlow GraphDef"), "{err}");
    }
    let dir = std::env::temp_dir().join(format!("psflow-gd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.pb");
    std::fs::write(&path, b"not a graph at all").unwrap();
    let err = Graph::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("model.pb") && err.contains("not a TensorFlow GraphDef"),
        "{err}"
    );
    let err = Graph::load(dir.join("missing.pb")).unwrap_err().to_string();
    assert!(err.contains("missing.pb"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
