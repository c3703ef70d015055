//! Batch norm at MobileNet's shapes (batch 128, NHWC): the fused BN + ReLU6
//! forward and backward, plain FusedBatchNormV3 and its gradient, and the
//! unfused pair (BN then Relu6, Relu6Grad then BN grad) that TensorFlow runs.
//!
//! Throughput counts the bytes an ideal kernel must move: forward reads x
//! and writes y (8 B/element); the fused backward reads dy, y, x and writes
//! dx (16 B/element), the plain one reads dy, x and writes dx (12).
//!
//! `cargo bench -p psflow-kernels --bench batchnorm`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use psflow_kernels::ops::activation::{relu6, relu6_grad};
use psflow_kernels::ops::batchnorm::{
    fused_batch_norm, fused_batch_norm_grad, fused_batch_norm_relu6, fused_batch_norm_relu6_grad,
};
use psflow_kernels::{BatchNormParams, Tensor};
use std::hint::black_box;
use std::time::Duration;

const SHAPES: [[usize; 4]; 4] = [
    [128, 16, 16, 64],
    [128, 8, 8, 128],
    [128, 4, 4, 256],
    [128, 2, 2, 512],
];

fn pseudo_random(n: usize, seed: u32, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            lo + (hi - lo) * (s as f32 / u32::MAX as f32)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let p = BatchNormParams {
        epsilon: 1e-3,
        exponential_avg_factor: 1.0,
        is_training: true,
    };
    let empty = Tensor::new(vec![0], Vec::<f32>::new()).unwrap();
    let mut g = c.benchmark_group("batchnorm");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1200));
    for shape in SHAPES {
        let n: usize = shape.iter().product();
        let ch = shape[3];
        let id = format!("{}x{}x{}x{}", shape[0], shape[1], shape[2], shape[3]);
        let x = Tensor::new(shape.to_vec(), pseudo_random(n, 1, -2.0, 6.0)).unwrap();
        let dy = Tensor::new(shape.to_vec(), pseudo_random(n, 2, -1.0, 1.0)).unwrap();
        let scale = Tensor::new(vec![ch], pseudo_random(ch, 3, 0.5, 2.0)).unwrap();
        let offset = Tensor::new(vec![ch], pseudo_random(ch, 4, 0.0, 3.0)).unwrap();
        let fwd = fused_batch_norm_relu6(&x, &scale, &offset, &empty, &empty, &p).unwrap();
        let (rs1, rs2) = (&fwd.reserve_space_1, &fwd.reserve_space_2);
        let bytes = (n * 4) as u64;

        g.throughput(Throughput::Bytes(2 * bytes));
        g.bench_function(BenchmarkId::new("fused_bn_relu6_fwd", &id), |b| {
            b.iter(|| {
                black_box(fused_batch_norm_relu6(&x, &scale, &offset, &empty, &empty, &p).unwrap())
            })
        });
        g.bench_function(BenchmarkId::new("bn_fwd", &id), |b| {
            b.iter(|| black_box(fused_batch_norm(&x, &scale, &offset, &empty, &empty, &p).unwrap()))
        });
        g.bench_function(BenchmarkId::new("unfused_bn_then_relu6_fwd", &id), |b| {
            b.iter(|| {
                let o = fused_batch_norm(&x, &scale, &offset, &empty, &empty, &p).unwrap();
                black_box(relu6(&o.y).unwrap())
            })
        });
        g.throughput(Throughput::Bytes(4 * bytes));
        g.bench_function(BenchmarkId::new("fused_bn_relu6_bwd", &id), |b| {
            b.iter(|| {
                black_box(
                    fused_batch_norm_relu6_grad(&dy, &fwd.y, &x, &scale, rs1, rs2, 1e-3, true)
                        .unwrap(),
                )
            })
        });
        g.throughput(Throughput::Bytes(3 * bytes));
        g.bench_function(BenchmarkId::new("bn_bwd", &id), |b| {
            b.iter(|| {
                black_box(fused_batch_norm_grad(&dy, &x, &scale, rs1, rs2, 1e-3, true).unwrap())
            })
        });
        g.throughput(Throughput::Bytes(4 * bytes));
        g.bench_function(
            BenchmarkId::new("unfused_relu6grad_then_bn_bwd", &id),
            |b| {
                b.iter(|| {
                    let g6 = relu6_grad(&dy, &fwd.y).unwrap();
                    black_box(fused_batch_norm_grad(&g6, &x, &scale, rs1, rs2, 1e-3, true).unwrap())
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
