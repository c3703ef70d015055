//! FusedBatchNormV3 / FusedBatchNormGradV3 and the fused BN + ReLU6 pair
//! against plain f64 references, every SIMD level, and finite differences.

use psflow_kernels::ops::batchnorm::{
    at_level, fused_batch_norm, fused_batch_norm_grad, fused_batch_norm_relu6,
    fused_batch_norm_relu6_grad, Level,
};
use psflow_kernels::{BatchNormParams, Error, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn rand_vec(rng: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

fn t(shape: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::new(shape.to_vec(), v).unwrap()
}

fn empty() -> Tensor {
    Tensor::new(vec![0], Vec::<f32>::new()).unwrap()
}

fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= atol + rtol * w.abs(),
            "{what}[{i}]: got {g}, want {w} (err {err})"
        );
    }
}

/// f64 reference statistics: per-channel mean and biased variance.
fn ref_stats(x: &[f32], c: usize) -> (Vec<f64>, Vec<f64>) {
    let rows = x.len() / c;
    let mut mean = vec![0f64; c];
    for r in 0..rows {
        for j in 0..c {
            mean[j] += x[r * c + j] as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= rows as f64);
    let mut var = vec![0f64; c];
    for r in 0..rows {
        for j in 0..c {
            let d = x[r * c + j] as f64 - mean[j];
            var[j] += d * d;
        }
    }
    var.iter_mut().for_each(|v| *v /= rows as f64);
    (mean, var)
}

/// f64 reference forward given the statistics to normalise with.
#[allow(clippy::too_many_arguments)]
fn ref_normalize(
    x: &[f64],
    c: usize,
    scale: &[f32],
    offset: &[f32],
    mean: &[f64],
    var: &[f64],
    eps: f64,
    relu6: bool,
) -> Vec<f64> {
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let j = i % c;
            let y = (v - mean[j]) / (var[j] + eps).sqrt() * scale[j] as f64 + offset[j] as f64;
            if relu6 {
                y.clamp(0.0, 6.0)
            } else {
                y
            }
        })
        .collect()
}

/// f64 training forward straight from x (for finite differences).
fn ref_train_forward(
    x: &[f64],
    c: usize,
    scale: &[f32],
    offset: &[f32],
    eps: f64,
    relu6: bool,
) -> Vec<f64> {
    let rows = x.len() / c;
    let mut mean = vec![0f64; c];
    let mut var = vec![0f64; c];
    for (i, &v) in x.iter().enumerate() {
        mean[i % c] += v / rows as f64;
    }
    for (i, &v) in x.iter().enumerate() {
        var[i % c] += (v - mean[i % c]).powi(2) / rows as f64;
    }
    ref_normalize(x, c, scale, offset, &mean, &var, eps, relu6)
}

/// f64 reference gradient (TensorFlow's formulas); `y` masks dy as Relu6Grad.
#[allow(clippy::too_many_arguments)]
fn ref_grad(
    dy: &[f32],
    y: Option<&[f32]>,
    x: &[f32],
    c: usize,
    scale: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
    training: bool,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let rows = x.len() / c;
    let n = rows as f64;
    let g: Vec<f64> = dy
        .iter()
        .enumerate()
        .map(|(i, &d)| match y {
            Some(y) if !(y[i] > 0.0 && y[i] < 6.0) => 0.0,
            _ => d as f64,
        })
        .collect();
    let inv: Vec<f64> = var.iter().map(|&v| 1.0 / (v as f64 + eps).sqrt()).collect();
    let mut sg = vec![0f64; c];
    let mut sgx = vec![0f64; c];
    for i in 0..x.len() {
        let j = i % c;
        sg[j] += g[i];
        sgx[j] += g[i] * (x[i] as f64 - mean[j] as f64) * inv[j];
    }
    let dx = (0..x.len())
        .map(|i| {
            let j = i % c;
            let s = scale[j] as f64 * inv[j];
            if training {
                let xh = (x[i] as f64 - mean[j] as f64) * inv[j];
                s * (g[i] - sg[j] / n - xh * sgx[j] / n)
            } else {
                s * g[i]
            }
        })
        .collect();
    (dx, sgx, sg)
}

