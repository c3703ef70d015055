//! AvgPool / MaxPool and their gradients against an f64 reference that
//! derives TensorFlow's SAME/VALID geometry itself, and finite differences.

use psflow_kernels::ops::pool::{avg_pool, avg_pool_grad, max_pool, max_pool_grad};
use psflow_kernels::{Error, Padding, PoolParams, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// TensorFlow's rule: (out, pad_before) per axis.
fn geom(input: usize, k: usize, s: usize, same: bool) -> (usize, isize) {
    if same {
        let out = input.div_ceil(s);
        let total = ((out - 1) * s + k).saturating_sub(input);
        (out, (total / 2) as isize)
    } else {
        ((input - k) / s + 1, 0)
    }
}

/// f64 reference pooling; `avg` picks average (over in-bounds) or max.
fn ref_pool(x: &[f64], shape: [usize; 4], p: &PoolParams, avg: bool) -> (Vec<f64>, [usize; 4]) {
    let [n, h, w, c] = shape;
    let same = p.padding == Padding::Same;
    let (oh, ph) = geom(h, p.ksize[0], p.strides[0], same);
    let (ow, pw) = geom(w, p.ksize[1], p.strides[1], same);
    let mut out = Vec::new();
    for b in 0..n {
        for y in 0..oh {
            for xo in 0..ow {
                for ch in 0..c {
                    let mut vals = Vec::new();
                    for ky in 0..p.ksize[0] {
                        for kx in 0..p.ksize[1] {
                            let iy = (y * p.strides[0]) as isize + ky as isize - ph;
                            let ix = (xo * p.strides[1]) as isize + kx as isize - pw;
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                vals.push(x[((b * h + iy as usize) * w + ix as usize) * c + ch]);
                            }
                        }
                    }
                    out.push(if avg {
                        vals.iter().sum::<f64>() / vals.len() as f64
                    } else {
                        vals.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                    });
                }
            }
        }
    }
    (out, [n, oh, ow, c])
}

fn cases() -> Vec<([usize; 4], PoolParams)> {
    let pp = |k: [usize; 2], s: [usize; 2], padding| PoolParams {
        ksize: k,
        strides: s,
        padding,
    };
    vec![
        ([2, 5, 7, 3], pp([3, 3], [2, 2], Padding::Same)),
        ([2, 5, 7, 3], pp([3, 3], [2, 2], Padding::Valid)),
        ([1, 4, 4, 2], pp([3, 3], [2, 2], Padding::Same)),
        ([1, 1, 1, 5], pp([3, 3], [1, 1], Padding::Same)),
        ([3, 6, 1, 4], pp([2, 1], [2, 1], Padding::Valid)),
        ([1, 7, 5, 1], pp([2, 3], [1, 2], Padding::Same)),
        ([2, 4, 4, 17], pp([4, 4], [1, 1], Padding::Valid)),
        ([1, 3, 3, 2], pp([1, 1], [3, 3], Padding::Same)),
    ]
}

fn rand_x(rng: &mut StdRng, shape: [usize; 4]) -> Vec<f32> {
    (0..shape.iter().product())
        .map(|_| rng.random_range(-3.0f32..3.0))
        .collect()
}

#[test]
fn forward_matches_reference() {
    let mut rng = StdRng::seed_from_u64(1);
    for (shape, p) in cases() {
        let x = rand_x(&mut rng, shape);
        let xt = Tensor::new(shape.to_vec(), x.clone()).unwrap();
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        for avg in [true, false] {
            let got = if avg {
                avg_pool(&xt, &p)
            } else {
                max_pool(&xt, &p)
            }
            .unwrap();
            let (want, oshape) = ref_pool(&x64, shape, &p, avg);
            assert_eq!(got.shape(), &oshape[..], "{shape:?} {p:?}");
            for (g, w) in got.to_f64_vec().iter().zip(&want) {
                assert!(
                    (g - w).abs() < 1e-5,
                    "{shape:?} {p:?} avg={avg}: {g} vs {w}"
                );
            }
        }
    }
}

