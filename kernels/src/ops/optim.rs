//! Optimizer updates, in place on f32 slices, with TensorFlow's CPU
//! formulas (training_ops.cc) term for term:
//!
//! - gradient descent: `var -= grad * lr`
//! - momentum: `accum = accum * momentum + grad`, then `var -= accum * lr`, or
//!   with Nesterov `var -= grad * lr + accum * momentum * lr`
//! - RMSProp: `ms += (grad² - ms) * (1 - rho)`,
//!   `mom = mom * momentum + grad * lr / sqrt(ms + epsilon)`, `var -= mom`
//! - centered RMSProp: also `mg += (grad - mg) * (1 - rho)` and the root is
//!   `sqrt(ms - mg² + epsilon)`
//! - Adam: `alpha = lr * sqrt(1 - beta2^t) / (1 - beta1^t)`,
//!   `m += (grad - m) * (1 - beta1)`, `v += (grad² - v) * (1 - beta2)`,
//!   `var -= m * alpha / (sqrt(v) + epsilon)`, or with Nesterov
//!   `var -= (grad * (1 - beta1) + beta1 * m) * alpha / (sqrt(v) + epsilon)`
//!
//! Every step runs these over every parameter, so they are written to be
//! memory-bound: one pass over the slices, split over the rayon pool in
//! chunks, each chunk a loop LLVM vectorises for the widest ISA the CPU has
//! (chosen at run time). Only IEEE-exact operations are used (no fused
//! multiply-add contraction, true division and square root), so every ISA
//! and every thread count gives the same bits as the scalar loop — and as
//! TensorFlow's Eigen expressions, which evaluate the same operations in the
//! same order.
//!
//! A parameter server calls the same functions on its shards.

use rayon::prelude::*;

use crate::{Error, Result};

/// Elements per parallel task; below this a slice is updated on one thread.
const PAR_CHUNK: usize = 16 * 1024;

/// Hyper-parameters of (centered) RMSProp for one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RmsPropHyper {
    pub lr: f32,
    /// Decay of the mean square (TF's `rho`, TF-slim's `decay`).
    pub rho: f32,
    pub momentum: f32,
    pub epsilon: f32,
}

/// Hyper-parameters of momentum SGD for one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MomentumHyper {
    pub lr: f32,
    pub momentum: f32,
    pub use_nesterov: bool,
}

/// Hyper-parameters of Adam for one step; `beta1_power` and `beta2_power`
/// are `beta1^t` and `beta2^t` for step `t` (counting from 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamHyper {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub epsilon: f32,
    pub beta1_power: f32,
    pub beta2_power: f32,
    pub use_nesterov: bool,
}

/// The instruction set an update loop is compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    /// The widest ISA this CPU runs.
    pub(crate) fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// Every ISA this CPU runs (for tests).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") {
                v.push(Isa::Avx2);
            }
            if is_x86_feature_detected!("avx512f") {
                v.push(Isa::Avx512);
            }
        }
        v
    }
}

/// Defines `$name(isa, args…)` that runs the `#[inline(always)]` loop
/// `$body(args…)` compiled for `isa`. The three copies are the same source,
/// so they compute the same bits.
macro_rules! multiversion {
    ($name:ident => $body:ident ($($arg:ident : $ty:ty),* $(,)?)) => {
        fn $name(isa: Isa, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) {
                    $body($($arg),*)
                }
                match isa {
                    // SAFETY: `Isa::detect` chose these only when the CPU
                    // has the feature.
                    Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    Isa::Scalar => {}
                }
            }
            let _ = isa;
            $body($($arg),*)
        }
    };
}

// ---------------------------------------------------------------- loops --
// Each loop first cuts every slice to the length of `var` (the caller checked
// they agree) so the indexing below has no bounds checks and vectorises.

#[inline(always)]
fn gd_body(var: &mut [f32], grad: &[f32], lr: f32) {
    let n = var.len();
    let grad = &grad[..n];
    for i in 0..n {
        var[i] -= grad[i] * lr;
    }
}

