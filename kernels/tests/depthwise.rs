//! DepthwiseConv2dNative and its gradients against a plain f64 reference
//! (tests/common/depthwise_ref.rs), on every instruction set the CPU runs
//! (scalar included), with awkward shapes; gradients also against finite
//! differences; bad shapes and dtypes are errors, never panics.

#[path = "common/depthwise_ref.rs"]
mod depthwise_ref;

use depthwise_ref::{Case, RefPad};
use proptest::prelude::*;
use psflow_kernels::ops::depthwise::{
    depthwise_conv2d, depthwise_conv2d_backprop_filter, depthwise_conv2d_backprop_filter_isa,
    depthwise_conv2d_backprop_input, depthwise_conv2d_backprop_input_isa, depthwise_conv2d_isa,
    Isa,
};
use psflow_kernels::{Conv2dParams, Error, Padding, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn case(
    [n, h, w, c]: [usize; 4],
    [kh, kw, m]: [usize; 3],
    strides: [usize; 2],
    pad: RefPad,
) -> Case {
    Case {
        n,
        h,
        w,
        c,
        kh,
        kw,
        m,
        strides,
        pad,
    }
}

/// Shapes that exercise borders, odd sizes, strides, multipliers, channel
/// tails (not a multiple of 8/16/64) and the 64-channel SIMD blocks.
fn awkward_cases() -> Vec<Case> {
    use RefPad::*;
    vec![
        case([2, 7, 9, 5], [3, 3, 1], [2, 2], Same),
        case([1, 6, 6, 16], [3, 3, 1], [2, 2], Same), // asymmetric SAME pad (0 before, 1 after)
        case([3, 5, 1, 4], [3, 3, 1], [1, 1], Same),  // width 1
        case([2, 8, 7, 3], [3, 3, 2], [1, 1], Valid), // multiplier 2
        case([1, 9, 8, 17], [5, 5, 1], [1, 2], Valid), // 5x5, mixed strides
        case([2, 6, 7, 33], [1, 3, 1], [1, 1], Same), // 1x3
        case([1, 5, 6, 19], [3, 3, 2], [2, 1], Explicit([1, 2, 0, 3])),
        case([1, 2, 2, 3], [3, 3, 1], [1, 1], Explicit([3, 3, 3, 3])), // pixels with no taps
        case([2, 16, 16, 64], [3, 3, 1], [1, 1], Same),
        case([1, 8, 8, 128], [3, 3, 1], [2, 2], Same),
        case([1, 4, 4, 80], [3, 3, 1], [2, 2], Same), // 64 + 16 channels
        case([1, 2, 2, 72], [3, 3, 1], [1, 1], Same), // 64 + 8
        case([1, 3, 3, 7], [3, 3, 3], [3, 3], Same),  // stride 3, multiplier 3
        case([1, 9, 9, 5], [2, 2, 1], [3, 3], Valid), // stride > kernel
        case([2, 1, 1, 9], [3, 3, 1], [1, 1], Same),  // 1x1 image
        case([1, 7, 7, 24], [7, 7, 1], [2, 2], Same), // filter as large as the image
        case([1, 5, 4, 48], [4, 2, 1], [2, 3], Same), // even filter, SAME
        // Batches of small images: tasks walk groups of images (the last
        // group shorter), on the dense and the general loops.
        case([34, 2, 2, 24], [3, 3, 1], [1, 1], Same),
        case([34, 3, 5, 20], [3, 3, 2], [2, 1], Same),
        case([34, 6, 6, 5], [4, 4, 1], [1, 1], Same),
    ]
}

fn params(c: &Case) -> Conv2dParams {
    Conv2dParams {
        strides: c.strides,
        padding: match c.pad {
            RefPad::Same => Padding::Same,
            RefPad::Valid => Padding::Valid,
            RefPad::Explicit(p) => Padding::Explicit(p),
        },
    }
}

fn random(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn abs(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| x.abs()).collect()
}

/// Elementwise `|got − want| ≤ 1e-5 · bound + 1e-6`, where `bound` is the
/// reference run on absolute values (the sum of |terms|, which bounds the
/// f32 rounding error of any summation order).
fn assert_close(what: &str, c: &Case, got: &Tensor, want: &[f64], bound: &[f64]) {
    let got = got.to_f64_vec();
    assert_eq!(got.len(), want.len(), "{what} {c:?}: length");
    for (i, ((g, w), b)) in got.iter().zip(want).zip(bound).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * b + 1e-6,
            "{what} {c:?}: element {i}: got {g}, want {w}"
        );
    }
}

