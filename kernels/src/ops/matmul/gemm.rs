//! Single-precision GEMM over strided matrices: the dispatch between our
//! AVX-512 kernel (`avx512.rs`, chosen at run time where the CPU has
//! AVX-512F) and the `gemm` crate (AVX2/FMA or scalar, chosen by it at run
//! time) elsewhere. On the crate path a deep product with a small output (a
//! filter gradient: `dW[k×n] = Xᵀ·dY`) splits its depth over the threads,
//! since the crate only splits the output.
//!
//! Measured on the 2-core Sapphire Rapids at batch 128, pointwise shapes: the
//! crate reached ~100-130 GFLOP/s (it packs the big activation operand on
//! every call), the AVX-512 kernel 150-230.

use gemm::Parallelism;

use super::avx512;
use rayon::prelude::*;

/// A read-only matrix view: element `(i, j)` is at `ptr[i·rs + j·cs]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MatRef<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `rows×cols` matrix, transposed when `trans` (the slice
    /// then holds `cols×rows` row-major).
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize, trans: bool) -> Self {
        if trans {
            MatRef {
                data,
                rs: 1,
                cs: rows,
            }
        } else {
            MatRef {
                data,
                rs: cols,
                cs: 1,
            }
        }
    }

    /// The offset one past the last element of a `rows×cols` view.
    fn extent(&self, rows: usize, cols: usize) -> usize {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * self.rs + (cols - 1) * self.cs + 1
        }
    }
}

/// Depth at which a product with few output elements is split over the
/// depth instead of over the output.
const SPLIT_K_MIN_DEPTH: usize = 4096;

/// `c = alpha·a·b + beta·c` with `a` m×k, `b` k×n and `c` m×n row-major
/// with leading dimension `ldc`. Panics if a view is too short for its
/// shape (callers are internal and size their buffers).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: &mut [f32],
    ldc: usize,
    alpha: f32,
    beta: f32,
    threads: usize,
    path: GemmPath,
) {
    assert!(a.data.len() >= a.extent(m, k), "sgemm: lhs too short");
    assert!(b.data.len() >= b.extent(k, n), "sgemm: rhs too short");
    let c_extent = if m == 0 || n == 0 {
        0
    } else {
        (m - 1) * ldc + n
    };
    assert!(
        c.len() >= c_extent && (m <= 1 || ldc >= n),
        "sgemm: dst too short"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 || alpha == 0.0 {
        scale_rows(m, n, c, ldc, beta);
        return;
    }
    let path = match path {
        GemmPath::Auto => choose(m, n, k, threads),
        p => p,
    };
    match path {
        GemmPath::Rows if avx512::available() => {
            avx512::gemm_rows(m, n, k, a, b, c, ldc, alpha, beta, threads)
        }
        GemmPath::Depth if avx512::available() => {
            avx512::gemm_depth(m, n, k, a, b, c, ldc, alpha, beta, threads)
        }
        // The output-split GEMM leaves cores idle when the output has fewer
        // row/column blocks than threads; a deep product then splits its depth.
        _ if threads > 1 && k >= SPLIT_K_MIN_DEPTH && m * n * threads * 4 <= k * 64 => {
            gemm_split_k(m, n, k, a, b, c, ldc, alpha, beta, threads)
        }
        _ => raw(m, n, k, a, b, c, ldc, alpha, beta, threads),
    }
}

/// Which implementation multiplies; `Auto` picks by shape and CPU. The
/// others exist so that tests can run every path on the same inputs (an
/// AVX-512 path falls back to `Crate` on a CPU without AVX-512).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmPath {
    Auto,
    /// The `gemm` crate (AVX2/AVX-512/scalar chosen by it at run time).
    Crate,
    /// Our AVX-512 kernel, threads split over the rows of `c`.
    Rows,
    /// Our AVX-512 kernel, threads split over the depth.
    Depth,
}

fn choose(m: usize, n: usize, k: usize, threads: usize) -> GemmPath {
    if !avx512::available() {
        return GemmPath::Crate;
    }
    // A deep product with few output rows per thread splits its depth.
    if threads > 1 && k >= 8 * m && k >= 2 * 256 * threads {
        return GemmPath::Depth;
    }
    let _ = n;
    GemmPath::Rows
}

fn scale_rows(m: usize, n: usize, c: &mut [f32], ldc: usize, beta: f32) {
    for i in 0..m {
        let row = &mut c[i * ldc..i * ldc + n];
        if beta == 0.0 {
            row.fill(0.0);
        } else if beta != 1.0 {
            row.iter_mut().for_each(|x| *x *= beta);
        }
    }
}

/// Splits the depth into one slab per thread, multiplies each slab into a
/// private buffer and adds the buffers up.
#[allow(clippy::too_many_arguments)]
fn gemm_split_k(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: &mut [f32],
    ldc: usize,
    alpha: f32,
    beta: f32,
    threads: usize,
) {
    let parts = threads.min(k.div_ceil(SPLIT_K_MIN_DEPTH / 4)).max(1);
    let slab = k.div_ceil(parts);
    let mut partial = vec![0f32; (parts - 1) * m * n];
    // Part 0 writes straight into c (with beta); the others into scratch.
    let (first, rest) = (0usize, 1..parts);
    let mut jobs: Vec<(usize, &mut [f32])> = Vec::with_capacity(parts);
    jobs.push((first, &mut c[..]));
    for (p, buf) in rest.zip(partial.chunks_mut(m * n)) {
        jobs.push((p, buf));
    }
    jobs.into_par_iter().for_each(|(p, dst)| {
        let k0 = p * slab;
        let k1 = ((p + 1) * slab).min(k);
        let a_p = MatRef {
            data: &a.data[k0 * a.cs..],
            ..a
        };
        let b_p = MatRef {
            data: &b.data[k0 * b.rs..],
            ..b
        };
        if p == 0 {
            raw(m, n, k1 - k0, a_p, b_p, dst, ldc, alpha, beta, 1);
        } else {
            raw(m, n, k1 - k0, a_p, b_p, dst, n, alpha, 0.0, 1);
        }
    });
    for buf in partial.chunks(m * n) {
        for i in 0..m {
            let dst = &mut c[i * ldc..i * ldc + n];
            for (d, s) in dst.iter_mut().zip(&buf[i * n..(i + 1) * n]) {
                *d += *s;
            }
        }
    }
}

/// The `gemm` crate call. Its convention is `dst = alpha·dst + beta·lhs·rhs`
/// (the names swapped with respect to BLAS).
#[allow(clippy::too_many_arguments)]
fn raw(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: &mut [f32],
    ldc: usize,
    alpha: f32,
    beta: f32,
    threads: usize,
) {
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts in `gemm_strided` (and the slab arithmetic in
    // `gemm_split_k`) guarantee that every (i, p), (p, j) and (i, j) the
    // strides address lies inside the given slices; `c` is borrowed
    // mutably, so nothing else reads or writes it meanwhile.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            beta != 0.0,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            beta,
            alpha,
            false,
            false,
            false,
            parallelism,
        );
    }
}
