//! Pad, StridedSlice, Pack, Concat, Fill, Cast, Transpose and Slice against
//! index-by-index references and TensorFlow's documented examples.

use psflow_kernels::ops::shape_ops::{
    cast, concat, fill, pack, pad, slice, strided_slice, transpose,
};
use psflow_kernels::{DType, Error, StridedSliceMasks, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn iota(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::new(shape.to_vec(), (0..n as i64).collect::<Vec<_>>()).unwrap()
}

fn coords(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut c = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        c[d] = i % shape[d];
        i /= shape[d];
    }
    c
}

fn flat(c: &[usize], shape: &[usize]) -> usize {
    c.iter().zip(shape).fold(0, |acc, (&c, &d)| acc * d + c)
}

fn ints(t: &Tensor) -> Vec<i64> {
    t.values::<i64>("t").unwrap().to_vec()
}

#[test]
fn pad_matches_reference() {
    for (shape, pads) in [
        (vec![2, 3], vec![(1, 0), (2, 1)]),
        (vec![1, 1, 1, 1], vec![(0, 0), (1, 1), (1, 1), (0, 0)]),
        (vec![2, 3, 3, 4], vec![(0, 0), (1, 2), (0, 1), (0, 0)]),
        (vec![3], vec![(0, 0)]),
    ] {
        let x = iota(&shape);
        let got = pad(&x, &pads, Some(&Tensor::scalar(-7i64))).unwrap();
        let out_shape: Vec<usize> = shape
            .iter()
            .zip(&pads)
            .map(|(d, p)| d + p.0 + p.1)
            .collect();
        assert_eq!(got.shape(), &out_shape[..]);
        for (i, &v) in ints(&got).iter().enumerate() {
            let c = coords(i, &out_shape);
            let inside: Option<Vec<usize>> = c
                .iter()
                .zip(&pads)
                .zip(&shape)
                .map(|((&c, p), &d)| (c >= p.0 && c < p.0 + d).then(|| c - p.0))
                .collect();
            let want = inside.map(|ic| flat(&ic, &shape) as i64).unwrap_or(-7);
            assert_eq!(v, want, "{shape:?} {pads:?} at {c:?}");
        }
        let zero = pad(&x, &pads, None).unwrap();
        assert!(ints(&zero)
            .iter()
            .zip(ints(&got))
            .all(|(z, g)| *z == g || (*z == 0 && g == -7)));
    }
    let f = Tensor::new(vec![2], vec![1f32, 2.0]).unwrap();
    assert_eq!(
        pad(&f, &[(1, 1)], None).unwrap().f32s("t").unwrap(),
        &[0.0, 1.0, 2.0, 0.0]
    );
    assert!(pad(&f, &[(1, 1), (0, 0)], None).is_err());
    assert!(matches!(
        pad(&f, &[(1, 1)], Some(&Tensor::scalar(1i32))).unwrap_err(),
        Error::DType { .. }
    ));
}

fn ss(x: &Tensor, b: &[i64], e: &[i64], s: &[i64], m: StridedSliceMasks) -> Tensor {
    strided_slice(x, b, e, s, &m).unwrap()
}

/// TensorFlow's documented examples.
#[test]
fn strided_slice_documented_examples() {
    let t = Tensor::new(
        vec![3, 2, 3],
        vec![1i64, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 6, 6, 6],
    )
    .unwrap();
    let m = StridedSliceMasks::default();
    let a = ss(&t, &[1, 0, 0], &[2, 1, 3], &[1, 1, 1], m);
    assert_eq!((a.shape(), ints(&a)), (&[1usize, 1, 3][..], vec![3, 3, 3]));
    let a = ss(&t, &[1, 0, 0], &[2, 2, 3], &[1, 1, 1], m);
    assert_eq!(
        (a.shape(), ints(&a)),
        (&[1usize, 2, 3][..], vec![3, 3, 3, 4, 4, 4])
    );
    let a = ss(&t, &[1, -1, 0], &[2, -3, 3], &[1, -1, 1], m);
    assert_eq!(
        (a.shape(), ints(&a)),
        (&[1usize, 2, 3][..], vec![4, 4, 4, 3, 3, 3])
    );
}

