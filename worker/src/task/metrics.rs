//! Accuracy and cross-entropy on the host, and the evaluation pass over a
//! split shared by `psflow eval`, single-process training and the cluster's
//! Evaluate.

use std::sync::Arc;

use psflow_graph::{Session, TensorName};
use psflow_kernels::Tensor;

use super::{Result, TaskError};
use crate::data::{AugmentConfig, Batch, Dataset, Pipeline, PipelineConfig};

/// Top-1 / top-5 accuracy and mean cross-entropy of a pass over a split.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct EvalResult {
    pub top1: f64,
    pub top5: f64,
    pub loss: f64,
    pub examples: usize,
}

/// Runs `logits` of `session` on every example of `data`, fed to `input`
/// in batches of `batch_size`, preprocessed as `augment`'s eval recipe.
pub fn evaluate_split(
    session: &Session,
    input: &TensorName,
    logits: &TensorName,
    data: Arc<Dataset>,
    augment: &AugmentConfig,
    batch_size: usize,
) -> Result<EvalResult> {
    evaluate_split_with(
        |images| {
            let mut out = session.run(
                &[(input.clone(), images)],
                std::slice::from_ref(logits),
                &[],
            )?;
            Ok(out.remove(0))
        },
        data,
        augment,
        batch_size,
    )
}

/// [`evaluate_split`] with the logits of a batch computed by `logits_of`
/// (a CPU session, or a model on a GPU).
pub fn evaluate_split_with(
    mut logits_of: impl FnMut(Tensor) -> Result<Tensor>,
    data: Arc<Dataset>,
    augment: &AugmentConfig,
    batch_size: usize,
) -> Result<EvalResult> {
    let mut pc = PipelineConfig::eval(batch_size);
    pc.augment = augment.for_eval();
    let mut pipeline = Pipeline::new(data, pc)?;
    let mut r = EvalResult::default();
    let mut loss_sum = 0.0;
    while let Some(batch) = pipeline.next_batch()? {
        let Batch { images, labels, .. } = batch;
        let labels: Vec<i32> = labels.values::<i32>("labels")?.to_vec();
        let logits = logits_of(images)?;
        let (c1, c5) = count_correct(&logits, &labels)?;
        r.top1 += c1 as f64;
        r.top5 += c5 as f64;
        loss_sum += xent_sum(&logits, &labels)?;
        r.examples += labels.len();
    }
    if r.examples == 0 {
        return Err(TaskError::Invalid("the evaluation split is empty".into()));
    }
    let n = r.examples as f64;
    r.top1 /= n;
    r.top5 /= n;
    r.loss = loss_sum / n;
    Ok(r)
}

/// (top-1 correct, top-5 correct) of `logits` `[n, classes]`.
pub fn count_correct(logits: &Tensor, labels: &[i32]) -> Result<(usize, usize)> {
    let (n, c) = logits_shape(logits, labels)?;
    let v = logits.f32s("logits")?;
    let (mut top1, mut top5) = (0, 0);
    for (row, &label) in v.chunks_exact(c).take(n).zip(labels) {
        let target = row[label as usize];
        // Rank of the label: classes scoring strictly higher, ties broken
        // towards the lower index as argmax does.
        let above = row
            .iter()
            .enumerate()
            .filter(|&(j, &x)| x > target || (x == target && j < label as usize))
            .count();
        top1 += usize::from(above == 0);
        top5 += usize::from(above < 5);
    }
    Ok((top1, top5))
}

/// Summed softmax cross-entropy, in f64.
pub fn xent_sum(logits: &Tensor, labels: &[i32]) -> Result<f64> {
    let (_, c) = logits_shape(logits, labels)?;
    let v = logits.f32s("logits")?;
    Ok(v.chunks_exact(c)
        .zip(labels)
        .map(|(row, &l)| {
            let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let s: f64 = row.iter().map(|&x| (x as f64 - m).exp()).sum();
            m + s.ln() - row[l as usize] as f64
        })
        .sum())
}

fn logits_shape(logits: &Tensor, labels: &[i32]) -> Result<(usize, usize)> {
    let s = logits.shape();
    if s.len() != 2 || s[0] != labels.len() || s[1] == 0 {
        return Err(TaskError::Invalid(format!(
            "logits of shape {s:?} do not match {} labels",
            labels.len()
        )));
    }
    if let Some(l) = labels.iter().find(|&&l| l < 0 || l as usize >= s[1]) {
        return Err(TaskError::Invalid(format!("label {l} outside 0..{}", s[1])));
    }
    Ok((s[0], s[1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top1_top5_and_cross_entropy_on_the_host() {
        // Row 0: label 2 is the maximum; row 1: label 0 is 6th of 6;
        // row 2: a tie between classes 1 and 3 goes to the lower index.
        let logits = Tensor::new(
            vec![3, 6],
            vec![
                0.0f32, 1.0, 5.0, 2.0, 3.0, 4.0, //
                -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, //
                0.0, 2.0, 0.0, 2.0, 1.0, 1.0,
            ],
        )
        .unwrap();
        assert_eq!(count_correct(&logits, &[2, 0, 1]).unwrap(), (2, 2));
        assert_eq!(count_correct(&logits, &[2, 1, 3]).unwrap(), (1, 3));
        let x = xent_sum(&logits, &[2, 0, 1]).unwrap();
        let want: f64 = [(0usize, 2usize), (1, 0), (2, 1)]
            .iter()
            .map(|&(r, l)| {
                let row = &logits.f32s("t").unwrap()[r * 6..r * 6 + 6];
                let z: f64 = row.iter().map(|&v| (v as f64).exp()).sum();
                z.ln() - row[l] as f64
            })
            .sum();
        assert!((x - want).abs() < 1e-9, "{x} vs {want}");
        assert!(count_correct(&logits, &[0, 6, 0]).is_err());
        assert!(count_correct(&logits, &[0, 1]).is_err());
    }
}