/// Gradients of `L = Σ w·pool(x)` against central differences of the f64
/// reference (random inputs have no ties, so max is differentiable).
#[test]
fn gradients_match_finite_differences() {
    let mut rng = StdRng::seed_from_u64(2);
    for (shape, p) in cases() {
        let x = rand_x(&mut rng, shape);
        let xt = Tensor::new(shape.to_vec(), x.clone()).unwrap();
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        for avg in [true, false] {
            let (y, oshape) = ref_pool(&x64, shape, &p, avg);
            let wv: Vec<f32> = (0..y.len())
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect();
            let wt = Tensor::new(oshape.to_vec(), wv.clone()).unwrap();
            let got = if avg {
                avg_pool_grad(shape, &wt, &p).unwrap()
            } else {
                let out = max_pool(&xt, &p).unwrap();
                max_pool_grad(&xt, &out, &wt, &p).unwrap()
            };
            assert_eq!(got.shape(), &shape[..]);
            let loss = |xs: &[f64]| -> f64 {
                ref_pool(xs, shape, &p, avg)
                    .0
                    .iter()
                    .zip(&wv)
                    .map(|(a, &b)| a * b as f64)
                    .sum()
            };
            let h = 1e-6;
            for (i, g) in got.to_f64_vec().iter().enumerate() {
                let (mut a, mut b) = (x64.clone(), x64.clone());
                a[i] += h;
                b[i] -= h;
                let fd = (loss(&a) - loss(&b)) / (2.0 * h);
                assert!(
                    (fd - g).abs() < 1e-4,
                    "{shape:?} {p:?} avg={avg} [{i}]: fd {fd} vs {g}"
                );
            }
        }
    }
}

#[test]
fn max_pool_grad_goes_to_the_first_maximum() {
    // All equal: each window's gradient lands on its top-left element.
    let x = Tensor::new(vec![1, 2, 2, 1], vec![1f32; 4]).unwrap();
    let p = PoolParams {
        ksize: [2, 2],
        strides: [1, 1],
        padding: Padding::Valid,
    };
    let out = max_pool(&x, &p).unwrap();
    let g = Tensor::new(vec![1, 1, 1, 1], vec![5f32]).unwrap();
    assert_eq!(
        max_pool_grad(&x, &out, &g, &p).unwrap().f32s("t").unwrap(),
        &[5., 0., 0., 0.]
    );
}

#[test]
fn bad_inputs_are_errors() {
    let x = Tensor::new(vec![1, 2, 2, 1], vec![1f32; 4]).unwrap();
    let big = PoolParams {
        ksize: [3, 3],
        strides: [1, 1],
        padding: Padding::Valid,
    };
    assert!(matches!(
        avg_pool(&x, &big).unwrap_err(),
        Error::Shape { .. }
    ));
    let zero = PoolParams {
        ksize: [1, 1],
        strides: [0, 1],
        padding: Padding::Same,
    };
    assert!(max_pool(&x, &zero).is_err());
    let ok = PoolParams {
        ksize: [2, 2],
        strides: [2, 2],
        padding: Padding::Same,
    };
    assert!(avg_pool(&Tensor::new(vec![2, 2], vec![1f32; 4]).unwrap(), &ok).is_err());
    let wrong = Tensor::new(vec![1, 2, 2, 1], vec![1f32; 4]).unwrap();
    let err = avg_pool_grad([1, 2, 2, 1], &wrong, &ok).unwrap_err();
    assert!(err.to_string().contains("AvgPoolGrad"), "{err}");
    assert!(max_pool_grad(&x, &wrong, &wrong, &ok).is_err());
    let xi = Tensor::new(vec![1, 2, 2, 1], vec![1i32; 4]).unwrap();
    assert!(matches!(
        max_pool(&xi, &ok).unwrap_err(),
        Error::DType { .. }
    ));
}
