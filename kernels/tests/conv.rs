//! Conv2D and its gradients against a direct f64 convolution, its adjoint
//! and finite differences, on awkward shapes.

use psflow_kernels::ops::conv::{conv2d, conv2d_backprop_filter, conv2d_backprop_input};
use psflow_kernels::{Conv2dParams, Error, Padding, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Clone, Copy, Debug)]
struct Case {
    x: [usize; 4],
    /// `[kh, kw, o]` (the filter's input channels are `x[3]`).
    k: [usize; 3],
    s: [usize; 2],
    pad: Padding,
}

impl Case {
    fn filter(&self) -> [usize; 4] {
        [self.k[0], self.k[1], self.x[3], self.k[2]]
    }
    fn params(&self) -> Conv2dParams {
        Conv2dParams {
            strides: self.s,
            padding: self.pad,
        }
    }
}

const fn case(x: [usize; 4], k: [usize; 3], s: [usize; 2], pad: Padding) -> Case {
    Case { x, k, s, pad }
}

/// Awkward shapes: strides 2, odd sizes under SAME and VALID, width 1,
/// batch 1, 1×1 plain and strided, 3×3, 5×5, 1×3, explicit padding, a
/// window larger than the image, and one big enough for several im2col tiles.
const CASES: &[Case] = &[
    case([2, 7, 9, 3], [3, 3, 4], [2, 2], Padding::Same),
    case([1, 5, 5, 2], [3, 3, 3], [1, 1], Padding::Valid),
    case([3, 6, 1, 2], [3, 1, 2], [1, 1], Padding::Same),
    case([2, 5, 1, 3], [3, 3, 2], [2, 1], Padding::Same),
    case([2, 8, 8, 5], [1, 1, 7], [1, 1], Padding::Valid),
    case([1, 8, 8, 5], [1, 1, 7], [1, 1], Padding::Same),
    case([2, 7, 8, 5], [1, 1, 6], [2, 2], Padding::Same),
    case([2, 7, 8, 5], [1, 1, 6], [2, 3], Padding::Valid),
    case([1, 9, 7, 3], [5, 5, 2], [2, 1], Padding::Same),
    case([2, 6, 7, 3], [1, 3, 4], [1, 2], Padding::Valid),
    case(
        [2, 5, 6, 3],
        [3, 3, 2],
        [2, 2],
        Padding::Explicit([1, 2, 0, 3]),
    ),
    case(
        [1, 3, 3, 2],
        [1, 1, 2],
        [1, 1],
        Padding::Explicit([1, 0, 0, 1]),
    ),
    case([1, 4, 4, 3], [3, 3, 2], [1, 1], Padding::Same),
    case([2, 4, 6, 3], [3, 3, 5], [2, 2], Padding::Same),
    case([1, 1, 1, 4], [3, 3, 3], [1, 1], Padding::Same),
    case([1, 2, 3, 2], [5, 5, 2], [3, 3], Padding::Same),
    case([3, 10, 10, 37], [1, 1, 45], [1, 1], Padding::Valid),
    case([3, 60, 60, 64], [3, 3, 3], [1, 1], Padding::Same),
];

fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Output size and padding before, derived here independently of the crate.
fn geometry(input: usize, k: usize, s: usize, pad: Padding, axis: usize) -> (usize, usize) {
    match pad {
        Padding::Valid => ((input - k) / s + 1, 0),
        Padding::Same => {
            let out = input.div_ceil(s);
            let total = ((out - 1) * s + k).saturating_sub(input);
            (out, total / 2)
        }
        Padding::Explicit(p) => {
            let (b, a) = if axis == 0 {
                (p[0], p[1])
            } else {
                (p[2], p[3])
            };
            ((input + b + a - k) / s + 1, b)
        }
    }
}