fn params(eps: f32, f: f32, training: bool) -> BatchNormParams {
    BatchNormParams {
        epsilon: eps,
        exponential_avg_factor: f,
        is_training: training,
    }
}

const SHAPES: &[&[usize]] = &[
    &[1, 1, 1, 1],
    &[2, 3, 5, 7],
    &[1, 1, 1, 17],
    &[3, 4, 1, 33],
    &[5, 64],
    &[9],
    &[2, 5, 3, 16],
    // Large enough to split over several parallel tasks.
    &[16, 8, 8, 64],
    &[4, 3, 3, 300],
];

#[test]
fn training_forward_matches_f64_at_every_level() {
    let mut rng = StdRng::seed_from_u64(1);
    for &shape in SHAPES {
        let c = *shape.last().unwrap();
        let n: usize = shape.iter().product();
        let x = rand_vec(&mut rng, n, -3.0, 5.0);
        let scale = rand_vec(&mut rng, c, 0.5, 2.0);
        let offset = rand_vec(&mut rng, c, -1.0, 1.0);
        let (mean, var) = ref_stats(&x, c);
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let rows = (n / c) as f64;
        let adjust = if rows > 1.0 { rows / (rows - 1.0) } else { 1.0 };
        for level in Level::available() {
            for relu6 in [false, true] {
                let xt = t(shape, x.clone());
                let out = at_level::forward(
                    level,
                    &xt,
                    [
                        &t(&[c], scale.clone()),
                        &t(&[c], offset.clone()),
                        &empty(),
                        &empty(),
                    ],
                    &params(1e-3, 1.0, true),
                    relu6,
                )
                .unwrap();
                let what = format!("{shape:?} {level:?} relu6={relu6}");
                let want = ref_normalize(&x64, c, &scale, &offset, &mean, &var, 1e-3, relu6);
                assert_eq!(out.y.shape(), shape);
                assert_close(
                    &format!("y {what}"),
                    out.y.f32s("t").unwrap(),
                    &want,
                    1e-4,
                    1e-4,
                );
                assert_close(
                    &format!("rs1 {what}"),
                    out.reserve_space_1.f32s("t").unwrap(),
                    &mean,
                    1e-5,
                    1e-5,
                );
                assert_close(
                    &format!("rs2 {what}"),
                    out.reserve_space_2.f32s("t").unwrap(),
                    &var,
                    1e-5,
                    1e-5,
                );
                assert_close(
                    &format!("mean {what}"),
                    out.batch_mean.f32s("t").unwrap(),
                    &mean,
                    1e-5,
                    1e-5,
                );
                let unbiased: Vec<f64> = var.iter().map(|v| v * adjust).collect();
                assert_close(
                    &format!("var {what}"),
                    out.batch_variance.f32s("t").unwrap(),
                    &unbiased,
                    1e-5,
                    1e-5,
                );
                assert_eq!(out.reserve_space_3.shape(), &[] as &[usize]);
            }
        }
    }
}

#[test]
fn public_ops_equal_relu6_of_batch_norm() {
    let mut rng = StdRng::seed_from_u64(2);
    let shape = [3, 5, 5, 24];
    let x = t(&shape, rand_vec(&mut rng, 3 * 25 * 24, -2.0, 9.0));
    let scale = t(&[24], rand_vec(&mut rng, 24, 0.5, 3.0));
    let offset = t(&[24], rand_vec(&mut rng, 24, 0.0, 3.0));
    let p = params(1e-3, 1.0, true);
    let plain = fused_batch_norm(&x, &scale, &offset, &empty(), &empty(), &p).unwrap();
    let fused = fused_batch_norm_relu6(&x, &scale, &offset, &empty(), &empty(), &p).unwrap();
    let relu6 = psflow_kernels::ops::activation::relu6(&plain.y).unwrap();
    assert_eq!(fused.y.f32s("t").unwrap(), relu6.f32s("t").unwrap());
    assert_eq!(
        fused.batch_variance.f32s("t").unwrap(),
        plain.batch_variance.f32s("t").unwrap()
    );
}

