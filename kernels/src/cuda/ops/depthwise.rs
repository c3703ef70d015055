//! DepthwiseConv2dNative and its gradients on CUDA (kernels/src/cuda/depthwise.cu).

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

use super::{elementwise, to_i32};
use crate::cuda::context::{driver_err, CudaDevice, DeviceTensor};
use crate::cuda::nvrtc::Source;
use crate::{window_2d, Conv2dParams, Error, Result};

const FORWARD: &str = "DepthwiseConv2dNative";
const BACKPROP_INPUT: &str = "DepthwiseConv2dNativeBackpropInput";
const BACKPROP_FILTER: &str = "DepthwiseConv2dNativeBackpropFilter";

/// Channels a 3×3 block covers and output tile side: `DW_CH`, `DW_TILE`.
const CH: u32 = 32;
const TILE: u32 = 8;
/// Thread rows of a filter-gradient block (`DW_FG_ROWS`).
const FG_ROWS: u32 = 8;
/// Output pixels one filter-gradient block sums (8 per thread).
const FG_PIXELS_PER_SPLIT: usize = 64;

/// `DwGeom` of depthwise.cu, field for field.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DwGeom {
    pub n: i32,
    pub h: i32,
    pub w: i32,
    pub c: i32,
    pub m: i32,
    pub kh: i32,
    pub kw: i32,
    pub sh: i32,
    pub sw: i32,
    pub oh: i32,
    pub ow: i32,
    pub pad_top: i32,
    pub pad_left: i32,
}

// SAFETY: a `repr(C)` struct of 13 `i32`, the same layout as the C struct.
unsafe impl DeviceRepr for DwGeom {}

impl DwGeom {
    /// The geometry of a depthwise convolution of `input` (NHWC) by
    /// `filter` (`[kh, kw, c, m]`), TensorFlow's window rules.
    pub fn new(
        op: &'static str,
        input: [usize; 4],
        filter: [usize; 4],
        p: &Conv2dParams,
    ) -> Result<DwGeom> {
        let [n, h, w, c] = input;
        let [kh, kw, fc, m] = filter;
        if fc != c {
            return Err(Error::shape(
                op,
                format!(
                    "filter {filter:?} ([h, w, in, multiplier]) takes {fc} channels but the input \
                     {input:?} (NHWC) has {c}"
                ),
            ));
        }
        let win = window_2d(op, [h, w], [kh, kw], p.strides, p.padding)?;
        let i = |what, v| to_i32(op, what, v);
        let g = DwGeom {
            n: i("batch", n)?,
            h: i("height", h)?,
            w: i("width", w)?,
            c: i("channels", c)?,
            m: i("multiplier", m)?,
            kh: i("filter height", kh)?,
            kw: i("filter width", kw)?,
            sh: i("stride", p.strides[0])?,
            sw: i("stride", p.strides[1])?,
            oh: i("output height", win.rows.out)?,
            ow: i("output width", win.cols.out)?,
            pad_top: i("padding", win.rows.pad_before)?,
            pad_left: i("padding", win.cols.pad_before)?,
        };
        to_i32(op, "output channels", c * m)?;
        Ok(g)
    }

    fn output_shape(&self) -> Vec<usize> {
        [self.n, self.oh, self.ow, self.c * self.m]
            .iter()
            .map(|&v| v as usize)
            .collect()
    }

    fn output_len(&self) -> usize {
        self.output_shape().iter().product()
    }

    /// Whether the shared-memory 3×3 kernel applies, and at which stride.
    fn tiled_3x3_stride(&self) -> Option<u32> {
        let tiles = (self.oh as u32).div_ceil(TILE) as u64 * (self.ow as u32).div_ceil(TILE) as u64;
        let fits_grid = tiles <= 65_535 && self.n <= 65_535;
        match (self.kh, self.kw, self.sh, self.sw) {
            (3, 3, 1, 1) if fits_grid => Some(1),
            (3, 3, 2, 2) if fits_grid => Some(2),
            _ => None,
        }
    }
}