struct Data {
    x: Vec<f32>,
    f: Vec<f32>,
    dy: Vec<f32>,
}

fn data(c: &Case, seed: u64) -> Data {
    let mut rng = StdRng::seed_from_u64(seed);
    Data {
        x: random(&mut rng, c.input_shape().iter().product()),
        f: random(&mut rng, c.filter_shape().iter().product()),
        dy: random(&mut rng, c.output_shape().iter().product()),
    }
}

/// Runs the three ops with `isa` and compares them with the reference.
fn check_against_reference(c: &Case, d: &Data, isa: Isa) {
    let p = params(c);
    let x = Tensor::new(c.input_shape(), d.x.clone()).unwrap();
    let f = Tensor::new(c.filter_shape(), d.f.clone()).unwrap();
    let dy = Tensor::new(c.output_shape(), d.dy.clone()).unwrap();
    let (x64, f64_, dy64) = (f64s(&d.x), f64s(&d.f), f64s(&d.dy));

    let out = depthwise_conv2d_isa(&x, &f, &p, isa).unwrap();
    assert_eq!(out.shape(), c.output_shape(), "{c:?}");
    let want = c.forward(&x64, &f64_);
    let bound = c.forward(&abs(&x64), &abs(&f64_));
    assert_close(&format!("forward {isa:?}"), c, &out, &want, &bound);

    let dx = depthwise_conv2d_backprop_input_isa(c.input_shape(), &f, &dy, &p, isa).unwrap();
    assert_eq!(dx.shape(), c.input_shape(), "{c:?}");
    let want = c.backprop_input(&f64_, &dy64);
    let bound = c.backprop_input(&abs(&f64_), &abs(&dy64));
    assert_close(&format!("backprop_input {isa:?}"), c, &dx, &want, &bound);

    let df = depthwise_conv2d_backprop_filter_isa(&x, c.filter_shape(), &dy, &p, isa).unwrap();
    assert_eq!(df.shape(), c.filter_shape(), "{c:?}");
    let want = c.backprop_filter(&x64, &dy64);
    let bound = c.backprop_filter(&abs(&x64), &abs(&dy64));
    assert_close(&format!("backprop_filter {isa:?}"), c, &df, &want, &bound);
}

#[test]
fn all_ops_match_reference_on_every_isa() {
    let isas = Isa::available();
    assert!(isas.contains(&Isa::Scalar));
    for (k, c) in awkward_cases().iter().enumerate() {
        let d = data(c, 1000 + k as u64);
        for &isa in &isas {
            check_against_reference(c, &d, isa);
        }
    }
}

