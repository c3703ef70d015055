//! Softmax and softmax cross-entropy on CUDA (kernels/src/cuda/softmax.cu),
//! as the CPU ops ([`crate::ops::softmax`]): rows of the last axis, shifted
//! by their maximum, exp-summed in double.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::to_i32;
use crate::cuda::context::{driver_err, CudaDevice, DeviceTensor};
use crate::cuda::nvrtc::Source;
use crate::{DType, Error, Result, Tensor};

/// Rows per block (one warp each), `SM_WARPS`.
const WARPS: u32 = 8;

/// Class ids on the device for the sparse cross-entropy, checked on upload
/// to lie in `[0, classes)`; stored as floats (exact below 2^24).
#[derive(Debug)]
pub struct DeviceLabels {
    ids: DeviceTensor,
    classes: usize,
}

impl DeviceLabels {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn classes(&self) -> usize {
        self.classes
    }
}

fn rows_grid(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((rows as u32).div_ceil(WARPS).max(1), 1, 1),
        block_dim: (32, WARPS, 1),
        shared_mem_bytes: 0,
    }
}

fn check_2d(op: &'static str, logits: &DeviceTensor) -> Result<(usize, usize)> {
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

fn rows_of(op: &'static str, rows: usize) -> Result<i64> {
    u32::try_from(rows.div_ceil(WARPS as usize))
        .map_err(|_| Error::unsupported(op, format!("{rows} rows exceed one CUDA grid")))?;
    Ok(rows as i64)
}

impl CudaDevice {
    /// Uploads int32/int64 class ids `[batch]` for
    /// [`CudaDevice::sparse_softmax_cross_entropy`], checking each lies in
    /// `[0, classes)` (the CPU op's error, naming the row).
    pub fn upload_labels(&self, labels: &Tensor, classes: usize) -> Result<DeviceLabels> {
        const OP: &str = "SparseSoftmaxCrossEntropyWithLogits";
        if labels.rank() != 1 {
            return Err(Error::shape(
                OP,
                format!("labels must be [batch], got shape {:?}", labels.shape()),
            ));
        }
        let ids = match labels.dtype() {
            DType::I32 | DType::I64 => labels.to_i64_vec(OP)?,
            other => {
                return Err(Error::DType {
                    op: OP,
                    what: "labels",
                    expected: DType::I32,
                    got: other,
                })
            }
        };
        if classes > 1 << 24 {
            return Err(Error::unsupported(
                OP,
                format!("{classes} classes: the CUDA kernel stores ids as f32, exact below 2^24"),
            ));
        }
        if let Some((row, &l)) = ids
            .iter()
            .enumerate()
            .find(|(_, &l)| l < 0 || l >= classes as i64)
        {
            return Err(Error::invalid(
                OP,
                format!("label {l} in row {row} is outside the valid range [0, {classes})"),
            ));
        }
        let as_f32 = Tensor::new(vec![ids.len()], ids.iter().map(|&l| l as f32).collect())?;
        Ok(DeviceLabels {
            ids: self.upload(&as_f32)?,
            classes,
        })
    }

    /// `Softmax` over the last axis.
    pub fn softmax(&self, logits: &DeviceTensor) -> Result<DeviceTensor> {
        const OP: &str = "Softmax";
        let cols = match logits.shape().last() {
            Some(&c) if c > 0 => c,
            _ => {
                return Err(Error::shape(
                    OP,
                    format!(
                        "logits must have rank ≥ 1 and a non-empty last axis, got shape {:?}",
                        logits.shape()
                    ),
                ))
            }
        };
        let rows = logits.len() / cols;
        let mut y = self.uninit(logits.shape().to_vec())?;
        if rows == 0 {
            return Ok(y);
        }
        let (rows_i, cols_i) = (rows_of(OP, rows)?, to_i32(OP, "classes", cols)?);
        let f = self.function(Source::Softmax, "softmax_rows")?;
        let mut launch = self.stream().launch_builder(&f);
        launch
            .arg(&logits.buf)
            .arg(&mut y.buf)
            .arg(&rows_i)
            .arg(&cols_i);
        // SAFETY: x and y hold rows·cols floats; warp r < rows touches row r.
        unsafe { launch.launch(rows_grid(rows)) }.map_err(driver_err(OP))?;
        Ok(y)
    }

    /// `SparseSoftmaxCrossEntropyWithLogits`: logits `[batch, classes]`,
    /// labels from [`CudaDevice::upload_labels`] → `(loss [batch], backprop
    /// [batch, classes])`.
    pub fn sparse_softmax_cross_entropy(
        &self,
        logits: &DeviceTensor,
        labels: &DeviceLabels,
    ) -> Result<(DeviceTensor, DeviceTensor)> {
        const OP: &str = "SparseSoftmaxCrossEntropyWithLogits";
        let (batch, classes) = check_2d(OP, logits)?;
        if labels.len() != batch {
            return Err(Error::shape(
                OP,
                format!(
                    "labels must have shape [{batch}] to match logits {:?}, got [{}]",
                    logits.shape(),
                    labels.len()
                ),
            ));
        }
        if labels.classes != classes {
            return Err(Error::invalid(
                OP,
                format!(
                    "labels were checked against {} classes but logits have {classes}",
                    labels.classes
                ),
            ));
        }
        self.xent(OP, "xent_sparse", logits, &labels.ids, batch, classes)
    }

    /// `SoftmaxCrossEntropyWithLogits` with dense label probabilities of
    /// the logits' shape.
    pub fn softmax_cross_entropy(
        &self,
        logits: &DeviceTensor,
        labels: &DeviceTensor,
    ) -> Result<(DeviceTensor, DeviceTensor)> {
        const OP: &str = "SoftmaxCrossEntropyWithLogits";
        let (batch, classes) = check_2d(OP, logits)?;
        if labels.shape() != logits.shape() {
            return Err(Error::shape(
                OP,
                format!(
                    "labels have shape {:?} but logits have {:?}",
                    labels.shape(),
                    logits.shape()
                ),
            ));
        }
        self.xent(OP, "xent_dense", logits, labels, batch, classes)
    }

    fn xent(
        &self,
        op: &'static str,
        kernel: &'static str,
        logits: &DeviceTensor,
        labels: &DeviceTensor,
        batch: usize,
        classes: usize,
    ) -> Result<(DeviceTensor, DeviceTensor)> {
        let mut loss = self.uninit(vec![batch])?;
        let mut back = self.uninit(logits.shape().to_vec())?;
        if batch == 0 {
            return Ok((loss, back));
        }
        let (rows_i, cols_i) = (rows_of(op, batch)?, to_i32(op, "classes", classes)?);
        let f = self.function(Source::Softmax, kernel)?;
        let mut launch = self.stream().launch_builder(&f);
        launch
            .arg(&logits.buf)
            .arg(&labels.buf)
            .arg(&mut loss.buf)
            .arg(&mut back.buf)
            .arg(&rows_i)
            .arg(&cols_i);
        // SAFETY: logits and back hold batch·classes floats, loss batch;
        // labels hold batch ids in [0, classes) (checked on upload) or
        // batch·classes probabilities (shape checked).
        unsafe { launch.launch(rows_grid(batch)) }.map_err(driver_err(op))?;
        Ok((loss, back))
    }
}
