//! The pointwise (1×1, stride 1, VALID) convolution and its gradients as one
//! tiled GEMM on TF32 tensor cores (kernels/src/cuda/pointwise.cu).
//!
//! TF32 keeps 10 mantissa bits of each input: results are within about
//! 1e-3 relative of an f32 GEMM (the tests allow 3e-3). cuBLAS's SGEMM,
//! for comparison, is in [`crate::cuda::cublas`].

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::to_i32;
use crate::cuda::context::{driver_err, CudaDevice, DeviceTensor};
use crate::cuda::nvrtc::Source;
use crate::{Error, Result};

/// Block tile of pw_gemm_tf32 (`PW_BM`, `PW_BN`) and its threads.
const BM: u32 = 64;
const BN: u32 = 64;
const THREADS: u32 = 128;

impl CudaDevice {
    /// `MatMul` on TF32 tensor cores: `op(a)·op(b)` for 2-D `a`, `b`, where
    /// `op` transposes when the flag is set (TensorFlow's
    /// `transpose_a`/`transpose_b`).
    pub fn matmul_tf32(
        &self,
        a: &DeviceTensor,
        b: &DeviceTensor,
        transpose_a: bool,
        transpose_b: bool,
    ) -> Result<DeviceTensor> {
        const OP: &str = "MatMul";
        let [m, n, k] = matmul_dims(OP, a, b, transpose_a, transpose_b)?;
        let mut c = self.zeros(vec![m, n])?;
        self.gemm_tf32(OP, a, transpose_a, b, transpose_b, &mut c, [m, n, k])?;
        Ok(c)
    }

    /// Pointwise `Conv2D` (filter `[1, 1, c, o]`, stride 1, VALID): input
    /// `[n, h, w, c]` → `[n, h, w, o]`.
    pub fn pointwise_conv2d(
        &self,
        input: &DeviceTensor,
        filter: &DeviceTensor,
    ) -> Result<DeviceTensor> {
        const OP: &str = "Conv2D";
        let (rows, c, o) = pointwise_dims(OP, input.shape(), filter.shape())?;
        let mut shape = input.shape().to_vec();
        shape[3] = o;
        let mut y = self.zeros(shape)?;
        self.gemm_tf32(OP, input, false, filter, false, &mut y, [rows, o, c])?;
        Ok(y)
    }

    /// Input gradient of [`Self::pointwise_conv2d`]: `dx = dy·Wᵀ`.
    pub fn pointwise_conv2d_backprop_input(
        &self,
        input_sizes: [usize; 4],
        filter: &DeviceTensor,
        out_backprop: &DeviceTensor,
    ) -> Result<DeviceTensor> {
        const OP: &str = "Conv2DBackpropInput";
        let (rows, c, o) = pointwise_dims(OP, &input_sizes, filter.shape())?;
        check_dy(OP, rows, o, &input_sizes, out_backprop)?;
        let mut dx = self.zeros(input_sizes.to_vec())?;
        self.gemm_tf32(OP, out_backprop, false, filter, true, &mut dx, [rows, c, o])?;
        Ok(dx)
    }

    /// Filter gradient of [`Self::pointwise_conv2d`]: `dW = xᵀ·dy`.
    pub fn pointwise_conv2d_backprop_filter(
        &self,
        input: &DeviceTensor,
        filter_sizes: [usize; 4],
        out_backprop: &DeviceTensor,
    ) -> Result<DeviceTensor> {
        const OP: &str = "Conv2DBackpropFilter";
        let (rows, c, o) = pointwise_dims(OP, input.shape(), &filter_sizes)?;
        check_dy(OP, rows, o, input.shape(), out_backprop)?;
        let mut dw = self.zeros(filter_sizes.to_vec())?;
        self.gemm_tf32(OP, input, true, out_backprop, false, &mut dw, [c, o, rows])?;
        Ok(dw)
    }