impl DwGeom {
    /// The stride of the shared-memory 3×3 input-gradient kernel when it
    /// applies (3×3, stride 1 or 2 both ways, multiplier 1, its grid of
    /// input tiles within bounds).
    fn tiled_3x3_input_stride(&self) -> Option<u32> {
        let tiles = (self.h as u32).div_ceil(TILE) as u64 * (self.w as u32).div_ceil(TILE) as u64;
        let fits_grid = tiles <= 65_535 && self.n <= 65_535;
        match (self.kh, self.kw, self.sh, self.sw, self.m) {
            (3, 3, 1, 1, 1) if fits_grid => Some(1),
            (3, 3, 2, 2, 1) if fits_grid => Some(2),
            _ => None,
        }
    }
}

/// Which kernel to run (forward and both gradients).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepthwisePath {
    /// The 3×3 kernel where it applies, else the general one.
    Auto,
    /// The general kernel (any filter, stride, multiplier), e.g. for tests.
    General,
}

fn shape4(op: &'static str, what: &str, t: &DeviceTensor) -> Result<[usize; 4]> {
    <[usize; 4]>::try_from(t.shape()).map_err(|_| {
        Error::shape(
            op,
            format!("{what} must have rank 4, got shape {:?}", t.shape()),
        )
    })
}

impl CudaDevice {
    /// `DepthwiseConv2dNative`: input `[n, h, w, c]`, filter `[kh, kw, c, m]`.
    pub fn depthwise_conv2d(
        &self,
        input: &DeviceTensor,
        filter: &DeviceTensor,
        p: &Conv2dParams,
        path: DepthwisePath,
    ) -> Result<DeviceTensor> {
        let g = DwGeom::new(
            FORWARD,
            shape4(FORWARD, "input", input)?,
            shape4(FORWARD, "filter", filter)?,
            p,
        )?;
        let mut out = self.zeros(g.output_shape())?;
        if out.is_empty() || input.is_empty() {
            return Ok(out);
        }
        let (name, cfg) = match (path, g.tiled_3x3_stride()) {
            (DepthwisePath::Auto, Some(s)) => {
                let tiles = (g.oh as u32).div_ceil(TILE) * (g.ow as u32).div_ceil(TILE);
                let cfg = LaunchConfig {
                    grid_dim: ((g.c as u32).div_ceil(CH), tiles, g.n as u32),
                    block_dim: (CH, TILE, 1),
                    shared_mem_bytes: 0,
                };
                (
                    if s == 1 {
                        "dw_forward_3x3_s1"
                    } else {
                        "dw_forward_3x3_s2"
                    },
                    cfg,
                )
            }
            _ => ("dw_forward", elementwise(g.output_len())),
        };
        let f = self.function(Source::Depthwise, name)?;
        let mut launch = self.stream().launch_builder(&f);
        launch
            .arg(&input.buf)
            .arg(&filter.buf)
            .arg(&mut out.buf)
            .arg(&g);
        // SAFETY: `DwGeom::new` checked the shapes: input holds n·h·w·c
        // floats, filter kh·kw·c·m, out n·oh·ow·c·m, and the kernels read and
        // write only inside those (bounds-checked on every index). The 3×3
        // grid has one block per (32 channels, 8×8 output tile, image) and
        // the block is 32×8 threads, as the kernel's tile assumes.
        unsafe { launch.launch(cfg) }.map_err(driver_err(FORWARD))?;
        Ok(out)
    }

    /// `DepthwiseConv2dNativeBackpropInput`: the gradient w.r.t. an input of
    /// shape `input_sizes`.
    pub fn depthwise_conv2d_backprop_input(
        &self,
        input_sizes: [usize; 4],
        filter: &DeviceTensor,
        out_backprop: &DeviceTensor,
        p: &Conv2dParams,
    ) -> Result<DeviceTensor> {
        self.depthwise_conv2d_backprop_input_with(
            input_sizes,
            filter,
            out_backprop,
            p,
            DepthwisePath::Auto,
        )
    }