#[inline(always)]
fn momentum_body(var: &mut [f32], accum: &mut [f32], grad: &[f32], h: MomentumHyper) {
    let n = var.len();
    let (accum, grad) = (&mut accum[..n], &grad[..n]);
    let (lr, mu) = (h.lr, h.momentum);
    if h.use_nesterov {
        for i in 0..n {
            let a = accum[i] * mu + grad[i];
            accum[i] = a;
            var[i] -= grad[i] * lr + a * mu * lr;
        }
    } else {
        for i in 0..n {
            let a = accum[i] * mu + grad[i];
            accum[i] = a;
            var[i] -= a * lr;
        }
    }
}

#[inline(always)]
fn rmsprop_body(var: &mut [f32], ms: &mut [f32], mom: &mut [f32], grad: &[f32], h: RmsPropHyper) {
    let n = var.len();
    let (ms, mom, grad) = (&mut ms[..n], &mut mom[..n], &grad[..n]);
    let one_minus_rho = 1.0 - h.rho;
    for i in 0..n {
        let g = grad[i];
        let s = ms[i] + (g * g - ms[i]) * one_minus_rho;
        ms[i] = s;
        let m = mom[i] * h.momentum + (g * h.lr) / (s + h.epsilon).sqrt();
        mom[i] = m;
        var[i] -= m;
    }
}

#[inline(always)]
fn centered_rmsprop_body(
    var: &mut [f32],
    mg: &mut [f32],
    ms: &mut [f32],
    mom: &mut [f32],
    grad: &[f32],
    h: RmsPropHyper,
) {
    let n = var.len();
    let (mg, ms, mom, grad) = (&mut mg[..n], &mut ms[..n], &mut mom[..n], &grad[..n]);
    let one_minus_rho = 1.0 - h.rho;
    for i in 0..n {
        let g = grad[i];
        let s = ms[i] + (g * g - ms[i]) * one_minus_rho;
        ms[i] = s;
        let a = mg[i] + (g - mg[i]) * one_minus_rho;
        mg[i] = a;
        let denom = (s - a * a) + h.epsilon;
        let m = mom[i] * h.momentum + (g * h.lr) / denom.sqrt();
        mom[i] = m;
        var[i] -= m;
    }
}

#[inline(always)]
fn adam_body(
    var: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    grad: &[f32],
    h: AdamHyper,
    alpha: f32,
) {
    let n = var.len();
    let (m, v, grad) = (&mut m[..n], &mut v[..n], &grad[..n]);
    let one_minus_b1 = 1.0 - h.beta1;
    let one_minus_b2 = 1.0 - h.beta2;
    if h.use_nesterov {
        for i in 0..n {
            let g = grad[i];
            let mi = m[i] + (g - m[i]) * one_minus_b1;
            m[i] = mi;
            let vi = v[i] + (g * g - v[i]) * one_minus_b2;
            v[i] = vi;
            var[i] -= ((g * one_minus_b1 + h.beta1 * mi) * alpha) / (vi.sqrt() + h.epsilon);
        }
    } else {
        for i in 0..n {
            let g = grad[i];
            let mi = m[i] + (g - m[i]) * one_minus_b1;
            m[i] = mi;
            let vi = v[i] + (g * g - v[i]) * one_minus_b2;
            v[i] = vi;
            var[i] -= (mi * alpha) / (vi.sqrt() + h.epsilon);
        }
    }
}

multiversion!(gd_isa => gd_body(var: &mut [f32], grad: &[f32], lr: f32));
multiversion!(momentum_isa => momentum_body(
    var: &mut [f32], accum: &mut [f32], grad: &[f32], h: MomentumHyper));
multiversion!(rmsprop_isa => rmsprop_body(
    var: &mut [f32], ms: &mut [f32], mom: &mut [f32], grad: &[f32], h: RmsPropHyper));
multiversion!(centered_rmsprop_isa => centered_rmsprop_body(
    var: &mut [f32], mg: &mut [f32], ms: &mut [f32], mom: &mut [f32], grad: &[f32],
    h: RmsPropHyper));
