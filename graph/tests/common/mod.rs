//! Builders for small test graphs.
#![allow(dead_code)]

use psflow_graph::dtype::dtype_to_proto;
use psflow_graph::tensor_proto::tensor_to_proto;
use psflow_graph::{AttrValue, DType, Node, Tensor, TensorName};
use psflow_proto::tensorflow::TensorShapeProto;

pub fn konst(name: &str, t: &Tensor) -> Node {
    Node::new(name, "Const")
        .attr("dtype", AttrValue::from_type(dtype_to_proto(t.dtype())))
        .attr("value", AttrValue::from_tensor(tensor_to_proto(t)))
}

pub fn placeholder(name: &str, dtype: DType, dims: &[i64]) -> Node {
    Node::new(name, "Placeholder")
        .attr("dtype", AttrValue::from_type(dtype_to_proto(dtype)))
        .attr(
            "shape",
            AttrValue::from_shape(TensorShapeProto::from_dims(dims)),
        )
}

pub fn op(name: &str, op: &str, inputs: &[&str]) -> Node {
    let mut n = Node::new(name, op);
    for i in inputs {
        n = match i.strip_prefix('^') {
            Some(c) => n.control_input(c),
            None => n.input(*i),
        };
    }
    n
}

pub fn f32_t(n: &Node) -> Node {
    n.clone()
        .attr("T", AttrValue::from_type(dtype_to_proto(DType::F32)))
}

pub fn t(name: &str) -> TensorName {
    TensorName::parse(name).unwrap()
}

pub fn ints(v: &[i32]) -> Tensor {
    Tensor::new(vec![v.len()], v.to_vec()).unwrap()
}

/// Deterministic pseudo-random f32s in [-1, 1).
pub fn rand_f32(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::new(shape.to_vec(), v).unwrap()
}

/// Largest |a - b| / max(floor, |b|) over the elements.
pub fn max_rel_err_floor(a: &Tensor, b: &Tensor, floor: f64) -> f64 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    a.to_f64_vec()
        .iter()
        .zip(b.to_f64_vec())
        .map(|(x, y)| (x - y).abs() / y.abs().max(floor))
        .fold(0.0, f64::max)
}

/// Largest |a - b| / max(1, |b|): relative for large values, absolute
/// for small ones.
pub fn max_rel_err(a: &Tensor, b: &Tensor) -> f64 {
    max_rel_err_floor(a, b, 1.0)
}
