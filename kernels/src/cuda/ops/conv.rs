//! `Conv2D` with any filter size and stride on CUDA, and its two gradients:
//! im2col (kernels/src/cuda/conv.cu) + the TF32 GEMM of the pointwise path,
//! and for the input gradient a GEMM + col2im (a gather, no atomics).
//! A 1×1 stride-1 VALID/SAME convolution needs no column matrix and goes
//! straight to [`CudaDevice::pointwise_conv2d`] and its gradients.

use cudarc::driver::{DeviceRepr, PushKernelArg};

use super::{elementwise, to_i32};
use crate::cuda::context::{driver_err, CudaDevice, DeviceTensor};
use crate::cuda::nvrtc::Source;
use crate::ops::conv::Geom as CpuGeom;
use crate::{Conv2dParams, Error, Result};

const FORWARD: &str = "Conv2D";
const BACKPROP_INPUT: &str = "Conv2DBackpropInput";
const BACKPROP_FILTER: &str = "Conv2DBackpropFilter";

/// `ConvGeom` of conv.cu, field for field.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeom {
    pub n: i32,
    pub h: i32,
    pub w: i32,
    pub c: i32,
    pub kh: i32,
    pub kw: i32,
    pub sh: i32,
    pub sw: i32,
    pub oh: i32,
    pub ow: i32,
    pub pad_top: i32,
    pub pad_left: i32,
}

// SAFETY: a `repr(C)` struct of 12 `i32`, the same layout as the C struct.
unsafe impl DeviceRepr for ConvGeom {}

/// A checked convolution geometry and the GEMM sizes it implies.
#[derive(Debug, Clone, Copy)]
struct Geom {
    g: ConvGeom,
    /// Output pixels `n·oh·ow` (rows of the column matrix).
    rows: usize,
    /// Taps `kh·kw·c` (columns of the column matrix).
    taps: usize,
    out: [usize; 4],
    /// A 1×1 filter at stride 1 with no padding: the column matrix is the
    /// input itself.
    pointwise: bool,
}

fn geometry(
    op: &'static str,
    input: [usize; 4],
    filter: [usize; 4],
    p: &Conv2dParams,
) -> Result<Geom> {
    // The CPU op's checks and window rules.
    let c = CpuGeom::new(op, input, filter, p)?;
    let g = ConvGeom {
        n: to_i32(op, "batch", c.n)?,
        h: to_i32(op, "height", c.h)?,
        w: to_i32(op, "width", c.w)?,
        c: to_i32(op, "channels", c.c)?,
        kh: to_i32(op, "filter height", c.kh)?,
        kw: to_i32(op, "filter width", c.kw)?,
        sh: to_i32(op, "stride", c.sh)?,
        sw: to_i32(op, "stride", c.sw)?,
        oh: to_i32(op, "output height", c.oh)?,
        ow: to_i32(op, "output width", c.ow)?,
        pad_top: to_i32(op, "padding", c.pt)?,
        pad_left: to_i32(op, "padding", c.pl)?,
    };
    let pointwise = c.kh == 1 && c.kw == 1 && (c.sh, c.sw) == (1, 1) && (c.oh, c.ow) == (c.h, c.w);
    Ok(Geom {
        g,
        rows: c.n * c.oh * c.ow,
        taps: c.kh * c.kw * c.c,
        out: [c.n, c.oh, c.ow, c.o],
        pointwise,
    })
}

fn rank4(op: &'static str, what: &str, shape: &[usize]) -> Result<[usize; 4]> {
    <[usize; 4]>::try_from(shape)
        .map_err(|_| Error::shape(op, format!("{what} must have rank 4, got shape {shape:?}")))
}

fn check_dy(op: &'static str, want: [usize; 4], dy: &DeviceTensor) -> Result<()> {
    if dy.shape() != want {
        return Err(Error::shape(
            op,
            format!("out_backprop has shape {:?}, expected {want:?}", dy.shape()),
        ));
    }
    Ok(())
}

