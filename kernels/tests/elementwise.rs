//! Broadcasting binary ops, AddN, unary ops and reduce_to_shape against
//! plain f64 references, gradients by finite differences.
#![allow(clippy::type_complexity, clippy::needless_range_loop)]

use psflow_kernels::ops::elementwise::{add_n, binary, broadcast_shape, reduce_to_shape, unary};
use psflow_kernels::{BinaryOp, Error, Tensor, UnaryOp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn rand_t(rng: &mut StdRng, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::new(
        shape.to_vec(),
        (0..n)
            .map(|_| rng.random_range(0.5f32..3.0))
            .collect::<Vec<_>>(),
    )
    .unwrap()
}

/// Reference: index each operand through its broadcast coordinates.
fn ref_binary(f: impl Fn(f64, f64) -> f64, a: &Tensor, b: &Tensor, out: &[usize]) -> Vec<f64> {
    let (av, bv) = (a.to_f64_vec(), b.to_f64_vec());
    let n: usize = out.iter().product();
    let pick = |v: &[f64], shape: &[usize], mut i: usize| {
        let mut off = 0;
        let mut stride = 1;
        for d in (0..out.len()).rev() {
            let c = i % out[d];
            i /= out[d];
            if d + shape.len() >= out.len() {
                let sd = shape[d + shape.len() - out.len()];
                off += (if sd == 1 { 0 } else { c }) * stride;
                stride *= sd;
            }
        }
        v[off]
    };
    (0..n)
        .map(|i| f(pick(&av, a.shape(), i), pick(&bv, b.shape(), i)))
        .collect()
}

const PAIRS: &[(&[usize], &[usize])] = &[
    (&[2, 3], &[2, 3]),
    (&[4, 5], &[]),
    (&[], &[4, 5]),
    (&[3, 1, 5], &[5]),
    (&[2, 3, 4], &[1, 3, 4]),
    (&[2, 3, 4], &[3, 1]),
    (&[2, 1, 4], &[1, 3, 1]),
    (&[1], &[7, 1]),
    (&[300, 129], &[129]),
    (&[300, 129], &[300, 1]),
    (&[0, 3], &[3]),
];

#[test]
fn binary_ops_broadcast_like_numpy() {
    let mut rng = StdRng::seed_from_u64(1);
    let ops: [(BinaryOp, fn(f64, f64) -> f64); 7] = [
        (BinaryOp::Add, |a, b| a + b),
        (BinaryOp::Sub, |a, b| a - b),
        (BinaryOp::Mul, |a, b| a * b),
        (BinaryOp::Div, |a, b| a / b),
        (BinaryOp::Maximum, f64::max),
        (BinaryOp::Minimum, f64::min),
        (BinaryOp::SquaredDifference, |a, b| (a - b) * (a - b)),
    ];
    for &(sa, sb) in PAIRS {
        let (a, b) = (rand_t(&mut rng, sa), rand_t(&mut rng, sb));
        let out = broadcast_shape("t", sa, sb).unwrap();
        for (op, f) in ops {
            let got = binary(op, &a, &b).unwrap();
            assert_eq!(got.shape(), &out[..], "{op:?} {sa:?} {sb:?}");
            let want = ref_binary(f, &a, &b, &out);
            for (i, (g, w)) in got.to_f64_vec().iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-6 * (1.0 + w.abs()),
                    "{op:?} {sa:?} {sb:?} [{i}]: {g} vs {w}"
                );
            }
            // f64 too.
            let (a64, b64) = (
                Tensor::new(sa.to_vec(), a.to_f64_vec()).unwrap(),
                Tensor::new(sb.to_vec(), b.to_f64_vec()).unwrap(),
            );
            assert_eq!(
                binary(op, &a64, &b64).unwrap().to_f64_vec(),
                want,
                "{op:?} f64"
            );
        }
    }
}

#[test]
fn integer_ops_truncate_and_reject_zero_divisors() {
    let a = Tensor::new(vec![4], vec![7i32, -7, 9, -9]).unwrap();
    let b = Tensor::new(vec![4], vec![2i32, 2, -4, -4]).unwrap();
    assert_eq!(
        binary(BinaryOp::Div, &a, &b)
            .unwrap()
            .values::<i32>("t")
            .unwrap(),
        &[3, -3, -2, 2]
    );
    let a64 = Tensor::new(vec![2, 2], vec![1i64, 5, -3, 8]).unwrap();
    let s = Tensor::scalar(3i64);
    assert_eq!(
        binary(BinaryOp::SquaredDifference, &a64, &s)
            .unwrap()
            .values::<i64>("t")
            .unwrap(),
        &[4, 4, 36, 25]
    );
    assert_eq!(
        binary(BinaryOp::Maximum, &a64, &s)
            .unwrap()
            .values::<i64>("t")
            .unwrap(),
        &[3, 5, 3, 8]
    );
    let z = Tensor::new(vec![2], vec![1i64, 0]).unwrap();
    let err = binary(
        BinaryOp::Div,
        &Tensor::new(vec![2], vec![1i64, 1]).unwrap(),
        &z,
    )
    .unwrap_err();
    assert!(err.to_string().contains("division by zero"), "{err}");
}

