//! MobileNet's pointwise (1×1) convolutions at batch 128: forward and both
//! gradients, each 2·n·h·w·cin·cout FLOPs. Criterion reports the time and,
//! through `Throughput::Elements(flops)`, "elem/s" which reads as FLOP/s.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use psflow_kernels::ops::conv::{conv2d, conv2d_backprop_filter, conv2d_backprop_input};
use psflow_kernels::{Conv2dParams, Padding, Tensor};
use std::hint::black_box;
use std::time::Duration;

const BATCH: usize = 128;
/// `(h = w, cin, cout)` of MobileNet's pointwise layers on 32×32 inputs.
const SHAPES: [(usize, usize, usize); 4] =
    [(16, 64, 128), (8, 128, 256), (4, 256, 512), (2, 512, 1024)];

fn filled(shape: Vec<usize>, seed: u32) -> Tensor {
    let n: usize = shape.iter().product();
    let v = (0..n as u32)
        .map(|i| {
            ((i.wrapping_mul(2654435761).wrapping_add(seed) >> 9) % 1000) as f32 / 1000.0 - 0.5
        })
        .collect();
    Tensor::new(shape, v).unwrap()
}

fn pointwise(c: &mut Criterion) {
    psflow_kernels::threads::init(0, psflow_kernels::threads::Pin::Auto);
    let p = Conv2dParams {
        strides: [1, 1],
        padding: Padding::Valid,
    };
    let mut g = c.benchmark_group("pointwise");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (hw, cin, cout) in SHAPES {
        let x = filled(vec![BATCH, hw, hw, cin], 1);
        let f = filled(vec![1, 1, cin, cout], 2);
        let dy = filled(vec![BATCH, hw, hw, cout], 3);
        let flops = 2 * BATCH * hw * hw * cin * cout;
        g.throughput(Throughput::Elements(flops as u64));
        let id = format!("{hw}x{hw}x{cin}->{cout}");
        g.bench_function(BenchmarkId::new("forward", &id), |b| {
            b.iter(|| conv2d(black_box(&x), black_box(&f), &p).unwrap())
        });
        g.bench_function(BenchmarkId::new("backprop_input", &id), |b| {
            b.iter(|| {
                conv2d_backprop_input([BATCH, hw, hw, cin], black_box(&f), black_box(&dy), &p)
                    .unwrap()
            })
        });
        g.bench_function(BenchmarkId::new("backprop_filter", &id), |b| {
            b.iter(|| {
                conv2d_backprop_filter(black_box(&x), [1, 1, cin, cout], black_box(&dy), &p)
                    .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, pointwise);
criterion_main!(benches);
