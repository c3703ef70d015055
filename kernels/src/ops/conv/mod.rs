//! Conv2D and its two gradients (NHWC input, HWIO filter), TensorFlow's
//! semantics. A 1×1 stride-1 unpadded convolution is a plain GEMM.
//!
//! Every case is a GEMM against the filter seen as a `[kh·kw·c, o]` matrix
//! (HWIO is exactly that, row-major):
//!
//! - 1×1, stride 1, no padding (MobileNet's pointwise layers): the input
//!   *is* the `[n·h·w, c]` matrix, nothing is copied;
//! - anything else: im2col of a tile of images (each patch row is a few
//!   contiguous copies), tiles bounded so the buffer stays ~16 MiB; a 1×1
//!   strided convolution is the same code with one copy of `c` values per
//!   output pixel.
//!
//! The input gradient is `dY·Wᵀ` then col2im (a gather per input row, so the
//! threads never write the same row); the filter gradient is `colsᵀ·dY`
//! accumulated over the tiles.

mod im2col;

use std::cell::RefCell;

use crate::ops::matmul::{sgemm, written_by_gemm};
use crate::{window_2d, DType, Error, Padding, Result, Tensor};

/// Attributes of a 2-D convolution (dilations are always 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dParams {
    /// `[stride_h, stride_w]`.
    pub strides: [usize; 2],
    pub padding: Padding,
}

/// Most floats an im2col tile holds (16 MiB).
const COL_BUDGET: usize = 1 << 22;

/// Geometry of one convolution, checked once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geom {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub kh: usize,
    pub kw: usize,
    pub o: usize,
    pub oh: usize,
    pub ow: usize,
    pub sh: usize,
    pub sw: usize,
    /// Padding before the first row / column.
    pub pt: usize,
    pub pl: usize,
}

impl Geom {
    pub(crate) fn new(
        op: &'static str,
        input: [usize; 4],
        filter: [usize; 4],
        p: &Conv2dParams,
    ) -> Result<Geom> {
        let [n, h, w, c] = input;
        let [kh, kw, fc, o] = filter;
        if fc != c {
            return Err(Error::shape(
                op,
                format!(
                    "filter {filter:?} (HWIO) takes {fc} input channels but the input \
                     {input:?} (NHWC) has {c}"
                ),
            ));
        }
        let win = window_2d(op, [h, w], [kh, kw], p.strides, p.padding)?;
        Ok(Geom {
            n,
            h,
            w,
            c,
            kh,
            kw,
            o,
            oh: win.rows.out,
            ow: win.cols.out,
            sh: p.strides[0],
            sw: p.strides[1],
            pt: win.rows.pad_before,
            pl: win.cols.pad_before,
        })
    }

    /// Columns of the patch matrix: one filter's taps.
    fn taps(&self) -> usize {
        self.kh * self.kw * self.c
    }

    fn out_shape(&self) -> [usize; 4] {
        [self.n, self.oh, self.ow, self.o]
    }

    /// 1×1, stride 1, every output pixel on its input pixel: the input is
    /// already the patch matrix.
    fn is_plain_gemm(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.sh == 1
            && self.sw == 1
            && self.pt == 0
            && self.pl == 0
            && self.oh == self.h
            && self.ow == self.w
    }

    /// Images per im2col tile.
    fn tile_images(&self) -> usize {
        let per_image = (self.oh * self.ow * self.taps()).max(1);
        (COL_BUDGET / per_image).clamp(1, self.n.max(1))
    }
}

fn rank4(op: &'static str, what: &str, t: &Tensor) -> Result<[usize; 4]> {
    match *t.shape() {
        [a, b, c, d] => Ok([a, b, c, d]),
        _ => Err(Error::shape(
            op,
            format!("{what} must be 4-D, got shape {:?}", t.shape()),
        )),
    }
}

fn f32s<'a>(op: &'static str, what: &'static str, t: &'a Tensor) -> Result<&'a [f32]> {
    t.f32s(op).map_err(|_| Error::DType {
        op,
        what,
        expected: DType::F32,
        got: t.dtype(),
    })
}

fn check_out_backprop(op: &'static str, g: &Geom, dy: &Tensor) -> Result<()> {
    if dy.shape() != g.out_shape() {
        return Err(Error::shape(
            op,
            format!(
                "out_backprop has shape {:?} but the convolution's output is {:?}",
                dy.shape(),
                g.out_shape()
            ),
        ));
    }
    Ok(())
}

thread_local! {
    /// The im2col buffer, kept between calls so a training step does not
    /// allocate (and fault in) 16 MiB per convolution.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with a scratch buffer of `len` floats (contents unspecified).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    if buf.len() < len {
        buf = vec![0f32; len];
    }
    let r = f(&mut buf[..len]);
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < buf.len() {
            *s = buf;
        }
    });
    r
}

