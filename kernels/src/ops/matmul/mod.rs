//! MatMul, BiasAdd and BiasAddGrad; the GEMM under them also serves the
//! pointwise convolutions.

mod avx512;
mod bias;
pub(crate) mod gemm;

pub use bias::{bias_add, bias_add_grad};

pub use self::gemm::GemmPath;
use self::gemm::{gemm_strided, MatRef};
use crate::{Error, Result, Tensor};

/// `MatMul` of rank-2 f32 tensors with TensorFlow's transpose flags.
pub fn matmul(a: &Tensor, b: &Tensor, transpose_a: bool, transpose_b: bool) -> Result<Tensor> {
    const OP: &str = "MatMul";
    let (ar, ac) = rank2(OP, "a", a)?;
    let (br, bc) = rank2(OP, "b", b)?;
    let av = a.f32s(OP)?;
    let bv = b.f32s(OP)?;
    let (m, k) = if transpose_a { (ac, ar) } else { (ar, ac) };
    let (kb, n) = if transpose_b { (bc, br) } else { (br, bc) };
    if k != kb {
        return Err(Error::shape(
            OP,
            format!(
                "inner dimensions differ: a {:?} (transpose_a={transpose_a}) has {k}, \
                 b {:?} (transpose_b={transpose_b}) has {kb}",
                a.shape(),
                b.shape()
            ),
        ));
    }
    let c = written_by_gemm(m * n, |c| {
        sgemm(m, n, k, av, transpose_a, bv, transpose_b, c, 1.0, 0.0)
    });
    Tensor::new(vec![m, n], c)
}

/// A vector of `len` floats filled by `gemm`, which must be one or more
/// [`sgemm`] calls with `beta = 0` whose outputs cover every element: such a
/// call writes each element of its `c` before (and without) reading it, so
/// the buffer needs no zeroing. That saves a memset or, for a fresh
/// allocation, page faults on one thread: ~1-3 ms per 16 MiB output, as much
/// as the GEMM itself for MobileNet's pointwise layers.
pub(crate) fn written_by_gemm(len: usize, gemm: impl FnOnce(&mut [f32])) -> Vec<f32> {
    let mut v = Vec::<f32>::with_capacity(len);
    // SAFETY: the capacity is `len`; `gemm` only writes (see the contract
    // above, kept by `gemm_strided` for beta = 0: the gemm crate is called
    // with read_dst = false, the AVX-512 drivers store on the first depth
    // block, the depth split and k = 0 fill before adding), and covers every
    // element, so all `len` elements are initialized before `set_len`.
    unsafe {
        gemm(std::slice::from_raw_parts_mut(v.as_mut_ptr(), len));
        v.set_len(len);
    }
    v
}

fn rank2(op: &'static str, what: &str, t: &Tensor) -> Result<(usize, usize)> {
    match *t.shape() {
        [r, c] => Ok((r, c)),
        _ => Err(Error::shape(
            op,
            format!(
                "{what} must be a matrix (rank 2), got shape {:?}",
                t.shape()
            ),
        )),
    }
}

/// Row-major single-precision GEMM: `c[m×n] = alpha·op(a)·op(b) + beta·c`,
/// with `op` a transpose when the flag is set (a is m×k after op, b k×n).
/// Uses both cores and the best SIMD the CPU has.
///
/// As in BLAS, `c` is not read when `beta` is 0. Panics if a slice is
/// shorter than its matrix (`a`: m·k, `b`: k·n, `c`: m·n).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    transpose_a: bool,
    b: &[f32],
    transpose_b: bool,
    c: &mut [f32],
    alpha: f32,
    beta: f32,
) {
    sgemm_with(
        GemmPath::Auto,
        m,
        n,
        k,
        a,
        transpose_a,
        b,
        transpose_b,
        c,
        alpha,
        beta,
    )
}

/// [`sgemm`] through a chosen implementation (for tests and benchmarks).
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn sgemm_with(
    path: GemmPath,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    transpose_a: bool,
    b: &[f32],
    transpose_b: bool,
    c: &mut [f32],
    alpha: f32,
    beta: f32,
) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "sgemm: slices shorter than {m}x{k} * {k}x{n} -> {m}x{n}"
    );
    gemm_strided(
        m,
        n,
        k,
        MatRef::row_major(a, m, k, transpose_a),
        MatRef::row_major(b, k, n, transpose_b),
        c,
        n,
        alpha,
        beta,
        crate::threads::current(),
        path,
    );
}
