//! The model zoo: MobileNet v1 (depthwise-separable or standard convs) and
//! ResNet-18/50 v1 with a CIFAR stem, built as TensorFlow-compatible
//! GraphDefs with TF-slim's names.
//!
//! Every model is a forward graph:
//! - placeholder `input` float `[-1, R, R, 3]` (NHWC); in the training
//!   variant also `labels` int32 `[-1]`;
//! - variables as TF2 resource variables: `V` (`VarHandleOp`, attrs dtype,
//!   shape, container "", shared_name "V"), `V/Read/ReadVariableOp`,
//!   `V/Initializer/…` (`TruncatedNormal`/`RandomUniform` subgraphs with
//!   seed/seed2, or a filled `Const`), `V/Assign` (`AssignVariableOp`),
//!   and a `NoOp` `init` with a control input on every `*/Assign`;
//! - batch norm `FusedBatchNormV3`: in training `is_training=true`,
//!   `exponential_avg_factor = 1 - decay` and `AssignVariableOp`s of
//!   outputs 1 and 2 to the moving statistics
//!   ([`Model::moving_average_updates`]); in inference `is_training=false`;
//! - logits `[-1, classes]` ([`Model::logits`]) and their `Softmax`
//!   ([`Model::predictions`]).
//!
//! Loss, gradients and optimizer are added by the training-graph builder,
//! which reads [`Model::trainable`].

mod builder;
mod layers;
mod mobilenet;
mod resnet;

use std::fmt;
use std::str::FromStr;

pub use builder::{const_node, type_attr, GraphBuilder, Init, VarKind, Variable};
pub use layers::BatchNorm;
pub use mobilenet::{mobilenet_v1, ConvKind, MobileNetConfig};
pub use resnet::{resnet_v1, ResNetConfig, ResNetDepth};

use crate::ir::{Graph, TensorName};

/// A variable the optimizer updates.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainableVar {
    /// The variable (VarHandleOp and resource) name.
    pub name: String,
    pub shape: Vec<usize>,
    /// In the L2 weight decay: conv, pointwise and dense/logits weights;
    /// not depthwise filters, biases or batch-norm parameters.
    pub regularize: bool,
    /// The `ReadVariableOp` output the forward pass uses (differentiate
    /// the loss with respect to this tensor).
    pub read: TensorName,
}

/// A built model: the forward graph and what a trainer needs to know of it.
#[derive(Debug, Clone)]
pub struct Model {
    /// e.g. `mobilenet_v1_0.50_32`, `resnet_v1_18_32`.
    pub name: String,
    pub graph: Graph,
    /// `input:0`, float `[-1, R, R, 3]`.
    pub input: TensorName,
    /// `labels:0`, int32 `[-1]`, in the training variant only.
    pub labels: Option<TensorName>,
    /// float `[-1, classes]`, before softmax.
    pub logits: TensorName,
    /// `Softmax` of the logits.
    pub predictions: TensorName,
    /// The `NoOp` that initialises every variable (`init`).
    pub init: String,
    pub training: bool,
    pub resolution: usize,
    pub classes: usize,
    /// Every variable in creation order (trainable ones and BN moving
    /// statistics).
    pub variables: Vec<Variable>,
    pub trainable: Vec<TrainableVar>,
    /// The `AssignVariableOp` nodes updating BN moving statistics (training
    /// variant; empty in inference). The train op must depend on them.
    pub moving_average_updates: Vec<String>,
    /// Elements of the trainable variables.
    pub params: u64,
}

impl Model {
    pub(crate) fn assemble(
        name: String,
        b: GraphBuilder,
        io: ModelIo,
        training: bool,
        resolution: usize,
        classes: usize,
    ) -> Model {
        let updates = b.moving_average_updates().to_vec();
        let (graph, variables) = b.finish();
        let trainable: Vec<TrainableVar> = variables
            .iter()
            .filter(|v| v.trainable)
            .map(|v| TrainableVar {
                name: v.name.clone(),
                shape: v.shape.clone(),
                regularize: v.regularize,
                read: v.read.clone(),
            })
            .collect();
        let params = trainable
            .iter()
            .map(|v| v.shape.iter().product::<usize>() as u64)
            .sum();
        Model {
            name,
            graph,
            input: io.input,
            labels: io.labels,
            logits: io.logits,
            predictions: io.predictions,
            init: io.init,
            training,
            resolution,
            classes,
            variables,
            trainable,
            moving_average_updates: updates,
            params,
        }
    }

