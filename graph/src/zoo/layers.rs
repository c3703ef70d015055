//! TF-slim-shaped layers on a [`GraphBuilder`]: each creates its variables
//! and ops under the layer's scope with slim's names (`weights`,
//! `depthwise_weights`, `biases`, `BatchNorm/{gamma,beta,moving_mean,
//! moving_variance}`, ops `Conv2D`, `depthwise`, `BiasAdd`,
//! `BatchNorm/FusedBatchNormV3`, `Relu6`, …).

use psflow_kernels::DType;

use super::builder::{type_attr, GraphBuilder, Init, VarKind};
use crate::ir::TensorName;
use crate::AttrValue;

/// Batch normalisation settings. In training the op normalises with the
/// batch's statistics and its outputs 1 and 2 (the moving statistics
/// updated with `exponential_avg_factor = 1 - decay`) are assigned back to
/// the moving variables; in inference it uses the moving statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNorm {
    pub epsilon: f32,
    /// f64 so that `1 - decay` is computed as TensorFlow's Python does
    /// (0.99 gives an `exponential_avg_factor` of exactly 0.01f32).
    pub decay: f64,
    pub training: bool,
}

impl BatchNorm {
    /// TF-slim MobileNet's settings (decay 0.99 as the trainer
    /// uses, epsilon 0.001).
    pub fn slim(training: bool) -> BatchNorm {
        BatchNorm {
            epsilon: 0.001,
            decay: 0.99,
            training,
        }
    }
}

fn conv_attrs(stride: usize) -> Vec<(&'static str, AttrValue)> {
    let s = stride as i64;
    vec![
        ("strides", AttrValue::from_ints(vec![1, s, s, 1])),
        ("padding", AttrValue::from_s("SAME")),
        ("data_format", AttrValue::from_s("NHWC")),
        ("dilations", AttrValue::from_ints(vec![1, 1, 1, 1])),
    ]
}

