//! Every CUDA op against the CPU op (the oracle) on awkward shapes: odd
//! sizes, channel counts that are not multiples of 32, multipliers > 1,
//! strides 1 and 2, SAME and VALID, batch 1. Tolerances: f32 kernels
//! max|gpu − cpu| ≤ 1e-5 · max|cpu| (cuBLAS's f32 SGEMM too); TF32 kernels
//! (pointwise, cuBLAS in TF32 mode) 3e-3;
//! optimizers and exactly rounded element-wise ops bit for bit. The pool
//! tests check a repeated step allocates nothing new from the driver.
//! Each test is written once and runs on every GPU of the machine.
//!
//! These need a CUDA GPU (compute capability ≥ 8.0) and are `#[ignore]`d
//! otherwise: run them with `PSFLOW_CUDA_TESTS=1 scripts/test`, or
//! `cargo test -p psflow-kernels --test cuda_ops -- --ignored`. Run that
//! way on a machine without a GPU they fail (they never pass silently).
//!
//! Status: written with the kernels, NOT yet run on a GPU (none was
//! available when they were written); see docs/cuda.md.

use std::sync::{Arc, OnceLock};

use psflow_kernels::cuda::cublas::CublasMath;
use psflow_kernels::cuda::ops::depthwise::DepthwisePath;
use psflow_kernels::cuda::CudaDevice;
use psflow_kernels::ops::{
    activation, batchnorm, conv, depthwise, elementwise, matmul, optim, pool, reduce, softmax,
};
use psflow_kernels::{
    BatchNormParams, BinaryOp, Conv2dParams, Padding, PoolParams, Tensor, UnaryOp,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NEEDS_GPU: &str = "needs a CUDA GPU: PSFLOW_CUDA_TESTS=1 scripts/test";
const F32_TOL: f32 = 1e-5;
const TF32_TOL: f32 = 3e-3;

/// Every GPU of the machine, opened once: each test is written once and
/// runs on all of them.
fn gpus() -> Vec<Arc<CudaDevice>> {
    static DEVS: OnceLock<Vec<Arc<CudaDevice>>> = OnceLock::new();
    DEVS.get_or_init(|| {
        CudaDevice::open_all()
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
    for dev in gpus() {
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
}

#[test]
#[ignore = "needs a CUDA GPU: PSFLOW_CUDA_TESTS=1 scripts/test"]
fn depthwise_gradients_match_cpu() {
    for dev in gpus() {
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
}

#[test]
#[ignore = "needs a CUDA GPU: PSFLOW_CUDA_TESTS=1 scripts/test"]
fn pointwise_conv_and_its_gradients_match_cpu_within_tf32() {
    for dev in gpus() {
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
}

#[test]
#[ignore = "needs a CUDA GPU: PSFLOW_CUDA_TESTS=1 scripts/test"]
fn matmul_tf32_matches_cpu_with_every_transpose() {
    for dev in gpus() {
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
}

#[test]
#[ignore = "needs a CUDA GPU: PSFLOW_CUDA_TESTS=1 scripts/test"]
fn matmul_cublas_matches_cpu_and_our_tf32_gemm() {
    for dev in gpus() {
        let mut rng = StdRng::seed_from_u64(9);
        // (m, n, k): odd sizes, a single row/column, k = 1, a long k, and the
        // shape of the MobileNet pointwise layer at stage 2 (rows × c × 2c).
        let shapes = [
            (67, 45, 129),
            (1, 1, 1),
            (130, 3, 257),
            (5, 1000, 7),
            (1, 77, 1024),
            (2048, 256, 128),
        ];
        for (m, n, k) in shapes {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let a = random(&mut rng, &if ta { [k, m] } else { [m, k] });
                let b = random(&mut rng, &if tb { [n, k] } else { [k, n] });
                let want = matmul::matmul(&a, &b, ta, tb).unwrap();
                let (da, db) = (dev.upload(&a).unwrap(), dev.upload(&b).unwrap());
                let what = format!("{m}×{n}×{k} ta={ta} tb={tb}");
                let f32 = dev.matmul_cublas(&da, &db, ta, tb).unwrap();
                let f32 = dev.download(&f32).unwrap();
                assert_close(&format!("cuBLAS f32 {what}"), &f32, &want, F32_TOL);
                let tf32 = dev
                    .matmul_cublas_with(&da, &db, ta, tb, CublasMath::Tf32)
                    .unwrap();
                let tf32 = dev.download(&tf32).unwrap();
                assert_close(&format!("cuBLAS tf32 {what}"), &tf32, &want, TF32_TOL);
                let ours = dev
                    .download(&dev.matmul_tf32(&da, &db, ta, tb).unwrap())
                    .unwrap();
                assert_close(
                    &format!("ours vs cuBLAS tf32 {what}"),
                    &ours,
                    &tf32,
                    2.0 * TF32_TOL,
                );
            }
        }
        // An empty inner size gives zeros, as on the CPU.
        let (a, b) = (random(&mut rng, &[3, 0]), random(&mut rng, &[0, 4]));
        let got = dev
            .matmul_cublas(
                &dev.upload(&a).unwrap(),
                &dev.upload(&b).unwrap(),
                false,
                false,
            )
            .unwrap();
        assert_eq!(
            dev.download(&got).unwrap(),
            matmul::matmul(&a, &b, false, false).unwrap()
        );
        // Shape errors are matmul_tf32's.
        let (a, b) = (
            dev.upload(&random(&mut rng, &[4, 5])).unwrap(),
            dev.upload(&random(&mut rng, &[6, 7])).unwrap(),
        );
        let err = dev
            .matmul_cublas(&a, &b, false, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("inner sizes 5 and 6 differ"), "{err}");
        let ours = dev
            .matmul_tf32(&a, &b, false, false)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err.replace("MatMul (cuBLAS)", "MatMul"),
            ours,
            "the same shape rules as matmul_tf32"
        );
        let v = dev.upload(&random(&mut rng, &[4])).unwrap();
        let err = dev
            .matmul_cublas(&v, &b, false, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("a must be a matrix, got shape [4]"), "{err}");
    }
}

#[test]
#[ignore = "needs a CUDA GPU: PSFLOW_CUDA_TESTS=1 scripts/test"]
fn batch_norm_relu6_forward_and_backward_match_cpu() {
    for dev in gpus() {
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
}

#[test]
#[ignore = "needs a CUDA GPU: PSFLOW_CUDA_TESTS=1 scripts/test"]
fn rmsprop_matches_cpu_bit_for_bit() {
    for dev in gpus() {
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
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.f32s("t").unwrap().iter().map(|v| v.to_bits()).collect()
}

#[test]
#[ignore = "needs a CUDA GPU: PSFLOW_CUDA_TESTS=1 scripts/test"]
fn avg_pool_and_its_gradient_match_cpu() {
    for dev in gpus() {
        let mut rng = StdRng::seed_from_u64(11);
        for (xs, ksize, strides, padding) in [
            ([2, 7, 5, 33], [3, 3], [2, 2], Padding::Same),
            ([1, 8, 8, 17], [2, 2], [2, 2], Padding::Valid),
            ([3, 4, 4, 1024 + 3], [4, 4], [1, 1], Padding::Valid),
            ([1, 5, 6, 3], [3, 2], [1, 2], Padding::Same),
            ([2, 1, 1, 5], [1, 1], [1, 1], Padding::Same),
            ([1, 6, 9, 4], [5, 5], [3, 3], Padding::Same),
        ] {
            let p = PoolParams {
                ksize,
                strides,
                padding,
            };
            let x = random(&mut rng, &xs);
            let want = pool::avg_pool(&x, &p).unwrap();
            let got = dev.avg_pool(&dev.upload(&x).unwrap(), &p).unwrap();
            let what = format!("{xs:?} k{ksize:?} s{strides:?} {padding:?}");
            assert_close(
                &format!("AvgPool {what}"),
                &dev.download(&got).unwrap(),
                &want,
                F32_TOL,
            );
            let g = random(&mut rng, want.shape());
            let want_dx = pool::avg_pool_grad(xs, &g, &p).unwrap();
            let got_dx = dev.avg_pool_grad(xs, &dev.upload(&g).unwrap(), &p).unwrap();
            assert_close(
                &format!("AvgPoolGrad {what}"),
                &dev.download(&got_dx).unwrap(),
                &want_dx,
                F32_TOL,
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU: PSFLOW_CUDA_TESTS=1 scripts/test"]
fn bias_add_and_its_gradient_match_cpu() {
    for dev in gpus() {
        let mut rng = StdRng::seed_from_u64(12);
        for shape in [
            vec![2, 5, 7, 33],
            vec![128, 10],
            vec![1, 1, 1, 1],
            vec![64, 16, 16, 32],
            vec![3, 1000],
        ] {
            let c = *shape.last().unwrap();
            let (x, b) = (random(&mut rng, &shape), random(&mut rng, &[c]));
            let want = matmul::bias_add(&x, &b).unwrap();
            let got = dev
                .bias_add(&dev.upload(&x).unwrap(), &dev.upload(&b).unwrap())
                .unwrap();
            assert_eq!(
                bits(&dev.download(&got).unwrap()),
                bits(&want),
                "BiasAdd {shape:?}"
            );
            let want_db = matmul::bias_add_grad(&x).unwrap();
            let got_db = dev.bias_add_grad(&dev.upload(&x).unwrap()).unwrap();
            assert_close(
                &format!("BiasAddGrad {shape:?}"),
                &dev.download(&got_db).unwrap(),
                &want_db,
                F32_TOL,
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU: PSFLOW_CUDA_TESTS=1 scripts/test"]
fn softmax_and_cross_entropy_match_cpu() {
    for dev in gpus() {
        let mut rng = StdRng::seed_from_u64(13);
        for (batch, classes) in [(128, 10), (3, 1), (7, 100), (2, 1001), (1, 33)] {
            // Large logits exercise the max shift.
            let logits = Tensor::new(
                vec![batch, classes],
                (0..batch * classes)
                    .map(|_| rng.random_range(-30.0f32..30.0))
                    .collect(),
            )
            .unwrap();
            let ids: Vec<i32> = (0..batch)
                .map(|_| rng.random_range(0..classes as i32))
                .collect();
            let labels = Tensor::new(vec![batch], ids).unwrap();
            let gl = dev.upload(&logits).unwrap();
            let what = format!("[{batch}, {classes}]");

            let want = softmax::softmax(&logits).unwrap();
            let got = dev.download(&dev.softmax(&gl).unwrap()).unwrap();
            assert_close(&format!("Softmax {what}"), &got, &want, F32_TOL);

            let (want_loss, want_back) =
                softmax::sparse_softmax_cross_entropy(&logits, &labels).unwrap();
            let dl = dev.upload_labels(&labels, classes).unwrap();
            let (loss, back) = dev.sparse_softmax_cross_entropy(&gl, &dl).unwrap();
            assert_close(
                &format!("sparse loss {what}"),
                &dev.download(&loss).unwrap(),
                &want_loss,
                F32_TOL,
            );
            assert_close(
                &format!("sparse backprop {what}"),
                &dev.download(&back).unwrap(),
                &want_back,
                F32_TOL,
            );

            let probs = softmax::softmax(&random(&mut rng, &[batch, classes])).unwrap();
            let (want_loss, want_back) = softmax::softmax_cross_entropy(&logits, &probs).unwrap();
            let (loss, back) = dev
                .softmax_cross_entropy(&gl, &dev.upload(&probs).unwrap())
                .unwrap();
            assert_close(
                &format!("dense loss {what}"),
                &dev.download(&loss).unwrap(),
                &want_loss,
                F32_TOL,
            );
            assert_close(
                &format!("dense backprop {what}"),
                &dev.download(&back).unwrap(),
                &want_back,
                F32_TOL,
            );
        }
        // A label outside [0, classes) is refused on upload, naming the row.
        let bad = Tensor::new(vec![3], vec![0i32, 10, 2]).unwrap();
        let err = dev.upload_labels(&bad, 10).unwrap_err().to_string();
        assert!(err.contains("row 1"), "{err}");
    }
}

#[test]
#[ignore = "needs a CUDA GPU: PSFLOW_CUDA_TESTS=1 scripts/test"]
fn elementwise_ops_match_cpu() {
    for dev in gpus() {
        let mut rng = StdRng::seed_from_u64(14);
        let up = |t: &Tensor| dev.upload(t).unwrap();
        // Broadcasts the training graph makes (bias rows, scalars, Mean's
        // gradient) and awkward ones.
        let shapes: &[(&[usize], &[usize])] = &[
            (&[2, 5, 7, 33], &[2, 5, 7, 33]),
            (&[2, 5, 7, 33], &[33]),
            (&[2, 5, 7, 33], &[]),
            (&[], &[4, 3]),
            (&[2, 1, 1, 33], &[2, 5, 7, 33]),
            (&[4, 1, 6], &[5, 1]),
            (&[1, 1], &[1]),
        ];
        for &(sa, sb) in shapes {
            let (a, b) = (random(&mut rng, sa), random(&mut rng, sb));
            for op in [
                BinaryOp::Add,
                BinaryOp::Sub,
                BinaryOp::Mul,
                BinaryOp::Div,
                BinaryOp::Maximum,
                BinaryOp::Minimum,
                BinaryOp::SquaredDifference,
            ] {
                let want = elementwise::binary(op, &a, &b).unwrap();
                let got = dev
                    .download(&dev.binary(op, &up(&a), &up(&b)).unwrap())
                    .unwrap();
                assert_eq!(got.shape(), want.shape(), "{op:?} {sa:?} {sb:?}");
                assert_eq!(bits(&got), bits(&want), "{op:?} {sa:?} {sb:?}");
            }
        }
        let x = random(&mut rng, &[3, 7, 11]);
        let pos = elementwise::unary(UnaryOp::Abs, &x).unwrap();
        for op in [
            UnaryOp::Neg,
            UnaryOp::Square,
            UnaryOp::Sqrt,
            UnaryOp::Rsqrt,
            UnaryOp::Exp,
            UnaryOp::Log,
            UnaryOp::Abs,
            UnaryOp::Reciprocal,
        ] {
            let input = if matches!(op, UnaryOp::Sqrt | UnaryOp::Rsqrt | UnaryOp::Log) {
                &pos
            } else {
                &x
            };
            let want = elementwise::unary(op, input).unwrap();
            let got = dev.download(&dev.unary(op, &up(input)).unwrap()).unwrap();
            if matches!(op, UnaryOp::Exp | UnaryOp::Log) {
                assert_close(&format!("{op:?}"), &got, &want, F32_TOL);
            } else {
                assert_eq!(bits(&got), bits(&want), "{op:?}");
            }
        }
        // Relu6 and its gradient around both edges (0 and 6).
        let f = Tensor::new(
            vec![5, 13],
            (0..65).map(|i| (i as f32 - 20.0) * 0.25).collect(),
        )
        .unwrap();
        let g = random(&mut rng, &[5, 13]);
        let cases = [
            (
                activation::relu(&f).unwrap(),
                dev.relu(&up(&f)).unwrap(),
                "Relu",
            ),
            (
                activation::relu6(&f).unwrap(),
                dev.relu6(&up(&f)).unwrap(),
                "Relu6",
            ),
            (
                activation::relu_grad(&g, &f).unwrap(),
                dev.relu_grad(&up(&g), &up(&f)).unwrap(),
                "ReluGrad",
            ),
            (
                activation::relu6_grad(&g, &f).unwrap(),
                dev.relu6_grad(&up(&g), &up(&f)).unwrap(),
                "Relu6Grad",
            ),
        ];
        for (want, got, what) in cases {
            assert_eq!(bits(&dev.download(&got).unwrap()), bits(&want), "{what}");
        }
        // AddN of 1, 2 and 5 inputs: the CPU's left fold, bit for bit.
        let ts: Vec<Tensor> = (0..5).map(|_| random(&mut rng, &[17, 9])).collect();
        let dts: Vec<_> = ts.iter().map(up).collect();
        for k in [1, 2, 5] {
            let want = elementwise::add_n(&ts[..k].iter().collect::<Vec<_>>()).unwrap();
            let got = dev.add_n(&dts[..k].iter().collect::<Vec<_>>()).unwrap();
            assert_eq!(
                bits(&dev.download(&got).unwrap()),
                bits(&want),
                "AddN of {k}"
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU: PSFLOW_CUDA_TESTS=1 scripts/test"]
fn reductions_match_cpu() {
    for dev in gpus() {
        let mut rng = StdRng::seed_from_u64(15);
        let cases: &[(&[usize], &[i64], bool)] = &[
            (&[8, 4, 4, 1024], &[1, 2], false),
            (&[8, 4, 4, 1024], &[1, 2], true),
            (&[128], &[0], false),
            (&[3, 5, 7, 2], &[0, 2], false),
            (&[3, 5, 7, 2], &[-1], true),
            (&[1000, 3], &[0], false),
            (&[2, 3], &[], false),
            (&[300_001], &[0], false),
        ];
        for &(shape, axes, keep) in cases {
            let x = random(&mut rng, shape);
            let gx = dev.upload(&x).unwrap();
            let what = format!("{shape:?} over {axes:?} keep_dims={keep}");
            let want = reduce::sum(&x, axes, keep).unwrap();
            let got = dev.download(&dev.sum(&gx, axes, keep).unwrap()).unwrap();
            assert_close(&format!("Sum {what}"), &got, &want, F32_TOL);
            let want = reduce::mean(&x, axes, keep).unwrap();
            let got = dev.download(&dev.mean(&gx, axes, keep).unwrap()).unwrap();
            assert_close(&format!("Mean {what}"), &got, &want, F32_TOL);
            let want = softmax::l2_loss(&x).unwrap();
            let got = dev.download(&dev.l2_loss(&gx).unwrap()).unwrap();
            assert_close(&format!("L2Loss {shape:?}"), &got, &want, F32_TOL);
            // Deterministic: the same bits on a second run.
            let again = dev.download(&dev.l2_loss(&gx).unwrap()).unwrap();
            assert_eq!(bits(&again), bits(&got), "L2Loss {shape:?} run twice");
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU: PSFLOW_CUDA_TESTS=1 scripts/test"]
fn momentum_and_adam_match_cpu_bit_for_bit() {
    for dev in gpus() {
        let mut rng = StdRng::seed_from_u64(16);
        let n = 100_003;
        let to_vec = |t: &Tensor| t.f32s("t").unwrap().to_vec();
        for nesterov in [false, true] {
            let h = optim::MomentumHyper {
                lr: 0.05,
                momentum: 0.9,
                use_nesterov: nesterov,
            };
            let (var, acc) = (random(&mut rng, &[n]), random(&mut rng, &[n]));
            let (mut gv, mut ga) = (dev.upload(&var).unwrap(), dev.upload(&acc).unwrap());
            let (mut cv, mut ca) = (to_vec(&var), to_vec(&acc));
            for _ in 0..3 {
                let grad = random(&mut rng, &[n]);
                optim::apply_momentum(&mut cv, &mut ca, grad.f32s("t").unwrap(), h).unwrap();
                dev.apply_momentum(&mut gv, &mut ga, &dev.upload(&grad).unwrap(), h)
                    .unwrap();
            }
            assert_eq!(
                dev.download(&gv).unwrap().f32s("t").unwrap(),
                &cv[..],
                "momentum var nesterov={nesterov}"
            );
            assert_eq!(
                dev.download(&ga).unwrap().f32s("t").unwrap(),
                &ca[..],
                "momentum accum nesterov={nesterov}"
            );

            let var = random(&mut rng, &[n]);
            let (mut gv, mut gm, mut gs) = (
                dev.upload(&var).unwrap(),
                dev.upload(&Tensor::full(vec![n], 0.0f32)).unwrap(),
                dev.upload(&Tensor::full(vec![n], 0.0f32)).unwrap(),
            );
            let (mut cv, mut cm, mut cs) = (to_vec(&var), vec![0f32; n], vec![0f32; n]);
            let (b1, b2) = (0.9f32, 0.999f32);
            let (mut p1, mut p2) = (b1, b2);
            for _ in 0..3 {
                let h = optim::AdamHyper {
                    lr: 0.001,
                    beta1: b1,
                    beta2: b2,
                    epsilon: 1e-8,
                    beta1_power: p1,
                    beta2_power: p2,
                    use_nesterov: nesterov,
                };
                let grad = random(&mut rng, &[n]);
                optim::apply_adam(&mut cv, &mut cm, &mut cs, grad.f32s("t").unwrap(), h).unwrap();
                dev.apply_adam(&mut gv, &mut gm, &mut gs, &dev.upload(&grad).unwrap(), h)
                    .unwrap();
                p1 *= b1;
                p2 *= b2;
            }
            for (what, got, want) in [("var", &gv, &cv), ("m", &gm, &cm), ("v", &gs, &cs)] {
                assert_eq!(
                    dev.download(got).unwrap().f32s("t").unwrap(),
                    &want[..],
                    "adam {what} nesterov={nesterov}"
                );
            }
        }
        let var = random(&mut rng, &[n]);
        let grad = random(&mut rng, &[n]);
        let mut cv = to_vec(&var);
        optim::apply_gradient_descent(&mut cv, grad.f32s("t").unwrap(), 0.1).unwrap();
        let mut gv = dev.upload(&var).unwrap();
        dev.apply_gradient_descent(&mut gv, &dev.upload(&grad).unwrap(), 0.1)
            .unwrap();
        assert_eq!(
            dev.download(&gv).unwrap().f32s("t").unwrap(),
            &cv[..],
            "gradient descent"
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU: PSFLOW_CUDA_TESTS=1 scripts/test"]
fn a_repeated_step_allocates_nothing_new_and_async_copies_round_trip() {
    // Devices of its own: their pools are not shared with other tests.
    for dev in CudaDevice::open_all().unwrap_or_else(|e| panic!("{NEEDS_GPU}: {e}")) {
        let mut rng = StdRng::seed_from_u64(17);
        let x = random(&mut rng, &[4, 8, 8, 40]);
        let f = random(&mut rng, &[3, 3, 40, 1]);
        let scale = random(&mut rng, &[40]);
        let labels = Tensor::new(vec![4], vec![1i32, 0, 3, 2]).unwrap();
        let p = params([2, 2], Padding::Same);
        let bn = BatchNormParams {
            epsilon: 1e-3,
            exponential_avg_factor: 1.0,
            is_training: true,
        };
        // A small forward/backward step: upload, depthwise, BN+ReLU6, pool,
        // bias, cross-entropy and their gradients, an update, a download.
        let step = |expect: Option<&Tensor>| {
            let gx = dev.upload_async(&x).unwrap();
            let gf = dev.upload_async(&f).unwrap();
            let gs = dev.upload_async(&scale).unwrap();
            let y = dev
                .depthwise_conv2d(&gx, &gf, &p, DepthwisePath::Auto)
                .unwrap();
            let empty = dev
                .upload(&Tensor::new(vec![0], Vec::<f32>::new()).unwrap())
                .unwrap();
            let bn_out = dev
                .fused_batch_norm(&y, &gs, &gs, &empty, &empty, &bn, true)
                .unwrap();
            let pooled = dev
                .avg_pool(
                    &bn_out.y,
                    &PoolParams {
                        ksize: [4, 4],
                        strides: [1, 1],
                        padding: Padding::Valid,
                    },
                )
                .unwrap();
            let logits = dev
                .sum(&pooled, &[1, 2], false)
                .and_then(|l| dev.bias_add(&l, &gs))
                .unwrap();
            let dl = dev.upload_labels(&labels, 40).unwrap();
            let (loss, back) = dev.sparse_softmax_cross_entropy(&logits, &dl).unwrap();
            let db = dev.bias_add_grad(&back).unwrap();
            let mut var = dev.upload_async(&scale).unwrap();
            dev.apply_gradient_descent(&mut var, &db, 0.1).unwrap();
            let pending = dev.download_async(&loss).unwrap();
            let got = pending.wait().unwrap();
            if let Some(want) = expect {
                assert_eq!(bits(&got), bits(want), "the same step gave other bits");
            }
            got
        };
        let first = step(None);
        let (after_first, staging_first) = (dev.pool_stats(), dev.staging_stats());
        for _ in 0..3 {
            step(Some(&first));
        }
        let (after, staging) = (dev.pool_stats(), dev.staging_stats());
        assert_eq!(
            after.misses, after_first.misses,
            "a repeated step allocated device memory"
        );
        assert_eq!(after.bytes_held, after_first.bytes_held);
        assert!(after.hits > after_first.hits);
        assert_eq!(after.bytes_in_use, 0, "every step's buffers went back");
        assert_eq!(
            staging.0.misses, staging_first.0.misses,
            "uploads allocated pinned memory again"
        );
        assert_eq!(
            staging.1.misses, staging_first.1.misses,
            "downloads allocated pinned memory again"
        );
        // The async path moves the same bits as the synchronous one.
        let back = dev
            .download_async(&dev.upload_async(&x).unwrap())
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(bits(&back), bits(&x));
        dev.trim_pool();
        assert_eq!(dev.pool_stats().bytes_held, 0);
    }
}