    /// Elements of every variable (trainable and moving statistics).
    pub fn all_params(&self) -> u64 {
        self.variables
            .iter()
            .map(|v| v.shape.iter().product::<usize>() as u64)
            .sum()
    }
}

/// The named tensors a model builder hands to [`Model::assemble`].
pub(crate) struct ModelIo {
    pub input: TensorName,
    pub labels: Option<TensorName>,
    pub logits: TensorName,
    pub predictions: TensorName,
    pub init: String,
}

/// A bad model configuration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{model}: {field} {detail}")]
pub struct ConfigError {
    pub model: &'static str,
    pub field: &'static str,
    pub detail: String,
}

/// The architectures `psflow graph build --model` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// MobileNet v1 with depthwise-separable blocks.
    MobileNet,
    /// MobileNet v1 with each separable block replaced by one 3×3 conv.
    MobileNetStandard,
    ResNet18,
    ResNet50,
}

impl Architecture {
    pub const ALL: [Architecture; 4] = [
        Architecture::MobileNet,
        Architecture::MobileNetStandard,
        Architecture::ResNet18,
        Architecture::ResNet50,
    ];

    /// The CLI name: `mobilenet`, `mobilenet-standard`, `resnet18`, `resnet50`.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::MobileNet => "mobilenet",
            Architecture::MobileNetStandard => "mobilenet-standard",
            Architecture::ResNet18 => "resnet18",
            Architecture::ResNet50 => "resnet50",
        }
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Architecture {
    type Err = String;
    fn from_str(s: &str) -> Result<Architecture, String> {
        Architecture::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Architecture::ALL.iter().map(|a| a.name()).collect();
                format!("unknown model {s:?} (expected one of {})", names.join(", "))
            })
    }
}

/// Everything `psflow graph build` needs to build one model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub arch: Architecture,
    /// Width multiplier (MobileNet only; must be 1 for ResNets).
    pub alpha: f32,
    pub resolution: usize,
    pub classes: usize,
    pub training: bool,
    pub seed: u64,
}

impl ModelSpec {
    /// Builds the model; a bad field is a [`ConfigError`].
    pub fn build(&self) -> Result<Model, ConfigError> {
        match self.arch {
            Architecture::MobileNet | Architecture::MobileNetStandard => {
                mobilenet_v1(&MobileNetConfig {
                    alpha: self.alpha,
                    resolution: self.resolution,
                    classes: self.classes,
                    conv: if self.arch == Architecture::MobileNet {
                        ConvKind::Separable
                    } else {
                        ConvKind::Standard
                    },
                    training: self.training,
                    seed: self.seed,
                    ..MobileNetConfig::default()
                })
            }
            Architecture::ResNet18 | Architecture::ResNet50 => {
                if self.alpha != 1.0 {
                    return Err(ConfigError {
                        model: "resnet",
                        field: "alpha",
                        detail: format!(
                            "is {} but ResNets have no width multiplier (leave it at 1)",
                            self.alpha
                        ),
                    });
                }
                resnet_v1(&ResNetConfig {
                    depth: if self.arch == Architecture::ResNet18 {
                        ResNetDepth::R18
                    } else {
                        ResNetDepth::R50
                    },
                    resolution: self.resolution,
                    classes: self.classes,
                    training: self.training,
                    seed: self.seed,
                })
            }
        }
    }
}

/// Checks the fields every model shares.
pub(crate) fn check_common(
    model: &'static str,
    resolution: usize,
    classes: usize,
) -> Result<(), ConfigError> {
    if resolution < 8 {
        return Err(ConfigError {
            model,
            field: "resolution",
            detail: format!("is {resolution}; it must be at least 8"),
        });
    }
    if resolution > 4096 {
        return Err(ConfigError {
            model,
            field: "resolution",
            detail: format!("is {resolution}; it must be at most 4096"),
        });
    }
    if classes == 0 {
        return Err(ConfigError {
            model,
            field: "classes",
            detail: "is 0; it must be at least 1".into(),
        });
    }
    Ok(())
}

/// The `input` (and in training `labels`) placeholders.
pub(crate) fn inputs(
    b: &mut GraphBuilder,
    resolution: usize,
    training: bool,
) -> (TensorName, Option<TensorName>) {
    let r = resolution as i64;
    let input = b.placeholder("input", psflow_kernels::DType::F32, &[-1, r, r, 3]);
    let labels = training.then(|| b.placeholder("labels", psflow_kernels::DType::I32, &[-1]));
    (input, labels)
}
