//! A shard's configuration (optimizer, learning-rate schedule, mode) and
//! its mapping to and from the protocol's messages.
//!
//! The optimizer and schedule are psflow-graph's own types
//! ([`Optimizer`], [`Schedule`]), so a PS applies exactly what
//! single-machine training applies.

use psflow_graph::train::optimizer::{
    AdamConfig, MomentumConfig, Optimizer, RmsPropConfig, SgdConfig,
};
use psflow_graph::train::schedule::Schedule;
use psflow_proto::ps as pb;

use crate::{Error, Result};

/// How pushes become updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Wait for `workers - backup` workers (at least one) per step, average,
    /// apply once; later pushes for an applied step are dropped.
    Sync { workers: u32, backup: u32 },
    /// Apply every push at once.
    Async,
    /// Apply a push computed on version `v` only while the shard's version
    /// is at most `v + staleness`.
    Bounded { staleness: u64 },
}

impl Mode {
    /// Workers a sync step waits for: `workers - backup`, at least 1.
    pub fn required(workers: u32, backup: u32) -> u32 {
        workers.saturating_sub(backup).max(1)
    }
}

/// Everything a shard needs besides its variables' values.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardConfig {
    pub job_id: String,
    pub shard: u32,
    pub optimizer: Optimizer,
    pub schedule: Schedule,
    pub mode: Mode,
    /// The version the shard starts at (a restored checkpoint's step).
    pub version: u64,
    /// Keep exponential moving averages of the trained variables
    /// (`psflow_graph::train::ema`; None: none).
    pub moving_average_decay: Option<f32>,
}

impl ShardConfig {
    /// A shard of job `job_id` with TF-slim's RMSProp, a constant rate
    /// `lr`, in sync mode over `workers` workers.
    pub fn new(job_id: impl Into<String>, lr: f32, workers: u32) -> ShardConfig {
        ShardConfig {
            job_id: job_id.into(),
            shard: 0,
            optimizer: Optimizer::default(),
            schedule: Schedule::Constant(lr),
            mode: Mode::Sync { workers, backup: 0 },
            version: 0,
            moving_average_decay: None,
        }
    }

    /// Checks what the shard relies on.
    pub fn validate(&self) -> Result<()> {
        if self.job_id.is_empty() {
            return Err(Error::Invalid("the job id is empty".into()));
        }
        self.optimizer
            .validate()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        if let Mode::Sync { workers: 0, .. } = self.mode {
            return Err(Error::Invalid(
                "sync mode needs at least one worker (workers = 0)".into(),
            ));
        }
        if let Some(d) = self.moving_average_decay {
            psflow_graph::train::ema::validate(d).map_err(|e| Error::Invalid(e.to_string()))?;
        }
        Ok(())
    }

    /// The Init header for this configuration.
    pub fn to_header(&self, force: bool) -> pb::InitHeader {
        pb::InitHeader {
            job_id: self.job_id.clone(),
            shard: self.shard,
            optimizer: Some(optimizer_to_proto(&self.optimizer)),
            schedule: Some(schedule_to_proto(&self.schedule)),
            mode: Some(mode_to_proto(self.mode)),
            version: self.version,
            force,
            moving_average_decay: self.moving_average_decay.unwrap_or(0.0),
        }
    }

    /// The configuration an Init header describes.
    pub fn from_header(h: &pb::InitHeader) -> Result<ShardConfig> {
        let missing = |what: &str| Error::Invalid(format!("the Init header has no {what}"));
        let config = ShardConfig {
            job_id: h.job_id.clone(),
            shard: h.shard,
            optimizer: optimizer_from_proto(
                h.optimizer.as_ref().ok_or_else(|| missing("optimizer"))?,
            )?,
            schedule: schedule_from_proto(h.schedule.as_ref().ok_or_else(|| missing("schedule"))?)?,
            mode: mode_from_proto(h.mode.as_ref().ok_or_else(|| missing("mode"))?)?,
            version: h.version,
            moving_average_decay: (h.moving_average_decay != 0.0).then_some(h.moving_average_decay),
        };
        config.validate()?;
        Ok(config)
    }
}

fn optimizer_to_proto(o: &Optimizer) -> pb::Optimizer {
    use pb::optimizer::Kind;
    let kind = match *o {
        Optimizer::RmsProp(c) => Kind::Rmsprop(pb::RmsProp {
            decay: c.decay,
            momentum: c.momentum,
            epsilon: c.epsilon,
            centered: c.centered,
        }),
        Optimizer::Momentum(c) => Kind::Momentum(pb::Momentum {
            momentum: c.momentum,
            nesterov: c.nesterov,
        }),
        Optimizer::Sgd(_) => Kind::Sgd(pb::Sgd {}),
        Optimizer::Adam(c) => Kind::Adam(pb::Adam {
            beta1: c.beta1,
            beta2: c.beta2,
            epsilon: c.epsilon,
            nesterov: c.nesterov,
        }),
    };
    pb::Optimizer { kind: Some(kind) }
}

fn optimizer_from_proto(o: &pb::Optimizer) -> Result<Optimizer> {
    use pb::optimizer::Kind;
    Ok(match o.kind.as_ref() {
        Some(Kind::Rmsprop(c)) => Optimizer::RmsProp(RmsPropConfig {
            decay: c.decay,
            momentum: c.momentum,
            epsilon: c.epsilon,
            centered: c.centered,
        }),
        Some(Kind::Momentum(c)) => Optimizer::Momentum(MomentumConfig {
            momentum: c.momentum,
            nesterov: c.nesterov,
        }),
        Some(Kind::Sgd(_)) => Optimizer::Sgd(SgdConfig {}),
        Some(Kind::Adam(c)) => Optimizer::Adam(AdamConfig {
            beta1: c.beta1,
            beta2: c.beta2,
            epsilon: c.epsilon,
            nesterov: c.nesterov,
        }),
        None => return Err(Error::Invalid("the optimizer has no kind".into())),
    })
}

