//! The general CUDA `Conv2D` (im2col + TF32 GEMM) and its gradients
//! (GEMM + col2im; im2col + GEMM) against the CPU ops on awkward shapes:
//! 3×3 stride 2 SAME (MobileNet's first layer), 2×5 stride 1 VALID, 1×1
//! stride 2, odd sizes, batch 1. TF32 tolerance `3e-3 · max|cpu|`. And the
//! depthwise gradients' 3×3 kernels (shared-memory input gradient, all-taps
//! filter gradient) and their general kernels, each against the CPU (f32:
//! `1e-5 · max|cpu|`), on tiles that do not divide the image. Each test
//! runs on every GPU the machine has.
//!
//! Needs a CUDA GPU, so `#[ignore]`d: `PSFLOW_CUDA_TESTS=1 scripts/test`
//! or `cargo test -p psflow-kernels --test cuda_conv -- --ignored`; without
//! a GPU that way it fails. Status: NOT yet run on a GPU (docs/cuda.md).

use psflow_kernels::cuda::ops::depthwise::DepthwisePath;
use psflow_kernels::cuda::CudaDevice;
use psflow_kernels::ops::{conv, depthwise};
use psflow_kernels::{Conv2dParams, Padding, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TF32_TOL: f32 = 3e-3;

/// Every GPU of the machine: each test is written once and runs on all.
fn gpus() -> Vec<std::sync::Arc<CudaDevice>> {
    CudaDevice::open_all().unwrap_or_else(|e| panic!("this test needs a CUDA GPU: {e}"))
}

/// (input NHWC, filter HWIO, strides, padding).
type Case = ([usize; 4], [usize; 4], [usize; 2], Padding);

fn random(rng: &mut StdRng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::new(
        shape.to_vec(),
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
    )
    .unwrap()
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    assert_close_tol(what, got, want, TF32_TOL)
}

fn assert_close_tol(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let (g, w) = (got.f32s("test").unwrap(), want.f32s("test").unwrap());
    let scale = w.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    let worst = g
        .iter()
        .zip(w)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= tol * scale,
        "{what}: max |gpu − cpu| {worst} > {tol} × {scale}"
    );
}

#[test]
#[ignore = "needs a CUDA GPU: PSFLOW_CUDA_TESTS=1 scripts/test"]
fn conv2d_and_its_gradients_match_the_cpu() {
    for gpu in gpus() {
        let mut rng = StdRng::seed_from_u64(5);
        let cases: [Case; 5] = [
            ([4, 32, 32, 3], [3, 3, 3, 16], [2, 2], Padding::Same),
            ([1, 7, 9, 5], [2, 5, 5, 6], [1, 1], Padding::Valid),
            ([2, 9, 9, 4], [1, 1, 4, 7], [2, 2], Padding::Same),
            ([3, 8, 8, 33], [3, 3, 33, 65], [1, 1], Padding::Same),
            ([2, 6, 5, 2], [3, 3, 2, 3], [2, 1], Padding::Valid),
        ];
        for (x_shape, f_shape, strides, padding) in cases {
            let p = Conv2dParams { strides, padding };
            let what = format!("x {x_shape:?} f {f_shape:?} s {strides:?} {padding:?}");
            let (x, f) = (random(&mut rng, &x_shape), random(&mut rng, &f_shape));
            let y = conv::conv2d(&x, &f, &p).unwrap();
            let (dx_, df_) = (gpu.upload(&x).unwrap(), gpu.upload(&f).unwrap());
            let got = gpu.conv2d(&dx_, &df_, &p).unwrap();
            assert_close(&format!("Conv2D {what}"), &gpu.download(&got).unwrap(), &y);

            let dy = random(&mut rng, y.shape());
            let ddy = gpu.upload(&dy).unwrap();
            let want = conv::conv2d_backprop_input(x_shape, &f, &dy, &p).unwrap();
            let got = gpu.conv2d_backprop_input(x_shape, &df_, &ddy, &p).unwrap();
            assert_close(
                &format!("Conv2DBackpropInput {what}"),
                &gpu.download(&got).unwrap(),
                &want,
            );
            let want = conv::conv2d_backprop_filter(&x, f_shape, &dy, &p).unwrap();
            let got = gpu.conv2d_backprop_filter(&dx_, f_shape, &ddy, &p).unwrap();
            assert_close(
                &format!("Conv2DBackpropFilter {what}"),
                &gpu.download(&got).unwrap(),
                &want,
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU: PSFLOW_CUDA_TESTS=1 scripts/test"]
fn depthwise_gradient_kernels_match_the_cpu_on_both_paths() {
    for gpu in gpus() {
        let mut rng = StdRng::seed_from_u64(9);
        let cases: [Case; 6] = [
            // MobileNet's stages: 3×3, strides 1 and 2, SAME.
            ([2, 16, 16, 64], [3, 3, 64, 1], [1, 1], Padding::Same),
            ([2, 16, 16, 64], [3, 3, 64, 1], [2, 2], Padding::Same),
            // Odd sizes, channels not a multiple of 32, tiles overhanging.
            ([3, 13, 11, 37], [3, 3, 37, 1], [1, 1], Padding::Same),
            ([1, 9, 7, 5], [3, 3, 5, 1], [2, 2], Padding::Same),
            ([2, 10, 9, 33], [3, 3, 33, 1], [2, 2], Padding::Valid),
            // A multiplier: the input gradient takes the general kernel.
            ([2, 8, 8, 6], [3, 3, 6, 2], [1, 1], Padding::Same),
        ];
        for (x_shape, f_shape, strides, padding) in cases {
            let p = Conv2dParams { strides, padding };
            let what = format!("x {x_shape:?} f {f_shape:?} s {strides:?} {padding:?}");
            let (x, f) = (random(&mut rng, &x_shape), random(&mut rng, &f_shape));
            let y = depthwise::depthwise_conv2d(&x, &f, &p).unwrap();
            let dy = random(&mut rng, y.shape());
            let want_dx = depthwise::depthwise_conv2d_backprop_input(x_shape, &f, &dy, &p).unwrap();
            let want_df =
                depthwise::depthwise_conv2d_backprop_filter(&x, f_shape, &dy, &p).unwrap();
            let (dx_, df_, ddy) = (
                gpu.upload(&x).unwrap(),
                gpu.upload(&f).unwrap(),
                gpu.upload(&dy).unwrap(),
            );
            for path in [DepthwisePath::Auto, DepthwisePath::General] {
                let got = gpu
                    .depthwise_conv2d_backprop_input_with(x_shape, &df_, &ddy, &p, path)
                    .unwrap();
                assert_close_tol(
                    &format!("backprop input {path:?} {what}"),
                    &gpu.download(&got).unwrap(),
                    &want_dx,
                    1e-5,
                );
                let got = gpu
                    .depthwise_conv2d_backprop_filter_with(&dx_, f_shape, &ddy, &p, path)
                    .unwrap();
                assert_close_tol(
                    &format!("backprop filter {path:?} {what}"),
                    &gpu.download(&got).unwrap(),
                    &want_df,
                    1e-5,
                );
            }
        }
    }
}
