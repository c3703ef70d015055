//! Sum, Mean, Max and ArgMax against f64 references over every axis set,
//! negative axes and keep_dims.
#![allow(clippy::type_complexity)]

use psflow_kernels::ops::reduce::{arg_max, max, mean, sum};
use psflow_kernels::{Error, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Reference: for each output coordinate, fold over the reduced ones.
fn reference(x: &Tensor, axes: &[usize], fold: fn(&[f64]) -> f64) -> (Vec<usize>, Vec<f64>) {
    let shape = x.shape();
    let v = x.to_f64_vec();
    let kept: Vec<usize> = (0..shape.len())
        .map(|i| if axes.contains(&i) { 1 } else { shape[i] })
        .collect();
    let n_out: usize = kept.iter().product();
    let mut groups = vec![Vec::new(); n_out];
    for (flat, &val) in v.iter().enumerate() {
        let mut rem = flat;
        let mut o = 0;
        let mut stride = 1;
        for d in (0..shape.len()).rev() {
            let c = rem % shape[d];
            rem /= shape[d];
            if !axes.contains(&d) {
                o += c * stride;
            }
            stride *= kept[d];
        }
        groups[o].push(val);
    }
    (kept, groups.iter().map(|g| fold(g)).collect())
}

fn subsets(rank: usize) -> Vec<Vec<usize>> {
    (0..1u32 << rank)
        .map(|m| (0..rank).filter(|i| m & (1 << i) != 0).collect())
        .collect()
}

#[test]
fn reductions_match_reference_over_all_axis_sets() {
    let mut rng = StdRng::seed_from_u64(1);
    for shape in [vec![2, 3, 1, 5], vec![1, 4, 7], vec![9], vec![3, 0, 2]] {
        let n: usize = shape.iter().product();
        let x = Tensor::new(
            shape.clone(),
            (0..n)
                .map(|_| rng.random_range(-5.0f32..5.0))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        for axes in subsets(shape.len()) {
            // Name every other axis negatively.
            let ax: Vec<i64> = axes
                .iter()
                .enumerate()
                .map(|(k, &a)| {
                    if k % 2 == 1 {
                        a as i64 - shape.len() as i64
                    } else {
                        a as i64
                    }
                })
                .collect();
            type Op = fn(&Tensor, &[i64], bool) -> psflow_kernels::Result<Tensor>;
            let cases: [(Op, fn(&[f64]) -> f64); 3] = [
                (sum, |g| g.iter().sum()),
                (mean, |g| g.iter().sum::<f64>() / g.len() as f64),
                (max, |g| g.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
            ];
            for (k, (op, fold)) in cases.into_iter().enumerate() {
                let (kept, want) = reference(&x, &axes, fold);
                for keep in [false, true] {
                    let got = op(&x, &ax, keep).unwrap();
                    let want_shape: Vec<usize> = if keep {
                        kept.clone()
                    } else {
                        (0..shape.len())
                            .filter(|i| !axes.contains(i))
                            .map(|i| shape[i])
                            .collect()
                    };
                    assert_eq!(got.shape(), &want_shape[..], "op {k} {shape:?} {ax:?}");
                    for (g, w) in got.to_f64_vec().iter().zip(&want) {
                        assert!(
                            g == w
                                || (g - w).abs() <= 1e-5 * (1.0 + w.abs())
                                || (g.is_nan() && w.is_nan()),
                            "op {k} {shape:?} {ax:?}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn integer_reductions() {
    let x = Tensor::new(vec![2, 3], vec![1i32, 2, 4, -1, -2, -4]).unwrap();
    assert_eq!(
        sum(&x, &[1], false).unwrap().values::<i32>("t").unwrap(),
        &[7, -7]
    );
    // Integer mean truncates toward zero.
    assert_eq!(
        mean(&x, &[1], false).unwrap().values::<i32>("t").unwrap(),
        &[2, -2]
    );
    assert_eq!(
        max(&x, &[0], true).unwrap().values::<i32>("t").unwrap(),
        &[1, 2, 4]
    );
    let x64 = Tensor::new(vec![3], vec![5i64, 6, 7]).unwrap();
    assert_eq!(sum(&x64, &[], false).unwrap(), x64);
    assert_eq!(
        sum(&x64, &[0, -1], false)
            .unwrap()
            .values::<i64>("t")
            .unwrap(),
        &[18]
    );
}

#[test]
fn arg_max_takes_the_first_maximum() {
    let x = Tensor::new(
        vec![2, 2, 3],
        vec![1f32, 5., 5., 2., 0., 9., 3., 3., 1., 3., 4., 4.],
    )
    .unwrap();
    assert_eq!(
        arg_max(&x, -1).unwrap().values::<i64>("t").unwrap(),
        &[1, 2, 0, 1]
    );
    assert_eq!(
        arg_max(&x, 1).unwrap().values::<i64>("t").unwrap(),
        &[1, 0, 1, 0, 1, 1]
    );
    assert_eq!(arg_max(&x, 0).unwrap().shape(), &[2, 3]);
    let mut rng = StdRng::seed_from_u64(2);
    let v: Vec<f32> = (0..35).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let t = Tensor::new(vec![5, 7], v.clone()).unwrap();
    let got = arg_max(&t, 1).unwrap();
    for r in 0..5 {
        let row = &v[r * 7..r * 7 + 7];
        let best = (0..7).fold(0, |b, k| if row[k] > row[b] { k } else { b });
        assert_eq!(got.values::<i64>("t").unwrap()[r], best as i64);
    }
}

#[test]
fn bad_axes_are_errors() {
    let x = Tensor::new(vec![2, 3], vec![0f32; 6]).unwrap();
    let err = sum(&x, &[2], false).unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument { .. }) && err.to_string().contains("Sum"),
        "{err}"
    );
    assert!(mean(&x, &[-3], false).is_err());
    assert!(arg_max(&x, 5).is_err());
    assert!(arg_max(&Tensor::new(vec![0, 3], Vec::<f32>::new()).unwrap(), 1).is_ok());
    assert!(arg_max(&Tensor::new(vec![3, 0], Vec::<f32>::new()).unwrap(), 1).is_err());
    let b = Tensor::new(vec![2], vec![true, false]).unwrap();
    assert!(matches!(
        sum(&b, &[0], false).unwrap_err(),
        Error::DType { .. }
    ));
}
