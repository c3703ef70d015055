//! Relu, Relu6 and their gradients against f64 references and finite
//! differences.
#![allow(clippy::needless_range_loop)]

use psflow_kernels::ops::activation::{relu, relu6, relu6_grad, relu_grad};
use psflow_kernels::{Error, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-3.0f32..9.0)).collect()
}

#[test]
fn forward_matches_reference_on_awkward_shapes() {
    let mut rng = StdRng::seed_from_u64(1);
    for shape in [
        vec![],
        vec![1],
        vec![1, 1, 1, 1],
        vec![3, 5, 1, 7],
        vec![100_003],
    ] {
        let n: usize = shape.iter().product();
        let x = rand_vec(&mut rng, n);
        let xt = Tensor::new(shape.clone(), x.clone()).unwrap();
        let r = relu(&xt).unwrap();
        let r6 = relu6(&xt).unwrap();
        assert_eq!(r.shape(), &shape[..]);
        for i in 0..n {
            assert_eq!(r.f32s("t").unwrap()[i], x[i].max(0.0));
            assert_eq!(r6.f32s("t").unwrap()[i], x[i].clamp(0.0, 6.0));
        }
    }
    let x64 = Tensor::new(vec![4], vec![-1.0f64, 0.5, 6.5, 3.0]).unwrap();
    assert_eq!(relu6(&x64).unwrap().to_f64_vec(), vec![0.0, 0.5, 6.0, 3.0]);
    assert_eq!(relu(&x64).unwrap().to_f64_vec(), vec![0.0, 0.5, 6.5, 3.0]);
}

#[test]
fn boundaries_follow_tensorflow() {
    let x = Tensor::new(vec![5], vec![-0.0f32, 0.0, 6.0, 5.999, 1e-30]).unwrap();
    let g = Tensor::new(vec![5], vec![1f32; 5]).unwrap();
    assert_eq!(
        relu_grad(&g, &x).unwrap().f32s("t").unwrap(),
        &[0.0, 0.0, 1.0, 1.0, 1.0]
    );
    assert_eq!(
        relu6_grad(&g, &x).unwrap().f32s("t").unwrap(),
        &[0.0, 0.0, 0.0, 1.0, 1.0]
    );
}

/// Central differences of `Σ w·f(x)` match the gradient ops (points are kept
/// away from the kinks at 0 and 6).
#[test]
fn gradients_match_finite_differences() {
    let mut rng = StdRng::seed_from_u64(2);
    let n = 2 * 3 * 5;
    let x: Vec<f32> = rand_vec(&mut rng, n)
        .into_iter()
        .map(|v| {
            if v.abs() < 0.01 || (v - 6.0).abs() < 0.01 {
                v + 0.05
            } else {
                v
            }
        })
        .collect();
    let w: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let xt = Tensor::new(vec![2, 3, 5], x.clone()).unwrap();
    let wt = Tensor::new(vec![2, 3, 5], w.clone()).unwrap();
    type Fwd = fn(&Tensor) -> psflow_kernels::Result<Tensor>;
    type Bwd = fn(&Tensor, &Tensor) -> psflow_kernels::Result<Tensor>;
    let pairs: [(Fwd, Bwd); 2] = [(relu, relu_grad), (relu6, relu6_grad)];
    for (fwd, bwd) in pairs {
        let g = bwd(&wt, &xt).unwrap();
        let h = 1e-3f32;
        for i in 0..n {
            let (mut a, mut b) = (x.clone(), x.clone());
            a[i] += h;
            b[i] -= h;
            let f = |v: Vec<f32>| -> f64 {
                let y = fwd(&Tensor::new(vec![2, 3, 5], v).unwrap()).unwrap();
                y.f32s("t")
                    .unwrap()
                    .iter()
                    .zip(&w)
                    .map(|(&y, &w)| y as f64 * w as f64)
                    .sum()
            };
            let fd = (f(a) - f(b)) / (2.0 * h as f64);
            let got = g.f32s("t").unwrap()[i] as f64;
            assert!((fd - got).abs() < 1e-3, "{i}: fd {fd} vs {got}");
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    let a = Tensor::new(vec![2], vec![1f32, 2.0]).unwrap();
    let b = Tensor::new(vec![3], vec![1f32, 2.0, 3.0]).unwrap();
    let err = relu_grad(&a, &b).unwrap_err();
    assert!(
        matches!(err, Error::Shape { .. }) && err.to_string().contains("ReluGrad"),
        "{err}"
    );
    let i = Tensor::new(vec![2], vec![1i32, 2]).unwrap();
    assert!(matches!(relu6(&i).unwrap_err(), Error::DType { .. }));
    let d = Tensor::new(vec![2], vec![1f64, 2.0]).unwrap();
    assert!(matches!(
        relu6_grad(&a, &d).unwrap_err(),
        Error::DType { .. }
    ));
}
