//! Every CUDA op against the CPU op (the oracle) on awkward shapes: odd
//! sizes, channel counts that are not multiples of 32, multipliers > 1,
//! strides 1 and 2, SAME and VALID, batch 1. Tolerances: f32 kernels
//! max|gpu − cpu| ≤ 1e-5 · max|cpu|; TF32 kernels (pointwise) 3e-3.
//!
//! These need a CUDA GPU (compute capability ≥ 8.0) and are `#[ignore]`d
//! otherwise: run them with `PSFLOW_CUDA_TESTS=1 scripts/test`, or
//! `cargo test -p psflow-kernels --test cuda_ops -- --ignored`. Run that
//! way on a machine without a GPU they fail (they never pass silently).
//!
//! Status: written with the kernels, NOT yet run on a GPU (none was
//! available when they were written); see docs/cuda.md.

use std::sync::{Arc, OnceLock};

use psflow_kernels::cuda::ops::depthwise::DepthwisePath;
use psflow_kernels::cuda::CudaDevice;
use psflow_kernels::ops::{batchnorm, conv, depthwise, matmul, optim};
use psflow_kernels::{BatchNormParams, Conv2dParams, Padding, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NEEDS_GPU: &str = "needs a CUDA GPU: PSFLOW_CUDA_TESTS=1 scripts/test";
const F32_TOL: f32 = 1e-5;
const TF32_TOL: f32 = 3e-3;

fn gpu() -> Arc<CudaDevice> {
    static DEV: OnceLock<Arc<CudaDevice>> = OnceLock::new();
    DEV.get_or_init(|| {
        CudaDevice::new(0)
            .unwrap_or_else(|e| panic!("these tests need a CUDA GPU ({NEEDS_GPU}): {e}"))
    })
    .clone()
}

fn random(rng: &mut StdRng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::new(
        shape.to_vec(),
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
    )
    .unwrap()
}

/// `max|got − want| ≤ tol · max|want|`, shapes equal.
fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let (g, w) = (got.f32s("test").unwrap(), want.f32s("test").unwrap());
    let scale = w.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    let (worst, at) = g
        .iter()
        .zip(w)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold(
            (0f32, 0),
            |(m, i), (j, d)| if d > m { (d, j) } else { (m, i) },
        );
    assert!(
        worst <= tol * scale,
        "{what}: max error {worst:e} at {at} (got {}, want {}) exceeds {tol:e} × {scale}",
        g[at],
        w[at]
    );
}

/// (input NHWC, filter [kh, kw, c, m], strides, padding)
type DepthwiseCase = ([usize; 4], [usize; 4], [usize; 2], Padding);

const DEPTHWISE_CASES: &[DepthwiseCase] = &[
    ([1, 7, 5, 33], [3, 3, 33, 1], [1, 1], Padding::Same),
    ([2, 9, 11, 40], [3, 3, 40, 2], [2, 2], Padding::Same),
    ([3, 6, 6, 17], [3, 3, 17, 1], [2, 2], Padding::Valid),
    ([2, 16, 17, 64], [3, 3, 64, 1], [1, 1], Padding::Same),
    ([1, 8, 13, 5], [2, 5, 5, 3], [1, 2], Padding::Same),
    ([2, 1, 9, 3], [1, 3, 3, 1], [1, 1], Padding::Valid),
    ([1, 1, 1, 1], [1, 1, 1, 1], [1, 1], Padding::Valid),
];

fn params(strides: [usize; 2], padding: Padding) -> Conv2dParams {
    Conv2dParams { strides, padding }
}

