//! Augmentation ops against hand-computed examples and f64 references of
//! the TensorFlow formulas, and the Augmenter's random choices within their
//! bounds.

use psflow_worker::data::augment::{
    adjust_brightness, adjust_contrast, flip_left_right, pad_and_crop, per_image_standardization,
    resize_bilinear,
};
use psflow_worker::data::rng::Rng;
use psflow_worker::data::{AugmentConfig, Augmenter};

fn close(a: &[f32], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x as f64 - y).abs() <= tol * (1.0 + y.abs()),
            "element {i}: {x} vs {y}"
        );
    }
}

fn random_image(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.uniform()).collect()
}

#[test]
fn standardization_hand_examples() {
    // mean 1.5, variance 1.25: stddev sqrt(1.25) > 1/sqrt(4).
    let mut x = vec![0.0, 1.0, 2.0, 3.0];
    per_image_standardization(&mut x);
    let s = 1.25f64.sqrt();
    close(&x, &[-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s], 1e-6);
    // Nearly constant: stddev 0.0433 < 1/sqrt(4) = 0.5, which divides.
    let mut x = vec![0.5, 0.5, 0.5, 0.6];
    per_image_standardization(&mut x);
    close(&x, &[-0.05, -0.05, -0.05, 0.15], 1e-5);
    // Constant: all zeros, no NaN.
    let mut x = vec![0.7; 12];
    per_image_standardization(&mut x);
    assert!(x.iter().all(|&v| v.abs() < 1e-6), "{x:?}");
}

/// TF's formula in f64: (x - mean) / max(sqrt(E[x^2] - mean^2), 1/sqrt(n)).
fn standardize_ref(x: &[f32]) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let sq = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n;
    let sd = (sq - mean * mean).max(0.0).sqrt().max(1.0 / n.sqrt());
    x.iter().map(|&v| (v as f64 - mean) / sd).collect()
}

#[test]
fn standardization_matches_tf_formula_on_random_images() {
    for (k, &(h, w, c)) in [(32, 32, 3), (28, 28, 1), (1, 1, 3), (5, 1, 2), (24, 24, 3)]
        .iter()
        .enumerate()
    {
        let x = random_image(h * w * c, k as u64);
        let mut y = x.clone();
        per_image_standardization(&mut y);
        close(&y, &standardize_ref(&x), 1e-5);
        let m: f64 = y.iter().map(|&v| v as f64).sum::<f64>() / y.len() as f64;
        assert!(m.abs() < 1e-5, "mean {m}");
    }
}

#[test]
fn contrast_hand_example_and_tf_formula() {
    // 2x2 pixels, 2 channels: channel 0 = [0.1, 0.2, 0.3, 0.6] (mean 0.3),
    // channel 1 constant.
    let mut x = vec![0.1, 1.0, 0.2, 1.0, 0.3, 1.0, 0.6, 1.0];
    adjust_contrast(&mut x, 2, 2.0);
    close(&x, &[-0.1, 1.0, 0.1, 1.0, 0.3, 1.0, 0.9, 1.0], 1e-6);

    // Random 7x3x3 image against (x - mean_c) * f + mean_c in f64.
    let (h, w, c) = (7, 3, 3);
    let x = random_image(h * w * c, 42);
    for f in [0.2f32, 1.0, 1.8] {
        let mut y = x.clone();
        adjust_contrast(&mut y, c, f);
        let mut want = vec![0.0; x.len()];
        for k in 0..c {
            let mean = (0..h * w).map(|p| x[p * c + k] as f64).sum::<f64>() / (h * w) as f64;
            for p in 0..h * w {
                want[p * c + k] = (x[p * c + k] as f64 - mean) * f as f64 + mean;
            }
        }
        close(&y, &want, 1e-6);
    }
}

#[test]
fn brightness_adds_delta() {
    let mut x = vec![0.0, 0.5, 1.0];
    adjust_brightness(&mut x, -0.25);
    assert_eq!(x, vec![-0.25, 0.25, 0.75]);
}

#[test]
fn flip_hand_example() {
    // 2 rows, 3 columns, 2 channels.
    let mut x: Vec<u8> = vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
    flip_left_right(&mut x, 2, 3, 2);
    assert_eq!(x, vec![5, 6, 3, 4, 1, 2, 11, 12, 9, 10, 7, 8]);
    let mut y = vec![1.0f32, 2.0];
    flip_left_right(&mut y, 1, 2, 1);
    assert_eq!(y, vec![2.0, 1.0]);
}