#[test]
fn default_entry_points_use_the_best_isa_and_agree() {
    let c = case([2, 16, 16, 64], [3, 3, 1], [2, 2], RefPad::Same);
    let d = data(&c, 7);
    let p = params(&c);
    let x = Tensor::new(c.input_shape(), d.x.clone()).unwrap();
    let f = Tensor::new(c.filter_shape(), d.f.clone()).unwrap();
    let dy = Tensor::new(c.output_shape(), d.dy.clone()).unwrap();
    let (x64, f64_, dy64) = (f64s(&d.x), f64s(&d.f), f64s(&d.dy));
    let out = depthwise_conv2d(&x, &f, &p).unwrap();
    let bound = c.forward(&abs(&x64), &abs(&f64_));
    assert_close("forward", &c, &out, &c.forward(&x64, &f64_), &bound);
    let dx = depthwise_conv2d_backprop_input(c.input_shape(), &f, &dy, &p).unwrap();
    let bound = c.backprop_input(&abs(&f64_), &abs(&dy64));
    assert_close(
        "backprop_input",
        &c,
        &dx,
        &c.backprop_input(&f64_, &dy64),
        &bound,
    );
    let df = depthwise_conv2d_backprop_filter(&x, c.filter_shape(), &dy, &p).unwrap();
    let bound = c.backprop_filter(&abs(&x64), &abs(&dy64));
    assert_close(
        "backprop_filter",
        &c,
        &df,
        &c.backprop_filter(&x64, &dy64),
        &bound,
    );
}

/// L(x, f) = Σ forward(x, f) · r; its gradients are backprop_input(f, r) and
/// backprop_filter(x, r). Checked against central differences of the f64
/// reference forward and of the f32 op itself at random coordinates.
#[test]
fn gradients_match_finite_differences() {
    for (k, c) in awkward_cases().iter().enumerate() {
        let d = data(c, 2000 + k as u64);
        let p = params(c);
        let f = Tensor::new(c.filter_shape(), d.f.clone()).unwrap();
        let x = Tensor::new(c.input_shape(), d.x.clone()).unwrap();
        let r = Tensor::new(c.output_shape(), d.dy.clone()).unwrap();
        let r64 = f64s(&d.dy);
        let dx = depthwise_conv2d_backprop_input(c.input_shape(), &f, &r, &p)
            .unwrap()
            .to_f64_vec();
        let df = depthwise_conv2d_backprop_filter(&x, c.filter_shape(), &r, &p)
            .unwrap()
            .to_f64_vec();

        let loss64 = |x: &[f64], f: &[f64]| -> f64 {
            c.forward(x, f).iter().zip(&r64).map(|(a, b)| a * b).sum()
        };
        let loss32 = |x: &[f32], f: &[f32]| -> f64 {
            let xt = Tensor::new(c.input_shape(), x.to_vec()).unwrap();
            let ft = Tensor::new(c.filter_shape(), f.to_vec()).unwrap();
            let out = depthwise_conv2d(&xt, &ft, &p).unwrap().to_f64_vec();
            out.iter().zip(&r64).map(|(a, b)| a * b).sum()
        };

        let mut rng = StdRng::seed_from_u64(3000 + k as u64);
        for _ in 0..6 {
            // Input coordinate.
            let i = rng.random_range(0..d.x.len());
            let (h64, h32) = (1e-3, 1e-2f32);
            let mut xp = f64s(&d.x);
            let mut xm = xp.clone();
            xp[i] += h64;
            xm[i] -= h64;
            let fd = (loss64(&xp, &f64s(&d.f)) - loss64(&xm, &f64s(&d.f))) / (2.0 * h64);
            assert!(
                (fd - dx[i]).abs() <= 1e-6 * (1.0 + fd.abs()),
                "dx {c:?} [{i}]: fd {fd} vs {}",
                dx[i]
            );
            let mut xp = d.x.clone();
            let mut xm = d.x.clone();
            xp[i] += h32;
            xm[i] -= h32;
            let fd = (loss32(&xp, &d.f) - loss32(&xm, &d.f)) / (2.0 * h32 as f64);
            assert!(
                (fd - dx[i]).abs() <= 2e-3 * (1.0 + fd.abs()),
                "dx f32 {c:?} [{i}]: fd {fd} vs {}",
                dx[i]
            );

            // Filter coordinate.
            let j = rng.random_range(0..d.f.len());
            let mut fp = f64s(&d.f);
            let mut fm = fp.clone();
            fp[j] += h64;
            fm[j] -= h64;
            let fd = (loss64(&f64s(&d.x), &fp) - loss64(&f64s(&d.x), &fm)) / (2.0 * h64);
            assert!(
                (fd - df[j]).abs() <= 1e-5 * (1.0 + fd.abs()),
                "df {c:?} [{j}]: fd {fd} vs {}",
                df[j]
            );
            let mut fp = d.f.clone();
            let mut fm = d.f.clone();
            fp[j] += h32;
            fm[j] -= h32;
            let fd = (loss32(&d.x, &fp) - loss32(&d.x, &fm)) / (2.0 * h32 as f64);
            assert!(
                (fd - df[j]).abs() <= 2e-3 * (1.0 + fd.abs()),
                "df f32 {c:?} [{j}]: fd {fd} vs {}",
                df[j]
            );
        }
    }
}