/// Every (output index, input index, filter index) triple of the
/// convolution, visited by `f`: the forward, the input gradient and the
/// filter gradient are all sums over it.
fn for_each_tap(c: &Case, mut f: impl FnMut(usize, usize, usize)) -> [usize; 4] {
    let [n, h, w, ci] = c.x;
    let [kh, kw, o] = c.k;
    let (oh, pt) = geometry(h, kh, c.s[0], c.pad, 0);
    let (ow, pl) = geometry(w, kw, c.s[1], c.pad, 1);
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                for dy in 0..kh {
                    let iy = (oy * c.s[0] + dy) as isize - pt as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    for dx in 0..kw {
                        let ix = (ox * c.s[1] + dx) as isize - pl as isize;
                        if ix < 0 || ix >= w as isize {
                            continue;
                        }
                        for cc in 0..ci {
                            let xi = ((b * h + iy as usize) * w + ix as usize) * ci + cc;
                            for oc in 0..o {
                                let yi = ((b * oh + oy) * ow + ox) * o + oc;
                                let fi = ((dy * kw + dx) * ci + cc) * o + oc;
                                f(yi, xi, fi);
                            }
                        }
                    }
                }
            }
        }
    }
    [n, oh, ow, o]
}

fn ref_forward(c: &Case, x: &[f32], f: &[f32]) -> (Vec<f64>, [usize; 4]) {
    let out = for_each_tap(c, |_, _, _| {});
    let mut y = vec![0f64; out.iter().product()];
    for_each_tap(c, |yi, xi, fi| y[yi] += x[xi] as f64 * f[fi] as f64);
    (y, out)
}

fn ref_backprop_input(c: &Case, f: &[f32], dy: &[f32]) -> Vec<f64> {
    let mut dx = vec![0f64; c.x.iter().product()];
    for_each_tap(c, |yi, xi, fi| dx[xi] += dy[yi] as f64 * f[fi] as f64);
    dx
}

fn ref_backprop_filter(c: &Case, x: &[f32], dy: &[f32]) -> Vec<f64> {
    let mut df = vec![0f64; c.filter().iter().product()];
    for_each_tap(c, |yi, xi, fi| df[fi] += dy[yi] as f64 * x[xi] as f64);
    df
}

fn assert_close(got: &Tensor, want: &[f64], terms: usize, what: &str) {
    let got = got.f32s("test").unwrap();
    assert_eq!(got.len(), want.len(), "{what}: length");
    let tol = 2e-6 * (terms as f64).sqrt().max(1.0) * 4.0 + 1e-6;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (*g as f64 - w).abs();
        assert!(
            err <= tol * (1.0 + w.abs()),
            "{what}: element {i}: got {g}, want {w} (err {err:.3e}, tol {tol:.3e})"
        );
    }
}

struct Data {
    x: Vec<f32>,
    f: Vec<f32>,
    dy: Vec<f32>,
    out: [usize; 4],
}

fn data(c: &Case, seed: u64) -> Data {
    let mut rng = StdRng::seed_from_u64(seed);
    let x = random(&mut rng, c.x.iter().product());
    let f = random(&mut rng, c.filter().iter().product());
    let out = for_each_tap(c, |_, _, _| {});
    let dy = random(&mut rng, out.iter().product());
    Data { x, f, dy, out }
}

fn t(shape: [usize; 4], v: &[f32]) -> Tensor {
    Tensor::new(shape.to_vec(), v.to_vec()).unwrap()
}

#[test]
fn forward_matches_direct_convolution() {
    for (i, c) in CASES.iter().enumerate() {
        let d = data(c, i as u64);
        let y = conv2d(&t(c.x, &d.x), &t(c.filter(), &d.f), &c.params()).unwrap();
        let (want, out) = ref_forward(c, &d.x, &d.f);
        assert_eq!(y.shape(), &out, "{c:?}");
        let taps = c.k[0] * c.k[1] * c.x[3];
        assert_close(&y, &want, taps, &format!("Conv2D {c:?}"));
    }
}

#[test]
fn backprop_input_matches_adjoint() {
    for (i, c) in CASES.iter().enumerate() {
        let d = data(c, 100 + i as u64);
        let dx = conv2d_backprop_input(c.x, &t(c.filter(), &d.f), &t(d.out, &d.dy), &c.params())
            .unwrap();
        assert_eq!(dx.shape(), &c.x, "{c:?}");
        let want = ref_backprop_input(c, &d.f, &d.dy);
        let terms = c.k[0] * c.k[1] * c.k[2];
        assert_close(&dx, &want, terms, &format!("Conv2DBackpropInput {c:?}"));
    }
}

