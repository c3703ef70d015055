//! The training losses, as TF-slim's MobileNet recipe computes them:
//! softmax cross-entropy averaged over the batch, L2 weight decay
//! `lambda * sum(w²)/2` on the chosen weights, and their sum. Each adds
//! nodes to a graph and returns the scalar tensor, named
//! `cross_entropy_loss`, `regularization_loss` and `total_loss`.

use psflow_kernels::{DType, Tensor};
use psflow_proto::tensorflow::AttrValue;

use crate::ir::{Graph, Node, TensorName};
use crate::zoo::{const_node, type_attr};
use crate::Result;

/// TF-slim's MobileNet weight decay.
pub const DEFAULT_WEIGHT_DECAY: f32 = 4e-5;

fn f32_op(name: &str, op: &str, inputs: &[&TensorName]) -> Node {
    let mut n = Node::new(name, op).attr("T", type_attr(DType::F32));
    for i in inputs {
        n = n.input((*i).clone());
    }
    n
}

fn add(graph: &mut Graph, node: Node) -> Result<TensorName> {
    let name = node.name.clone();
    graph.add(node)?;
    Ok(TensorName::new(name, 0))
}

/// The dtype of an int label tensor as its producer declares it
/// (`dtype` of a Placeholder, `DstT` of a Cast, `T` otherwise); int32
/// when the graph does not say.
fn label_dtype(graph: &Graph, labels: &TensorName) -> DType {
    graph
        .node(&labels.node)
        .and_then(|n| {
            ["dtype", "DstT", "T"]
                .iter()
                .find_map(|a| n.attrs.contains_key(*a).then(|| n.attr_dtype(a).ok()))
                .flatten()
        })
        .filter(|d| matches!(d, DType::I32 | DType::I64))
        .unwrap_or(DType::I32)
}

/// `cross_entropy_loss = Mean(SparseSoftmaxCrossEntropyWithLogits(logits,
/// labels), [0])`: logits `[batch, classes]` float32, labels `[batch]`
/// int32/int64 class ids. The per-example op is
/// `cross_entropy_loss/xentropy`.
pub fn cross_entropy_loss(
    graph: &mut Graph,
    logits: &TensorName,
    labels: &TensorName,
) -> Result<TensorName> {
    let tl = label_dtype(graph, labels);
    let xent = f32_op(
        "cross_entropy_loss/xentropy",
        "SparseSoftmaxCrossEntropyWithLogits",
        &[logits, labels],
    )
    .attr("Tlabels", type_attr(tl));
    let xent = add(graph, xent)?;
    let axes = add(
        graph,
        const_node(
            "cross_entropy_loss/reduction_indices",
            &Tensor::new(vec![1], vec![0i32]).expect("one element"),
        ),
    )?;
    let mean = f32_op("cross_entropy_loss", "Mean", &[&xent, &axes])
        .attr("Tidx", type_attr(DType::I32))
        .attr("keep_dims", AttrValue::from_b(false));
    add(graph, mean)
}

/// `regularization_loss = AddN(lambda * L2Loss(w) for w in weights)`, each
/// term `regularization_loss/<i>/mul` (`lambda` times
/// `regularization_loss/<i>/L2Loss`), as TF-slim's `l2_regularizer` terms
/// summed by `tf.losses.get_regularization_loss`. With no weights it is a
/// constant 0.
pub fn regularization_loss(
    graph: &mut Graph,
    weights: &[TensorName],
    lambda: f32,
) -> Result<TensorName> {
    let name = "regularization_loss";
    if weights.is_empty() {
        return add(graph, const_node(name, &Tensor::scalar(0f32)));
    }
    let scale = add(
        graph,
        const_node(&format!("{name}/scale"), &Tensor::scalar(lambda)),
    )?;
    let mut terms = vec![];
    for (i, w) in weights.iter().enumerate() {
        let l2 = add(graph, f32_op(&format!("{name}/{i}/L2Loss"), "L2Loss", &[w]))?;
        terms.push(add(
            graph,
            f32_op(&format!("{name}/{i}/mul"), "Mul", &[&scale, &l2]),
        )?);
    }
    if terms.len() == 1 {
        return add(graph, f32_op(name, "Identity", &[&terms[0]]));
    }
    let refs: Vec<&TensorName> = terms.iter().collect();
    add(
        graph,
        f32_op(name, "AddN", &refs).attr("N", AttrValue::from_i(terms.len() as i64)),
    )
}

/// `total_loss = cross_entropy_loss + regularization_loss` (`AddN`).
pub fn total_loss(
    graph: &mut Graph,
    cross_entropy: &TensorName,
    regularization: &TensorName,
) -> Result<TensorName> {
    add(
        graph,
        f32_op("total_loss", "AddN", &[cross_entropy, regularization])
            .attr("N", AttrValue::from_i(2)),
    )
}