#[test]
fn pad_and_crop_hand_example() {
    // 2x2 single channel, pad 1: offset (0, 0) shifts the image down-right.
    let src = [1u8, 2, 3, 4];
    let mut out = [9u8; 4];
    pad_and_crop(&src, 2, 2, 1, 1, 0, 0, &mut out);
    assert_eq!(out, [0, 0, 0, 1]);
    pad_and_crop(&src, 2, 2, 1, 1, 1, 1, &mut out);
    assert_eq!(out, [1, 2, 3, 4]);
    pad_and_crop(&src, 2, 2, 1, 1, 2, 1, &mut out);
    assert_eq!(out, [3, 4, 0, 0]);
    pad_and_crop(&src, 2, 2, 1, 1, 0, 2, &mut out);
    assert_eq!(out, [0, 0, 2, 0]);
}

#[test]
fn resize_constant_stays_constant() {
    for &(h, w, oh, ow) in &[
        (32, 32, 24, 24),
        (32, 32, 16, 16),
        (28, 28, 32, 32),
        (5, 3, 7, 2),
        (1, 1, 4, 4),
    ] {
        let src = vec![0.3125f32; h * w * 3];
        let mut out = vec![0.0; oh * ow * 3];
        resize_bilinear(&src, h, w, 3, &mut out, oh, ow);
        assert!(out.iter().all(|&v| v == 0.3125), "{h}x{w} -> {oh}x{ow}");
    }
}

#[test]
fn resize_2x2_to_4x4_half_pixel_centres() {
    // tf.image.resize([[0, 1], [2, 3]], [4, 4], 'bilinear'): output pixel i
    // samples (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped.
    let src = [0.0f32, 1.0, 2.0, 3.0];
    let mut out = [0.0f32; 16];
    resize_bilinear(&src, 2, 2, 1, &mut out, 4, 4);
    #[rustfmt::skip]
    let want = [
        0.0, 0.25, 0.75, 1.0,
        0.5, 0.75, 1.25, 1.5,
        1.5, 1.75, 2.25, 2.5,
        2.0, 2.25, 2.75, 3.0,
    ];
    close(&out, &want, 1e-7);
}

#[test]
fn resize_halving_averages_2x2_blocks() {
    // Half-pixel centres put each output pixel at the centre of a 2x2 block.
    let (h, w, c) = (6, 4, 2);
    let src = random_image(h * w * c, 3);
    let mut out = vec![0.0; 3 * 2 * c];
    resize_bilinear(&src, h, w, c, &mut out, 3, 2);
    for y in 0..3 {
        for x in 0..2 {
            for k in 0..c {
                let at = |yy: usize, xx: usize| src[(yy * w + xx) * c + k] as f64;
                let avg = (at(2 * y, 2 * x)
                    + at(2 * y, 2 * x + 1)
                    + at(2 * y + 1, 2 * x)
                    + at(2 * y + 1, 2 * x + 1))
                    / 4.0;
                close(&out[(y * 2 + x) * c + k..][..1], &[avg], 1e-6);
            }
        }
    }
}

/// An image with every byte nonzero and distinct per position, so a shifted
/// window can be recognised.
fn marked_image(h: usize, w: usize, c: usize) -> Vec<u8> {
    (0..h * w * c).map(|i| (i % 250 + 1) as u8).collect()
}

fn shift(src: &[u8], h: usize, w: usize, c: usize, dy: isize, dx: isize) -> Vec<f32> {
    let mut out = vec![0.0; h * w * c];
    for y in 0..h as isize {
        for x in 0..w as isize {
            let (sy, sx) = (y + dy, x + dx);
            if sy >= 0 && sy < h as isize && sx >= 0 && sx < w as isize {
                for k in 0..c {
                    out[((y * w as isize + x) as usize) * c + k] =
                        src[((sy * w as isize + sx) as usize) * c + k] as f32 * (1.0 / 255.0);
                }
            }
        }
    }
    out
}