/// `Conv2D`: input `[n, h, w, c]`, filter `[kh, kw, c, o]` → `[n, oh, ow, o]`.
pub fn conv2d(input: &Tensor, filter: &Tensor, p: &Conv2dParams) -> Result<Tensor> {
    const OP: &str = "Conv2D";
    let g = Geom::new(
        OP,
        rank4(OP, "input", input)?,
        rank4(OP, "filter", filter)?,
        p,
    )?;
    let x = f32s(OP, "input", input)?;
    let f = f32s(OP, "filter", filter)?;
    let y = written_by_gemm(g.n * g.oh * g.ow * g.o, |y| {
        if g.is_plain_gemm() {
            sgemm(g.n * g.h * g.w, g.o, g.c, x, false, f, false, y, 1.0, 0.0);
            return;
        }
        // One GEMM per tile of images, each writing its rows of `y`.
        let nb = g.tile_images();
        let rows_per_image = g.oh * g.ow;
        let taps = g.taps();
        with_scratch(nb * rows_per_image * taps, |col| {
            for b0 in (0..g.n).step_by(nb) {
                let nbt = nb.min(g.n - b0);
                let rows = nbt * rows_per_image;
                let col = &mut col[..rows * taps];
                im2col::im2col(&g, x, b0, nbt, col);
                let out = &mut y[b0 * rows_per_image * g.o..(b0 + nbt) * rows_per_image * g.o];
                sgemm(rows, g.o, taps, col, false, f, false, out, 1.0, 0.0);
            }
        });
    });
    Tensor::new(g.out_shape().to_vec(), y)
}

/// `Conv2DBackpropInput`: gradient w.r.t. the input of shape `input_sizes`.
pub fn conv2d_backprop_input(
    input_sizes: [usize; 4],
    filter: &Tensor,
    out_backprop: &Tensor,
    p: &Conv2dParams,
) -> Result<Tensor> {
    const OP: &str = "Conv2DBackpropInput";
    let g = Geom::new(OP, input_sizes, rank4(OP, "filter", filter)?, p)?;
    check_out_backprop(OP, &g, out_backprop)?;
    let f = f32s(OP, "filter", filter)?;
    let dy = f32s(OP, "out_backprop", out_backprop)?;
    let len = g.n * g.h * g.w * g.c;
    let dx = if g.is_plain_gemm() {
        written_by_gemm(len, |dx| {
            sgemm(g.n * g.h * g.w, g.c, g.o, dy, false, f, true, dx, 1.0, 0.0)
        })
    } else {
        // col2im adds into zeros (pixels no window covers stay zero).
        let mut dx = vec![0f32; len];
        let nb = g.tile_images();
        let rows_per_image = g.oh * g.ow;
        let taps = g.taps();
        let image = g.h * g.w * g.c;
        with_scratch(nb * rows_per_image * taps, |col| {
            for b0 in (0..g.n).step_by(nb) {
                let nbt = nb.min(g.n - b0);
                let rows = nbt * rows_per_image;
                let col = &mut col[..rows * taps];
                let dy_tile = &dy[b0 * rows_per_image * g.o..(b0 + nbt) * rows_per_image * g.o];
                sgemm(rows, taps, g.o, dy_tile, false, f, true, col, 1.0, 0.0);
                im2col::col2im(&g, col, &mut dx[b0 * image..(b0 + nbt) * image]);
            }
        });
        dx
    };
    Tensor::new(input_sizes.to_vec(), dx)
}

/// `Conv2DBackpropFilter`: gradient w.r.t. the filter of shape `filter_sizes`.
pub fn conv2d_backprop_filter(
    input: &Tensor,
    filter_sizes: [usize; 4],
    out_backprop: &Tensor,
    p: &Conv2dParams,
) -> Result<Tensor> {
    const OP: &str = "Conv2DBackpropFilter";
    let g = Geom::new(OP, rank4(OP, "input", input)?, filter_sizes, p)?;
    check_out_backprop(OP, &g, out_backprop)?;
    let x = f32s(OP, "input", input)?;
    let dy = f32s(OP, "out_backprop", out_backprop)?;
    let taps = g.taps();
    let mut dw = vec![0f32; taps * g.o];
    if g.is_plain_gemm() {
        sgemm(
            g.c,
            g.o,
            g.n * g.h * g.w,
            x,
            true,
            dy,
            false,
            &mut dw,
            1.0,
            0.0,
        );
    } else {
        let nb = g.tile_images();
        let rows_per_image = g.oh * g.ow;
        with_scratch(nb * rows_per_image * taps, |col| {
            for b0 in (0..g.n).step_by(nb) {
                let nbt = nb.min(g.n - b0);
                let rows = nbt * rows_per_image;
                let col = &mut col[..rows * taps];
                im2col::im2col(&g, x, b0, nbt, col);
                let dy_tile = &dy[b0 * rows_per_image * g.o..(b0 + nbt) * rows_per_image * g.o];
                let beta = if b0 == 0 { 0.0 } else { 1.0 };
                sgemm(
                    taps, g.o, rows, col, true, dy_tile, false, &mut dw, 1.0, beta,
                );
            }
        });
    }
    Tensor::new(filter_sizes.to_vec(), dw)
}
