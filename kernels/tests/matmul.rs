//! MatMul / sgemm / BiasAdd / BiasAddGrad against plain f64 references.

use psflow_kernels::ops::matmul::{bias_add, bias_add_grad, matmul, sgemm, sgemm_with, GemmPath};
use psflow_kernels::{Error, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// `alpha·op(a)·op(b) + beta·c` in f64, row-major.
#[allow(clippy::too_many_arguments)]
fn reference(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    ta: bool,
    b: &[f32],
    tb: bool,
    c: &[f32],
    alpha: f64,
    beta: f64,
) -> Vec<f64> {
    let mut out = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for p in 0..k {
                let av = if ta { a[p * m + i] } else { a[i * k + p] };
                let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                s += av as f64 * bv as f64;
            }
            let cv = if beta == 0.0 {
                0.0
            } else {
                beta * c[i * n + j] as f64
            };
            out[i * n + j] = alpha * s + cv;
        }
    }
    out
}

fn assert_close(got: &[f32], want: &[f64], k: usize, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let tol = 1e-5 * (k as f64).sqrt().max(1.0) * 4.0 + 1e-6;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (*g as f64 - w).abs();
        assert!(
            err <= tol * (1.0 + w.abs()),
            "{what}: element {i}: got {g}, want {w} (err {err:.3e}, tol {tol:.3e})"
        );
    }
}

const PATHS: [GemmPath; 4] = [
    GemmPath::Auto,
    GemmPath::Crate,
    GemmPath::Rows,
    GemmPath::Depth,
];

#[test]
fn sgemm_every_path_transpose_and_odd_size() {
    let mut rng = StdRng::seed_from_u64(1);
    let sizes = [
        (1, 1, 1),
        (3, 5, 7),
        (1, 40, 1),
        (13, 33, 17),
        (12, 32, 256),
        (25, 65, 257),
        (50, 70, 300),
        (7, 3, 1100),
    ];
    for &(m, n, k) in &sizes {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = random(&mut rng, m * k);
            let b = random(&mut rng, k * n);
            let c0 = random(&mut rng, m * n);
            for (alpha, beta) in [(1.0f32, 0.0f32), (2.0, 1.0), (0.5, -0.75)] {
                let want = reference(m, n, k, &a, ta, &b, tb, &c0, alpha as f64, beta as f64);
                for path in PATHS {
                    // With beta = 0, c must not be read: start from NaN.
                    let mut c = if beta == 0.0 {
                        vec![f32::NAN; m * n]
                    } else {
                        c0.clone()
                    };
                    sgemm_with(path, m, n, k, &a, ta, &b, tb, &mut c, alpha, beta);
                    let what = format!("{path:?} m{m} n{n} k{k} ta{ta} tb{tb} a{alpha} b{beta}");
                    assert_close(&c, &want, k, &what);
                }
            }
        }
    }
}

#[test]
fn sgemm_large_shapes_use_both_drivers() {
    // Shapes like the pointwise layers, smaller: a long m (rows split) and a
    // long depth with a small output (depth split).
    let mut rng = StdRng::seed_from_u64(2);
    for &(m, n, k, ta) in &[
        (1000, 96, 40, false),
        (40, 72, 5000, true),
        (300, 500, 200, false),
    ] {
        let a = random(&mut rng, m * k);
        let b = random(&mut rng, k * n);
        let want = reference(m, n, k, &a, ta, &b, false, &[], 1.0, 0.0);
        for path in PATHS {
            let mut c = vec![f32::NAN; m * n];
            sgemm_with(path, m, n, k, &a, ta, &b, false, &mut c, 1.0, 0.0);
            assert_close(&c, &want, k, &format!("{path:?} {m}x{n}x{k}"));
        }
    }
}

#[test]
fn sgemm_zero_depth_scales_c() {
    let mut c = vec![1.0f32, 2.0, 3.0, 4.0];
    sgemm(2, 2, 0, &[], false, &[], false, &mut c, 1.0, 0.5);
    assert_eq!(c, vec![0.5, 1.0, 1.5, 2.0]);
    let mut c = vec![f32::NAN; 4];
    sgemm(2, 2, 0, &[], false, &[], false, &mut c, 1.0, 0.0);
    assert_eq!(c, vec![0.0; 4]);
}

#[test]
fn matmul_all_transposes_against_reference() {
    let mut rng = StdRng::seed_from_u64(3);
    for &(m, n, k) in &[(1, 1, 1), (2, 3, 5), (17, 9, 31), (64, 65, 66)] {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = random(&mut rng, m * k);
            let b = random(&mut rng, k * n);
            let ashape = if ta { vec![k, m] } else { vec![m, k] };
            let bshape = if tb { vec![n, k] } else { vec![k, n] };
            let at = Tensor::new(ashape, a.clone()).unwrap();
            let bt = Tensor::new(bshape, b.clone()).unwrap();
            let c = matmul(&at, &bt, ta, tb).unwrap();
            assert_eq!(c.shape(), &[m, n]);
            let want = reference(m, n, k, &a, ta, &b, tb, &[], 1.0, 0.0);
            assert_close(
                c.f32s("t").unwrap(),
                &want,
                k,
                &format!("MatMul {m}x{n}x{k} {ta} {tb}"),
            );
        }
    }
}

