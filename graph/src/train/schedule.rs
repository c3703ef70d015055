//! Learning-rate schedules, computed on the host each step and fed to the
//! `learning_rate` placeholder: constant, exponential decay (TF-slim's
//! MobileNet default: 0.01 × 0.94 every 2 epochs, staircase) and cosine
//! decay with optional linear warm-up.
//!
//! A schedule is a serde config ([`LrSchedule`], epochs as the unit)
//! built into a [`Schedule`] once the number of steps per epoch is known.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// `lr` at every step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConstantLr {
    pub lr: f32,
}

impl Default for ConstantLr {
    fn default() -> ConstantLr {
        ConstantLr { lr: 0.01 }
    }
}

/// `initial * decay_rate ^ (step / decay_steps)`, the exponent floored
/// when `staircase` (TF's `exponential_decay`), with `decay_steps` =
/// ⌊steps_per_epoch × decay_epochs⌋ as TF-slim computes it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExponentialDecay {
    pub initial: f32,
    pub decay_rate: f32,
    pub decay_epochs: f64,
    pub staircase: bool,
}

impl Default for ExponentialDecay {
    fn default() -> ExponentialDecay {
        ExponentialDecay {
            initial: 0.01,
            decay_rate: 0.94,
            decay_epochs: 2.0,
            staircase: true,
        }
    }
}

/// Linear warm-up from 0 over `warmup_epochs`, then TF's `cosine_decay`
/// over the remaining steps: `initial * ((1 - alpha) * c + alpha)` with
/// `c = (1 + cos(π · t / T)) / 2`, `t` the step after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CosineDecay {
    pub initial: f32,
    /// The final learning rate as a fraction of `initial`.
    pub alpha: f32,
    pub warmup_epochs: f64,
}

impl Default for CosineDecay {
    fn default() -> CosineDecay {
        CosineDecay {
            initial: 0.01,
            alpha: 0.0,
            warmup_epochs: 0.0,
        }
    }
}

/// A learning-rate schedule; in JSON `{"kind": "exponential_decay", …}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LrSchedule {
    Constant(ConstantLr),
    ExponentialDecay(ExponentialDecay),
    Cosine(CosineDecay),
}

impl Default for LrSchedule {
    /// TF-slim's MobileNet schedule: 0.01 × 0.94 every 2 epochs, staircase.
    fn default() -> LrSchedule {
        LrSchedule::ExponentialDecay(ExponentialDecay::default())
    }
}

fn invalid(detail: String) -> Error {
    Error::InvalidNode {
        node: "learning_rate".into(),
        detail: format!("learning-rate schedule: {detail}"),
    }
}

impl LrSchedule {
    /// Checks the configuration alone (rates positive and finite, …).
    pub fn validate(&self) -> Result<()> {
        let positive = |what: &str, x: f64| {
            if x > 0.0 && x.is_finite() {
                Ok(())
            } else {
                Err(invalid(format!("{what} must be positive, got {x}")))
            }
        };
        match *self {
            LrSchedule::Constant(c) => positive("lr", c.lr as f64),
            LrSchedule::ExponentialDecay(c) => {
                positive("initial", c.initial as f64)?;
                positive("decay_rate", c.decay_rate as f64)?;
                positive("decay_epochs", c.decay_epochs)
            }
            LrSchedule::Cosine(c) => {
                positive("initial", c.initial as f64)?;
                if !(0.0..=1.0).contains(&c.alpha) {
                    return Err(invalid(format!("alpha must be in [0, 1], got {}", c.alpha)));
                }
                if !(c.warmup_epochs >= 0.0 && c.warmup_epochs.is_finite()) {
                    return Err(invalid(format!(
                        "warmup_epochs must be at least 0, got {}",
                        c.warmup_epochs
                    )));
                }
                Ok(())
            }
        }
    }

    /// The schedule for a run of `total_steps` steps with `steps_per_epoch`
    /// (examples per epoch / batch size, possibly fractional) steps per epoch.
    pub fn build(&self, steps_per_epoch: f64, total_steps: u64) -> Result<Schedule> {
        self.validate()?;
        if !(steps_per_epoch > 0.0 && steps_per_epoch.is_finite()) {
            return Err(invalid(format!(
                "steps per epoch must be positive, got {steps_per_epoch}"
            )));
        }
        let steps = |epochs: f64| (steps_per_epoch * epochs).floor() as u64;
        Ok(match *self {
            LrSchedule::Constant(c) => Schedule::Constant(c.lr),
            LrSchedule::ExponentialDecay(c) => Schedule::Exponential {
                initial: c.initial,
                rate: c.decay_rate,
                decay_steps: steps(c.decay_epochs).max(1),
                staircase: c.staircase,
            },
            LrSchedule::Cosine(c) => {
                let warmup = steps(c.warmup_epochs).min(total_steps);
                Schedule::Cosine {
                    initial: c.initial,
                    alpha: c.alpha,
                    warmup,
                    decay_steps: total_steps - warmup,
                }
            }
        })
    }
}

/// A built schedule: the learning rate of any step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    Constant(f32),
    Exponential {
        initial: f32,
        rate: f32,
        decay_steps: u64,
        staircase: bool,
    },
    Cosine {
        initial: f32,
        alpha: f32,
        warmup: u64,
        decay_steps: u64,
    },
}

