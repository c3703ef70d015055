//! FusedBatchNormV3 (+ ReLU6) and its gradient on CUDA
//! (kernels/src/cuda/batchnorm.cu), with the CPU op's outputs and formulas.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::{elementwise, to_i32};
use crate::cuda::context::{driver_err, CudaDevice, DeviceTensor};
use crate::cuda::nvrtc::Source;
use crate::{BatchNormParams, Error, Result};

/// Channels and thread rows of a statistics block (`BN_CH`, `BN_ROWS`).
const CH: u32 = 32;
const ROWS: u32 = 8;
/// Rows one statistics block sums (32 per thread).
const ROWS_PER_SPLIT: usize = 256;
/// Threads of the per-channel finalize kernels.
const PER_CHANNEL_BLOCK: u32 = 128;

/// The outputs of [`CudaDevice::fused_batch_norm`], named as
/// [`crate::BatchNormOutput`] (`reserve_space_3` is not materialized).
#[derive(Debug)]
pub struct DeviceBatchNormOutput {
    pub y: DeviceTensor,
    pub batch_mean: DeviceTensor,
    pub batch_variance: DeviceTensor,
    pub reserve_space_1: DeviceTensor,
    pub reserve_space_2: DeviceTensor,
}

/// The outputs of [`CudaDevice::fused_batch_norm_grad`].
#[derive(Debug)]
pub struct DeviceBatchNormGrad {
    pub dx: DeviceTensor,
    pub dscale: DeviceTensor,
    pub doffset: DeviceTensor,
}

/// A null device pointer, for the kernels' optional arguments.
const NULL: u64 = 0;

fn rows_by_channels(op: &'static str, x: &DeviceTensor) -> Result<(usize, usize)> {
    let Some(&c) = x.shape().last() else {
        return Err(Error::shape(
            op,
            "x must have rank at least 1 (channels last), got a scalar",
        ));
    };
    Ok((x.len().checked_div(c).unwrap_or(0), c))
}

fn per_channel(op: &'static str, what: &str, t: &DeviceTensor, c: usize) -> Result<()> {
    if t.shape() != [c] {
        return Err(Error::shape(
            op,
            format!(
                "{what} must have shape [{c}] (the channel count of x), got {:?}",
                t.shape()
            ),
        ));
    }
    Ok(())
}

fn splits_for(rows: usize) -> usize {
    rows.div_ceil(ROWS_PER_SPLIT).clamp(1, 65_535)
}

fn stats_grid(c: usize, splits: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((c as u32).div_ceil(CH), splits as u32, 1),
        block_dim: (CH, ROWS, 1),
        shared_mem_bytes: 0,
    }
}