fn schedule_to_proto(s: &Schedule) -> pb::Schedule {
    use pb::schedule::Kind;
    let kind = match *s {
        Schedule::Constant(lr) => Kind::Constant(pb::ConstantLr { lr }),
        Schedule::Exponential {
            initial,
            rate,
            decay_steps,
            staircase,
        } => Kind::Exponential(pb::ExponentialLr {
            initial,
            rate,
            decay_steps,
            staircase,
        }),
        Schedule::Cosine {
            initial,
            alpha,
            warmup,
            decay_steps,
        } => Kind::Cosine(pb::CosineLr {
            initial,
            alpha,
            warmup_steps: warmup,
            decay_steps,
        }),
    };
    pb::Schedule { kind: Some(kind) }
}

fn schedule_from_proto(s: &pb::Schedule) -> Result<Schedule> {
    use pb::schedule::Kind;
    let finite = |what: &str, x: f32| {
        if x.is_finite() {
            Ok(x)
        } else {
            Err(Error::Invalid(format!(
                "learning-rate schedule: {what} is {x}"
            )))
        }
    };
    Ok(match s.kind.as_ref() {
        Some(Kind::Constant(c)) => Schedule::Constant(finite("lr", c.lr)?),
        Some(Kind::Exponential(c)) => {
            if c.decay_steps == 0 {
                return Err(Error::Invalid(
                    "learning-rate schedule: decay_steps must be at least 1".into(),
                ));
            }
            Schedule::Exponential {
                initial: finite("initial", c.initial)?,
                rate: finite("rate", c.rate)?,
                decay_steps: c.decay_steps,
                staircase: c.staircase,
            }
        }
        Some(Kind::Cosine(c)) => Schedule::Cosine {
            initial: finite("initial", c.initial)?,
            alpha: finite("alpha", c.alpha)?,
            warmup: c.warmup_steps,
            decay_steps: c.decay_steps,
        },
        None => return Err(Error::Invalid("the schedule has no kind".into())),
    })
}

fn mode_to_proto(m: Mode) -> pb::Mode {
    use pb::mode::Kind;
    let kind = match m {
        Mode::Sync { workers, backup } => Kind::Sync(pb::SyncMode {
            workers,
            backup_workers: backup,
        }),
        Mode::Async => Kind::Async(pb::AsyncMode {}),
        Mode::Bounded { staleness } => Kind::Bounded(pb::BoundedMode {
            max_staleness: staleness,
        }),
    };
    pb::Mode { kind: Some(kind) }
}

fn mode_from_proto(m: &pb::Mode) -> Result<Mode> {
    use pb::mode::Kind;
    Ok(match m.kind.as_ref() {
        Some(Kind::Sync(s)) => Mode::Sync {
            workers: s.workers,
            backup: s.backup_workers,
        },
        Some(Kind::Async(_)) => Mode::Async,
        Some(Kind::Bounded(b)) => Mode::Bounded {
            staleness: b.max_staleness,
        },
        None => return Err(Error::Invalid("the mode has no kind".into())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_round_trip_through_the_header() {
        let optimizers = [
            Optimizer::default(),
            Optimizer::RmsProp(RmsPropConfig {
                centered: true,
                ..Default::default()
            }),
            Optimizer::Momentum(MomentumConfig::default()),
            Optimizer::Sgd(SgdConfig {}),
            Optimizer::Adam(AdamConfig::default()),
        ];
        let schedules = [
            Schedule::Constant(0.1),
            Schedule::Exponential {
                initial: 0.01,
                rate: 0.94,
                decay_steps: 937,
                staircase: true,
            },
            Schedule::Cosine {
                initial: 0.1,
                alpha: 0.0,
                warmup: 10,
                decay_steps: 100,
            },
        ];
        let modes = [
            Mode::Sync {
                workers: 3,
                backup: 1,
            },
            Mode::Async,
            Mode::Bounded { staleness: 4 },
        ];
        for optimizer in optimizers {
            for schedule in schedules {
                for (mode, average) in modes.into_iter().zip([None, Some(0.9999), Some(0.5)]) {
                    let c = ShardConfig {
                        job_id: "j".into(),
                        shard: 2,
                        optimizer,
                        schedule,
                        mode,
                        version: 7,
                        moving_average_decay: average,
                    };
                    let back = ShardConfig::from_header(&c.to_header(true)).unwrap();
                    assert_eq!(back, c);
                }
            }
        }
    }

    #[test]
    fn bad_headers_are_clear_errors() {
        let mut h = ShardConfig::new("j", 0.1, 2).to_header(false);
        h.moving_average_decay = 1.0;
        assert!(ShardConfig::from_header(&h)
            .unwrap_err()
            .to_string()
            .contains("moving-average decay"));
        h.moving_average_decay = 0.0;
        h.mode = None;
        assert!(ShardConfig::from_header(&h)
            .unwrap_err()
            .to_string()
            .contains("no mode"));
        let c = ShardConfig::new("j", 0.1, 0);
        assert!(ShardConfig::from_header(&c.to_header(false))
            .unwrap_err()
            .to_string()
            .contains("at least one worker"));
    }
}
