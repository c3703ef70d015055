//! ResNet v1 with a CIFAR stem, named like TF-slim's `resnet_v1`.
//!
//! - `conv1`: 3×3 stride 1 to 64 channels + BN + ReLU, no max pool (the
//!   CIFAR stem, instead of ImageNet's 7×7/2 conv and 3×3/2 pool);
//! - four blocks `block1`…`block4` of units `unit_{j}`, base depths 64,
//!   128, 256, 512; the first unit of blocks 2–4 has stride 2 (on its 3×3
//!   conv, as the common CIFAR ResNets and "v1.5" do; slim puts the stride
//!   on the last unit instead);
//! - ResNet-18: 2 units per block of `basic_v1` (`conv1` 3×3, `conv2`
//!   3×3); ResNet-50: 3, 4, 6, 3 units of `bottleneck_v1` (`conv1` 1×1 to
//!   the base depth, `conv2` 3×3, `conv3` 1×1 to 4× the base depth);
//! - a `shortcut` 1×1 conv + BN where the stride or depth changes,
//!   otherwise the identity; `add` and `Relu` end each unit;
//! - `pool5` (Mean over H, W), `logits` (1×1 conv with biases),
//!   `SpatialSqueeze`, `predictions/Softmax`.
//!
//! Every conv but the logits is followed by batch norm (epsilon 0.001,
//! decay 0.99, like the MobileNet). Conv weights use slim's He initialiser
//! (`variance_scaling_initializer`: truncated normal, stddev
//! sqrt(2.6 / fan_in)); the logits Glorot uniform. All conv weights and the
//! logits weights are weight-decayed.

use super::builder::{GraphBuilder, Init};
use super::layers::BatchNorm;
use super::{check_common, inputs, ConfigError, Model, ModelIo};
use crate::ir::TensorName;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResNetDepth {
    R18,
    R50,
}

impl ResNetDepth {
    /// Units per block.
    pub fn units(self) -> [usize; 4] {
        match self {
            ResNetDepth::R18 => [2, 2, 2, 2],
            ResNetDepth::R50 => [3, 4, 6, 3],
        }
    }

    pub fn layers(self) -> usize {
        match self {
            ResNetDepth::R18 => 18,
            ResNetDepth::R50 => 50,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResNetConfig {
    pub depth: ResNetDepth,
    pub resolution: usize,
    pub classes: usize,
    pub training: bool,
    pub seed: u64,
}

impl ResNetConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_common("resnet_v1", self.resolution, self.classes)
    }

    /// `resnet_v1_{18|50}_{resolution}`.
    pub fn name(&self) -> String {
        format!("resnet_v1_{}_{}", self.depth.layers(), self.resolution)
    }
}

const BASE_DEPTHS: [usize; 4] = [64, 128, 256, 512];

struct Ctx {
    bn: BatchNorm,
}

impl Ctx {
    /// conv (He init, no bias) + BN, and ReLU when `relu`.
    #[allow(clippy::too_many_arguments)]
    fn conv_bn(
        &self,
        b: &mut GraphBuilder,
        scope: &str,
        x: &TensorName,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        relu: bool,
    ) -> TensorName {
        let init = Init::he_truncated_normal(&[k, k, cin, cout]);
        let y = b.conv2d(scope, x, cin, cout, k, stride, init, false);
        let y = b.batch_norm(scope, &y, cout, self.bn);
        if relu {
            b.scope(scope, |b| b.relu(&y))
        } else {
            y
        }
    }

    /// One residual unit in the current scope; returns (output, depth).
    fn unit(
        &self,
        b: &mut GraphBuilder,
        kind: ResNetDepth,
        x: &TensorName,
        cin: usize,
        base: usize,
        stride: usize,
    ) -> (TensorName, usize) {
        let (scope, cout) = match kind {
            ResNetDepth::R18 => ("basic_v1", base),
            ResNetDepth::R50 => ("bottleneck_v1", 4 * base),
        };
        b.scope(scope, |b| {
            let shortcut = if stride != 1 || cin != cout {
                self.conv_bn(b, "shortcut", x, cin, cout, 1, stride, false)
            } else {
                x.clone()
            };
            let residual = match kind {
                ResNetDepth::R18 => {
                    let y = self.conv_bn(b, "conv1", x, cin, base, 3, stride, true);
                    self.conv_bn(b, "conv2", &y, base, base, 3, 1, false)
                }
                ResNetDepth::R50 => {
                    let y = self.conv_bn(b, "conv1", x, cin, base, 1, 1, true);
                    let y = self.conv_bn(b, "conv2", &y, base, base, 3, stride, true);
                    self.conv_bn(b, "conv3", &y, base, cout, 1, 1, false)
                }
            };
            let sum = b.op_f32("add", "AddV2", &[&shortcut, &residual], vec![]);
            (b.relu(&sum), cout)
        })
    }
}

/// Builds ResNet-18 or ResNet-50 v1 with the CIFAR stem (module docs).
pub fn resnet_v1(cfg: &ResNetConfig) -> Result<Model, ConfigError> {
    cfg.validate()?;
    let mut b = GraphBuilder::new(cfg.seed);
    let (input, labels) = inputs(&mut b, cfg.resolution, cfg.training);
    let ctx = Ctx {
        bn: BatchNorm::slim(cfg.training),
    };
    let scope = format!("resnet_v1_{}", cfg.depth.layers());
    let logits = b.scope(&scope, |b| {
        let mut x = ctx.conv_bn(b, "conv1", &input, 3, 64, 3, 1, true);
        let mut depth = 64;
        for (blk, (&units, &base)) in cfg.depth.units().iter().zip(&BASE_DEPTHS).enumerate() {
            b.scope(&format!("block{}", blk + 1), |b| {
                for u in 0..units {
                    let stride = if blk > 0 && u == 0 { 2 } else { 1 };
                    let (y, d) = b.scope(&format!("unit_{}", u + 1), |b| {
                        ctx.unit(b, cfg.depth, &x, depth, base, stride)
                    });
                    x = y;
                    depth = d;
                }
            });
        }
        let x = b.global_avg_pool("pool5", &x);
        let init = Init::glorot_uniform(&[1, 1, depth, cfg.classes]);
        let y = b.conv2d("logits", &x, depth, cfg.classes, 1, 1, init, true);
        b.spatial_squeeze("SpatialSqueeze", &y)
    });
    let predictions = b.scope(&scope, |b| {
        b.scope("predictions", |b| {
            b.op_f32("Softmax", "Softmax", &[&logits], vec![])
        })
    });
    let init = b.add_init_op("init");
    let io = ModelIo {
        input,
        labels,
        logits,
        predictions,
        init,
    };
    Ok(Model::assemble(
        cfg.name(),
        b,
        io,
        cfg.training,
        cfg.resolution,
        cfg.classes,
    ))
}
