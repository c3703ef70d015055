//! Optimizer updates against plain f64 references of TensorFlow's formulas,
//! for several steps on random inputs of awkward lengths (1, odd, just past
//! a vector width, several parallel chunks); bad input is an error.

use psflow_kernels::ops::optim::{
    adam_alpha, apply_adam, apply_centered_rmsprop, apply_gradient_descent, apply_momentum,
    apply_rmsprop, AdamHyper, MomentumHyper, RmsPropHyper,
};
use psflow_kernels::Error;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const LENGTHS: [usize; 6] = [1, 3, 17, 129, 4099, 40_000];
const STEPS: usize = 4;

fn rand_v(rng: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Largest |got - want| / max(floor, |want|) must be at most `tol`: relative
/// for values above `floor` (the tensor's typical magnitude), absolute
/// below, so cancellation near zero is not counted as error.
fn check(what: &str, got: &[f32], want: &[f64], floor: f64, tol: f64) {
    assert_eq!(got.len(), want.len());
    let (mut worst, mut at) = (0.0, 0);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let e = (g as f64 - w).abs() / w.abs().max(floor);
        if e > worst {
            (worst, at) = (e, i);
        }
    }
    assert!(
        worst <= tol,
        "{what}: relative error {worst:e} at {at} (got {}, want {})",
        got[at],
        want[at]
    );
}

/// A fresh gradient per step, as training gives.
fn grads(rng: &mut StdRng, n: usize) -> Vec<Vec<f32>> {
    (0..STEPS).map(|_| rand_v(rng, n, -2.0, 2.0)).collect()
}

#[test]
fn gradient_descent_matches_reference() {
    let mut rng = StdRng::seed_from_u64(1);
    for n in LENGTHS {
        let mut var = rand_v(&mut rng, n, -1.0, 1.0);
        let mut r = f64s(&var);
        for g in grads(&mut rng, n) {
            apply_gradient_descent(&mut var, &g, 0.05).unwrap();
            for (x, &g) in r.iter_mut().zip(&g) {
                *x -= g as f64 * 0.05f32 as f64;
            }
        }
        check("var", &var, &r, 1.0, 1e-6);
    }
}

#[test]
fn momentum_matches_reference() {
    let mut rng = StdRng::seed_from_u64(2);
    for nesterov in [false, true] {
        for n in LENGTHS {
            let h = MomentumHyper {
                lr: 0.03,
                momentum: 0.9,
                use_nesterov: nesterov,
            };
            let mut var = rand_v(&mut rng, n, -1.0, 1.0);
            let mut acc = vec![0.0; n];
            let (mut rv, mut ra) = (f64s(&var), vec![0.0f64; n]);
            let (lr, mu) = (h.lr as f64, h.momentum as f64);
            for g in grads(&mut rng, n) {
                apply_momentum(&mut var, &mut acc, &g, h).unwrap();
                for i in 0..n {
                    let g = g[i] as f64;
                    ra[i] = ra[i] * mu + g;
                    rv[i] -= if nesterov {
                        g * lr + ra[i] * mu * lr
                    } else {
                        ra[i] * lr
                    };
                }
            }
            check("var", &var, &rv, 1.0, 1e-6);
            check("accum", &acc, &ra, 1.0, 1e-6);
        }
    }
}

fn rms_hyper() -> RmsPropHyper {
    // TF-slim's MobileNet settings, with a larger lr so updates show.
    RmsPropHyper {
        lr: 0.05,
        rho: 0.9,
        momentum: 0.9,
        epsilon: 1.0,
    }
}

