//! MobileNet v1 as TF-slim's `mobilenet_v1` builds it.
//!
//! Layers (TF-slim's `MOBILENETV1_CONV_DEFS`), all SAME-padded:
//! `Conv2d_0` 3×3 stride 2 to depth(32), then 13 depthwise-separable
//! blocks `Conv2d_{i}_depthwise` (3×3, stride s) + `Conv2d_{i}_pointwise`
//! (1×1) with (s, depth) = (1, 64), (2, 128), (1, 128), (2, 256),
//! (1, 256), (2, 512), 5 × (1, 512), (2, 1024), (1, 1024); every conv is
//! followed by batch norm and ReLU6. Then `Logits/global_pool` (Mean over
//! H, W), `Logits/Dropout_1b` (training only), `Logits/Conv2d_1c_1x1`
//! (1×1 conv with biases, no BN) and `Logits/SpatialSqueeze`.
//! depth(d) = max(floor(d·alpha), 8).
//!
//! Small inputs keep slim's strides (output stride 32), as the MobileNet
//! on CIFAR experiments of the reference thesis do (slim's MobileNet fed
//! 32, 24 and 16 pixel images): at 32×32 the feature maps are 16, 8, 4, 2
//! and finally 1×1, and α = 1 costs 11.6 M multiply-adds with 10 classes,
//! the figure of the design document; at 24 they are 12, 6, 3, 2, 1 and at
//! 16 they are 8, 4, 2, 1, 1.
//!
//! Initialisers: conv, depthwise and pointwise weights truncated normal
//! σ = 0.09 (slim's `mobilenet_v1_arg_scope`); the logits weights Glorot
//! uniform (slim would use the same truncated normal there; the issue asks
//! for Glorot on the dense/logits layer); biases and β zeros, γ ones,
//! moving mean zeros, moving variance ones.

use super::builder::{GraphBuilder, Init};
use super::layers::BatchNorm;
use super::{check_common, inputs, ConfigError, Model, ModelIo};
use crate::ir::TensorName;

/// Depthwise-separable blocks (slim) or one full 3×3 conv per block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvKind {
    Separable,
    /// Each separable block becomes `Conv2d_{i}`: a 3×3 conv with the
    /// block's stride from its input depth to its output depth, + BN + ReLU6.
    Standard,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MobileNetConfig {
    /// Width multiplier in (0, 1].
    pub alpha: f32,
    /// Input height and width, at least 8.
    pub resolution: usize,
    pub classes: usize,
    pub conv: ConvKind,
    /// Training variant: BN in training mode with moving-average updates,
    /// dropout before the logits, a `labels` placeholder.
    pub training: bool,
    /// Dropout keep probability (training only); slim's default 0.999.
    pub dropout_keep_prob: f32,
    /// Smallest depth a layer is thinned to (slim's `min_depth`).
    pub min_depth: usize,
    /// Graph-level seed of the random initialisers.
    pub seed: u64,
}

impl Default for MobileNetConfig {
    fn default() -> MobileNetConfig {
        MobileNetConfig {
            alpha: 1.0,
            resolution: 224,
            classes: 1000,
            conv: ConvKind::Separable,
            training: false,
            dropout_keep_prob: 0.999,
            min_depth: 8,
            seed: 0,
        }
    }
}

/// (stride, depth) of the 13 separable blocks, `Conv2d_1` … `Conv2d_13`.
pub const BLOCKS: [(usize, usize); 13] = [
    (1, 64),
    (2, 128),
    (1, 128),
    (2, 256),
    (1, 256),
    (2, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (2, 1024),
    (1, 1024),
];

const SCOPE: &str = "MobilenetV1";
const CONV_STDDEV: f32 = 0.09;

impl MobileNetConfig {
    /// max(floor(d·alpha), min_depth).
    pub fn depth(&self, d: usize) -> usize {
        ((d as f64 * self.alpha as f64).floor() as usize).max(self.min_depth)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, detail: String| ConfigError {
            model: "mobilenet_v1",
            field,
            detail,
        };
        if !(self.alpha > 0.0 && self.alpha <= 1.0) {
            return Err(err(
                "alpha",
                format!("is {}; it must be in (0, 1]", self.alpha),
            ));
        }
        if !(self.dropout_keep_prob > 0.0 && self.dropout_keep_prob <= 1.0) {
            return Err(err(
                "dropout_keep_prob",
                format!("is {}; it must be in (0, 1]", self.dropout_keep_prob),
            ));
        }
        if self.min_depth == 0 {
            return Err(err("min_depth", "is 0; it must be at least 1".into()));
        }
        check_common("mobilenet_v1", self.resolution, self.classes)
    }

    /// `mobilenet_v1_{alpha:.2}_{resolution}` (`_standard` for standard convs).
    pub fn name(&self) -> String {
        let suffix = match self.conv {
            ConvKind::Separable => "",
            ConvKind::Standard => "_standard",
        };
        format!("mobilenet_v1_{:.2}_{}{suffix}", self.alpha, self.resolution)
    }
}

/// Builds MobileNet v1 (see the module docs for layers and names).
pub fn mobilenet_v1(cfg: &MobileNetConfig) -> Result<Model, ConfigError> {
    cfg.validate()?;
    let mut b = GraphBuilder::new(cfg.seed);
    let (input, labels) = inputs(&mut b, cfg.resolution, cfg.training);
    let bn = BatchNorm::slim(cfg.training);
    let conv_init = Init::TruncatedNormal {
        stddev: CONV_STDDEV,
    };
    let logits = b.scope(SCOPE, |b| {
        let conv_bn = |b: &mut GraphBuilder,
                       scope: &str,
                       x: &TensorName,
                       cin: usize,
                       cout: usize,
                       k: usize,
                       s: usize| {
            let y = b.conv2d(scope, x, cin, cout, k, s, conv_init, false);
            let y = b.batch_norm(scope, &y, cout, bn);
            b.scope(scope, |b| b.relu6(&y))
        };
        let mut depth = cfg.depth(32);
        let mut x = conv_bn(b, "Conv2d_0", &input, 3, depth, 3, 2);
        for (i, &(stride, d)) in BLOCKS.iter().enumerate() {
            let i = i + 1;
            let out = cfg.depth(d);
            x = match cfg.conv {
                ConvKind::Separable => {
                    let dw = format!("Conv2d_{i}_depthwise");
                    let y = b.depthwise_conv2d(&dw, &x, depth, 3, stride, conv_init);
                    let y = b.batch_norm(&dw, &y, depth, bn);
                    let y = b.scope(&dw, |b| b.relu6(&y));
                    conv_bn(b, &format!("Conv2d_{i}_pointwise"), &y, depth, out, 1, 1)
                }
                ConvKind::Standard => conv_bn(b, &format!("Conv2d_{i}"), &x, depth, out, 3, stride),
            };
            depth = out;
        }
        b.scope("Logits", |b| {
            let mut x = b.global_avg_pool("global_pool", &x);
            if cfg.training {
                x = b.dropout("Dropout_1b", &x, cfg.dropout_keep_prob);
            }
            let init = Init::glorot_uniform(&[1, 1, depth, cfg.classes]);
            let y = b.conv2d("Conv2d_1c_1x1", &x, depth, cfg.classes, 1, 1, init, true);
            b.spatial_squeeze("SpatialSqueeze", &y)
        })
    });
    let predictions = b.scope(SCOPE, |b| {
        b.scope("Predictions", |b| {
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