#[test]
fn random_crop_stays_within_the_padding_and_reaches_its_edges() {
    let (h, w, c) = (8, 6, 3);
    let img = marked_image(h, w, c);
    let cfg = AugmentConfig {
        pad_crop: Some(2),
        ..AugmentConfig::none()
    };
    let mut aug = Augmenter::new(&cfg, h, w, c).unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut out = vec![0.0; h * w * c];
    for s in 0..400 {
        aug.apply(&img, &mut Rng::new(s), &mut out).unwrap();
        let found: Vec<(isize, isize)> = (-2..=2)
            .flat_map(|dy| (-2..=2).map(move |dx| (dy, dx)))
            .filter(|&(dy, dx)| shift(&img, h, w, c, dy, dx) == out)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "seed {s}: output is not one shift within ±2"
        );
        seen.insert(found[0]);
    }
    assert_eq!(
        seen.len(),
        25,
        "every offset in [-2, 2]^2 should occur: {seen:?}"
    );
}

#[test]
fn random_flip_happens_about_half_the_time() {
    let (h, w, c) = (3, 5, 1);
    let img = marked_image(h, w, c);
    let cfg = AugmentConfig {
        flip: true,
        ..AugmentConfig::none()
    };
    let mut aug = Augmenter::new(&cfg, h, w, c).unwrap();
    let plain: Vec<f32> = img.iter().map(|&b| b as f32 * (1.0 / 255.0)).collect();
    let mut flipped = plain.clone();
    flip_left_right(&mut flipped, h, w, c);
    let mut out = vec![0.0; h * w * c];
    let mut n = 0;
    for s in 0..1000 {
        aug.apply(&img, &mut Rng::new(s), &mut out).unwrap();
        if out == flipped {
            n += 1;
        } else {
            assert_eq!(out, plain);
        }
    }
    assert!((430..570).contains(&n), "{n} flips of 1000");
}

#[test]
fn random_brightness_and_contrast_within_bounds() {
    let (h, w, c) = (4, 4, 3);
    let img = marked_image(h, w, c);
    let base: Vec<f32> = img.iter().map(|&b| b as f32 * (1.0 / 255.0)).collect();
    let d = 63.0 / 255.0;
    let cfg = AugmentConfig {
        brightness: Some(d),
        clip: false,
        ..AugmentConfig::none()
    };
    let mut aug = Augmenter::new(&cfg, h, w, c).unwrap();
    let mut out = vec![0.0; h * w * c];
    let (mut lo, mut hi) = (f32::MAX, f32::MIN);
    for s in 0..500 {
        aug.apply(&img, &mut Rng::new(s), &mut out).unwrap();
        let delta = out[0] - base[0];
        assert!(out
            .iter()
            .zip(&base)
            .all(|(o, b)| ((o - b) - delta).abs() < 1e-6));
        assert!((-d..d).contains(&delta), "{delta}");
        lo = lo.min(delta);
        hi = hi.max(delta);
    }
    assert!(lo < -0.9 * d && hi > 0.9 * d, "deltas span [{lo}, {hi}]");

    let cfg = AugmentConfig {
        contrast: Some((0.2, 1.8)),
        clip: false,
        ..AugmentConfig::none()
    };
    let mut aug = Augmenter::new(&cfg, h, w, c).unwrap();
    for s in 0..200 {
        aug.apply(&img, &mut Rng::new(s), &mut out).unwrap();
        // Recover the factor from channel 0 and check it against the formula.
        let mean0 = (0..h * w).map(|p| base[p * c]).sum::<f32>() / (h * w) as f32;
        let f = (out[0] - mean0) / (base[0] - mean0);
        assert!((0.2 - 1e-4..1.8).contains(&f), "{f}");
        let mut want = base.clone();
        adjust_contrast(&mut want, c, f);
        close(
            &out,
            &want.iter().map(|&v| v as f64).collect::<Vec<_>>(),
            1e-4,
        );
    }
}

#[test]
fn clip_saturates_after_colour_ops() {
    let img = vec![250u8; 4 * 4 * 3];
    let cfg = AugmentConfig {
        brightness: Some(0.5),
        clip: true,
        ..AugmentConfig::none()
    };
    let mut aug = Augmenter::new(&cfg, 4, 4, 3).unwrap();
    let mut out = vec![0.0; 48];
    for s in 0..50 {
        aug.apply(&img, &mut Rng::new(s), &mut out).unwrap();
        assert!(out.iter().all(|&v| (0.0..=1.0).contains(&v)));
    }
}

