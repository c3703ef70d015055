//! cuBLAS's SGEMM, kept beside our own TF32 GEMM ([`super::ops::pointwise`])
//! for comparison: the tests check both against the CPU, and
//! `psflow bench cuda` times both on the pointwise convolution's shapes.
//! Nothing in training uses it.
//!
//! `libcublas.so.12` is loaded dynamically like the other CUDA libraries,
//! probed first ([`super::library`], `PSFLOW_CUBLAS_LIB` names a file), so a
//! machine without it gets [`Error::LibraryUnavailable`], never a panic.
//! Each device keeps one cuBLAS handle per math mode, created on first use
//! and bound to the device's stream, so cuBLAS calls are ordered with our
//! kernels and the memory pool's reuse rule holds for them too.
//!
//! cuBLAS is column-major and psflow row-major. A row-major `m×n` matrix is
//! the column-major `n×m` matrix of its transpose, so `C = op(A)·op(B)` is
//! computed as `Cᵀ = op(B)ᵀ·op(A)ᵀ`: cuBLAS gets `b` first, `a` second,
//! the sizes `(n, m, k)` and each operand's stored row length as its
//! leading dimension.

use std::sync::{Arc, Mutex};

use cudarc::cublas::sys::{cublasMath_t, cublasOperation_t};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};

use super::context::{CudaDevice, DeviceTensor};
use super::library::{self, Library};
use super::ops::pointwise::matmul_dims;
use super::ops::to_i32;
use crate::{Error, Result};

/// Which arithmetic cuBLAS may use for an f32 GEMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CublasMath {
    /// `CUBLAS_DEFAULT_MATH`: full f32 multiplies (no tensor cores for f32).
    F32,
    /// `CUBLAS_TF32_TENSOR_OP_MATH`: inputs rounded to TF32 on tensor cores,
    /// f32 accumulate: the same arithmetic as our `pw_gemm_tf32`.
    Tf32,
}

impl CublasMath {
    pub const ALL: [CublasMath; 2] = [CublasMath::F32, CublasMath::Tf32];

    fn index(self) -> usize {
        self as usize
    }

    fn mode(self) -> cublasMath_t {
        match self {
            CublasMath::F32 => cublasMath_t::CUBLAS_DEFAULT_MATH,
            CublasMath::Tf32 => cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH,
        }
    }

    /// A short name for tables (`f32`, `tf32`).
    pub fn name(self) -> &'static str {
        match self {
            CublasMath::F32 => "f32",
            CublasMath::Tf32 => "tf32",
        }
    }
}

/// Whether cuBLAS can be loaded in this process (probed once): the error
/// names the library, what was searched and `PSFLOW_CUBLAS_LIB`.
pub fn available() -> Result<()> {
    library::available(Library::Cublas).map_err(|reason| Error::LibraryUnavailable {
        library: "cuBLAS",
        reason,
    })
}

/// A device's cuBLAS handles, one per [`CublasMath`], created on first use.
#[derive(Default)]
pub(crate) struct BlasHandles(Mutex<[Option<Arc<CudaBlas>>; CublasMath::ALL.len()]>);

fn cublas_err(what: &'static str) -> impl Fn(cudarc::cublas::result::CublasError) -> Error {
    move |e| Error::Cuda {
        op: what,
        detail: format!("{e:?}"),
    }
}

impl CudaDevice {
    /// The handle for `math` on this device's stream, created on first use.
    fn blas(&self, math: CublasMath) -> Result<Arc<CudaBlas>> {
        available()?;
        let mut handles = self.blas_handles().0.lock().expect("cuBLAS handle lock");
        if let Some(h) = &handles[math.index()] {
            return Ok(h.clone());
        }
        let blas = CudaBlas::new(self.stream().clone()).map_err(cublas_err("cublasCreate"))?;
        // SAFETY: the handle is valid (just created) and the mode is one of
        // cuBLAS's enumerators.
        unsafe { cudarc::cublas::sys::cublasSetMathMode(*blas.handle(), math.mode()) }
            .result()
            .map_err(cublas_err("cublasSetMathMode"))?;
        let blas = Arc::new(blas);
        handles[math.index()] = Some(blas.clone());
        Ok(blas)
    }

    /// `MatMul` by cuBLAS SGEMM in full f32: `op(a)·op(b)` for 2-D `a`,
    /// `b`, the shape rules and errors of [`CudaDevice::matmul_tf32`].
    pub fn matmul_cublas(
        &self,
        a: &DeviceTensor,
        b: &DeviceTensor,
        transpose_a: bool,
        transpose_b: bool,
    ) -> Result<DeviceTensor> {
        self.matmul_cublas_with(a, b, transpose_a, transpose_b, CublasMath::F32)
    }

    /// `MatMul` by cuBLAS SGEMM in the given math mode.
    pub fn matmul_cublas_with(
        &self,
        a: &DeviceTensor,
        b: &DeviceTensor,
        transpose_a: bool,
        transpose_b: bool,
        math: CublasMath,
    ) -> Result<DeviceTensor> {
        const OP: &str = "MatMul (cuBLAS)";
        let [m, n, k] = matmul_dims(OP, a, b, transpose_a, transpose_b)?;
        if m == 0 || n == 0 || k == 0 {
            // Nothing to multiply (and cuBLAS refuses a leading dimension
            // of 0): the product is m×n zeros, as on the CPU.
            return self.zeros(vec![m, n]);
        }
        let blas = self.blas(math)?;
        let mut c = self.uninit(vec![m, n])?;
        let op = |t: bool| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        // Row lengths of the stored matrices: the leading dimensions of
        // their column-major views.
        let (a_cols, b_cols) = (a.shape()[1], b.shape()[1]);
        let cfg = GemmConfig {
            transa: op(transpose_b),
            transb: op(transpose_a),
            m: to_i32(OP, "n", n)?,
            n: to_i32(OP, "m", m)?,
            k: to_i32(OP, "k", k)?,
            alpha: 1.0f32,
            lda: to_i32(OP, "b's row length", b_cols)?,
            ldb: to_i32(OP, "a's row length", a_cols)?,
            beta: 0.0f32,
            ldc: to_i32(OP, "n", n)?,
        };
        // SAFETY: matmul_dims checked a holds m·k and b k·n floats in the
        // stored layouts the leading dimensions describe (each ≥ the rows
        // of its column-major view: b_cols is n untransposed, k
        // transposed; likewise a_cols); c holds m·n floats with ldc = n.
        // beta = 0, so cuBLAS never reads c's undefined contents.
        unsafe { blas.gemm(cfg, &*b.buf, &*a.buf, &mut *c.buf) }.map_err(cublas_err(OP))?;
        Ok(c)
    }
}