fn f32_tensor(shape: &[usize]) -> Tensor {
    Tensor::full(shape.to_vec(), 0.5f32)
}

#[test]
fn bad_shapes_and_dtypes_are_errors() {
    let same = Conv2dParams {
        strides: [1, 1],
        padding: Padding::Same,
    };
    let x = f32_tensor(&[1, 4, 4, 3]);
    let f = f32_tensor(&[3, 3, 3, 1]);
    let dy = f32_tensor(&[1, 4, 4, 3]);
    let shape_err = |e: Error, needle: &str| match &e {
        Error::Shape { op, detail } => {
            assert!(op.starts_with("DepthwiseConv2dNative"), "{e}");
            assert!(detail.contains(needle), "{e} lacks {needle:?}");
        }
        other => panic!("expected a shape error, got {other}"),
    };

    // Rank and channel mismatches.
    shape_err(
        depthwise_conv2d(&f32_tensor(&[4, 4, 3]), &f, &same).unwrap_err(),
        "4-D",
    );
    shape_err(
        depthwise_conv2d(&x, &f32_tensor(&[3, 3, 3]), &same).unwrap_err(),
        "4-D",
    );
    shape_err(
        depthwise_conv2d(&x, &f32_tensor(&[3, 3, 2, 1]), &same).unwrap_err(),
        "channels",
    );
    // VALID window larger than the input.
    let valid = Conv2dParams {
        strides: [1, 1],
        padding: Padding::Valid,
    };
    shape_err(
        depthwise_conv2d(&x, &f32_tensor(&[5, 1, 3, 1]), &valid).unwrap_err(),
        "fit",
    );
    // Zero stride.
    let zero = Conv2dParams {
        strides: [0, 1],
        padding: Padding::Same,
    };
    assert!(matches!(
        depthwise_conv2d(&x, &f, &zero).unwrap_err(),
        Error::InvalidArgument { .. }
    ));
    // Wrong dtypes name the argument.
    let x64 = Tensor::full(vec![1, 4, 4, 3], 0.5f64);
    let e = depthwise_conv2d(&x64, &f, &same).unwrap_err();
    assert!(matches!(e, Error::DType { what: "input", .. }), "{e}");
    let f64_ = Tensor::full(vec![3, 3, 3, 1], 0.5f64);
    let e = depthwise_conv2d(&x, &f64_, &same).unwrap_err();
    assert!(matches!(e, Error::DType { what: "filter", .. }), "{e}");
    let dy_i32 = Tensor::full(vec![1, 4, 4, 3], 1i32);
    let e = depthwise_conv2d_backprop_input([1, 4, 4, 3], &f, &dy_i32, &same).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DType {
                what: "out_backprop",
                ..
            }
        ),
        "{e}"
    );
    let e = depthwise_conv2d_backprop_filter(&x, [3, 3, 3, 1], &dy_i32, &same).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DType {
                what: "out_backprop",
                ..
            }
        ),
        "{e}"
    );

    // Gradients check out_backprop against the geometry.
    let stride2 = Conv2dParams {
        strides: [2, 2],
        padding: Padding::Same,
    };
    shape_err(
        depthwise_conv2d_backprop_input([1, 4, 4, 3], &f, &dy, &stride2).unwrap_err(),
        "out_backprop",
    );
    shape_err(
        depthwise_conv2d_backprop_filter(&x, [3, 3, 3, 1], &dy, &stride2).unwrap_err(),
        "out_backprop",
    );
    shape_err(
        depthwise_conv2d_backprop_input([1, 4, 4, 3], &f, &f32_tensor(&[1, 4, 4, 6]), &same)
            .unwrap_err(),
        "out_backprop",
    );
    shape_err(
        depthwise_conv2d_backprop_input([1, 4, 4, 2], &f, &dy, &same).unwrap_err(),
        "channels",
    );
    shape_err(
        depthwise_conv2d_backprop_filter(&x, [3, 3, 4, 1], &dy, &same).unwrap_err(),
        "channels",
    );
    // The right shapes work.
    assert!(depthwise_conv2d_backprop_input([1, 4, 4, 3], &f, &dy, &same).is_ok());
    assert!(depthwise_conv2d_backprop_filter(&x, [3, 3, 3, 1], &dy, &same).is_ok());
}