#[test]
fn full_recipe_output_is_standardized_and_deterministic() {
    let (h, w, c) = (32, 32, 3);
    let img: Vec<u8> = (0..h * w * c).map(|i| ((i * 37) % 256) as u8).collect();
    let cfg = AugmentConfig::cifar_train().with_resize(Some((24, 24)));
    let mut aug = Augmenter::new(&cfg, h, w, c).unwrap();
    assert_eq!(aug.output_shape(), (24, 24, 3));
    let mut a = vec![0.0; aug.output_len()];
    let mut b = a.clone();
    aug.apply(&img, &mut Rng::keyed(5, &[1, 2]), &mut a)
        .unwrap();
    aug.apply(&img, &mut Rng::keyed(5, &[1, 2]), &mut b)
        .unwrap();
    assert_eq!(a, b);
    aug.apply(&img, &mut Rng::keyed(5, &[1, 3]), &mut b)
        .unwrap();
    assert_ne!(a, b);
    let n = a.len() as f64;
    let mean = a.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    assert!(
        mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-3,
        "mean {mean} var {var}"
    );
}

#[test]
fn eval_preprocessing_resizes_and_standardizes_without_randomness() {
    let (h, w, c) = (32, 32, 3);
    let img: Vec<u8> = (0..h * w * c).map(|i| ((i * 11) % 256) as u8).collect();
    let train = AugmentConfig::cifar_train().with_resize(Some((16, 16)));
    let eval = train.for_eval();
    assert!(train.is_random() && !eval.is_random());
    assert_eq!(eval.resize, Some((16, 16)));
    let mut aug = Augmenter::new(&eval, h, w, c).unwrap();
    let mut out = vec![0.0; aug.output_len()];
    aug.apply(&img, &mut Rng::new(1), &mut out).unwrap();
    // Reference: scale, resize, standardize.
    let f: Vec<f32> = img.iter().map(|&b| b as f32 * (1.0 / 255.0)).collect();
    let mut small = vec![0.0; 16 * 16 * 3];
    resize_bilinear(&f, h, w, c, &mut small, 16, 16);
    close(&out, &standardize_ref(&small), 1e-5);
}

#[test]
fn grayscale_to_rgb_replicates() {
    let img: Vec<u8> = (0..28 * 28).map(|i| (i % 256) as u8).collect();
    let cfg = AugmentConfig::eval()
        .with_grayscale_to_rgb(true)
        .with_resize(Some((32, 32)));
    let mut aug = Augmenter::new(&cfg, 28, 28, 1).unwrap();
    assert_eq!(aug.output_shape(), (32, 32, 3));
    let mut out = vec![0.0; aug.output_len()];
    aug.apply(&img, &mut Rng::new(0), &mut out).unwrap();
    for px in out.chunks_exact(3) {
        assert!(px[0] == px[1] && px[1] == px[2]);
    }
    // Replication does not change the standardized values.
    let mut gray = Augmenter::new(
        &AugmentConfig::eval().with_resize(Some((32, 32))),
        28,
        28,
        1,
    )
    .unwrap();
    let mut one = vec![0.0; 32 * 32];
    gray.apply(&img, &mut Rng::new(0), &mut one).unwrap();
    for (px, g) in out.chunks_exact(3).zip(&one) {
        assert!((px[0] - g).abs() < 1e-5);
    }
}

#[test]
fn bad_configs_are_errors() {
    let bad = [
        AugmentConfig {
            resize: Some((0, 24)),
            ..AugmentConfig::eval()
        },
        AugmentConfig {
            brightness: Some(-1.0),
            ..AugmentConfig::eval()
        },
        AugmentConfig {
            contrast: Some((1.8, 0.2)),
            ..AugmentConfig::eval()
        },
        AugmentConfig {
            brightness: Some(f32::NAN),
            ..AugmentConfig::eval()
        },
    ];
    for cfg in bad {
        assert!(Augmenter::new(&cfg, 32, 32, 3).is_err(), "{cfg:?}");
    }
    assert!(Augmenter::new(&AugmentConfig::eval(), 0, 32, 3).is_err());
    let mut aug = Augmenter::new(&AugmentConfig::eval(), 4, 4, 3).unwrap();
    let err = aug
        .apply(&[0; 47], &mut Rng::new(0), &mut [0.0; 48])
        .unwrap_err();
    assert!(err.to_string().contains("4x4x3"), "{err}");
    assert!(aug
        .apply(&[0; 48], &mut Rng::new(0), &mut [0.0; 47])
        .is_err());
}