    /// [`Self::depthwise_conv2d_backprop_input`] on the kernel `path` asks
    /// for: the shared-memory 3×3 kernel (strides 1 and 2, multiplier 1)
    /// where it applies, or the general gather.
    pub fn depthwise_conv2d_backprop_input_with(
        &self,
        input_sizes: [usize; 4],
        filter: &DeviceTensor,
        out_backprop: &DeviceTensor,
        p: &Conv2dParams,
        path: DepthwisePath,
    ) -> Result<DeviceTensor> {
        let op = BACKPROP_INPUT;
        let g = DwGeom::new(op, input_sizes, shape4(op, "filter", filter)?, p)?;
        check_out_backprop(op, &g, out_backprop)?;
        let mut dx = self.zeros(input_sizes.to_vec())?;
        if dx.is_empty() {
            return Ok(dx);
        }
        if let (DepthwisePath::Auto, Some(s)) = (path, g.tiled_3x3_input_stride()) {
            let tiles = (g.h as u32).div_ceil(TILE) * (g.w as u32).div_ceil(TILE);
            let cfg = LaunchConfig {
                grid_dim: ((g.c as u32).div_ceil(CH), tiles, g.n as u32),
                block_dim: (CH, TILE, 1),
                shared_mem_bytes: 0,
            };
            let name = if s == 1 {
                "dw_backprop_input_3x3_s1"
            } else {
                "dw_backprop_input_3x3_s2"
            };
            let f = self.function(Source::Depthwise, name)?;
            let mut launch = self.stream().launch_builder(&f);
            launch
                .arg(&out_backprop.buf)
                .arg(&filter.buf)
                .arg(&mut dx.buf)
                .arg(&g);
            // SAFETY: shapes checked above; the grid covers dx in 8×8 tiles
            // of 32 channels with the 32×8 threads the kernel assumes (its
            // static shared tile fits: at most 10·10·32 floats); it skips
            // channels ≥ c and pixels outside h×w, and reads dy only inside
            // oh×ow.
            unsafe { launch.launch(cfg) }.map_err(driver_err(op))?;
            return Ok(dx);
        }
        let cfg = elementwise(dx.len());
        let f = self.function(Source::Depthwise, "dw_backprop_input")?;
        let mut launch = self.stream().launch_builder(&f);
        launch
            .arg(&out_backprop.buf)
            .arg(&filter.buf)
            .arg(&mut dx.buf)
            .arg(&g);
        // SAFETY: shapes checked above; one thread per element of dx
        // (grid-stride), reads of dy and filter bounds-checked by geometry.
        unsafe { launch.launch(cfg) }.map_err(driver_err(op))?;
        Ok(dx)
    }

    /// `DepthwiseConv2dNativeBackpropFilter`: the gradient w.r.t. a filter of
    /// shape `filter_sizes`, summed per block then across blocks (no atomics,
    /// deterministic).
    pub fn depthwise_conv2d_backprop_filter(
        &self,
        input: &DeviceTensor,
        filter_sizes: [usize; 4],
        out_backprop: &DeviceTensor,
        p: &Conv2dParams,
    ) -> Result<DeviceTensor> {
        self.depthwise_conv2d_backprop_filter_with(
            input,
            filter_sizes,
            out_backprop,
            p,
            DepthwisePath::Auto,
        )
    }

