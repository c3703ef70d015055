//! Softmax, cross-entropy and L2Loss.

use crate::{Result, Tensor};

/// `Softmax` over the last axis (numerically stable).
pub fn softmax(logits: &Tensor) -> Result<Tensor> {
    todo!("{:?}", logits.shape())
}

/// `LogSoftmax` over the last axis.
pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    todo!("{:?}", logits.shape())
}

/// `SparseSoftmaxCrossEntropyWithLogits`: logits `[batch, classes]`, labels
/// `[batch]` (int32 or int64) → `(loss [batch], backprop [batch, classes])`.
/// A label outside `[0, classes)` is an error naming the row.
pub fn sparse_softmax_cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<(Tensor, Tensor)> {
    todo!("{:?} {:?}", logits.shape(), labels.shape())
}

/// `SoftmaxCrossEntropyWithLogits` with dense labels (probabilities).
pub fn softmax_cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<(Tensor, Tensor)> {
    todo!("{:?} {:?}", logits.shape(), labels.shape())
}

/// `L2Loss`: `sum(x²) / 2` as a scalar.
pub fn l2_loss(x: &Tensor) -> Result<Tensor> {
    todo!("{:?}", x.shape())
}