#[test]
fn empty_batch_and_zero_multiplier_give_empty_outputs() {
    let c = case([0, 5, 5, 4], [3, 3, 1], [1, 1], RefPad::Same);
    let p = params(&c);
    let x = Tensor::new(c.input_shape(), Vec::<f32>::new()).unwrap();
    let f = f32_tensor(&c.filter_shape());
    let out = depthwise_conv2d(&x, &f, &p).unwrap();
    assert_eq!(out.shape(), &[0, 5, 5, 4]);
    let dx = depthwise_conv2d_backprop_input(c.input_shape(), &f, &out, &p).unwrap();
    assert_eq!(dx.shape(), &[0, 5, 5, 4]);
    let df = depthwise_conv2d_backprop_filter(&x, c.filter_shape(), &out, &p).unwrap();
    assert_eq!(df.to_f64_vec(), vec![0.0; 36]);

    // Multiplier 0: no output channels, zero gradients of the right shapes.
    let x = f32_tensor(&[2, 4, 4, 3]);
    let f = f32_tensor(&[3, 3, 3, 0]);
    let out = depthwise_conv2d(&x, &f, &p).unwrap();
    assert_eq!(out.shape(), &[2, 4, 4, 0]);
    let dx = depthwise_conv2d_backprop_input([2, 4, 4, 3], &f, &out, &p).unwrap();
    assert_eq!(dx.to_f64_vec(), vec![0.0; 96]);
    let df = depthwise_conv2d_backprop_filter(&x, [3, 3, 3, 0], &out, &p).unwrap();
    assert_eq!(df.shape(), &[3, 3, 3, 0]);
}

fn pad_strategy() -> impl Strategy<Value = RefPad> {
    prop_oneof![
        Just(RefPad::Same),
        Just(RefPad::Valid),
        prop::array::uniform4(0usize..4).prop_map(RefPad::Explicit),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Random small geometries: every op equals the reference, and a
    /// window that does not fit is an error rather than a panic.
    #[test]
    fn random_geometries_match_reference(
        n in 1usize..3, h in 1usize..9, w in 1usize..9, ch in 1usize..21,
        kh in 1usize..6, kw in 1usize..6, m in 1usize..4,
        sh in 1usize..4, sw in 1usize..4, pad in pad_strategy(), seed in 0u64..1000,
    ) {
        let c = case([n, h, w, ch], [kh, kw, m], [sh, sw], pad);
        if c.geometry().is_none() {
            let x = f32_tensor(&c.input_shape());
            let f = f32_tensor(&c.filter_shape());
            prop_assert!(depthwise_conv2d(&x, &f, &params(&c)).is_err());
        } else {
            let d = data(&c, seed);
            for isa in Isa::available() {
                check_against_reference(&c, &d, isa);
            }
        }
    }
}