/// Mean and variance stay accurate when the mean is far from zero relative
/// to the spread (a naive one-pass E[x²] − E[x]² in f32 loses it all).
#[test]
fn statistics_are_accurate_with_a_large_mean() {
    let mut rng = StdRng::seed_from_u64(3);
    let (rows, c) = (20_000, 8);
    let x: Vec<f32> = (0..rows * c)
        .map(|_| 1000.0 + rng.random_range(-0.01f32..0.01))
        .collect();
    let (mean, var) = ref_stats(&x, c);
    let out = fused_batch_norm(
        &t(&[rows, c], x),
        &t(&[c], vec![1.0; c]),
        &t(&[c], vec![0.0; c]),
        &empty(),
        &empty(),
        &params(1e-8, 1.0, true),
    )
    .unwrap();
    assert_close(
        "mean",
        out.reserve_space_1.f32s("t").unwrap(),
        &mean,
        0.0,
        1e-7,
    );
    assert_close(
        "var",
        out.reserve_space_2.f32s("t").unwrap(),
        &var,
        0.0,
        1e-3,
    );
}

#[test]
fn running_averages_blend_with_the_factor() {
    let mut rng = StdRng::seed_from_u64(4);
    let (rows, c) = (10, 5);
    let x = rand_vec(&mut rng, rows * c, -1.0, 1.0);
    let old_m = rand_vec(&mut rng, c, -1.0, 1.0);
    let old_v = rand_vec(&mut rng, c, 0.5, 1.5);
    let (mean, var) = ref_stats(&x, c);
    let f = 0.25f64;
    let out = fused_batch_norm(
        &t(&[rows, c], x),
        &t(&[c], vec![1.0; c]),
        &t(&[c], vec![0.0; c]),
        &t(&[c], old_m.clone()),
        &t(&[c], old_v.clone()),
        &params(1e-3, f as f32, true),
    )
    .unwrap();
    let want_m: Vec<f64> = (0..c)
        .map(|j| (1.0 - f) * old_m[j] as f64 + f * mean[j])
        .collect();
    let want_v: Vec<f64> = (0..c)
        .map(|j| (1.0 - f) * old_v[j] as f64 + f * var[j] * rows as f64 / (rows - 1) as f64)
        .collect();
    assert_close(
        "mean",
        out.batch_mean.f32s("t").unwrap(),
        &want_m,
        1e-6,
        1e-5,
    );
    assert_close(
        "var",
        out.batch_variance.f32s("t").unwrap(),
        &want_v,
        1e-6,
        1e-5,
    );
    // The saved statistics are the batch's, not the blend.
    assert_close(
        "rs1",
        out.reserve_space_1.f32s("t").unwrap(),
        &mean,
        1e-6,
        1e-5,
    );
    assert_close(
        "rs2",
        out.reserve_space_2.f32s("t").unwrap(),
        &var,
        1e-6,
        1e-5,
    );
}

#[test]
fn inference_uses_given_statistics() {
    let mut rng = StdRng::seed_from_u64(5);
    for level in Level::available() {
        for relu6 in [false, true] {
            let shape = [2, 3, 3, 19];
            let c = 19;
            let x = rand_vec(&mut rng, 2 * 9 * c, -4.0, 8.0);
            let scale = rand_vec(&mut rng, c, 0.5, 2.0);
            let offset = rand_vec(&mut rng, c, -1.0, 3.0);
            let m = rand_vec(&mut rng, c, -1.0, 1.0);
            let v = rand_vec(&mut rng, c, 0.5, 2.0);
            let out = at_level::forward(
                level,
                &t(&shape, x.clone()),
                [
                    &t(&[c], scale.clone()),
                    &t(&[c], offset.clone()),
                    &t(&[c], m.clone()),
                    &t(&[c], v.clone()),
                ],
                &params(1e-3, 0.5, false),
                relu6,
            )
            .unwrap();
            let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let m64: Vec<f64> = m.iter().map(|&v| v as f64).collect();
            let v64: Vec<f64> = v.iter().map(|&v| v as f64).collect();
            let want = ref_normalize(&x64, c, &scale, &offset, &m64, &v64, 1e-3, relu6);
            assert_close("y", out.y.f32s("t").unwrap(), &want, 1e-5, 1e-5);
            assert_eq!(out.batch_mean.f32s("t").unwrap(), &m[..]);
            assert_eq!(out.batch_variance.f32s("t").unwrap(), &v[..]);
        }
    }
}