impl Schedule {
    /// The learning rate of step `step` (0 for the first step, as TF's
    /// global_step before its first increment).
    pub fn at(&self, step: u64) -> f32 {
        match *self {
            Schedule::Constant(lr) => lr,
            Schedule::Exponential {
                initial,
                rate,
                decay_steps,
                staircase,
            } => {
                // In float32, as TF's exponential_decay computes it.
                let mut p = step as f32 / decay_steps as f32;
                if staircase {
                    p = (step / decay_steps) as f32;
                }
                initial * rate.powf(p)
            }
            Schedule::Cosine {
                initial,
                alpha,
                warmup,
                decay_steps,
            } => {
                if step < warmup {
                    return (initial as f64 * (step + 1) as f64 / warmup as f64) as f32;
                }
                if decay_steps == 0 {
                    return initial * alpha;
                }
                let t = (step - warmup).min(decay_steps) as f64 / decay_steps as f64;
                let c = 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
                (initial as f64 * ((1.0 - alpha as f64) * c + alpha as f64)) as f32
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_tf_slim_exponential_staircase() {
        // 1000 steps per epoch: decays every 2000 steps by 0.94.
        let s = LrSchedule::default().build(1000.0, 100_000).unwrap();
        assert_eq!(s.at(0), 0.01);
        assert_eq!(s.at(1999), 0.01);
        assert_eq!(s.at(2000), 0.01 * 0.94f32);
        assert_eq!(s.at(3999), 0.01 * 0.94f32);
        let want = 0.01f64 * 0.94f64.powi(5);
        assert!((s.at(10_000) as f64 - want).abs() < 1e-7 * want);
    }

    #[test]
    fn decay_steps_are_floored_as_tf_slim() {
        // 60000 examples, batch 128: 468.75 steps per epoch; 2 epochs = 937.
        let s = LrSchedule::default()
            .build(60000.0 / 128.0, 10_000)
            .unwrap();
        assert!(matches!(
            s,
            Schedule::Exponential {
                decay_steps: 937,
                ..
            }
        ));
        assert_eq!(s.at(936), 0.01);
        assert!(s.at(937) < 0.01);
    }

    #[test]
    fn smooth_exponential_decays_every_step() {
        let c = ExponentialDecay {
            staircase: false,
            ..Default::default()
        };
        let s = LrSchedule::ExponentialDecay(c).build(10.0, 1000).unwrap();
        let want = 0.01f64 * 0.94f64.powf(1.5);
        assert!((s.at(30) as f64 - want).abs() < 1e-6 * want);
        assert!(s.at(1) < s.at(0));
    }

    #[test]
    fn constant_is_constant() {
        let s = LrSchedule::Constant(ConstantLr { lr: 0.1 })
            .build(3.0, 10)
            .unwrap();
        assert!((0..100).all(|t| s.at(t) == 0.1));
    }

    #[test]
    fn cosine_with_warmup() {
        let c = CosineDecay {
            initial: 0.1,
            alpha: 0.1,
            warmup_epochs: 1.0,
        };
        // 10 steps per epoch, 110 steps: 10 warm-up, 100 cosine.
        let s = LrSchedule::Cosine(c).build(10.0, 110).unwrap();
        assert!((s.at(0) - 0.01).abs() < 1e-8);
        assert!((s.at(9) - 0.1).abs() < 1e-8);
        assert!((s.at(10) - 0.1).abs() < 1e-8);
        // Half way: (1 - alpha) * 0.5 + alpha = 0.55.
        assert!((s.at(60) - 0.055).abs() < 1e-7);
        assert!((s.at(110) - 0.01).abs() < 1e-8);
        assert!((s.at(500) - 0.01).abs() < 1e-8);
        assert!((10..110).all(|t| s.at(t + 1) <= s.at(t)));
    }

    #[test]
    fn bad_configs_are_errors() {
        let bad = LrSchedule::ExponentialDecay(ExponentialDecay {
            decay_rate: -1.0,
            ..Default::default()
        });
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("decay_rate"));
        assert!(LrSchedule::default().build(0.0, 10).is_err());
        let bad = LrSchedule::Cosine(CosineDecay {
            alpha: 2.0,
            ..Default::default()
        });
        assert!(bad.validate().is_err());
    }

    #[test]
    fn configs_read_from_json_with_defaults() {
        let s: LrSchedule = serde_json::from_str(r#"{"kind": "exponential_decay"}"#).unwrap();
        assert_eq!(s, LrSchedule::default());
        let s: LrSchedule =
            serde_json::from_str(r#"{"kind": "cosine", "initial": 0.1, "warmup_epochs": 1}"#)
                .unwrap();
        assert_eq!(
            s,
            LrSchedule::Cosine(CosineDecay {
                initial: 0.1,
                warmup_epochs: 1.0,
                ..Default::default()
            })
        );
        let s: LrSchedule = serde_json::from_str(r#"{"kind": "constant", "lr": 0.5}"#).unwrap();
        assert_eq!(s, LrSchedule::Constant(ConstantLr { lr: 0.5 }));
        let back: LrSchedule =
            serde_json::from_str(&serde_json::to_string(&LrSchedule::default()).unwrap()).unwrap();
        assert_eq!(back, LrSchedule::default());
        let err = serde_json::from_str::<LrSchedule>(r#"{"kind": "constant", "rate": 1}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("rate"), "{err}");
    }
}