multiversion!(adam_isa => adam_body(
    var: &mut [f32], m: &mut [f32], v: &mut [f32], grad: &[f32], h: AdamHyper, alpha: f32));

// ------------------------------------------------------------ checking --

/// Every slice must have `var`'s length (also the CUDA launchers' check).
pub(crate) fn check_lengths(op: &'static str, var: usize, others: &[(&str, usize)]) -> Result<()> {
    for &(what, n) in others {
        if n != var {
            return Err(Error::shape(
                op,
                format!("var has {var} elements but {what} has {n}"),
            ));
        }
    }
    Ok(())
}

pub(crate) fn check_finite(op: &'static str, params: &[(&str, f32)]) -> Result<()> {
    for &(what, x) in params {
        if !x.is_finite() {
            return Err(Error::invalid(op, format!("{what} is {x}")));
        }
    }
    Ok(())
}

// ------------------------------------------------------------- the API --

/// `var -= grad * lr` (TF's ApplyGradientDescent).
pub fn apply_gradient_descent(var: &mut [f32], grad: &[f32], lr: f32) -> Result<()> {
    apply_gradient_descent_isa(Isa::detect(), var, grad, lr)
}

pub(crate) fn apply_gradient_descent_isa(
    isa: Isa,
    var: &mut [f32],
    grad: &[f32],
    lr: f32,
) -> Result<()> {
    const OP: &str = "ApplyGradientDescent";
    check_lengths(OP, var.len(), &[("grad", grad.len())])?;
    check_finite(OP, &[("lr", lr)])?;
    var.par_chunks_mut(PAR_CHUNK)
        .zip(grad.par_chunks(PAR_CHUNK))
        .for_each(|(v, g)| gd_isa(isa, v, g, lr));
    Ok(())
}

/// Momentum SGD (TF's ApplyMomentum): `accum = accum * momentum + grad`,
/// `var -= accum * lr` (Nesterov: `var -= grad * lr + accum * momentum * lr`).
pub fn apply_momentum(
    var: &mut [f32],
    accum: &mut [f32],
    grad: &[f32],
    h: MomentumHyper,
) -> Result<()> {
    apply_momentum_isa(Isa::detect(), var, accum, grad, h)
}

pub(crate) fn apply_momentum_isa(
    isa: Isa,
    var: &mut [f32],
    accum: &mut [f32],
    grad: &[f32],
    h: MomentumHyper,
) -> Result<()> {
    const OP: &str = "ApplyMomentum";
    check_lengths(
        OP,
        var.len(),
        &[("accum", accum.len()), ("grad", grad.len())],
    )?;
    check_finite(OP, &[("lr", h.lr), ("momentum", h.momentum)])?;
    var.par_chunks_mut(PAR_CHUNK)
        .zip(accum.par_chunks_mut(PAR_CHUNK))
        .zip(grad.par_chunks(PAR_CHUNK))
        .for_each(|((v, a), g)| momentum_isa(isa, v, a, g, h));
    Ok(())
}

/// RMSProp (TF's ApplyRMSProp): `ms += (grad² - ms) * (1 - rho)`,
/// `mom = mom * momentum + grad * lr / sqrt(ms + epsilon)`, `var -= mom`.
pub fn apply_rmsprop(
    var: &mut [f32],
    ms: &mut [f32],
    mom: &mut [f32],
    grad: &[f32],
    h: RmsPropHyper,
) -> Result<()> {
    apply_rmsprop_isa(Isa::detect(), var, ms, mom, grad, h)
}

pub(crate) fn apply_rmsprop_isa(
    isa: Isa,
    var: &mut [f32],
    ms: &mut [f32],
    mom: &mut [f32],
    grad: &[f32],
    h: RmsPropHyper,
) -> Result<()> {
    const OP: &str = "ApplyRMSProp";
    check_lengths(
        OP,
        var.len(),
        &[("ms", ms.len()), ("mom", mom.len()), ("grad", grad.len())],
    )?;
    check_rmsprop(OP, h)?;
    var.par_chunks_mut(PAR_CHUNK)
        .zip(ms.par_chunks_mut(PAR_CHUNK))
        .zip(mom.par_chunks_mut(PAR_CHUNK))
        .zip(grad.par_chunks(PAR_CHUNK))
        .for_each(|(((v, s), m), g)| rmsprop_isa(isa, v, s, m, g, h));
    Ok(())
}