fn per_channel_grid(c: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((c as u32).div_ceil(PER_CHANNEL_BLOCK), 1, 1),
        block_dim: (PER_CHANNEL_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaDevice {
    /// `FusedBatchNormV3` over the last axis of `x`, followed by ReLU6 when
    /// `relu6`. In training `mean`/`variance` may be empty when
    /// `exponential_avg_factor` is 1, as on the CPU.
    #[allow(clippy::too_many_arguments)]
    pub fn fused_batch_norm(
        &self,
        x: &DeviceTensor,
        scale: &DeviceTensor,
        offset: &DeviceTensor,
        mean: &DeviceTensor,
        variance: &DeviceTensor,
        p: &BatchNormParams,
        relu6: bool,
    ) -> Result<DeviceBatchNormOutput> {
        const OP: &str = "FusedBatchNormV3";
        let (rows, c) = rows_by_channels(OP, x)?;
        per_channel(OP, "scale", scale, c)?;
        per_channel(OP, "offset", offset, c)?;
        let need_running = !p.is_training || p.exponential_avg_factor != 1.0;
        if need_running || !mean.is_empty() {
            per_channel(OP, "mean", mean, c)?;
        }
        if need_running || !variance.is_empty() {
            per_channel(OP, "variance", variance, c)?;
        }
        if p.is_training && rows == 0 {
            return Err(Error::unsupported(
                OP,
                "an empty batch in training (TensorFlow returns NaN statistics)",
            ));
        }
        let mut y = self.zeros(x.shape().to_vec())?;
        let mut save_mean = self.zeros(vec![c])?;
        let mut save_var = self.zeros(vec![c])?;
        let mut out_mean = self.zeros(vec![c])?;
        let mut out_var = self.zeros(vec![c])?;
        let mut coef = self.zeros(vec![c])?;
        if c == 0 {
            return Ok(DeviceBatchNormOutput {
                y,
                batch_mean: out_mean,
                batch_variance: out_var,
                reserve_space_1: save_mean,
                reserve_space_2: save_var,
            });
        }
        let rows_i = rows as i64;
        let c_i = to_i32(OP, "channels", c)?;

        let splits = if p.is_training { splits_for(rows) } else { 0 };
        let mut part_sum = self.alloc(splits * c)?;
        let mut part_sq = self.alloc(splits * c)?;
        if p.is_training {
            let f = self.function(Source::BatchNorm, "bn_stats_partial")?;
            let mut launch = self.stream().launch_builder(&f);
            launch
                .arg(&x.buf)
                .arg(&rows_i)
                .arg(&c_i)
                .arg(&mut part_sum)
                .arg(&mut part_sq);
            // SAFETY: x holds rows·c floats; part_* hold splits·c, one per
            // (split y, channel) of the grid; channels ≥ c are skipped.
            unsafe { launch.launch(stats_grid(c, splits)) }.map_err(driver_err(OP))?;
        }

        let f = self.function(Source::BatchNorm, "bn_finalize")?;
        let splits_i = splits as i32;
        let (factor, eps) = (p.exponential_avg_factor, p.epsilon);
        let mut launch = self.stream().launch_builder(&f);
        launch
            .arg(&x.buf)
            .arg(&part_sum)
            .arg(&part_sq)
            .arg(&splits_i)
            .arg(&rows_i)
            .arg(&c_i)
            .arg(&scale.buf);
        if mean.is_empty() {
            launch.arg(&NULL).arg(&NULL);
        } else {
            launch.arg(&mean.buf).arg(&variance.buf);
        }
        launch
            .arg(&factor)
            .arg(&eps)
            .arg(&mut save_mean.buf)
            .arg(&mut save_var.buf)
            .arg(&mut out_mean.buf)
            .arg(&mut out_var.buf)
            .arg(&mut coef.buf);
        // SAFETY: every per-channel buffer holds c floats (checked above);
        // run_mean/run_var are only read when the factor is not 1 or in
        // inference, where they were checked to be [c].
        unsafe { launch.launch(per_channel_grid(c)) }.map_err(driver_err(OP))?;

        let f = self.function(Source::BatchNorm, "bn_apply")?;
        let relu6_i = relu6 as i32;
        let mut launch = self.stream().launch_builder(&f);
        launch
            .arg(&x.buf)
            .arg(&save_mean.buf)
            .arg(&coef.buf)
            .arg(&offset.buf)
            .arg(&mut y.buf)
            .arg(&rows_i)
            .arg(&c_i)
            .arg(&relu6_i);
        // SAFETY: x and y hold rows·c floats, the others c.
        unsafe { launch.launch(elementwise(rows * c)) }.map_err(driver_err(OP))?;

        Ok(DeviceBatchNormOutput {
            y,
            batch_mean: out_mean,
            batch_variance: out_var,
            reserve_space_1: save_mean,
            reserve_space_2: save_var,
        })
    }

    /// `FusedBatchNormGradV3` (`y = None`) or the gradient of
    /// `relu6(batch_norm(x))` (`y = Some(forward output)`).
    #[allow(clippy::too_many_arguments)]
    pub fn fused_batch_norm_grad(
        &self,
        dy: &DeviceTensor,
        y: Option<&DeviceTensor>,
        x: &DeviceTensor,
        scale: &DeviceTensor,
        reserve_space_1: &DeviceTensor,
        reserve_space_2: &DeviceTensor,
        epsilon: f32,
        is_training: bool,
    ) -> Result<DeviceBatchNormGrad> {
        const OP: &str = "FusedBatchNormGradV3";
        let (rows, c) = rows_by_channels(OP, x)?;
        for (what, t) in [("y_backprop", Some(dy)), ("y (the forward output)", y)] {
            if let Some(t) = t {
                if t.shape() != x.shape() {
                    return Err(Error::shape(
                        OP,
                        format!(
                            "{what} has shape {:?} but x has shape {:?}",
                            t.shape(),
                            x.shape()
                        ),
                    ));
                }
            }
        }
        per_channel(OP, "scale", scale, c)?;
        per_channel(OP, "reserve_space_1 (mean)", reserve_space_1, c)?;
        per_channel(OP, "reserve_space_2 (variance)", reserve_space_2, c)?;
        let mut dx = self.zeros(x.shape().to_vec())?;
        let mut dscale = self.zeros(vec![c])?;
        let mut doffset = self.zeros(vec![c])?;
        if c == 0 {
            return Ok(DeviceBatchNormGrad {
                dx,
                dscale,
                doffset,
            });
        }
        let rows_i = rows as i64;
        let c_i = to_i32(OP, "channels", c)?;
        let splits = if rows == 0 { 0 } else { splits_for(rows) };
        let mut part_g = self.alloc(splits * c)?;
        let mut part_gx = self.alloc(splits * c)?;
        if splits > 0 {
            let f = self.function(Source::BatchNorm, "bn_grad_partial")?;
            let mut launch = self.stream().launch_builder(&f);
            launch.arg(&dy.buf);
            match y {
                Some(y) => launch.arg(&y.buf),
                None => launch.arg(&NULL),
            };
            launch
                .arg(&x.buf)
                .arg(&reserve_space_1.buf)
                .arg(&rows_i)
                .arg(&c_i)
                .arg(&mut part_g)
                .arg(&mut part_gx);
            // SAFETY: dy, y, x hold rows·c floats; part_* splits·c.
            unsafe { launch.launch(stats_grid(c, splits)) }.map_err(driver_err(OP))?;
        }

        let (mut k1, mut k2, mut k3) = (self.alloc(c)?, self.alloc(c)?, self.alloc(c)?);
        let f = self.function(Source::BatchNorm, "bn_grad_finalize")?;
        let splits_i = splits as i32;
        let training_i = is_training as i32;
        let mut launch = self.stream().launch_builder(&f);
        launch
            .arg(&part_g)
            .arg(&part_gx)
            .arg(&splits_i)
            .arg(&rows_i)
            .arg(&c_i)
            .arg(&scale.buf)
            .arg(&reserve_space_2.buf)
            .arg(&epsilon)
            .arg(&training_i)
            .arg(&mut dscale.buf)
            .arg(&mut doffset.buf)
            .arg(&mut k1)
            .arg(&mut k2)
            .arg(&mut k3);
        // SAFETY: all per-channel buffers hold c floats, part_* splits·c.
        unsafe { launch.launch(per_channel_grid(c)) }.map_err(driver_err(OP))?;

        if rows > 0 {
            let f = self.function(Source::BatchNorm, "bn_grad_apply")?;
            let mut launch = self.stream().launch_builder(&f);
            launch.arg(&dy.buf);
            match y {
                Some(y) => launch.arg(&y.buf),
                None => launch.arg(&NULL),
            };
            launch
                .arg(&x.buf)
                .arg(&reserve_space_1.buf)
                .arg(&k1)
                .arg(&k2)
                .arg(&k3)
                .arg(&mut dx.buf)
                .arg(&rows_i)
                .arg(&c_i);
            // SAFETY: dy, y, x, dx hold rows·c floats, the rest c.
            unsafe { launch.launch(elementwise(rows * c)) }.map_err(driver_err(OP))?;
        }
        Ok(DeviceBatchNormGrad {
            dx,
            dscale,
            doffset,
        })
    }
}