impl CudaDevice {
    /// `Conv2D`: input `[n, h, w, c]` (NHWC) by filter `[kh, kw, c, o]`
    /// under TensorFlow's window rules (dilations 1).
    pub fn conv2d(
        &self,
        input: &DeviceTensor,
        filter: &DeviceTensor,
        p: &Conv2dParams,
    ) -> Result<DeviceTensor> {
        let x = rank4(FORWARD, "input", input.shape())?;
        let f = rank4(FORWARD, "filter", filter.shape())?;
        let geom = geometry(FORWARD, x, f, p)?;
        if geom.pointwise {
            return self.pointwise_conv2d(input, filter);
        }
        let col = self.im2col(input, &geom)?;
        let mut y = self.zeros(geom.out.to_vec())?;
        self.gemm_tf32(
            FORWARD,
            &col,
            false,
            filter,
            false,
            &mut y,
            [geom.rows, f[3], geom.taps],
        )?;
        Ok(y)
    }

    /// `Conv2DBackpropInput`: `dx = col2im(dy · Wᵀ)`.
    pub fn conv2d_backprop_input(
        &self,
        input_sizes: [usize; 4],
        filter: &DeviceTensor,
        out_backprop: &DeviceTensor,
        p: &Conv2dParams,
    ) -> Result<DeviceTensor> {
        let f = rank4(BACKPROP_INPUT, "filter", filter.shape())?;
        let geom = geometry(BACKPROP_INPUT, input_sizes, f, p)?;
        check_dy(BACKPROP_INPUT, geom.out, out_backprop)?;
        if geom.pointwise {
            return self.pointwise_conv2d_backprop_input(input_sizes, filter, out_backprop);
        }
        let mut dcol = self.zeros(vec![geom.rows, geom.taps])?;
        self.gemm_tf32(
            BACKPROP_INPUT,
            out_backprop,
            false,
            filter,
            true,
            &mut dcol,
            [geom.rows, geom.taps, f[3]],
        )?;
        let mut dx = self.uninit(input_sizes.to_vec())?;
        let total = dx.len();
        if total > 0 {
            let func = self.function(Source::Conv, "conv_col2im")?;
            let mut launch = self.stream().launch_builder(&func);
            launch.arg(&dcol.buf).arg(&mut dx.buf).arg(&geom.g);
            // SAFETY: dcol holds rows·taps floats and dx n·h·w·c, the sizes
            // the kernel derives from the geometry it is given.
            unsafe { launch.launch(elementwise(total)) }.map_err(driver_err(BACKPROP_INPUT))?;
        }
        Ok(dx)
    }

    /// `Conv2DBackpropFilter`: `dW = im2col(x)ᵀ · dy`.
    pub fn conv2d_backprop_filter(
        &self,
        input: &DeviceTensor,
        filter_sizes: [usize; 4],
        out_backprop: &DeviceTensor,
        p: &Conv2dParams,
    ) -> Result<DeviceTensor> {
        let x = rank4(BACKPROP_FILTER, "input", input.shape())?;
        let geom = geometry(BACKPROP_FILTER, x, filter_sizes, p)?;
        check_dy(BACKPROP_FILTER, geom.out, out_backprop)?;
        if geom.pointwise {
            return self.pointwise_conv2d_backprop_filter(input, filter_sizes, out_backprop);
        }
        let col = self.im2col(input, &geom)?;
        let mut dw = self.zeros(filter_sizes.to_vec())?;
        self.gemm_tf32(
            BACKPROP_FILTER,
            &col,
            true,
            out_backprop,
            false,
            &mut dw,
            [geom.taps, filter_sizes[3], geom.rows],
        )?;
        Ok(dw)
    }

    /// The column matrix `[n·oh·ow, kh·kw·c]` of `input`.
    fn im2col(&self, input: &DeviceTensor, geom: &Geom) -> Result<DeviceTensor> {
        let mut col = self.uninit(vec![geom.rows, geom.taps])?;
        let total = geom.rows * geom.taps;
        if total > 0 {
            let func = self.function(Source::Conv, "conv_im2col")?;
            let mut launch = self.stream().launch_builder(&func);
            launch.arg(&input.buf).arg(&mut col.buf).arg(&geom.g);
            // SAFETY: input holds n·h·w·c floats and col rows·taps, the
            // sizes the kernel derives from the geometry.
            unsafe { launch.launch(elementwise(total)) }.map_err(driver_err(FORWARD))?;
        }
        Ok(col)
    }
}
