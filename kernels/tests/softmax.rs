//! Softmax, LogSoftmax, both cross-entropies and L2Loss against f64
//! references, backprops against finite differences of the loss.

use psflow_kernels::ops::softmax::{
    l2_loss, log_softmax, softmax, softmax_cross_entropy, sparse_softmax_cross_entropy,
};
use psflow_kernels::{Error, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn ref_log_softmax(row: &[f64]) -> Vec<f64> {
    let s: f64 = row.iter().map(|v| v.exp()).sum();
    row.iter().map(|v| v - s.ln()).collect()
}

fn rand_logits(rng: &mut StdRng, b: usize, c: usize) -> Vec<f32> {
    (0..b * c).map(|_| rng.random_range(-4.0f32..4.0)).collect()
}

#[test]
fn softmax_and_log_softmax_match_reference() {
    let mut rng = StdRng::seed_from_u64(1);
    for shape in [
        vec![1, 1],
        vec![3, 10],
        vec![2, 3, 7],
        vec![5],
        vec![700, 33],
    ] {
        let n: usize = shape.iter().product();
        let c = *shape.last().unwrap();
        let x = rand_logits(&mut rng, n / c, c);
        let t = Tensor::new(shape.clone(), x.clone()).unwrap();
        let sm = softmax(&t).unwrap().to_f64_vec();
        let lsm = log_softmax(&t).unwrap().to_f64_vec();
        for r in 0..n / c {
            let row: Vec<f64> = x[r * c..(r + 1) * c].iter().map(|&v| v as f64).collect();
            let want = ref_log_softmax(&row);
            for k in 0..c {
                assert!((lsm[r * c + k] - want[k]).abs() < 1e-5);
                assert!((sm[r * c + k] - want[k].exp()).abs() < 1e-6);
            }
        }
    }
    // Huge logits stay finite.
    let t = Tensor::new(vec![1, 3], vec![1000f32, 1000.0, -1000.0]).unwrap();
    assert_eq!(softmax(&t).unwrap().f32s("t").unwrap(), &[0.5, 0.5, 0.0]);
    let t64 = Tensor::new(vec![2], vec![0f64, 0.0]).unwrap();
    assert_eq!(softmax(&t64).unwrap().to_f64_vec(), vec![0.5, 0.5]);
}

/// Loss against the reference, backprop against central differences.
#[test]
fn cross_entropies_match_reference_and_finite_differences() {
    let mut rng = StdRng::seed_from_u64(2);
    for (b, c) in [(1usize, 1usize), (4, 10), (3, 2)] {
        let x = rand_logits(&mut rng, b, c);
        let labels: Vec<i64> = (0..b).map(|_| rng.random_range(0..c as i64)).collect();
        let dense: Vec<f32> = (0..b * c)
            .map(|_| rng.random_range(0.0f32..1.0))
            .collect::<Vec<_>>()
            .chunks(c)
            .flat_map(|r| {
                let s: f32 = r.iter().sum();
                r.iter().map(move |v| v / s).collect::<Vec<_>>()
            })
            .collect();
        let xt = Tensor::new(vec![b, c], x.clone()).unwrap();
        let lab32 = Tensor::new(
            vec![b],
            labels.iter().map(|&l| l as i32).collect::<Vec<_>>(),
        )
        .unwrap();
        let lab64 = Tensor::new(vec![b], labels.clone()).unwrap();
        let (l32, g32) = sparse_softmax_cross_entropy(&xt, &lab32).unwrap();
        let (l64, g64) = sparse_softmax_cross_entropy(&xt, &lab64).unwrap();
        assert_eq!(l32, l64);
        assert_eq!(g32, g64);
        let (ld, gd) =
            softmax_cross_entropy(&xt, &Tensor::new(vec![b, c], dense.clone()).unwrap()).unwrap();
        let sparse_loss = |xs: &[f64]| -> Vec<f64> {
            (0..b)
                .map(|r| -ref_log_softmax(&xs[r * c..(r + 1) * c])[labels[r] as usize])
                .collect()
        };
        let dense_loss = |xs: &[f64]| -> Vec<f64> {
            (0..b)
                .map(|r| {
                    let l = ref_log_softmax(&xs[r * c..(r + 1) * c]);
                    -(0..c).map(|k| dense[r * c + k] as f64 * l[k]).sum::<f64>()
                })
                .collect()
        };
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        for (loss_fn, got_loss, got_grad) in [
            (&sparse_loss as &dyn Fn(&[f64]) -> Vec<f64>, &l32, &g32),
            (&dense_loss, &ld, &gd),
        ] {
            assert_eq!(got_loss.shape(), &[b]);
            for (g, w) in got_loss.to_f64_vec().iter().zip(loss_fn(&x64)) {
                assert!((g - w).abs() < 1e-5, "loss {g} vs {w}");
            }
            for (i, g) in got_grad.to_f64_vec().iter().enumerate() {
                let (mut a, mut m) = (x64.clone(), x64.clone());
                a[i] += 1e-6;
                m[i] -= 1e-6;
                let r = i / c;
                let fd = (loss_fn(&a)[r] - loss_fn(&m)[r]) / 2e-6;
                assert!((fd - g).abs() < 1e-5, "[{i}] fd {fd} vs {g}");
            }
        }
    }
}

#[test]
fn out_of_range_label_names_the_row() {
    let x = Tensor::new(vec![3, 4], vec![0f32; 12]).unwrap();
    for bad in [4i64, -1] {
        let labels = Tensor::new(vec![3], vec![0i64, 3, bad]).unwrap();
        let err = sparse_softmax_cross_entropy(&x, &labels)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("row 2") && err.contains(&bad.to_string()),
            "{err}"
        );
    }
    assert!(
        sparse_softmax_cross_entropy(&x, &Tensor::new(vec![2], vec![0i32, 1]).unwrap()).is_err()
    );
    assert!(matches!(
        sparse_softmax_cross_entropy(&x, &Tensor::new(vec![3], vec![0f32; 3]).unwrap())
            .unwrap_err(),
        Error::DType { .. }
    ));
    assert!(softmax_cross_entropy(&x, &Tensor::new(vec![3, 3], vec![0f32; 9]).unwrap()).is_err());
    assert!(softmax(&Tensor::new(vec![2], vec![1i32, 2]).unwrap()).is_err());
    assert!(softmax(&Tensor::scalar(1f32)).is_err());
}

#[test]
fn l2_loss_is_half_the_sum_of_squares() {
    let mut rng = StdRng::seed_from_u64(3);
    let x: Vec<f32> = (0..1001).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    let got = l2_loss(&Tensor::new(vec![7, 11, 13], x.clone()).unwrap()).unwrap();
    assert_eq!(got.shape(), &[] as &[usize]);
    let want: f64 = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / 2.0;
    assert!((got.to_f64_vec()[0] - want).abs() < 1e-3);
    // Its gradient is x: check one central difference.
    let h = 1e-3f64;
    let f = |d: f64| {
        let mut y = x.iter().map(|&v| v as f64).collect::<Vec<_>>();
        y[5] += d;
        l2_loss(&Tensor::new(vec![1001], y).unwrap())
            .unwrap()
            .to_f64_vec()[0]
    };
    assert!(((f(h) - f(-h)) / (2.0 * h) - x[5] as f64).abs() < 1e-6);
    assert!(l2_loss(&Tensor::new(vec![1], vec![1i32]).unwrap()).is_err());
}