#[test]
fn backprop_filter_matches_adjoint() {
    for (i, c) in CASES.iter().enumerate() {
        let d = data(c, 200 + i as u64);
        let df = conv2d_backprop_filter(&t(c.x, &d.x), c.filter(), &t(d.out, &d.dy), &c.params())
            .unwrap();
        assert_eq!(df.shape(), &c.filter(), "{c:?}");
        let want = ref_backprop_filter(c, &d.x, &d.dy);
        let terms = d.out[0] * d.out[1] * d.out[2];
        assert_close(&df, &want, terms, &format!("Conv2DBackpropFilter {c:?}"));
    }
}

/// Central differences of the f64 reference forward, loss `L = Σ y·r`:
/// `∂L/∂x` must be `Conv2DBackpropInput(r)`, `∂L/∂f` must be
/// `Conv2DBackpropFilter(x, r)`; checked at a few random coordinates.
#[test]
fn gradients_match_finite_differences() {
    let eps = 1e-2f32;
    for (i, c) in CASES
        .iter()
        .enumerate()
        .filter(|(_, c)| c.x[1] * c.x[2] < 1000)
    {
        let d = data(c, 300 + i as u64);
        let loss = |x: &[f32], f: &[f32]| -> f64 {
            let (y, _) = ref_forward(c, x, f);
            y.iter().zip(&d.dy).map(|(y, r)| y * *r as f64).sum()
        };
        let dx = conv2d_backprop_input(c.x, &t(c.filter(), &d.f), &t(d.out, &d.dy), &c.params())
            .unwrap()
            .to_f64_vec();
        let df = conv2d_backprop_filter(&t(c.x, &d.x), c.filter(), &t(d.out, &d.dy), &c.params())
            .unwrap()
            .to_f64_vec();
        let mut rng = StdRng::seed_from_u64(400 + i as u64);
        for _ in 0..6 {
            let xi = rng.random_range(0..d.x.len());
            let (mut xp, mut xm) = (d.x.clone(), d.x.clone());
            xp[xi] += eps;
            xm[xi] -= eps;
            let fd = (loss(&xp, &d.f) - loss(&xm, &d.f)) / (2.0 * eps as f64);
            assert!(
                (fd - dx[xi]).abs() <= 1e-3 * (1.0 + fd.abs()),
                "{c:?}: d/dx[{xi}]: finite difference {fd}, backprop {}",
                dx[xi]
            );
            let fi = rng.random_range(0..d.f.len());
            let (mut fp, mut fm) = (d.f.clone(), d.f.clone());
            fp[fi] += eps;
            fm[fi] -= eps;
            let fd = (loss(&d.x, &fp) - loss(&d.x, &fm)) / (2.0 * eps as f64);
            assert!(
                (fd - df[fi]).abs() <= 1e-3 * (1.0 + fd.abs()),
                "{c:?}: d/df[{fi}]: finite difference {fd}, backprop {}",
                df[fi]
            );
        }
    }
}

/// The f32 ops among themselves: `<conv(x, f), r> = <x, dX(r)> = <f, dF(x, r)>`.
#[test]
fn f32_ops_are_mutually_adjoint() {
    for (i, c) in CASES.iter().enumerate() {
        let d = data(c, 500 + i as u64);
        let p = c.params();
        let y = conv2d(&t(c.x, &d.x), &t(c.filter(), &d.f), &p).unwrap();
        let dx = conv2d_backprop_input(c.x, &t(c.filter(), &d.f), &t(d.out, &d.dy), &p).unwrap();
        let df = conv2d_backprop_filter(&t(c.x, &d.x), c.filter(), &t(d.out, &d.dy), &p).unwrap();
        let dot =
            |a: &[f64], b: &[f32]| -> f64 { a.iter().zip(b).map(|(a, b)| a * *b as f64).sum() };
        let a = dot(&y.to_f64_vec(), &d.dy);
        let b = dot(&dx.to_f64_vec(), &d.x);
        let e = dot(&df.to_f64_vec(), &d.f);
        let scale = 1e-4 * (1.0 + a.abs()) * (d.dy.len() as f64).sqrt();
        assert!(
            (a - b).abs() <= scale && (a - e).abs() <= scale,
            "{c:?}: {a} {b} {e}"
        );
    }
}