#[test]
#[ignore = "needs a CUDA GPU: PSFLOW_CUDA_TESTS=1 scripts/test"]
fn depthwise_forward_matches_cpu_on_both_paths() {
    let dev = gpu();
    let mut rng = StdRng::seed_from_u64(5);
    for &(xs, fs, strides, padding) in DEPTHWISE_CASES {
        let p = params(strides, padding);
        let (x, f) = (random(&mut rng, &xs), random(&mut rng, &fs));
        let want = depthwise::depthwise_conv2d(&x, &f, &p).unwrap();
        let (dx, df) = (dev.upload(&x).unwrap(), dev.upload(&f).unwrap());
        for path in [DepthwisePath::Auto, DepthwisePath::General] {
            let got = dev.depthwise_conv2d(&dx, &df, &p, path).unwrap();
            let got = dev.download(&got).unwrap();
            assert_close(
                &format!("forward {xs:?} {fs:?} {strides:?} {padding:?} {path:?}"),
                &got,
                &want,
                F32_TOL,
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU: PSFLOW_CUDA_TESTS=1 scripts/test"]
fn depthwise_gradients_match_cpu() {
    let dev = gpu();
    let mut rng = StdRng::seed_from_u64(6);
    for &(xs, fs, strides, padding) in DEPTHWISE_CASES {
        let p = params(strides, padding);
        let (x, f) = (random(&mut rng, &xs), random(&mut rng, &fs));
        let y_shape = depthwise::depthwise_conv2d(&x, &f, &p)
            .unwrap()
            .shape()
            .to_vec();
        let dy = random(&mut rng, &y_shape);
        let want_dx = depthwise::depthwise_conv2d_backprop_input(xs, &f, &dy, &p).unwrap();
        let want_df = depthwise::depthwise_conv2d_backprop_filter(&x, fs, &dy, &p).unwrap();
        let (gx, gf, gdy) = (
            dev.upload(&x).unwrap(),
            dev.upload(&f).unwrap(),
            dev.upload(&dy).unwrap(),
        );
        let got_dx = dev
            .depthwise_conv2d_backprop_input(xs, &gf, &gdy, &p)
            .unwrap();
        let got_df = dev
            .depthwise_conv2d_backprop_filter(&gx, fs, &gdy, &p)
            .unwrap();
        let what = format!("{xs:?} {fs:?} {strides:?} {padding:?}");
        assert_close(
            &format!("backprop input {what}"),
            &dev.download(&got_dx).unwrap(),
            &want_dx,
            F32_TOL,
        );
        assert_close(
            &format!("backprop filter {what}"),
            &dev.download(&got_df).unwrap(),
            &want_df,
            F32_TOL,
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU: PSFLOW_CUDA_TESTS=1 scripts/test"]
fn pointwise_conv_and_its_gradients_match_cpu_within_tf32() {
    let dev = gpu();
    let mut rng = StdRng::seed_from_u64(7);
    let p = params([1, 1], Padding::Valid);
    for (xs, o) in [
        ([2, 5, 7, 33], 47),
        ([1, 3, 3, 130], 65),
        ([1, 1, 1, 1], 1),
        ([4, 8, 8, 64], 128),
    ] {
        let fs = [1, 1, xs[3], o];
        let (x, f) = (random(&mut rng, &xs), random(&mut rng, &fs));
        let want = conv::conv2d(&x, &f, &p).unwrap();
        let dy = random(&mut rng, want.shape());
        let want_dx = conv::conv2d_backprop_input(xs, &f, &dy, &p).unwrap();
        let want_df = conv::conv2d_backprop_filter(&x, fs, &dy, &p).unwrap();
        let (gx, gf, gdy) = (
            dev.upload(&x).unwrap(),
            dev.upload(&f).unwrap(),
            dev.upload(&dy).unwrap(),
        );
        let got = dev.pointwise_conv2d(&gx, &gf).unwrap();
        let got_dx = dev.pointwise_conv2d_backprop_input(xs, &gf, &gdy).unwrap();
        let got_df = dev.pointwise_conv2d_backprop_filter(&gx, fs, &gdy).unwrap();
        assert_close(
            &format!("pointwise {xs:?}→{o}"),
            &dev.download(&got).unwrap(),
            &want,
            TF32_TOL,
        );
        assert_close(
            &format!("pointwise dx {xs:?}→{o}"),
            &dev.download(&got_dx).unwrap(),
            &want_dx,
            TF32_TOL,
        );
        assert_close(
            &format!("pointwise dW {xs:?}→{o}"),
            &dev.download(&got_df).unwrap(),
            &want_df,
            TF32_TOL,
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU: PSFLOW_CUDA_TESTS=1 scripts/test"]
fn matmul_tf32_matches_cpu_with_every_transpose() {
    let dev = gpu();
    let mut rng = StdRng::seed_from_u64(8);
    let (m, n, k) = (67, 45, 129);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let a = random(&mut rng, &if ta { [k, m] } else { [m, k] });
        let b = random(&mut rng, &if tb { [n, k] } else { [k, n] });
        let want = matmul::matmul(&a, &b, ta, tb).unwrap();
        let got = dev
            .matmul_tf32(&dev.upload(&a).unwrap(), &dev.upload(&b).unwrap(), ta, tb)
            .unwrap();
        assert_close(
            &format!("matmul ta={ta} tb={tb}"),
            &dev.download(&got).unwrap(),
            &want,
            TF32_TOL,
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU: PSFLOW_CUDA_TESTS=1 scripts/test"]
fn batch_norm_relu6_forward_and_backward_match_cpu() {
    let dev = gpu();
    let mut rng = StdRng::seed_from_u64(9);
    for (shape, training, factor, relu6) in [
        (vec![2, 5, 7, 33], true, 1.0, true),
        (vec![3, 4, 4, 70], true, 0.25, false),
        (vec![1, 1, 1, 5], true, 1.0, true),
        (vec![129, 17], true, 0.5, true),
        (vec![2, 3, 3, 40], false, 1.0, true),
    ] {
        let c = *shape.last().unwrap();
        let mut x = random(&mut rng, &shape);
        // An offset mean exercises the shifted sums.
        x = Tensor::new(
            shape.clone(),
            x.f32s("t").unwrap().iter().map(|v| 3.0 * v + 2.0).collect(),
        )
        .unwrap();
        let scale = random(&mut rng, &[c]);
        let offset = random(&mut rng, &[c]);
        let mean = random(&mut rng, &[c]);
        let var =
            Tensor::new(vec![c], (0..c).map(|i| 0.5 + i as f32 / c as f32).collect()).unwrap();
        let p = BatchNormParams {
            epsilon: 1e-3,
            exponential_avg_factor: factor,
            is_training: training,
        };
        let want = batchnorm::at_level::forward(
            batchnorm::Level::detect(),
            &x,
            [&scale, &offset, &mean, &var],
            &p,
            relu6,
        )
        .unwrap();
        let up = |t: &Tensor| dev.upload(t).unwrap();
        let got = dev
            .fused_batch_norm(
                &up(&x),
                &up(&scale),
                &up(&offset),
                &up(&mean),
                &up(&var),
                &p,
                relu6,
            )
            .unwrap();
        let what = format!("{shape:?} training={training} factor={factor} relu6={relu6}");
        let down = |t| dev.download(t).unwrap();
        assert_close(&format!("y {what}"), &down(&got.y), &want.y, F32_TOL);
        assert_close(
            &format!("batch_mean {what}"),
            &down(&got.batch_mean),
            &want.batch_mean,
            F32_TOL,
        );
        assert_close(
            &format!("batch_variance {what}"),
            &down(&got.batch_variance),
            &want.batch_variance,
            F32_TOL,
        );
        assert_close(
            &format!("reserve_space_1 {what}"),
            &down(&got.reserve_space_1),
            &want.reserve_space_1,
            F32_TOL,
        );
        assert_close(
            &format!("reserve_space_2 {what}"),
            &down(&got.reserve_space_2),
            &want.reserve_space_2,
            F32_TOL,
        );

        let dy = random(&mut rng, &shape);
        let y_in = relu6.then_some(&want.y);
        let want_g = batchnorm::at_level::backward(
            batchnorm::Level::detect(),
            &dy,
            y_in,
            &x,
            [&scale, &want.reserve_space_1, &want.reserve_space_2],
            p.epsilon,
            training,
        )
        .unwrap();
        let gy = up(&want.y);
        let got_g = dev
            .fused_batch_norm_grad(
                &up(&dy),
                relu6.then_some(&gy),
                &up(&x),
                &up(&scale),
                &up(&want.reserve_space_1),
                &up(&want.reserve_space_2),
                p.epsilon,
                training,
            )
            .unwrap();
        assert_close(&format!("dx {what}"), &down(&got_g.dx), &want_g.dx, F32_TOL);
        assert_close(
            &format!("dscale {what}"),
            &down(&got_g.dscale),
            &want_g.dscale,
            F32_TOL,
        );
        assert_close(
            &format!("doffset {what}"),
            &down(&got_g.doffset),
            &want_g.doffset,
            F32_TOL,
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU: PSFLOW_CUDA_TESTS=1 scripts/test"]
fn rmsprop_matches_cpu_bit_for_bit() {
    let dev = gpu();
    let mut rng = StdRng::seed_from_u64(10);
    let n = 100_003;
    let h = optim::RmsPropHyper {
        lr: 0.01,
        rho: 0.9,
        momentum: 0.9,
        epsilon: 1.0,
    };
    let var = random(&mut rng, &[n]);
    let ms = Tensor::full(vec![n], 1.0f32);
    let mom = random(&mut rng, &[n]);
    let (mut gv, mut gs, mut gm) = (
        dev.upload(&var).unwrap(),
        dev.upload(&ms).unwrap(),
        dev.upload(&mom).unwrap(),
    );
    let (mut cv, mut cs, mut cm) = (
        var.f32s("t").unwrap().to_vec(),
        ms.f32s("t").unwrap().to_vec(),
        mom.f32s("t").unwrap().to_vec(),
    );
    for _ in 0..3 {
        let grad = random(&mut rng, &[n]);
        optim::apply_rmsprop(&mut cv, &mut cs, &mut cm, grad.f32s("t").unwrap(), h).unwrap();
        dev.apply_rmsprop(&mut gv, &mut gs, &mut gm, &dev.upload(&grad).unwrap(), h)
            .unwrap();
    }
    for (what, got, want) in [("var", &gv, cv), ("ms", &gs, cs), ("mom", &gm, cm)] {
        assert_eq!(
            dev.download(got).unwrap().f32s("t").unwrap(),
            &want[..],
            "{what} differs"
        );
    }
}
