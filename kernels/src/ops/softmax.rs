//! Softmax, cross-entropy and L2Loss.
//!
//! Rows (the last axis) are independent; each is shifted by its maximum
//! before exponentiating and accumulated in f64, so large logits neither
//! overflow nor lose the small classes.

use rayon::prelude::*;

use crate::{DType, Data, Error, Result, Tensor};

/// Rows per parallel task are chosen so a task has at least this many elements.
const PAR_ELEMS: usize = 16 * 1024;

/// `(max, ln Σ exp(x − max))` of one row.
fn row_lse(row: &[f64]) -> (f64, f64) {
    let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let m = if m.is_finite() { m } else { 0.0 };
    let s: f64 = row.iter().map(|&v| (v - m).exp()).sum();
    (m, s.ln())
}

/// The logits as f64 rows of the last axis, and the dtype to answer in.
fn rows_of(op: &'static str, logits: &Tensor) -> Result<(Vec<f64>, usize, DType)> {
    let dtype = logits.dtype();
    if !dtype.is_float() {
        return Err(Error::DType {
            op,
            what: "logits",
            expected: DType::F32,
            got: dtype,
        });
    }
    let cols = match logits.shape().last() {
        Some(&c) if c > 0 => c,
        _ => {
            return Err(Error::shape(
                op,
                format!(
                    "logits must have rank ≥ 1 and a non-empty last axis, got shape {:?}",
                    logits.shape()
                ),
            ))
        }
    };
    Ok((logits.to_f64_vec(), cols, dtype))
}

fn from_f64(dtype: DType, shape: Vec<usize>, v: Vec<f64>) -> Result<Tensor> {
    let data = match dtype {
        DType::F32 => Data::F32(v.into_iter().map(|x| x as f32).collect::<Vec<_>>().into()),
        _ => Data::F64(v.into()),
    };
    Tensor::from_data(shape, data)
}

/// Applies `f(row_in, row_out)` to every row, in parallel when large.
fn per_row(x: &[f64], cols: usize, f: impl Fn(&[f64], &mut [f64]) + Sync) -> Vec<f64> {
    let mut out = vec![0f64; x.len()];
    let rows_per_task = (PAR_ELEMS / cols).max(1);
    out.par_chunks_mut(rows_per_task * cols)
        .zip(x.par_chunks(rows_per_task * cols))
        .for_each(|(o, i)| {
            for (orow, irow) in o.chunks_exact_mut(cols).zip(i.chunks_exact(cols)) {
                f(irow, orow)
            }
        });
    out
}

/// `Softmax` over the last axis (numerically stable).
pub fn softmax(logits: &Tensor) -> Result<Tensor> {
    let (x, cols, dtype) = rows_of("Softmax", logits)?;
    let out = per_row(&x, cols, |r, o| {
        let (m, lse) = row_lse(r);
        for (o, &v) in o.iter_mut().zip(r) {
            *o = (v - m - lse).exp();
        }
    });
    from_f64(dtype, logits.shape().to_vec(), out)
}

/// `LogSoftmax` over the last axis.
pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    let (x, cols, dtype) = rows_of("LogSoftmax", logits)?;
    let out = per_row(&x, cols, |r, o| {
        let (m, lse) = row_lse(r);
        for (o, &v) in o.iter_mut().zip(r) {
            *o = v - m - lse;
        }
    });
    from_f64(dtype, logits.shape().to_vec(), out)
}

fn check_2d(op: &'static str, logits: &Tensor) -> Result<(usize, usize)> {
    match *logits.shape() {
        [b, c] if c > 0 => Ok((b, c)),
        _ => Err(Error::shape(
            op,
            format!(
                "logits must be [batch, classes] with classes > 0, got shape {:?}",
                logits.shape()
            ),
        )),
    }
}

