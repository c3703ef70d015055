//! BiasAdd and BiasAddGrad over the last (channel) axis, NHWC as TensorFlow.

use rayon::prelude::*;

use crate::{Error, Result, Tensor};

/// Rows handed to one rayon task; small enough to balance two cores,
/// big enough that task overhead does not show.
const ROWS_PER_TASK_MIN_ELEMS: usize = 1 << 15;

fn channels(op: &'static str, x: &Tensor) -> Result<usize> {
    if x.rank() < 2 {
        return Err(Error::shape(
            op,
            format!(
                "input must have at least 2 dimensions, got shape {:?}",
                x.shape()
            ),
        ));
    }
    Ok(*x.shape().last().unwrap())
}

/// `BiasAdd`: adds a `[c]` bias along the last axis.
pub fn bias_add(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    const OP: &str = "BiasAdd";
    let c = channels(OP, x)?;
    if bias.shape() != [c] {
        return Err(Error::shape(
            OP,
            format!(
                "bias must be a vector of the {c} channels of input {:?}, got shape {:?}",
                x.shape(),
                bias.shape()
            ),
        ));
    }
    let b = bias.f32s(OP)?;
    let mut out = x.f32s(OP)?.to_vec();
    if let Some(rows) = ROWS_PER_TASK_MIN_ELEMS.checked_div(c) {
        let rows_per_task = rows.max(1);
        out.par_chunks_mut(rows_per_task * c).for_each(|chunk| {
            for row in chunk.chunks_exact_mut(c) {
                for (v, bb) in row.iter_mut().zip(b) {
                    *v += *bb;
                }
            }
        });
    }
    Tensor::new(x.shape().to_vec(), out)
}

/// `BiasAddGrad`: sums the gradient over every axis but the last.
pub fn bias_add_grad(dy: &Tensor) -> Result<Tensor> {
    const OP: &str = "BiasAddGrad";
    let c = channels(OP, dy)?;
    let v = dy.f32s(OP)?;
    if c == 0 {
        return Tensor::new(vec![0], Vec::<f32>::new());
    }
    let rows = v.len() / c;
    let tasks = crate::threads::current().max(1) * 4;
    let rows_per_task = rows
        .div_ceil(tasks)
        .max((ROWS_PER_TASK_MIN_ELEMS / c).max(1));
    // Partial sums per fixed chunk, added in chunk order: the result does
    // not depend on how rayon happened to schedule the chunks.
    let partials: Vec<Vec<f32>> = v
        .par_chunks(rows_per_task * c)
        .map(|chunk| {
            let mut acc = vec![0f32; c];
            for row in chunk.chunks_exact(c) {
                for (a, x) in acc.iter_mut().zip(row) {
                    *a += *x;
                }
            }
            acc
        })
        .collect();
    let mut sum = vec![0f32; c];
    for part in &partials {
        sum.iter_mut().zip(part).for_each(|(x, y)| *x += *y);
    }
    Tensor::new(vec![c], sum)
}