/// The batch-size idiom of TF graphs: Shape → StridedSlice(shrink 1) → a scalar.
#[test]
fn strided_slice_shape_idiom() {
    let shape = Tensor::new(vec![4], vec![128i32, 16, 16, 64]).unwrap();
    let m = StridedSliceMasks {
        shrink_axis_mask: 1,
        ..Default::default()
    };
    let n = ss(&shape, &[0], &[1], &[1], m);
    assert_eq!(n.shape(), &[] as &[usize]);
    assert_eq!(n.values::<i32>("t").unwrap(), &[128]);
    // x[-1]
    let last = ss(&shape, &[-1], &[0], &[1], m);
    assert_eq!(last.values::<i32>("t").unwrap(), &[64]);
}

#[test]
fn strided_slice_masks() {
    let x = iota(&[2, 3, 4]);
    // x[..., 1]
    let m = StridedSliceMasks {
        ellipsis_mask: 1,
        shrink_axis_mask: 2,
        ..Default::default()
    };
    let a = ss(&x, &[0, 1], &[0, 2], &[1, 1], m);
    assert_eq!(a.shape(), &[2, 3]);
    assert_eq!(ints(&a), vec![1, 5, 9, 13, 17, 21]);
    // x[:, newaxis, 1:]
    let m = StridedSliceMasks {
        begin_mask: 1,
        end_mask: 5,
        new_axis_mask: 2,
        ..Default::default()
    };
    let a = ss(&x, &[0, 0, 1], &[0, 0, 0], &[1, 1, 1], m);
    assert_eq!(a.shape(), &[2, 1, 2, 4]);
    assert_eq!(ints(&a)[..4], [4, 5, 6, 7]);
    // x[..., newaxis]
    let m = StridedSliceMasks {
        ellipsis_mask: 1,
        new_axis_mask: 2,
        ..Default::default()
    };
    assert_eq!(ss(&x, &[0, 0], &[0, 0], &[1, 1], m).shape(), &[2, 3, 4, 1]);
    // x[newaxis, ..., ::-2]
    let m = StridedSliceMasks {
        new_axis_mask: 1,
        ellipsis_mask: 2,
        begin_mask: 4,
        end_mask: 4,
        ..Default::default()
    };
    let a = ss(&x, &[0, 0, 0], &[0, 0, 0], &[1, 1, -2], m);
    assert_eq!(a.shape(), &[1, 2, 3, 2]);
    assert_eq!(ints(&a)[..4], [3, 1, 7, 5]);
    // x[1, ..., 2] (ellipsis in the middle, both ends shrunk)
    let m = StridedSliceMasks {
        ellipsis_mask: 2,
        shrink_axis_mask: 5,
        ..Default::default()
    };
    let a = ss(&x, &[1, 0, 2], &[2, 0, 3], &[1, 1, 1], m);
    assert_eq!((a.shape(), ints(&a)), (&[3usize][..], vec![14, 18, 22]));
    // Empty results keep their shape.
    let a = ss(&x, &[1, 2], &[1, 0], &[1, 1], StridedSliceMasks::default());
    assert_eq!(a.shape(), &[0, 0, 4]);
}

/// 1-D slices against Python's slicing rules for every begin/end in range
/// and beyond, both masks and strides ±1..±3.
#[test]
fn strided_slice_matches_python_rules() {
    for len in [0usize, 1, 5] {
        let x = iota(&[len]);
        let l = len as i64;
        for stride in [-3i64, -2, -1, 1, 2, 3] {
            for b in -l - 2..=l + 2 {
                for e in -l - 2..=l + 2 {
                    for mask in 0..4 {
                        let m = StridedSliceMasks {
                            begin_mask: mask & 1,
                            end_mask: mask >> 1,
                            ..Default::default()
                        };
                        let got = ints(&ss(&x, &[b], &[e], &[stride], m));
                        // Python's slice.indices.
                        let norm = |v: i64, lo: i64, hi: i64| {
                            (if v < 0 { v + l } else { v }).clamp(lo, hi)
                        };
                        let (lo, hi) = if stride > 0 { (0, l) } else { (-1, l - 1) };
                        let start = if mask & 1 == 1 {
                            if stride > 0 {
                                0
                            } else {
                                l - 1
                            }
                        } else {
                            norm(b, lo, hi)
                        };
                        let stop = if mask & 2 == 2 {
                            if stride > 0 {
                                l
                            } else {
                                -1
                            }
                        } else {
                            norm(e, lo, hi)
                        };
                        let mut want = Vec::new();
                        let mut k = start;
                        while (stride > 0 && k < stop) || (stride < 0 && k > stop) {
                            want.push(k);
                            k += stride;
                        }
                        assert_eq!(got, want, "len {len} [{b}:{e}:{stride}] mask {mask}");
                    }
                }
            }
        }
    }
}