#[test]
fn batch_zero_and_empty_outputs() {
    let p = Conv2dParams {
        strides: [1, 1],
        padding: Padding::Same,
    };
    let x = Tensor::new(vec![0, 4, 4, 2], Vec::<f32>::new()).unwrap();
    let f = Tensor::new(vec![3, 3, 2, 5], vec![1f32; 90]).unwrap();
    assert_eq!(conv2d(&x, &f, &p).unwrap().shape(), &[0, 4, 4, 5]);
    let dy = Tensor::new(vec![0, 4, 4, 5], Vec::<f32>::new()).unwrap();
    assert_eq!(
        conv2d_backprop_input([0, 4, 4, 2], &f, &dy, &p)
            .unwrap()
            .shape(),
        &[0, 4, 4, 2]
    );
    let df = conv2d_backprop_filter(&x, [3, 3, 2, 5], &dy, &p).unwrap();
    assert_eq!(df.f32s("t").unwrap(), &[0f32; 90][..]);
}

#[test]
fn bad_inputs_are_errors_naming_the_op() {
    let p = Conv2dParams {
        strides: [1, 1],
        padding: Padding::Valid,
    };
    let x = Tensor::new(vec![1, 4, 4, 2], vec![0f32; 32]).unwrap();
    let f = Tensor::new(vec![3, 3, 2, 1], vec![0f32; 18]).unwrap();
    let dy = Tensor::new(vec![1, 2, 2, 1], vec![0f32; 4]).unwrap();

    // Rank.
    let x3 = Tensor::new(vec![4, 4, 2], vec![0f32; 32]).unwrap();
    let err = conv2d(&x3, &f, &p).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "Conv2D", .. }), "{err}");
    // Channels.
    let f3 = Tensor::new(vec![3, 3, 3, 1], vec![0f32; 27]).unwrap();
    let err = conv2d(&x, &f3, &p).unwrap_err();
    assert!(err.to_string().contains("input channels"), "{err}");
    // Dtype.
    let xf64 = Tensor::new(vec![1, 4, 4, 2], vec![0f64; 32]).unwrap();
    let err = conv2d(&xf64, &f, &p).unwrap_err();
    assert!(
        matches!(
            err,
            Error::DType {
                op: "Conv2D",
                what: "input",
                ..
            }
        ),
        "{err}"
    );
    let fi = Tensor::new(vec![3, 3, 2, 1], vec![0i32; 18]).unwrap();
    let err = conv2d_backprop_input([1, 4, 4, 2], &fi, &dy, &p).unwrap_err();
    assert!(matches!(err, Error::DType { what: "filter", .. }), "{err}");
    // Stride 0.
    let bad = Conv2dParams {
        strides: [0, 1],
        padding: Padding::Same,
    };
    assert!(matches!(
        conv2d(&x, &f, &bad).unwrap_err(),
        Error::InvalidArgument { .. }
    ));
    // VALID window larger than the input.
    let f5 = Tensor::new(vec![5, 5, 2, 1], vec![0f32; 50]).unwrap();
    assert!(conv2d(&x, &f5, &p).is_err());
    // out_backprop of the wrong shape.
    let dy_bad = Tensor::new(vec![1, 3, 2, 1], vec![0f32; 6]).unwrap();
    let err = conv2d_backprop_input([1, 4, 4, 2], &f, &dy_bad, &p).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Shape {
                op: "Conv2DBackpropInput",
                ..
            }
        ),
        "{err}"
    );
    let err = conv2d_backprop_filter(&x, [3, 3, 2, 1], &dy_bad, &p).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Shape {
                op: "Conv2DBackpropFilter",
                ..
            }
        ),
        "{err}"
    );
    // filter_sizes that disagree with the input.
    let err = conv2d_backprop_filter(&x, [3, 3, 4, 1], &dy, &p).unwrap_err();
    assert!(err.to_string().contains("input channels"), "{err}");
    // input_sizes that disagree with the filter.
    let err = conv2d_backprop_input([1, 4, 4, 3], &f, &dy, &p).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    // Sanity: the good call works.
    assert_eq!(
        conv2d_backprop_filter(&x, [3, 3, 2, 1], &dy, &p)
            .unwrap()
            .shape(),
        &[3, 3, 2, 1]
    );
}
