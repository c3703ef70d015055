//! FusedBatchNormV3 and FusedBatchNormGradV3 over the channel (last) axis of
//! NHWC, plus the fused batch norm + ReLU6 pair the training step uses.

mod par;
mod simd;

pub use simd::Level;

use crate::{Error, Result, Tensor};

/// Attributes of `FusedBatchNormV3`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNormParams {
    pub epsilon: f32,
    /// Weight of the new batch statistics in the running averages that the
    /// op returns in training mode (1.0: return the batch statistics).
    pub exponential_avg_factor: f32,
    pub is_training: bool,
}

/// The six outputs of `FusedBatchNormV3`, as TensorFlow's CPU kernel returns
/// them: `y`; `batch_mean`/`batch_variance` (in training the running
/// averages updated with the batch's mean and Bessel-corrected variance, in
/// inference the given mean/variance); `reserve_space_1`/`_2`, the batch mean
/// and biased variance that the gradient needs; `reserve_space_3` a scalar 0 (as TensorFlow's CPU kernel).
#[derive(Debug, Clone)]
pub struct BatchNormOutput {
    pub y: Tensor,
    pub batch_mean: Tensor,
    pub batch_variance: Tensor,
    pub reserve_space_1: Tensor,
    pub reserve_space_2: Tensor,
    pub reserve_space_3: Tensor,
}

/// The outputs of `FusedBatchNormGradV3` that carry values:
/// `(x_backprop, scale_backprop, offset_backprop)`.
#[derive(Debug, Clone)]
pub struct BatchNormGrad {
    pub dx: Tensor,
    pub dscale: Tensor,
    pub doffset: Tensor,
}

/// `FusedBatchNormV3`: x `[n, h, w, c]` (any rank ≥ 1, channels last),
/// scale/offset/mean/variance `[c]` (mean/variance may be empty in training).
pub fn fused_batch_norm(
    x: &Tensor,
    scale: &Tensor,
    offset: &Tensor,
    mean: &Tensor,
    variance: &Tensor,
    p: &BatchNormParams,
) -> Result<BatchNormOutput> {
    forward(
        "FusedBatchNormV3",
        Level::detect(),
        x,
        [scale, offset, mean, variance],
        p,
        false,
    )
}

/// `FusedBatchNormGradV3`: `reserve_space_1/2` are the saved mean and
/// variance (batch statistics in training, population ones in inference).
pub fn fused_batch_norm_grad(
    dy: &Tensor,
    x: &Tensor,
    scale: &Tensor,
    reserve_space_1: &Tensor,
    reserve_space_2: &Tensor,
    epsilon: f32,
    is_training: bool,
) -> Result<BatchNormGrad> {
    backward(
        "FusedBatchNormGradV3",
        Level::detect(),
        dy,
        None,
        x,
        [scale, reserve_space_1, reserve_space_2],
        epsilon,
        is_training,
    )
}

/// Training-mode batch norm followed by ReLU6 in one pass over memory:
/// the same outputs as `fused_batch_norm` with `y = relu6(bn(x))`.
pub fn fused_batch_norm_relu6(
    x: &Tensor,
    scale: &Tensor,
    offset: &Tensor,
    mean: &Tensor,
    variance: &Tensor,
    p: &BatchNormParams,
) -> Result<BatchNormOutput> {
    forward(
        "FusedBatchNormRelu6",
        Level::detect(),
        x,
        [scale, offset, mean, variance],
        p,
        true,
    )
}

/// Gradient of `relu6(fused_batch_norm(x))`: `y` is the forward's output
/// (after ReLU6), `dy` the gradient w.r.t. it. Equal to `Relu6Grad` followed
/// by `FusedBatchNormGradV3`, in one pass.
#[allow(clippy::too_many_arguments)]
pub fn fused_batch_norm_relu6_grad(
    dy: &Tensor,
    y: &Tensor,
    x: &Tensor,
    scale: &Tensor,
    reserve_space_1: &Tensor,
    reserve_space_2: &Tensor,
    epsilon: f32,
    is_training: bool,
) -> Result<BatchNormGrad> {
    backward(
        "FusedBatchNormRelu6Grad",
        Level::detect(),
        dy,
        Some(y),
        x,
        [scale, reserve_space_1, reserve_space_2],
        epsilon,
        is_training,
    )
}

/// The ops above with their inner loops at a chosen SIMD level (capped at
/// what the CPU has), so tests and benches can run every level.
pub mod at_level {
    use super::*;