impl GraphBuilder {
    /// A `k`×`k` SAME convolution from `cin` to `cout` channels in scope
    /// `scope`: variable `weights` [k, k, cin, cout] (weight-decayed), op
    /// `Conv2D`, and with `bias` a zero-initialised `biases` + `BiasAdd`.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d(
        &mut self,
        scope: &str,
        x: &TensorName,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        init: Init,
        bias: bool,
    ) -> TensorName {
        self.scope(scope, |b| {
            let w = b.variable("weights", &[k, k, cin, cout], init, VarKind::WEIGHTS);
            let mut attrs = conv_attrs(stride);
            attrs.push(("use_cudnn_on_gpu", AttrValue::from_b(true)));
            attrs.push(("explicit_paddings", AttrValue::from_ints(Vec::<i64>::new())));
            let y = b.op_f32("Conv2D", "Conv2D", &[x, &w.read], attrs);
            if bias {
                b.bias(&y, cout)
            } else {
                y
            }
        })
    }

    /// `biases` [c] (zeros, not decayed) and `BiasAdd` in the current scope.
    pub fn bias(&mut self, x: &TensorName, c: usize) -> TensorName {
        let b = self.variable("biases", &[c], Init::ZEROS, VarKind::TRAINED);
        self.op_f32(
            "BiasAdd",
            "BiasAdd",
            &[x, &b.read],
            vec![("data_format", AttrValue::from_s("NHWC"))],
        )
    }

    /// A `k`×`k` SAME depthwise convolution (multiplier 1) of `c` channels
    /// in scope `scope`: `depthwise_weights` [k, k, c, 1] (not decayed, as
    /// slim's `regularize_depthwise=False`), op `depthwise`.
    pub fn depthwise_conv2d(
        &mut self,
        scope: &str,
        x: &TensorName,
        c: usize,
        k: usize,
        stride: usize,
        init: Init,
    ) -> TensorName {
        self.scope(scope, |b| {
            let w = b.variable("depthwise_weights", &[k, k, c, 1], init, VarKind::TRAINED);
            b.op_f32(
                "depthwise",
                "DepthwiseConv2dNative",
                &[x, &w.read],
                conv_attrs(stride),
            )
        })
    }

    /// Batch norm of `c` channels in scope `scope/BatchNorm`
    /// (FusedBatchNormV3 with gamma, beta, moving_mean, moving_variance).
    /// In training the two moving-statistic assigns are recorded (see
    /// [`GraphBuilder::moving_average_updates`]).
    pub fn batch_norm(
        &mut self,
        scope: &str,
        x: &TensorName,
        c: usize,
        bn: BatchNorm,
    ) -> TensorName {
        let (y, updates) = self.scope(scope, |b| {
            b.scope("BatchNorm", |b| {
                let gamma = b.variable("gamma", &[c], Init::ONES, VarKind::TRAINED);
                let beta = b.variable("beta", &[c], Init::ZEROS, VarKind::TRAINED);
                let mean = b.variable("moving_mean", &[c], Init::ZEROS, VarKind::STATISTIC);
                let var = b.variable("moving_variance", &[c], Init::ONES, VarKind::STATISTIC);
                let factor = if bn.training {
                    (1.0 - bn.decay) as f32
                } else {
                    1.0
                };
                let y = b.op_f32(
                    "FusedBatchNormV3",
                    "FusedBatchNormV3",
                    &[x, &gamma.read, &beta.read, &mean.read, &var.read],
                    vec![
                        ("U", type_attr(DType::F32)),
                        ("epsilon", AttrValue::from_f(bn.epsilon)),
                        ("exponential_avg_factor", AttrValue::from_f(factor)),
                        ("data_format", AttrValue::from_s("NHWC")),
                        ("is_training", AttrValue::from_b(bn.training)),
                    ],
                );
                let mut updates = vec![];
                if bn.training {
                    let new_mean = TensorName::new(y.node.clone(), 1);
                    let new_var = TensorName::new(y.node.clone(), 2);
                    let mean_h = TensorName::new(mean.name.clone(), 0);
                    let var_h = TensorName::new(var.name.clone(), 0);
                    updates.push(b.assign("AssignMovingAvg", &mean_h, &new_mean));
                    updates.push(b.assign("AssignMovingAvg_1", &var_h, &new_var));
                }
                (y, updates)
            })
        });
        self.record_updates(updates);
        y
    }

    pub fn relu6(&mut self, x: &TensorName) -> TensorName {
        self.op_f32("Relu6", "Relu6", &[x], vec![])
    }

    pub fn relu(&mut self, x: &TensorName) -> TensorName {
        self.op_f32("Relu", "Relu", &[x], vec![])
    }

    /// `Mean` over H and W with keep_dims (global average pooling).
    pub fn global_avg_pool(&mut self, base: &str, x: &TensorName) -> TensorName {
        let axes = self.scope(base, |b| b.ints("reduction_indices", &[1, 2]));
        self.op_f32(
            base,
            "Mean",
            &[x, &axes],
            vec![
                ("Tidx", type_attr(DType::I32)),
                ("keep_dims", AttrValue::from_b(true)),
            ],
        )
    }

    /// `Squeeze` of dimensions 1 and 2 (`[n, 1, 1, c]` → `[n, c]`).
    pub fn spatial_squeeze(&mut self, base: &str, x: &TensorName) -> TensorName {
        self.op_f32(
            base,
            "Squeeze",
            &[x],
            vec![("squeeze_dims", AttrValue::from_ints(vec![1, 2]))],
        )
    }

    /// TF1's `tf.nn.dropout` (as slim's `dropout` calls it) in scope
    /// `scope/dropout`: `x / keep_prob * floor(keep_prob + U[0, 1))` with
    /// the uniform noise shaped like `x`. The floor of the non-negative sum
    /// is taken as `Cast` to int32 and back (truncation equals floor there),
    /// since psflow's op set has no `Floor`.
    pub fn dropout(&mut self, scope: &str, x: &TensorName, keep_prob: f32) -> TensorName {
        self.scope(scope, |b| {
            b.scope("dropout", |b| {
                let kp = b.scalar("keep_prob", keep_prob);
                let shape = b.op(
                    "Shape",
                    "Shape",
                    &[x],
                    vec![
                        ("T", type_attr(DType::F32)),
                        ("out_type", type_attr(DType::I32)),
                    ],
                );
                let attrs = b.random_attrs();
                let u = b.scope("random_uniform", |b| {
                    b.op("RandomUniform", "RandomUniform", &[&shape], attrs)
                });
                let sum = b.op_f32("add", "AddV2", &[&kp, &u], vec![]);
                let cast = |src: DType, dst: DType| {
                    vec![
                        ("SrcT", type_attr(src)),
                        ("DstT", type_attr(dst)),
                        ("Truncate", AttrValue::from_b(false)),
                    ]
                };
                let floor_i = b.op("Floor/ToInt", "Cast", &[&sum], cast(DType::F32, DType::I32));
                let mask = b.op("Floor", "Cast", &[&floor_i], cast(DType::I32, DType::F32));
                let scaled = b.op_f32("div", "RealDiv", &[x, &kp], vec![]);
                b.op_f32("mul", "Mul", &[&scaled, &mask], vec![])
            })
        })
    }
}