    /// `c[m×n] = op(a)·op(b)`, all row-major; shapes checked by the caller.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemm_tf32(
        &self,
        op: &'static str,
        a: &DeviceTensor,
        transpose_a: bool,
        b: &DeviceTensor,
        transpose_b: bool,
        c: &mut DeviceTensor,
        [m, n, k]: [usize; 3],
    ) -> Result<()> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        // k = 0 leaves c at zero (it was allocated zeroed); the kernel's
        // loop would not run either.
        let (mi, ni, ki) = (
            to_i32(op, "m", m)?,
            to_i32(op, "n", n)?,
            to_i32(op, "k", k)?,
        );
        let (ta, tb) = (transpose_a as i32, transpose_b as i32);
        let (alpha, beta) = (1.0f32, 0.0f32);
        let grid_y = (m as u64).div_ceil(BM as u64);
        if grid_y > 65_535 {
            return Err(Error::unsupported(
                op,
                format!("{m} rows exceed the GEMM grid (65535 × 64)"),
            ));
        }
        let cfg = LaunchConfig {
            grid_dim: ((n as u32).div_ceil(BN), grid_y as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let f = self.function(Source::Pointwise, "pw_gemm_tf32")?;
        let mut launch = self.stream().launch_builder(&f);
        launch
            .arg(&a.buf)
            .arg(&b.buf)
            .arg(&mut c.buf)
            .arg(&mi)
            .arg(&ni)
            .arg(&ki)
            .arg(&ta)
            .arg(&tb)
            .arg(&alpha)
            .arg(&beta);
        // SAFETY: the callers checked a holds m·k, b k·n and c m·n floats;
        // the kernel bounds-checks every row/column against m, n, k and the
        // grid covers c in 64×64 tiles with the 128 threads it assumes.
        unsafe { launch.launch(cfg) }.map_err(driver_err(op))?;
        Ok(())
    }
}

/// `[m, n, k]` of `op(a)·op(b)` for 2-D `a`, `b` (TensorFlow's MatMul
/// rules), or a shape error naming both shapes.
pub(crate) fn matmul_dims(
    op: &'static str,
    a: &DeviceTensor,
    b: &DeviceTensor,
    transpose_a: bool,
    transpose_b: bool,
) -> Result<[usize; 3]> {
    let dims = |what: &str, t: &DeviceTensor| -> Result<[usize; 2]> {
        <[usize; 2]>::try_from(t.shape()).map_err(|_| {
            Error::shape(
                op,
                format!("{what} must be a matrix, got shape {:?}", t.shape()),
            )
        })
    };
    let [ar, ac] = dims("a", a)?;
    let [br, bc] = dims("b", b)?;
    let (m, k) = if transpose_a { (ac, ar) } else { (ar, ac) };
    let (kb, n) = if transpose_b { (bc, br) } else { (br, bc) };
    if k != kb {
        return Err(Error::shape(
            op,
            format!(
                "a {:?} (transpose {transpose_a}) times b {:?} (transpose {transpose_b}): \
                 inner sizes {k} and {kb} differ",
                a.shape(),
                b.shape()
            ),
        ));
    }
    Ok([m, n, k])
}

/// `(rows = n·h·w, c, o)` of a pointwise convolution, or a shape error.
fn pointwise_dims(
    op: &'static str,
    input: &[usize],
    filter: &[usize],
) -> Result<(usize, usize, usize)> {
    let (&[n, h, w, c], &[kh, kw, fc, o]) = (input, filter) else {
        return Err(Error::shape(
            op,
            format!("input {input:?} and filter {filter:?} must both have rank 4"),
        ));
    };
    if (kh, kw) != (1, 1) {
        return Err(Error::unsupported(
            op,
            format!("the CUDA pointwise path takes 1×1 filters, got {kh}×{kw}"),
        ));
    }
    if fc != c {
        return Err(Error::shape(
            op,
            format!("filter {filter:?} (HWIO) takes {fc} input channels but the input {input:?} has {c}"),
        ));
    }
    Ok((n * h * w, c, o))
}

fn check_dy(
    op: &'static str,
    rows: usize,
    o: usize,
    input: &[usize],
    dy: &DeviceTensor,
) -> Result<()> {
    let want = [input[0], input[1], input[2], o];
    if dy.shape() != want || rows * o != dy.len() {
        return Err(Error::shape(
            op,
            format!("out_backprop has shape {:?}, expected {want:?}", dy.shape()),
        ));
    }
    Ok(())
}