    fn cap(level: Level) -> Level {
        if level > Level::detect() {
            Level::detect()
        } else {
            level
        }
    }

    /// [`fused_batch_norm`] (`relu6 = false`) or
    /// [`fused_batch_norm_relu6`] (`relu6 = true`) at `level`.
    pub fn forward(
        level: Level,
        x: &Tensor,
        params: [&Tensor; 4],
        p: &BatchNormParams,
        relu6: bool,
    ) -> Result<BatchNormOutput> {
        super::forward("FusedBatchNormV3", cap(level), x, params, p, relu6)
    }

    /// [`fused_batch_norm_grad`] (`y = None`) or
    /// [`fused_batch_norm_relu6_grad`] (`y = Some`) at `level`;
    /// `params = [scale, reserve_space_1, reserve_space_2]`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        level: Level,
        dy: &Tensor,
        y: Option<&Tensor>,
        x: &Tensor,
        params: [&Tensor; 3],
        epsilon: f32,
        is_training: bool,
    ) -> Result<BatchNormGrad> {
        super::backward(
            "FusedBatchNormGradV3",
            cap(level),
            dy,
            y,
            x,
            params,
            epsilon,
            is_training,
        )
    }
}

/// `x` as `rows × c` with channels last.
fn rows_by_channels<'a>(op: &'static str, x: &'a Tensor) -> Result<(&'a [f32], usize, usize)> {
    let v = x.f32s(op)?;
    let c = match x.shape().last() {
        Some(&c) => c,
        None => {
            return Err(Error::shape(
                op,
                "x must have rank at least 1 (channels last), got a scalar",
            ))
        }
    };
    let rows = v.len().checked_div(c).unwrap_or(0);
    Ok((v, rows, c))
}

/// A per-channel `[c]` f32 parameter; `None` when it is empty and `optional`.
fn per_channel<'a>(
    op: &'static str,
    what: &str,
    t: &'a Tensor,
    c: usize,
    optional: bool,
) -> Result<Option<&'a [f32]>> {
    let v = t.f32s(op)?;
    if optional && t.is_empty() && c > 0 {
        return Ok(None);
    }
    if t.shape() != [c] {
        return Err(Error::shape(
            op,
            format!(
                "{what} must have shape [{c}] (the channel count of x), got {:?}",
                t.shape()
            ),
        ));
    }
    Ok(Some(v))
}

fn vec_tensor(v: Vec<f32>) -> Tensor {
    let n = v.len();
    Tensor::new(vec![n], v).expect("length matches")
}

fn forward(
    op: &'static str,
    level: Level,
    x: &Tensor,
    [scale, offset, mean, variance]: [&Tensor; 4],
    p: &BatchNormParams,
    relu6: bool,
) -> Result<BatchNormOutput> {
    let (xv, rows, c) = rows_by_channels(op, x)?;
    let scale = per_channel(op, "scale", scale, c, false)?.unwrap_or(&[]);
    let offset = per_channel(op, "offset", offset, c, false)?.unwrap_or(&[]);
    let f = p.exponential_avg_factor;
    // Running statistics are needed in inference and to blend with in
    // training unless the factor is 1.
    let need_running = !p.is_training || f != 1.0;
    let run_mean = per_channel(op, "mean", mean, c, !need_running)?;
    let run_var = per_channel(op, "variance", variance, c, !need_running)?;
    let eps = p.epsilon as f64;

    let (m, var): (Vec<f32>, Vec<f32>) = if p.is_training {
        if rows == 0 {
            // TensorFlow returns NaN statistics for an empty batch.
            (vec![f32::NAN; c], vec![f32::NAN; c])
        } else {
            let shift = &xv[..c];
            let (s, q) = par::channel_sums(rows, c, |r, a, b| {
                simd::stats(level, &xv[r.start * c..r.end * c], c, shift, a, b)
            });
            let n = rows as f64;
            (0..c)
                .map(|j| {
                    let d = s[j] / n;
                    let mean = shift[j] as f64 + d;
                    let var = (q[j] / n - d * d).max(0.0);
                    (mean as f32, var as f32)
                })
                .unzip()
        }
    } else {
        (
            run_mean.unwrap_or(&[]).to_vec(),
            run_var.unwrap_or(&[]).to_vec(),
        )
    };

    let a: Vec<f32> = (0..c)
        .map(|j| (scale[j] as f64 / (var[j] as f64 + eps).sqrt()) as f32)
        .collect();
    let y = par::map_rows(rows, c, |r, out| {
        simd::normalize(
            level,
            &xv[r.start * c..r.end * c],
            c,
            &m,
            &a,
            offset,
            out,
            relu6,
        )
    });
    let y = Tensor::new(x.shape().to_vec(), y)?;

    let (batch_mean, batch_variance) = if p.is_training {
        // Bessel's correction for the running variance, as TensorFlow.
        let adjust = rows as f64 / rows.saturating_sub(1).max(1) as f64;
        let unbiased: Vec<f32> = var.iter().map(|&v| (v as f64 * adjust) as f32).collect();
        match (run_mean, run_var) {
            (Some(rm), Some(rv)) if f != 1.0 => {
                let blend = |old: &[f32], new: &[f32]| -> Vec<f32> {
                    old.iter()
                        .zip(new)
                        .map(|(&o, &n)| ((1.0 - f) as f64 * o as f64 + f as f64 * n as f64) as f32)
                        .collect()
                };
                (blend(rm, &m), blend(rv, &unbiased))
            }
            _ => (m.clone(), unbiased),
        }
    } else {
        (m.clone(), var.clone())
    };
    Ok(BatchNormOutput {
        y,
        batch_mean: vec_tensor(batch_mean),
        batch_variance: vec_tensor(batch_variance),
        reserve_space_1: vec_tensor(m),
        reserve_space_2: vec_tensor(var),
        reserve_space_3: Tensor::scalar(0f32),
    })
}