#[test]
fn strided_slice_errors() {
    let x = iota(&[2, 3]);
    let m = StridedSliceMasks::default();
    assert!(strided_slice(&x, &[0], &[1], &[0], &m).is_err());
    assert!(strided_slice(&x, &[0, 0], &[1], &[1, 1], &m).is_err());
    assert!(strided_slice(&x, &[0, 0, 0], &[1, 1, 1], &[1, 1, 1], &m).is_err());
    let shrink = StridedSliceMasks {
        shrink_axis_mask: 1,
        ..Default::default()
    };
    let err = strided_slice(&x, &[2], &[3], &[1], &shrink).unwrap_err();
    assert!(
        err.to_string().contains("StridedSlice") && err.to_string().contains("out of bounds"),
        "{err}"
    );
    let two = StridedSliceMasks {
        ellipsis_mask: 3,
        ..Default::default()
    };
    assert!(strided_slice(&x, &[0, 0], &[1, 1], &[1, 1], &two).is_err());
}

#[test]
fn pack_and_concat() {
    let a = iota(&[2, 3]);
    let b = Tensor::new(vec![2, 3], (100..106i64).collect::<Vec<_>>()).unwrap();
    for axis in [0i64, 1, 2, -1, -3] {
        let p = pack(&[&a, &b], axis).unwrap();
        let ax = if axis < 0 { axis + 3 } else { axis } as usize;
        let mut want_shape = vec![2, 3];
        want_shape.insert(ax, 2);
        assert_eq!(p.shape(), &want_shape[..]);
        for (i, &v) in ints(&p).iter().enumerate() {
            let mut c = coords(i, &want_shape);
            let which = c.remove(ax);
            let src = if which == 0 { &a } else { &b };
            assert_eq!(v, ints(src)[flat(&c, &[2, 3])]);
        }
    }
    // Scalars pack into a vector (the Shape → Pack idiom).
    let s = pack(&[&Tensor::scalar(-1i32), &Tensor::scalar(7i32)], 0).unwrap();
    assert_eq!(
        (s.shape(), s.values::<i32>("t").unwrap()),
        (&[2usize][..], &[-1, 7][..])
    );
    let c = iota(&[2, 1]);
    let cat = concat(&[&a, &c, &b], 1).unwrap();
    assert_eq!(cat.shape(), &[2, 7]);
    assert_eq!(
        ints(&cat),
        vec![0, 1, 2, 0, 100, 101, 102, 3, 4, 5, 1, 103, 104, 105]
    );
    let cat0 = concat(&[&a, &b], -2).unwrap();
    assert_eq!(cat0.shape(), &[4, 3]);
    assert!(concat(&[&a, &c], 0).is_err());
    assert!(pack(&[&a, &c], 0).is_err());
    assert!(concat(&[], 0).is_err());
    assert!(pack(&[&a], 3).is_err());
    assert!(matches!(
        concat(&[&a, &Tensor::zeros(DType::F32, vec![2, 3])], 0).unwrap_err(),
        Error::DType { .. }
    ));
}