#[test]
fn gradients_match_f64_reference_at_every_level() {
    let mut rng = StdRng::seed_from_u64(6);
    for &shape in SHAPES {
        let c = *shape.last().unwrap();
        let n: usize = shape.iter().product();
        let x = rand_vec(&mut rng, n, -3.0, 5.0);
        let dy = rand_vec(&mut rng, n, -1.0, 1.0);
        let scale = rand_vec(&mut rng, c, 0.5, 2.0);
        let offset = rand_vec(&mut rng, c, 0.0, 3.0);
        for training in [true, false] {
            let (m, v): (Vec<f32>, Vec<f32>) = if training {
                let (m, v) = ref_stats(&x, c);
                (
                    m.iter().map(|&a| a as f32).collect(),
                    v.iter().map(|&a| a as f32).collect(),
                )
            } else {
                (
                    rand_vec(&mut rng, c, -1.0, 1.0),
                    rand_vec(&mut rng, c, 0.5, 2.0),
                )
            };
            // A forward output to mask with: relu6 of the normalised input.
            let x64: Vec<f64> = x.iter().map(|&a| a as f64).collect();
            let m64: Vec<f64> = m.iter().map(|&a| a as f64).collect();
            let v64: Vec<f64> = v.iter().map(|&a| a as f64).collect();
            let y: Vec<f32> = ref_normalize(&x64, c, &scale, &offset, &m64, &v64, 1e-3, true)
                .iter()
                .map(|&a| a as f32)
                .collect();
            for level in Level::available() {
                for with_y in [false, true] {
                    let yy = with_y.then(|| t(shape, y.clone()));
                    let got = at_level::backward(
                        level,
                        &t(shape, dy.clone()),
                        yy.as_ref(),
                        &t(shape, x.clone()),
                        [
                            &t(&[c], scale.clone()),
                            &t(&[c], m.clone()),
                            &t(&[c], v.clone()),
                        ],
                        1e-3,
                        training,
                    )
                    .unwrap();
                    let (dx, ds, db) = ref_grad(
                        &dy,
                        with_y.then_some(&y[..]),
                        &x,
                        c,
                        &scale,
                        &m,
                        &v,
                        1e-3,
                        training,
                    );
                    let what = format!("{shape:?} {level:?} training={training} relu6={with_y}");
                    let tol = 2e-5 * (n as f64 / c as f64).sqrt();
                    assert_close(
                        &format!("dx {what}"),
                        got.dx.f32s("t").unwrap(),
                        &dx,
                        1e-4,
                        1e-4,
                    );
                    assert_close(
                        &format!("dscale {what}"),
                        got.dscale.f32s("t").unwrap(),
                        &ds,
                        tol,
                        1e-4,
                    );
                    assert_close(
                        &format!("doffset {what}"),
                        got.doffset.f32s("t").unwrap(),
                        &db,
                        tol,
                        1e-4,
                    );
                }
            }
        }
    }
}