pub(crate) fn check_rmsprop(op: &'static str, h: RmsPropHyper) -> Result<()> {
    check_finite(
        op,
        &[
            ("lr", h.lr),
            ("rho", h.rho),
            ("momentum", h.momentum),
            ("epsilon", h.epsilon),
        ],
    )
}

/// Adam's hyper-parameters: finite, and a bias correction that exists.
pub(crate) fn check_adam(op: &'static str, h: AdamHyper) -> Result<()> {
    check_finite(
        op,
        &[
            ("lr", h.lr),
            ("beta1", h.beta1),
            ("beta2", h.beta2),
            ("epsilon", h.epsilon),
            ("beta1_power", h.beta1_power),
            ("beta2_power", h.beta2_power),
        ],
    )?;
    if h.beta1_power == 1.0 {
        return Err(Error::invalid(
            op,
            "beta1_power is 1, so the bias correction 1 / (1 - beta1_power) is infinite \
             (beta powers start at beta, not 1)",
        ));
    }
    Ok(())
}

/// Centered RMSProp (TF's ApplyCenteredRMSProp): as [`apply_rmsprop`] with
/// the mean gradient `mg += (grad - mg) * (1 - rho)` subtracted inside the
/// root: `sqrt(ms - mg² + epsilon)`.
pub fn apply_centered_rmsprop(
    var: &mut [f32],
    mg: &mut [f32],
    ms: &mut [f32],
    mom: &mut [f32],
    grad: &[f32],
    h: RmsPropHyper,
) -> Result<()> {
    apply_centered_rmsprop_isa(Isa::detect(), var, mg, ms, mom, grad, h)
}

pub(crate) fn apply_centered_rmsprop_isa(
    isa: Isa,
    var: &mut [f32],
    mg: &mut [f32],
    ms: &mut [f32],
    mom: &mut [f32],
    grad: &[f32],
    h: RmsPropHyper,
) -> Result<()> {
    const OP: &str = "ApplyCenteredRMSProp";
    check_lengths(
        OP,
        var.len(),
        &[
            ("mg", mg.len()),
            ("ms", ms.len()),
            ("mom", mom.len()),
            ("grad", grad.len()),
        ],
    )?;
    check_rmsprop(OP, h)?;
    var.par_chunks_mut(PAR_CHUNK)
        .zip(mg.par_chunks_mut(PAR_CHUNK))
        .zip(ms.par_chunks_mut(PAR_CHUNK))
        .zip(mom.par_chunks_mut(PAR_CHUNK))
        .zip(grad.par_chunks(PAR_CHUNK))
        .for_each(|((((v, a), s), m), g)| centered_rmsprop_isa(isa, v, a, s, m, g, h));
    Ok(())
}

/// Adam (TF's ApplyAdam): `alpha = lr * sqrt(1 - beta2^t) / (1 - beta1^t)`,
/// `m += (grad - m) * (1 - beta1)`, `v += (grad² - v) * (1 - beta2)`,
/// `var -= m * alpha / (sqrt(v) + epsilon)` (Nesterov: `m` replaced by
/// `grad * (1 - beta1) + beta1 * m`).
pub fn apply_adam(
    var: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    grad: &[f32],
    h: AdamHyper,
) -> Result<()> {
    apply_adam_isa(Isa::detect(), var, m, v, grad, h)
}

/// Adam's step size `lr * sqrt(1 - beta2^t) / (1 - beta1^t)` in f32, as TF.
pub fn adam_alpha(h: &AdamHyper) -> f32 {
    h.lr * (1.0 - h.beta2_power).sqrt() / (1.0 - h.beta1_power)
}