    /// [`Self::depthwise_conv2d_backprop_filter`] on the kernel `path` asks
    /// for: for 3×3 filters, one block computes all 9 taps (dy read once),
    /// else one block per tap.
    pub fn depthwise_conv2d_backprop_filter_with(
        &self,
        input: &DeviceTensor,
        filter_sizes: [usize; 4],
        out_backprop: &DeviceTensor,
        p: &Conv2dParams,
        path: DepthwisePath,
    ) -> Result<DeviceTensor> {
        let op = BACKPROP_FILTER;
        let g = DwGeom::new(op, shape4(op, "input", input)?, filter_sizes, p)?;
        check_out_backprop(op, &g, out_backprop)?;
        let mut df = self.zeros(filter_sizes.to_vec())?;
        let pixels = g.output_len() / (g.c * g.m).max(1) as usize;
        if df.is_empty() || pixels == 0 {
            return Ok(df);
        }
        let splits = pixels.div_ceil(FG_PIXELS_PER_SPLIT).clamp(1, 65_535);
        let taps = (g.kh * g.kw) as u32;
        let cm = (g.c * g.m) as u32;
        let mut partial = self.alloc(splits * df.len())?;

        let three = path == DepthwisePath::Auto && (g.kh, g.kw) == (3, 3);
        let (name, grid_y) = if three {
            ("dw_backprop_filter_3x3_partial", 1)
        } else {
            ("dw_backprop_filter_partial", taps)
        };
        let f = self.function(Source::Depthwise, name)?;
        let mut launch = self.stream().launch_builder(&f);
        launch
            .arg(&input.buf)
            .arg(&out_backprop.buf)
            .arg(&mut partial)
            .arg(&g);
        let cfg = LaunchConfig {
            grid_dim: (cm.div_ceil(CH), grid_y, splits as u32),
            block_dim: (CH, FG_ROWS, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: partial holds splits·kh·kw·c·m floats, one per (split z,
        // tap y, channel) the grid covers; the kernel skips channels ≥ c·m
        // and reads input/dy inside the checked shapes.
        unsafe { launch.launch(cfg) }.map_err(driver_err(op))?;

        let filter_len = to_i32(op, "filter size", df.len())?;
        let splits_i = splits as i32;
        let cfg = elementwise(df.len());
        let f = self.function(Source::Depthwise, "dw_backprop_filter_reduce")?;
        let mut launch = self.stream().launch_builder(&f);
        launch
            .arg(&partial)
            .arg(&mut df.buf)
            .arg(&filter_len)
            .arg(&splits_i);
        // SAFETY: partial is [splits, filter_len], df is [filter_len].
        unsafe { launch.launch(cfg) }.map_err(driver_err(op))?;
        Ok(df)
    }
}

fn check_out_backprop(op: &'static str, g: &DwGeom, dy: &DeviceTensor) -> Result<()> {
    if dy.shape() != g.output_shape() {
        return Err(Error::shape(
            op,
            format!(
                "out_backprop has shape {:?}, the convolution's output is {:?}",
                dy.shape(),
                g.output_shape()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Padding;

    #[test]
    fn geometry_follows_tensorflow_same_padding() {
        let p = Conv2dParams {
            strides: [2, 2],
            padding: Padding::Same,
        };
        let g = DwGeom::new(FORWARD, [2, 7, 8, 3], [3, 3, 3, 2], &p).unwrap();
        // SAME, stride 2: out = ceil(in / 2); total padding split with the
        // extra row after (TensorFlow): 7 → 4 rows, pad 1 before; 8 → 4, pad 0.
        assert_eq!((g.oh, g.ow, g.pad_top, g.pad_left), (4, 4, 1, 0));
        assert_eq!(g.output_shape(), vec![2, 4, 4, 6]);
        assert_eq!(g.tiled_3x3_stride(), Some(2));
        let g5 = DwGeom::new(FORWARD, [1, 9, 9, 4], [5, 5, 4, 1], &p).unwrap();
        assert_eq!(g5.tiled_3x3_stride(), None);
    }

    #[test]
    fn geometry_rejects_a_filter_for_other_channels() {
        let p = Conv2dParams {
            strides: [1, 1],
            padding: Padding::Valid,
        };
        let err = DwGeom::new(FORWARD, [1, 4, 4, 3], [3, 3, 5, 1], &p).unwrap_err();
        assert!(err.to_string().contains("takes 5 channels"), "{err}");
    }
}