#[test]
fn fill_cast() {
    let f = fill(&[2, 0, 3], &Tensor::scalar(1.5f32)).unwrap();
    assert_eq!(f.shape(), &[2, 0, 3]);
    let f = fill(&[2, 2], &Tensor::scalar(true)).unwrap();
    assert_eq!(f.values::<bool>("t").unwrap(), &[true; 4]);
    assert!(fill(&[2], &Tensor::new(vec![1], vec![1f32]).unwrap()).is_err());

    let x = Tensor::new(vec![6], vec![-2.7f32, -0.5, 0.0, 0.5, 2.7, 300.0]).unwrap();
    assert_eq!(
        cast(&x, DType::I32).unwrap().values::<i32>("t").unwrap(),
        &[-2, 0, 0, 0, 2, 300]
    );
    assert_eq!(
        cast(&x, DType::I64).unwrap().values::<i64>("t").unwrap(),
        &[-2, 0, 0, 0, 2, 300]
    );
    assert_eq!(
        cast(&x, DType::Bool).unwrap().values::<bool>("t").unwrap(),
        &[true, true, false, true, true, true]
    );
    assert_eq!(cast(&x, DType::F64).unwrap().to_f64_vec(), x.to_f64_vec());
    let u = Tensor::new(vec![3], vec![0u8, 7, 255]).unwrap();
    for dt in [DType::F32, DType::F64, DType::I32, DType::I64, DType::U8] {
        assert_eq!(
            cast(&u, dt).unwrap().to_f64_vec(),
            vec![0.0, 7.0, 255.0],
            "{dt}"
        );
    }
    let b = Tensor::new(vec![2], vec![true, false]).unwrap();
    for dt in [
        DType::F32,
        DType::F64,
        DType::I32,
        DType::I64,
        DType::U8,
        DType::Bool,
    ] {
        let c = cast(&b, dt).unwrap();
        assert_eq!((c.dtype(), c.to_f64_vec()), (dt, vec![1.0, 0.0]));
    }
    // int64 → int32 wraps like static_cast.
    let big = Tensor::new(vec![1], vec![(1i64 << 32) + 5]).unwrap();
    assert_eq!(
        cast(&big, DType::I32).unwrap().values::<i32>("t").unwrap(),
        &[5]
    );
    let i = Tensor::new(vec![2], vec![-3i32, 16777217]).unwrap();
    assert_eq!(
        cast(&i, DType::F32).unwrap().f32s("t").unwrap(),
        &[-3.0, 16777216.0]
    );
}

#[test]
fn transpose_and_slice_match_reference() {
    let mut rng = StdRng::seed_from_u64(1);
    for shape in [vec![2, 3, 4], vec![1, 5, 1, 3], vec![7]] {
        let x = iota(&shape);
        let rank = shape.len();
        // Every permutation of the axes.
        let mut perms: Vec<Vec<usize>> = vec![vec![]];
        for _ in 0..rank {
            perms = perms
                .into_iter()
                .flat_map(|p| {
                    (0..rank)
                        .filter(|a| !p.contains(a))
                        .map(|a| [p.clone(), vec![a]].concat())
                        .collect::<Vec<_>>()
                })
                .collect();
        }
        for perm in perms {
            let t = transpose(&x, &perm).unwrap();
            let out: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
            assert_eq!(t.shape(), &out[..]);
            for (i, &v) in ints(&t).iter().enumerate() {
                let c = coords(i, &out);
                let mut ic = vec![0; rank];
                for (k, &p) in perm.iter().enumerate() {
                    ic[p] = c[k];
                }
                assert_eq!(v, flat(&ic, &shape) as i64);
            }
        }
        for _ in 0..20 {
            let begin: Vec<i64> = shape
                .iter()
                .map(|&d| rng.random_range(0..=d as i64))
                .collect();
            let size: Vec<i64> = shape
                .iter()
                .zip(&begin)
                .map(|(&d, &b)| {
                    if rng.random_bool(0.3) {
                        -1
                    } else {
                        rng.random_range(0..=d as i64 - b)
                    }
                })
                .collect();
            let s = slice(&x, &begin, &size).unwrap();
            let out: Vec<usize> = shape
                .iter()
                .zip(&begin)
                .zip(&size)
                .map(|((&d, &b), &z)| if z == -1 { d - b as usize } else { z as usize })
                .collect();
            assert_eq!(s.shape(), &out[..]);
            for (i, &v) in ints(&s).iter().enumerate() {
                let c: Vec<usize> = coords(i, &out)
                    .iter()
                    .zip(&begin)
                    .map(|(c, &b)| c + b as usize)
                    .collect();
                assert_eq!(v, flat(&c, &shape) as i64);
            }
        }
    }
    let x = iota(&[2, 3]);
    assert!(transpose(&x, &[0, 0]).is_err());
    assert!(transpose(&x, &[0]).is_err());
    assert!(slice(&x, &[1, 0], &[2, 1]).is_err());
    assert!(slice(&x, &[0], &[1]).is_err());
    let f = Tensor::new(vec![2, 2], vec![1f32, 2., 3., 4.]).unwrap();
    assert_eq!(
        transpose(&f, &[1, 0]).unwrap().f32s("t").unwrap(),
        &[1., 3., 2., 4.]
    );
}