pub(crate) fn apply_adam_isa(
    isa: Isa,
    var: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    grad: &[f32],
    h: AdamHyper,
) -> Result<()> {
    const OP: &str = "ApplyAdam";
    check_lengths(
        OP,
        var.len(),
        &[("m", m.len()), ("v", v.len()), ("grad", grad.len())],
    )?;
    check_adam(OP, h)?;
    let alpha = adam_alpha(&h);
    var.par_chunks_mut(PAR_CHUNK)
        .zip(m.par_chunks_mut(PAR_CHUNK))
        .zip(v.par_chunks_mut(PAR_CHUNK))
        .zip(grad.par_chunks(PAR_CHUNK))
        .for_each(|(((x, m), v), g)| adam_isa(isa, x, m, v, g, h, alpha));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32, lo: f32, hi: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                lo + (hi - lo) * (s >> 8) as f32 / (1u32 << 24) as f32
            })
            .collect()
    }

    /// Every ISA gives the scalar loop's bits, on lengths that leave
    /// vector remainders and span several parallel chunks.
    #[test]
    fn every_isa_matches_scalar_bit_for_bit() {
        for n in [1, 7, 33, 1000, PAR_CHUNK * 2 + 5] {
            let var0 = data(n, 1, -1.0, 1.0);
            let grad = data(n, 2, -2.0, 2.0);
            let pos = data(n, 3, 0.1, 2.0);
            let sgn = data(n, 4, -0.5, 0.5);
            let rms = RmsPropHyper {
                lr: 0.01,
                rho: 0.9,
                momentum: 0.9,
                epsilon: 1.0,
            };
            let adam = AdamHyper {
                lr: 0.001,
                beta1: 0.9,
                beta2: 0.999,
                epsilon: 1e-8,
                beta1_power: 0.81,
                beta2_power: 0.998,
                use_nesterov: false,
            };
            let mut want: Option<Vec<Vec<f32>>> = None;
            for isa in Isa::available() {
                let mut out = Vec::new();
                let mut v = var0.clone();
                apply_gradient_descent_isa(isa, &mut v, &grad, 0.1).unwrap();
                out.push(v);
                for nesterov in [false, true] {
                    let (mut v, mut a) = (var0.clone(), sgn.clone());
                    let h = MomentumHyper {
                        lr: 0.1,
                        momentum: 0.9,
                        use_nesterov: nesterov,
                    };
                    apply_momentum_isa(isa, &mut v, &mut a, &grad, h).unwrap();
                    out.extend([v, a]);
                }
                let (mut v, mut s, mut m) = (var0.clone(), pos.clone(), sgn.clone());
                apply_rmsprop_isa(isa, &mut v, &mut s, &mut m, &grad, rms).unwrap();
                out.extend([v, s, m]);
                let (mut v, mut a, mut s, mut m) =
                    (var0.clone(), sgn.clone(), pos.clone(), sgn.clone());
                apply_centered_rmsprop_isa(isa, &mut v, &mut a, &mut s, &mut m, &grad, rms)
                    .unwrap();
                out.extend([v, a, s, m]);
                for nesterov in [false, true] {
                    let (mut v, mut m, mut s) = (var0.clone(), sgn.clone(), pos.clone());
                    let h = AdamHyper {
                        use_nesterov: nesterov,
                        ..adam
                    };
                    apply_adam_isa(isa, &mut v, &mut m, &mut s, &grad, h).unwrap();
                    out.extend([v, m, s]);
                }
                let bits: Vec<Vec<u32>> = out
                    .iter()
                    .map(|v| v.iter().map(|x| x.to_bits()).collect())
                    .collect();
                match &want {
                    None => want = Some(out),
                    Some(w) => {
                        let wbits: Vec<Vec<u32>> = w
                            .iter()
                            .map(|v| v.iter().map(|x| x.to_bits()).collect())
                            .collect();
                        assert_eq!(bits, wbits, "{isa:?} differs from scalar at n={n}");
                    }
                }
            }
        }
    }
}