#[test]
fn bad_operands_are_errors() {
    let a = Tensor::new(vec![2, 3], vec![0f32; 6]).unwrap();
    let b = Tensor::new(vec![4], vec![0f32; 4]).unwrap();
    let err = binary(BinaryOp::Add, &a, &b).unwrap_err();
    assert!(
        matches!(err, Error::Shape { .. }) && err.to_string().contains("[2, 3]"),
        "{err}"
    );
    let i = Tensor::new(vec![2, 3], vec![0i32; 6]).unwrap();
    assert!(matches!(
        binary(BinaryOp::Mul, &a, &i).unwrap_err(),
        Error::DType { .. }
    ));
    let u = Tensor::new(vec![1], vec![1u8]).unwrap();
    assert!(binary(BinaryOp::Mul, &u, &u).is_err());
    assert!(add_n(&[]).is_err());
    assert!(add_n(&[&a, &b]).is_err());
    assert!(add_n(&[&a, &i]).is_err());
    assert!(unary(UnaryOp::Sqrt, &i).is_err());
    assert!(reduce_to_shape(&a, &[4]).is_err());
    assert!(reduce_to_shape(&a, &[2, 3, 1]).is_err());
}

#[test]
fn add_n_sums() {
    let mut rng = StdRng::seed_from_u64(2);
    let ts: Vec<Tensor> = (0..4).map(|_| rand_t(&mut rng, &[3, 1, 5])).collect();
    let refs: Vec<&Tensor> = ts.iter().collect();
    let got = add_n(&refs).unwrap().to_f64_vec();
    for i in 0..15 {
        let want: f64 = ts.iter().map(|t| t.to_f64_vec()[i]).sum();
        assert!((got[i] - want).abs() < 1e-5);
    }
    assert_eq!(add_n(&refs[..1]).unwrap(), ts[0]);
}

#[test]
fn unary_ops_match_f64() {
    let mut rng = StdRng::seed_from_u64(3);
    let x = rand_t(&mut rng, &[3, 7]);
    let cases: [(UnaryOp, fn(f64) -> f64); 8] = [
        (UnaryOp::Neg, |x| -x),
        (UnaryOp::Square, |x| x * x),
        (UnaryOp::Sqrt, f64::sqrt),
        (UnaryOp::Rsqrt, |x| 1.0 / x.sqrt()),
        (UnaryOp::Exp, f64::exp),
        (UnaryOp::Log, f64::ln),
        (UnaryOp::Abs, f64::abs),
        (UnaryOp::Reciprocal, |x| 1.0 / x),
    ];
    for (op, f) in cases {
        let got = unary(op, &x).unwrap();
        for (g, v) in got.to_f64_vec().iter().zip(x.to_f64_vec()) {
            assert!((g - f(v)).abs() <= 1e-6 * (1.0 + f(v).abs()), "{op:?}");
        }
    }
    let i = Tensor::new(vec![3], vec![-2i64, 0, 5]).unwrap();
    assert_eq!(
        unary(UnaryOp::Neg, &i).unwrap().values::<i64>("t").unwrap(),
        &[2, 0, -5]
    );
    assert_eq!(
        unary(UnaryOp::Abs, &i).unwrap().values::<i64>("t").unwrap(),
        &[2, 0, 5]
    );
    assert_eq!(
        unary(UnaryOp::Square, &i)
            .unwrap()
            .values::<i64>("t")
            .unwrap(),
        &[4, 0, 25]
    );
}

/// The gradient of `L = Σ w · (a ⊙ b)` w.r.t. each broadcast input is
/// `reduce_to_shape(w · ∂)`; compare with central differences.
#[test]
fn reduce_to_shape_is_the_broadcast_gradient() {
    let mut rng = StdRng::seed_from_u64(4);
    // Small pairs only: the reference loss is O(n) per difference.
    for &(sa, sb) in PAIRS
        .iter()
        .filter(|(a, b)| a.iter().product::<usize>() < 100 && b.iter().product::<usize>() < 100)
    {
        let (a, b) = (rand_t(&mut rng, sa), rand_t(&mut rng, sb));
        let out = broadcast_shape("t", sa, sb).unwrap();
        let w = rand_t(&mut rng, &out);
        // d(a·b)/da = b, so grad_a = reduce_to_shape(w · b).
        let wb = binary(BinaryOp::Mul, &w, &b).unwrap();
        let ga = reduce_to_shape(&wb, sa).unwrap();
        assert_eq!(ga.shape(), sa);
        let loss = |av: &[f64]| -> f64 {
            let at = Tensor::new(sa.to_vec(), av.to_vec()).unwrap();
            let bt = Tensor::new(sb.to_vec(), b.to_f64_vec()).unwrap();
            ref_binary(|x, y| x * y, &at, &bt, &out)
                .iter()
                .zip(w.to_f64_vec())
                .map(|(p, w)| p * w)
                .sum()
        };
        let a64 = a.to_f64_vec();
        for (i, g) in ga.to_f64_vec().iter().enumerate() {
            let (mut p, mut m) = (a64.clone(), a64.clone());
            p[i] += 1e-5;
            m[i] -= 1e-5;
            let fd = (loss(&p) - loss(&m)) / 2e-5;
            assert!(
                (fd - g).abs() < 1e-3 * (1.0 + fd.abs()),
                "{sa:?} {sb:?} [{i}]: {fd} vs {g}"
            );
        }
    }
}