#[test]
fn rmsprop_matches_reference() {
    let mut rng = StdRng::seed_from_u64(3);
    for h in [
        rms_hyper(),
        RmsPropHyper {
            lr: 0.001,
            rho: 0.99,
            momentum: 0.0,
            epsilon: 1e-6,
        },
    ] {
        for n in LENGTHS {
            let mut var = rand_v(&mut rng, n, -1.0, 1.0);
            // ms starts at ones as TF1's RMSPropOptimizer, mom at zeros.
            let (mut ms, mut mom) = (vec![1.0f32; n], vec![0.0f32; n]);
            let (mut rv, mut rs, mut rm) = (f64s(&var), vec![1.0f64; n], vec![0.0f64; n]);
            let (lr, rho, mu, eps) = (
                h.lr as f64,
                h.rho as f64,
                h.momentum as f64,
                h.epsilon as f64,
            );
            for g in grads(&mut rng, n) {
                apply_rmsprop(&mut var, &mut ms, &mut mom, &g, h).unwrap();
                for i in 0..n {
                    let g = g[i] as f64;
                    rs[i] = rho * rs[i] + (1.0 - rho) * g * g;
                    rm[i] = mu * rm[i] + lr * g / (rs[i] + eps).sqrt();
                    rv[i] -= rm[i];
                }
            }
            check("var", &var, &rv, 1.0, 1e-6);
            check("ms", &ms, &rs, 1.0, 1e-6);
            check("mom", &mom, &rm, h.lr as f64, 1e-6);
        }
    }
}

#[test]
fn centered_rmsprop_matches_reference() {
    let mut rng = StdRng::seed_from_u64(4);
    let h = rms_hyper();
    let (lr, rho, mu, eps) = (
        h.lr as f64,
        h.rho as f64,
        h.momentum as f64,
        h.epsilon as f64,
    );
    for n in LENGTHS {
        let mut var = rand_v(&mut rng, n, -1.0, 1.0);
        let (mut mg, mut ms, mut mom) = (vec![0.0f32; n], vec![1.0f32; n], vec![0.0f32; n]);
        let mut rv = f64s(&var);
        let (mut ra, mut rs, mut rm) = (vec![0.0f64; n], vec![1.0f64; n], vec![0.0f64; n]);
        for g in grads(&mut rng, n) {
            apply_centered_rmsprop(&mut var, &mut mg, &mut ms, &mut mom, &g, h).unwrap();
            for i in 0..n {
                let g = g[i] as f64;
                rs[i] = rho * rs[i] + (1.0 - rho) * g * g;
                ra[i] = rho * ra[i] + (1.0 - rho) * g;
                rm[i] = mu * rm[i] + lr * g / (rs[i] - ra[i] * ra[i] + eps).sqrt();
                rv[i] -= rm[i];
            }
        }
        check("var", &var, &rv, 1.0, 1e-6);
        check("mg", &mg, &ra, 0.1, 1e-6);
        check("ms", &ms, &rs, 1.0, 1e-6);
        check("mom", &mom, &rm, h.lr as f64, 1e-6);
    }
}

#[test]
fn adam_matches_reference() {
    let mut rng = StdRng::seed_from_u64(5);
    for nesterov in [false, true] {
        for n in LENGTHS {
            let (b1, b2, lr, eps) = (0.9f32, 0.999f32, 0.01f32, 1e-8f32);
            let mut var = rand_v(&mut rng, n, -1.0, 1.0);
            let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
            let mut rx = f64s(&var);
            let (mut rm, mut rv) = (vec![0.0f64; n], vec![0.0f64; n]);
            let (fb1, fb2) = (b1 as f64, b2 as f64);
            for (t, g) in grads(&mut rng, n).into_iter().enumerate() {
                let t = t as i32 + 1;
                let h = AdamHyper {
                    lr,
                    beta1: b1,
                    beta2: b2,
                    epsilon: eps,
                    beta1_power: b1.powi(t),
                    beta2_power: b2.powi(t),
                    use_nesterov: nesterov,
                };
                apply_adam(&mut var, &mut m, &mut v, &g, h).unwrap();
                let alpha = lr as f64 * (1.0 - fb2.powi(t)).sqrt() / (1.0 - fb1.powi(t));
                for i in 0..n {
                    let g = g[i] as f64;
                    rm[i] = fb1 * rm[i] + (1.0 - fb1) * g;
                    rv[i] = fb2 * rv[i] + (1.0 - fb2) * g * g;
                    let step = if nesterov {
                        g * (1.0 - fb1) + fb1 * rm[i]
                    } else {
                        rm[i]
                    };
                    rx[i] -= step * alpha / (rv[i].sqrt() + eps as f64);
                }
            }
            check("var", &var, &rx, 1.0, 1e-6);
            check("m", &m, &rm, 0.1, 1e-6);
            check("v", &v, &rv, 1e-3, 1e-6);
        }
    }
}