/// The gradient of `L = Σ w·relu6(bn(x))` (training mode) against central
/// differences of the f64 forward: checks both the op and the formulas.
#[test]
fn training_gradients_match_finite_differences() {
    let mut rng = StdRng::seed_from_u64(7);
    for &(shape, relu6) in &[
        (&[2usize, 3, 1, 5][..], false),
        (&[3, 2, 2, 4][..], true),
        (&[1, 1, 3, 3][..], true),
    ] {
        let c = *shape.last().unwrap();
        let n: usize = shape.iter().product();
        let x = rand_vec(&mut rng, n, -1.0, 2.0);
        let w = rand_vec(&mut rng, n, -1.0, 1.0);
        let scale = rand_vec(&mut rng, c, 1.0, 2.0);
        let offset = rand_vec(&mut rng, c, 1.0, 3.0);
        let scale_t = t(&[c], scale.clone());
        let offset_t = t(&[c], offset.clone());
        let p = params(1e-3, 1.0, true);
        let xt = t(shape, x.clone());
        let (fwd, grad) = if relu6 {
            let f =
                fused_batch_norm_relu6(&xt, &scale_t, &offset_t, &empty(), &empty(), &p).unwrap();
            let g = fused_batch_norm_relu6_grad(
                &t(shape, w.clone()),
                &f.y,
                &xt,
                &scale_t,
                &f.reserve_space_1,
                &f.reserve_space_2,
                1e-3,
                true,
            )
            .unwrap();
            (f, g)
        } else {
            let f = fused_batch_norm(&xt, &scale_t, &offset_t, &empty(), &empty(), &p).unwrap();
            let g = fused_batch_norm_grad(
                &t(shape, w.clone()),
                &xt,
                &scale_t,
                &f.reserve_space_1,
                &f.reserve_space_2,
                1e-3,
                true,
            )
            .unwrap();
            (f, g)
        };
        let _ = fwd;
        let loss = |x: &[f64], scale: &[f32], offset: &[f32]| -> f64 {
            ref_train_forward(x, c, scale, offset, 1e-3, relu6)
                .iter()
                .zip(&w)
                .map(|(y, &w)| y * w as f64)
                .sum()
        };
        let x64: Vec<f64> = x.iter().map(|&a| a as f64).collect();
        let h = 1e-6;
        let fd_dx: Vec<f64> = (0..n)
            .map(|i| {
                let (mut a, mut b) = (x64.clone(), x64.clone());
                a[i] += h;
                b[i] -= h;
                (loss(&a, &scale, &offset) - loss(&b, &scale, &offset)) / (2.0 * h)
            })
            .collect();
        assert_close(
            &format!("dx {shape:?}"),
            grad.dx.f32s("t").unwrap(),
            &fd_dx,
            1e-3,
            1e-3,
        );
        let hs = 1e-3f32;
        let fd_param = |which: usize| -> Vec<f64> {
            (0..c)
                .map(|j| {
                    let (mut sa, mut sb) = (scale.clone(), scale.clone());
                    let (mut oa, mut ob) = (offset.clone(), offset.clone());
                    if which == 0 {
                        sa[j] += hs;
                        sb[j] -= hs;
                    } else {
                        oa[j] += hs;
                        ob[j] -= hs;
                    }
                    (loss(&x64, &sa, &oa) - loss(&x64, &sb, &ob)) / (2.0 * hs as f64)
                })
                .collect()
        };
        assert_close(
            &format!("dscale {shape:?}"),
            grad.dscale.f32s("t").unwrap(),
            &fd_param(0),
            1e-3,
            1e-3,
        );
        assert_close(
            &format!("doffset {shape:?}"),
            grad.doffset.f32s("t").unwrap(),
            &fd_param(1),
            1e-3,
            1e-3,
        );
    }
}

#[test]
fn empty_batch_gives_nan_statistics() {
    let out = fused_batch_norm(
        &t(&[0, 2, 2, 3], vec![]),
        &t(&[3], vec![1.0; 3]),
        &t(&[3], vec![0.0; 3]),
        &empty(),
        &empty(),
        &params(1e-3, 1.0, true),
    )
    .unwrap();
    assert_eq!(out.y.shape(), &[0, 2, 2, 3]);
    assert!(out.batch_mean.f32s("t").unwrap().iter().all(|v| v.is_nan()));
}

