//! DepthwiseConv2dNative forward, backprop-input and backprop-filter at the
//! MobileNet-style shapes psflow trains (batch 128, 3x3, multiplier 1,
//! SAME, strides 1 and 2). Throughput is reported in elements of the input;
//! GFLOP/s = 2·9·n·oh·ow·c / time.
//!
//! `cargo bench -p psflow-kernels --bench depthwise -- --quick`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use psflow_kernels::ops::depthwise::{
    depthwise_conv2d, depthwise_conv2d_backprop_filter, depthwise_conv2d_backprop_input,
};
use psflow_kernels::{Conv2dParams, Padding, Tensor};

const BATCH: usize = 128;
/// `(h = w, c)`.
const SHAPES: [(usize, usize); 4] = [(16, 64), (8, 128), (4, 256), (2, 512)];

fn tensor(shape: [usize; 4], seed: u32) -> Tensor {
    let len = shape.iter().product();
    let mut s = seed.wrapping_mul(2654435761).max(1);
    let v = (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) - 0.5
        })
        .collect();
    Tensor::new(shape.to_vec(), v).unwrap()
}

fn bench(cr: &mut Criterion) {
    for op in ["forward", "backprop_input", "backprop_filter"] {
        let mut group = cr.benchmark_group(format!("depthwise_{op}"));
        group
            .sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        for (hw, c) in SHAPES {
            for stride in [1, 2] {
                let p = Conv2dParams {
                    strides: [stride, stride],
                    padding: Padding::Same,
                };
                let o = hw.div_ceil(stride);
                let x = tensor([BATCH, hw, hw, c], 1);
                let f = tensor([3, 3, c, 1], 2);
                let dy = tensor([BATCH, o, o, c], 3);
                group.throughput(Throughput::Elements((BATCH * hw * hw * c) as u64));
                let id = BenchmarkId::new(format!("{hw}x{hw}x{c}"), format!("s{stride}"));
                group.bench_with_input(id, &(), |b, _| match op {
                    "forward" => b.iter(|| depthwise_conv2d(black_box(&x), &f, &p).unwrap()),
                    "backprop_input" => b.iter(|| {
                        depthwise_conv2d_backprop_input([BATCH, hw, hw, c], &f, black_box(&dy), &p)
                            .unwrap()
                    }),
                    _ => b.iter(|| {
                        depthwise_conv2d_backprop_filter(black_box(&x), [3, 3, c, 1], &dy, &p)
                            .unwrap()
                    }),
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