#[test]
fn matmul_rejects_bad_inputs() {
    let a = Tensor::new(vec![2, 3], vec![0f32; 6]).unwrap();
    let b = Tensor::new(vec![4, 2], vec![0f32; 8]).unwrap();
    let err = matmul(&a, &b, false, false).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "MatMul", .. }), "{err}");
    assert!(err.to_string().contains("inner dimensions"), "{err}");
    // b transposed fits: [2,3] x [4,3]^T? no: b is [4,2]; a^T [3,2] x b^T [2,4] fits.
    assert_eq!(matmul(&a, &b, true, true).unwrap().shape(), &[3, 4]);
    let v = Tensor::new(vec![3], vec![0f32; 3]).unwrap();
    let err = matmul(&v, &a, false, false).unwrap_err();
    assert!(err.to_string().contains("rank 2"), "{err}");
    let i = Tensor::new(vec![3, 2], vec![0i32; 6]).unwrap();
    let err = matmul(&a, &i, false, false).unwrap_err();
    assert!(matches!(err, Error::DType { op: "MatMul", .. }), "{err}");
}

#[test]
fn bias_add_and_grad_against_reference() {
    let mut rng = StdRng::seed_from_u64(4);
    for shape in [
        vec![1, 1],
        vec![3, 5],
        vec![2, 3, 4, 7],
        vec![64, 9, 9, 130],
    ] {
        let c = *shape.last().unwrap();
        let len: usize = shape.iter().product();
        let x = random(&mut rng, len);
        let b = random(&mut rng, c);
        let xt = Tensor::new(shape.clone(), x.clone()).unwrap();
        let bt = Tensor::new(vec![c], b.clone()).unwrap();
        let y = bias_add(&xt, &bt).unwrap();
        assert_eq!(y.shape(), &shape[..]);
        for (i, v) in y.f32s("t").unwrap().iter().enumerate() {
            assert_eq!(*v, x[i] + b[i % c]);
        }
        // BiasAddGrad: f64 column sums, and the adjoint identity
        // <bias_add(0, b), dy> = <b, bias_add_grad(dy)>.
        let dy = random(&mut rng, len);
        let g = bias_add_grad(&Tensor::new(shape.clone(), dy.clone()).unwrap()).unwrap();
        assert_eq!(g.shape(), &[c]);
        let mut want = vec![0f64; c];
        for (i, v) in dy.iter().enumerate() {
            want[i % c] += *v as f64;
        }
        assert_close(g.f32s("t").unwrap(), &want, len / c, "BiasAddGrad");
        let lhs: f64 = dy
            .iter()
            .enumerate()
            .map(|(i, d)| *d as f64 * b[i % c] as f64)
            .sum();
        let rhs: f64 = g
            .to_f64_vec()
            .iter()
            .zip(&b)
            .map(|(g, b)| g * *b as f64)
            .sum();
        assert!(
            (lhs - rhs).abs() <= 1e-4 * (1.0 + lhs.abs()),
            "{lhs} vs {rhs}"
        );
    }
}

#[test]
fn bias_ops_reject_bad_inputs() {
    let x = Tensor::new(vec![2, 3], vec![0f32; 6]).unwrap();
    let err = bias_add(&x, &Tensor::new(vec![2], vec![0f32; 2]).unwrap()).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "BiasAdd", .. }), "{err}");
    let err = bias_add(&x, &Tensor::new(vec![1, 3], vec![0f32; 3]).unwrap()).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "BiasAdd", .. }), "{err}");
    let v = Tensor::new(vec![3], vec![0f32; 3]).unwrap();
    assert!(bias_add(&v, &v).is_err());
    let err = bias_add(&x, &Tensor::new(vec![3], vec![0f64; 3]).unwrap()).unwrap_err();
    assert!(matches!(err, Error::DType { op: "BiasAdd", .. }), "{err}");
    let err = bias_add_grad(&v).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Shape {
                op: "BiasAddGrad",
                ..
            }
        ),
        "{err}"
    );
    let xi = Tensor::new(vec![2, 3], vec![0i64; 6]).unwrap();
    let err = bias_add_grad(&xi).unwrap_err();
    assert!(
        matches!(
            err,
            Error::DType {
                op: "BiasAddGrad",
                ..
            }
        ),
        "{err}"
    );
}