#[test]
fn adam_alpha_is_tf_bias_correction() {
    let h = AdamHyper {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-8,
        beta1_power: 0.9,
        beta2_power: 0.999,
        use_nesterov: false,
    };
    let (lr, b1, b2) = (0.1f32 as f64, 0.9f32 as f64, 0.999f32 as f64);
    let want = lr * (1.0 - b2).sqrt() / (1.0 - b1);
    assert!((adam_alpha(&h) as f64 - want).abs() < 1e-6 * want);
}

#[test]
fn mismatched_lengths_and_bad_hyper_parameters_are_errors() {
    let mut var = vec![0.0f32; 4];
    let mut s = vec![0.0f32; 3];
    let mut m = vec![0.0f32; 4];
    let g = vec![0.0f32; 4];
    let err = apply_rmsprop(&mut var, &mut s, &mut m, &g, rms_hyper()).unwrap_err();
    assert!(
        matches!(&err, Error::Shape { op: "ApplyRMSProp", detail } if detail.contains("ms has 3")),
        "{err}"
    );
    let err = apply_gradient_descent(&mut var, &g[..2], 0.1).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let err = apply_gradient_descent(&mut var, &g, f32::NAN).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let mut acc = vec![0.0f32; 5];
    let h = MomentumHyper {
        lr: 0.1,
        momentum: 0.9,
        use_nesterov: false,
    };
    assert!(apply_momentum(&mut var, &mut acc, &g, h).is_err());
    let mut v = vec![0.0f32; 4];
    let h = AdamHyper {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-8,
        beta1_power: 1.0,
        beta2_power: 1.0,
        use_nesterov: false,
    };
    let err = apply_adam(&mut var, &mut m, &mut v, &g, h).unwrap_err();
    assert!(err.to_string().contains("beta1_power"), "{err}");
    // Nothing was written by the failed calls.
    assert!(var.iter().all(|&x| x == 0.0));
}

/// Not a check: prints the update throughput over MobileNet-1.0-sized
/// parameters (4.2 M) against the memory traffic it implies.
#[test]
#[ignore = "timing report: cargo test -p psflow-kernels --test optim -- --ignored --nocapture"]
fn report_update_throughput() {
    let n = 4_200_000;
    let mut rng = StdRng::seed_from_u64(9);
    let mut var = rand_v(&mut rng, n, -1.0, 1.0);
    let (mut ms, mut mom) = (vec![1.0f32; n], vec![0.0f32; n]);
    let g = rand_v(&mut rng, n, -1.0, 1.0);
    let reps = 20;
    apply_rmsprop(&mut var, &mut ms, &mut mom, &g, rms_hyper()).unwrap();
    let t = std::time::Instant::now();
    for _ in 0..reps {
        apply_rmsprop(&mut var, &mut ms, &mut mom, &g, rms_hyper()).unwrap();
    }
    let s = t.elapsed().as_secs_f64() / reps as f64;
    // Reads var, ms, mom, grad; writes var, ms, mom.
    let bytes = 7.0 * 4.0 * n as f64;
    println!(
        "RMSProp over {n} params: {:.2} ms/step, {:.1} GB/s",
        s * 1e3,
        bytes / s / 1e9
    );
}