/// `SparseSoftmaxCrossEntropyWithLogits`: logits `[batch, classes]`, labels
/// `[batch]` (int32 or int64) → `(loss [batch], backprop [batch, classes])`.
/// A label outside `[0, classes)` is an error naming the row.
pub fn sparse_softmax_cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<(Tensor, Tensor)> {
    let op = "SparseSoftmaxCrossEntropyWithLogits";
    let (batch, classes) = check_2d(op, logits)?;
    if labels.shape() != [batch] {
        return Err(Error::shape(
            op,
            format!(
                "labels must have shape [{batch}] to match logits {:?}, got {:?}",
                logits.shape(),
                labels.shape()
            ),
        ));
    }
    let labels = match labels.dtype() {
        DType::I32 | DType::I64 => labels.to_i64_vec(op)?,
        other => {
            return Err(Error::DType {
                op,
                what: "labels",
                expected: DType::I32,
                got: other,
            })
        }
    };
    if let Some((row, &l)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l < 0 || l >= classes as i64)
    {
        return Err(Error::invalid(
            op,
            format!("label {l} in row {row} is outside the valid range [0, {classes})"),
        ));
    }
    let (x, _, dtype) = rows_of(op, logits)?;
    let mut loss = vec![0f64; batch];
    let mut back = vec![0f64; x.len()];
    for (r, (row, brow)) in x
        .chunks_exact(classes)
        .zip(back.chunks_exact_mut(classes))
        .enumerate()
    {
        let (m, lse) = row_lse(row);
        let l = labels[r] as usize;
        for (k, (b, &v)) in brow.iter_mut().zip(row).enumerate() {
            *b = (v - m - lse).exp() - if k == l { 1.0 } else { 0.0 };
        }
        loss[r] = lse + m - row[l];
    }
    Ok((
        from_f64(dtype, vec![batch], loss)?,
        from_f64(dtype, logits.shape().to_vec(), back)?,
    ))
}

/// `SoftmaxCrossEntropyWithLogits` with dense labels (probabilities).
pub fn softmax_cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<(Tensor, Tensor)> {
    let op = "SoftmaxCrossEntropyWithLogits";
    let (batch, classes) = check_2d(op, logits)?;
    if labels.shape() != logits.shape() {
        return Err(Error::shape(
            op,
            format!(
                "labels have shape {:?} but logits have {:?}",
                labels.shape(),
                logits.shape()
            ),
        ));
    }
    if labels.dtype() != logits.dtype() {
        return Err(Error::DType {
            op,
            what: "labels",
            expected: logits.dtype(),
            got: labels.dtype(),
        });
    }
    let (x, _, dtype) = rows_of(op, logits)?;
    let y = labels.to_f64_vec();
    let mut loss = vec![0f64; batch];
    let mut back = vec![0f64; x.len()];
    for (r, loss_r) in loss.iter_mut().enumerate() {
        let span = r * classes..(r + 1) * classes;
        let (row, lab) = (&x[span.clone()], &y[span.clone()]);
        let (m, lse) = row_lse(row);
        let mut l = 0.0;
        for k in 0..classes {
            let logp = row[k] - m - lse;
            l -= lab[k] * logp;
            back[span.start + k] = logp.exp() - lab[k];
        }
        *loss_r = l;
    }
    Ok((
        from_f64(dtype, vec![batch], loss)?,
        from_f64(dtype, logits.shape().to_vec(), back)?,
    ))
}

/// `Σ f(x)` over fixed chunks summed in parallel, the partials added in
/// chunk order: the same bits whatever the scheduling.
fn ordered_sum<T: Copy + Sync>(v: &[T], f: impl Fn(T) -> f64 + Sync) -> f64 {
    const CHUNK: usize = 1 << 14;
    let partials: Vec<f64> = v
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&a| f(a)).sum::<f64>())
        .collect();
    partials.iter().sum()
}

/// `L2Loss`: `sum(x²) / 2` as a scalar.
pub fn l2_loss(x: &Tensor) -> Result<Tensor> {
    let op = "L2Loss";
    match x.data() {
        Data::F32(v) => {
            let s = ordered_sum(v, |a| a as f64 * a as f64);
            Ok(Tensor::scalar((s / 2.0) as f32))
        }
        Data::F64(v) => Ok(Tensor::scalar(ordered_sum(v, |a| a * a) / 2.0)),
        _ => Err(Error::DType {
            op,
            what: "input",
            expected: DType::F32,
            got: x.dtype(),
        }),
    }
}
