//! A variable's optimizer slots and the update that applies a gradient to
//! it: psflow-kernels' `optim` functions, the code single-machine training
//! runs, with TF1's slot layout and initial values.

use psflow_graph::train::optimizer::Optimizer;
use psflow_kernels::ops::optim;
use psflow_kernels::Tensor;

use crate::{Error, Result};

/// The slots of one float32 variable, in the order of the `ResourceApply`
/// op's inputs: RMSProp `[ms, mom]` (centered `[mg, ms, mom]`), Momentum
/// `[accum]`, Adam `[m, v]`, gradient descent none. `ms` starts at ones as
/// TF1's RMSPropOptimizer; every other slot at zeros.
pub fn new_slots(optimizer: &Optimizer, n: usize) -> Vec<Vec<f32>> {
    match optimizer {
        Optimizer::RmsProp(c) if c.centered => vec![vec![0.0; n], vec![1.0; n], vec![0.0; n]],
        Optimizer::RmsProp(_) => vec![vec![1.0; n], vec![0.0; n]],
        Optimizer::Momentum(_) => vec![vec![0.0; n]],
        Optimizer::Sgd(_) => vec![],
        Optimizer::Adam(_) => vec![vec![0.0; n], vec![0.0; n]],
    }
}

/// The slot names TF1 gives a variable `V`'s slots (`V/RMSProp`, …), in
/// [`new_slots`]' order.
pub fn slot_names(optimizer: &Optimizer, var: &str) -> Vec<String> {
    let sfx: &[&str] = match optimizer {
        Optimizer::RmsProp(c) if c.centered => &["RMSProp_1", "RMSProp", "RMSProp_2"],
        Optimizer::RmsProp(_) => &["RMSProp", "RMSProp_1"],
        Optimizer::Momentum(_) => &["Momentum"],
        Optimizer::Sgd(_) => &[],
        Optimizer::Adam(_) => &["Adam", "Adam_1"],
    };
    sfx.iter().map(|s| format!("{var}/{s}")).collect()
}

/// Adam's `beta1^t` and `beta2^t`, multiplied by the betas after every
/// step (TF1's AdamOptimizer keeps them as variables and does the same).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamPowers {
    pub beta1_power: f32,
    pub beta2_power: f32,
}

impl AdamPowers {
    pub fn new(optimizer: &Optimizer) -> Option<AdamPowers> {
        match optimizer {
            Optimizer::Adam(c) => Some(AdamPowers {
                beta1_power: c.beta1,
                beta2_power: c.beta2,
            }),
            _ => None,
        }
    }

    /// After a step: `beta_power *= beta`.
    pub fn advance(&mut self, optimizer: &Optimizer) {
        if let Optimizer::Adam(c) = optimizer {
            self.beta1_power *= c.beta1;
            self.beta2_power *= c.beta2;
        }
    }
}

/// Applies `grad` to the float32 variable `value` (updated in place when
/// nothing else holds its buffer) and its `slots` with learning rate `lr`.
pub fn apply(
    optimizer: &Optimizer,
    name: &str,
    value: &mut Tensor,
    slots: &mut [Vec<f32>],
    grad: &[f32],
    lr: f32,
    adam: Option<AdamPowers>,
) -> Result<()> {
    let shape = value.shape().to_vec();
    let taken = std::mem::replace(
        value,
        Tensor::new(vec![0], Vec::<f32>::new()).expect("empty"),
    );
    let mut var = taken
        .into_vec::<f32>("ps apply")
        .map_err(|source| Error::Kernel {
            name: name.to_string(),
            source,
        })?;
    let r = match (*optimizer, slots) {
        (Optimizer::RmsProp(c), [mg, ms, mom]) if c.centered => {
            optim::apply_centered_rmsprop(&mut var, mg, ms, mom, grad, rms(c, lr))
        }
        (Optimizer::RmsProp(c), [ms, mom]) => {
            optim::apply_rmsprop(&mut var, ms, mom, grad, rms(c, lr))
        }
        (Optimizer::Momentum(c), [accum]) => optim::apply_momentum(
            &mut var,
            accum,
            grad,
            optim::MomentumHyper {
                lr,
                momentum: c.momentum,
                use_nesterov: c.nesterov,
            },
        ),
        (Optimizer::Sgd(_), []) => optim::apply_gradient_descent(&mut var, grad, lr),
        (Optimizer::Adam(c), [m, v]) => {
            let p = adam.expect("Adam shards keep beta powers");
            optim::apply_adam(
                &mut var,
                m,
                v,
                grad,
                optim::AdamHyper {
                    lr,
                    beta1: c.beta1,
                    beta2: c.beta2,
                    epsilon: c.epsilon,
                    beta1_power: p.beta1_power,
                    beta2_power: p.beta2_power,
                    use_nesterov: c.nesterov,
                },
            )
        }
        (o, s) => unreachable!("{} slots for {o:?}", s.len()),
    };
    // Put the variable back even when the kernel refused (it checks before
    // writing, so the values are unchanged).
    *value = Tensor::new(shape, var).expect("same length");
    r.map_err(|source| Error::Kernel {
        name: name.to_string(),
        source,
    })
}

fn rms(c: psflow_graph::train::optimizer::RmsPropConfig, lr: f32) -> optim::RmsPropHyper {
    optim::RmsPropHyper {
        lr,
        rho: c.decay,
        momentum: c.momentum,
        epsilon: c.epsilon,
    }
}