#[test]
fn bad_inputs_are_errors_naming_the_op() {
    let x = t(&[2, 2, 2, 3], vec![1.0; 24]);
    let c3 = t(&[3], vec![1.0; 3]);
    let c4 = t(&[4], vec![1.0; 4]);
    let p = params(1e-3, 1.0, true);
    let err = fused_batch_norm(&x, &c4, &c3, &empty(), &empty(), &p).unwrap_err();
    assert!(
        matches!(err, Error::Shape { .. }) && err.to_string().contains("FusedBatchNormV3"),
        "{err}"
    );
    assert!(err.to_string().contains("scale"), "{err}");
    let xi = Tensor::new(vec![2, 3], vec![1i32; 6]).unwrap();
    assert!(matches!(
        fused_batch_norm(&xi, &c3, &c3, &empty(), &empty(), &p).unwrap_err(),
        Error::DType { .. }
    ));
    let scalar = Tensor::scalar(1f32);
    assert!(fused_batch_norm(&scalar, &c3, &c3, &empty(), &empty(), &p).is_err());
    // A factor other than 1 needs the running statistics.
    let err =
        fused_batch_norm(&x, &c3, &c3, &empty(), &empty(), &params(1e-3, 0.5, true)).unwrap_err();
    assert!(err.to_string().contains("mean"), "{err}");
    // Inference needs them too.
    assert!(fused_batch_norm(&x, &c3, &c3, &empty(), &empty(), &params(1e-3, 1.0, false)).is_err());
    let dy = t(&[2, 2, 2, 4], vec![1.0; 32]);
    let err = fused_batch_norm_grad(&dy, &x, &c3, &c3, &c3, 1e-3, true).unwrap_err();
    assert!(err.to_string().contains("FusedBatchNormGradV3"), "{err}");
    let y_bad = t(&[2, 2, 6], vec![1.0; 24]);
    assert!(fused_batch_norm_relu6_grad(&x, &y_bad, &x, &c3, &c3, &c3, 1e-3, true).is_err());
    assert!(fused_batch_norm_grad(&x, &x, &c3, &c4, &c3, 1e-3, true).is_err());
}

/// Best-of-N timings at MobileNet's batch-128 shapes (the criterion bench
/// gives medians; on a shared machine the minimum is the steadier figure).
/// `cargo test -p psflow-kernels --test batchnorm -- --ignored --nocapture`
#[test]
#[ignore = "timing report, not a check"]
fn timing_report() {
    use std::time::Instant;
    let mut rng = StdRng::seed_from_u64(9);
    let p = params(1e-3, 1.0, true);
    for shape in [
        [128usize, 16, 16, 64],
        [128, 8, 8, 128],
        [128, 4, 4, 256],
        [128, 2, 2, 512],
    ] {
        let n: usize = shape.iter().product();
        let c = shape[3];
        let x = t(&shape, rand_vec(&mut rng, n, -2.0, 6.0));
        let dy = t(&shape, rand_vec(&mut rng, n, -1.0, 1.0));
        let scale = t(&[c], rand_vec(&mut rng, c, 0.5, 2.0));
        let offset = t(&[c], rand_vec(&mut rng, c, 0.0, 3.0));
        let f = fused_batch_norm_relu6(&x, &scale, &offset, &empty(), &empty(), &p).unwrap();
        let best = |mut run: Box<dyn FnMut() + '_>| {
            (0..60)
                .map(|_| {
                    let t0 = Instant::now();
                    run();
                    t0.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min)
        };
        let fwd = best(Box::new(|| {
            std::hint::black_box(
                fused_batch_norm_relu6(&x, &scale, &offset, &empty(), &empty(), &p).unwrap(),
            );
        }));
        let bwd = best(Box::new(|| {
            std::hint::black_box(
                fused_batch_norm_relu6_grad(
                    &dy,
                    &f.y,
                    &x,
                    &scale,
                    &f.reserve_space_1,
                    &f.reserve_space_2,
                    1e-3,
                    true,
                )
                .unwrap(),
            );
        }));
        let unfused_fwd = best(Box::new(|| {
            let o = fused_batch_norm(&x, &scale, &offset, &empty(), &empty(), &p).unwrap();
            std::hint::black_box(psflow_kernels::ops::activation::relu6(&o.y).unwrap());
        }));
        let unfused_bwd = best(Box::new(|| {
            let g = psflow_kernels::ops::activation::relu6_grad(&dy, &f.y).unwrap();
            std::hint::black_box(
                fused_batch_norm_grad(
                    &g,
                    &x,
                    &scale,
                    &f.reserve_space_1,
                    &f.reserve_space_2,
                    1e-3,
                    true,
                )
                .unwrap(),
            );
        }));
        let gb = |bytes: usize, s: f64| bytes as f64 / s / 1e9;
        println!(
            "{shape:?}: fused fwd {:.3} ms ({:.1} GB/s), fused bwd {:.3} ms ({:.1} GB/s); unfused fwd {:.3} ms, unfused bwd {:.3} ms",
            fwd * 1e3,
            gb(8 * n, fwd),
            bwd * 1e3,
            gb(16 * n, bwd),
            unfused_fwd * 1e3,
            unfused_bwd * 1e3
        );
    }
}