#[allow(clippy::too_many_arguments)]
fn backward(
    op: &'static str,
    level: Level,
    dy: &Tensor,
    y: Option<&Tensor>,
    x: &Tensor,
    [scale, mean, variance]: [&Tensor; 3],
    epsilon: f32,
    is_training: bool,
) -> Result<BatchNormGrad> {
    let (xv, rows, c) = rows_by_channels(op, x)?;
    let dyv = dy.f32s(op)?;
    if dy.shape() != x.shape() {
        return Err(Error::shape(
            op,
            format!(
                "y_backprop has shape {:?} but x has shape {:?}",
                dy.shape(),
                x.shape()
            ),
        ));
    }
    let yv = match y {
        Some(y) => {
            if y.shape() != x.shape() {
                return Err(Error::shape(
                    op,
                    format!(
                        "y (the forward output) has shape {:?} but x has shape {:?}",
                        y.shape(),
                        x.shape()
                    ),
                ));
            }
            Some(y.f32s(op)?)
        }
        None => None,
    };
    let scale = per_channel(op, "scale", scale, c, false)?.unwrap_or(&[]);
    let m = per_channel(op, "reserve_space_1 (mean)", mean, c, false)?.unwrap_or(&[]);
    let var = per_channel(op, "reserve_space_2 (variance)", variance, c, false)?.unwrap_or(&[]);
    let eps = epsilon as f64;

    let (s, p) = if rows == 0 {
        (vec![0f64; c], vec![0f64; c])
    } else {
        par::channel_sums(rows, c, |r, a, b| {
            let span = r.start * c..r.end * c;
            simd::grad_stats(
                level,
                &dyv[span.clone()],
                yv.map(|y| &y[span.clone()]),
                &xv[span],
                c,
                m,
                a,
                b,
            )
        })
    };
    let n = rows.max(1) as f64;
    let mut k1 = vec![0f32; c];
    let mut k2 = vec![0f32; c];
    let mut k3 = vec![0f32; c];
    let mut dscale = vec![0f32; c];
    for j in 0..c {
        let inv = 1.0 / (var[j] as f64 + eps).sqrt();
        let g1 = scale[j] as f64 * inv;
        k1[j] = g1 as f32;
        if is_training {
            k2[j] = (-g1 * inv * inv * p[j] / n) as f32;
            k3[j] = (-g1 * s[j] / n) as f32;
        }
        dscale[j] = (p[j] * inv) as f32;
    }
    let doffset: Vec<f32> = s.iter().map(|&v| v as f32).collect();
    let k = simd::GradCoeffs {
        m,
        k1: &k1,
        k2: &k2,
        k3: &k3,
    };
    let dx = par::map_rows(rows, c, |r, out| {
        let span = r.start * c..r.end * c;
        simd::grad_apply(
            level,
            &dyv[span.clone()],
            yv.map(|y| &y[span.clone()]),
            &xv[span],
            c,
            k,
            out,
        )
    });
    Ok(BatchNormGrad {
        dx: Tensor::new(x.shape().to_vec(), dx)?,
        dscale: vec_tensor(dscale),
        doffset: vec_tensor(doffset),
    })
}
