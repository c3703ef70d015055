//! Kernels that reduce over the batch in parallel give the same bits on
//! every call with the same thread count: partial sums are added in a fixed
//! order, not in the order rayon happened to finish them. (Training relies
//! on this: `--resume` continues bit for bit.)

use psflow_kernels::ops::{batchnorm, depthwise, matmul, softmax};
use psflow_kernels::{BatchNormParams, Conv2dParams, Padding, Tensor};
use rand::{Rng, SeedableRng};

fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n = shape.iter().product();
    Tensor::new(
        shape.to_vec(),
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
    )
    .unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.f32s("test")
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

fn same_every_time(what: &str, f: impl Fn() -> Vec<Tensor>) {
    let first: Vec<Vec<u32>> = f().iter().map(bits).collect();
    for i in 0..25 {
        let again: Vec<Vec<u32>> = f().iter().map(bits).collect();
        assert!(first == again, "{what}: call {i} differs from the first");
    }
}

#[test]
fn batch_reductions_are_deterministic() {
    let x = random(&[64, 16, 16, 32], 1);
    let dy = random(&[64, 16, 16, 32], 2);
    let p = Conv2dParams {
        strides: [1, 1],
        padding: Padding::Same,
    };
    same_every_time("DepthwiseConv2dNativeBackpropFilter", || {
        vec![depthwise::depthwise_conv2d_backprop_filter(&x, [3, 3, 32, 1], &dy, &p).unwrap()]
    });
    same_every_time("BiasAddGrad", || vec![matmul::bias_add_grad(&dy).unwrap()]);
    same_every_time("L2Loss", || vec![softmax::l2_loss(&x).unwrap()]);
    let scale = random(&[32], 4);
    let offset = random(&[32], 5);
    let empty = Tensor::new(vec![0], Vec::<f32>::new()).unwrap();
    let bn = BatchNormParams {
        epsilon: 1e-3,
        exponential_avg_factor: 1.0,
        is_training: true,
    };
    same_every_time("FusedBatchNormV3 + Relu6 and its gradient", || {
        let out =
            batchnorm::fused_batch_norm_relu6(&x, &scale, &offset, &empty, &empty, &bn).unwrap();
        let g = batchnorm::fused_batch_norm_relu6_grad(
            &dy,
            &out.y,
            &x,
            &scale,
            &out.reserve_space_1,
            &out.reserve_space_2,
            1e-3,
            true,
        )
        .unwrap();
        vec![
            out.y,
            out.batch_mean,
            out.batch_variance,
            g.dx,
            g.dscale,
            g.doffset,
        ]
    });
}
