//! AvgPool and AvgPoolGrad on CUDA (kernels/src/cuda/avgpool.cu), NHWC, with
//! the CPU op's geometry and errors ([`crate::ops::pool`]): TensorFlow's
//! SAME (odd padding pixel after) or VALID windows, each divided by the
//! number of its elements inside the input.

use cudarc::driver::{DeviceRepr, PushKernelArg};

use super::{elementwise, to_i32};
use crate::cuda::context::{driver_err, CudaDevice, DeviceTensor};
use crate::cuda::nvrtc::Source;
use crate::{window_2d, Error, PoolParams, Result};

/// `struct PoolGeo` of avgpool.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct PoolGeo {
    n: i32,
    h: i32,
    w: i32,
    c: i32,
    oh: i32,
    ow: i32,
    kh: i32,
    kw: i32,
    sh: i32,
    sw: i32,
    pad_top: i32,
    pad_left: i32,
}

// SAFETY: twelve `i32`s, `repr(C)`, as the CUDA struct of twelve ints.
unsafe impl DeviceRepr for PoolGeo {}

fn rank4(op: &'static str, what: &str, shape: &[usize]) -> Result<[usize; 4]> {
    <[usize; 4]>::try_from(shape)
        .map_err(|_| Error::shape(op, format!("{what} must be 4-D NHWC, got shape {shape:?}")))
}

fn geo(op: &'static str, shape: [usize; 4], p: &PoolParams) -> Result<PoolGeo> {
    let g = window_2d(op, [shape[1], shape[2]], p.ksize, p.strides, p.padding)?;
    let i = |what: &str, v: usize| to_i32(op, what, v);
    Ok(PoolGeo {
        n: i("batch", shape[0])?,
        h: i("height", shape[1])?,
        w: i("width", shape[2])?,
        c: i("channels", shape[3])?,
        oh: i("output height", g.rows.out)?,
        ow: i("output width", g.cols.out)?,
        kh: i("window height", p.ksize[0])?,
        kw: i("window width", p.ksize[1])?,
        sh: i("stride", p.strides[0])?,
        sw: i("stride", p.strides[1])?,
        pad_top: i("padding", g.rows.pad_before)?,
        pad_left: i("padding", g.cols.pad_before)?,
    })
}

impl CudaDevice {
    /// `AvgPool` (NHWC).
    pub fn avg_pool(&self, x: &DeviceTensor, p: &PoolParams) -> Result<DeviceTensor> {
        const OP: &str = "AvgPool";
        let shape = rank4(OP, "input", x.shape())?;
        let g = geo(OP, shape, p)?;
        let out_shape = vec![shape[0], g.oh as usize, g.ow as usize, shape[3]];
        let mut y = self.uninit(out_shape)?;
        let n = y.len();
        if n == 0 {
            return Ok(y);
        }
        let f = self.function(Source::AvgPool, "avg_pool_forward")?;
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(&x.buf).arg(&mut y.buf).arg(&g);
        // SAFETY: y holds n·oh·ow·c floats, one per thread index; windows
        // are clamped to the input's h × w, which x holds (shape checked).
        unsafe { launch.launch(elementwise(n)) }.map_err(driver_err(OP))?;
        Ok(y)
    }

    /// `AvgPoolGrad(orig_input_shape, grad)`.
    pub fn avg_pool_grad(
        &self,
        orig_input_shape: [usize; 4],
        grad: &DeviceTensor,
        p: &PoolParams,
    ) -> Result<DeviceTensor> {
        const OP: &str = "AvgPoolGrad";
        let g = geo(OP, orig_input_shape, p)?;
        let want = [
            orig_input_shape[0],
            g.oh as usize,
            g.ow as usize,
            orig_input_shape[3],
        ];
        if grad.shape() != want {
            return Err(Error::shape(
                OP,
                format!(
                    "grad has shape {:?} but the pooling output has shape {want:?}",
                    grad.shape()
                ),
            ));
        }
        let mut dx = self.uninit(orig_input_shape.to_vec())?;
        let n = dx.len();
        if n == 0 {
            return Ok(dx);
        }
        let f = self.function(Source::AvgPool, "avg_pool_backward")?;
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(&grad.buf).arg(&mut dx.buf).arg(&g);
        // SAFETY: dx holds n·h·w·c floats, one per thread index; the
        // output windows read are clamped to [0, oh) × [0, ow) of grad,
        // whose shape was checked.
        unsafe { launch.launch(elementwise(n)) }.map_err(driver_err(OP))?;
        Ok(dx)
    }
}
