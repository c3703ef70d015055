//! Input pipeline throughput: one batch of 128 CIFAR-sized images through
//! the training recipe (at 32 and resized to 24) and the eval preprocessing,
//! on one thread. Compare with the step time: a MobileNet training step on
//! 128 images is ~9 GFLOP, i.e. well over 100 ms on 2 cores.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use psflow_worker::data::{build_batch, synthetic, AugmentConfig, PipelineConfig};

fn bench(c: &mut Criterion) {
    let data = synthetic::generate(&synthetic::SyntheticConfig {
        seed: 0,
        train: 1280,
        test: 10,
    })
    .unwrap()
    .train;
    let mut g = c.benchmark_group("batch128");
    g.throughput(Throughput::Elements(128));
    for (name, augment) in [
        ("train32", AugmentConfig::cifar_train()),
        (
            "train24",
            AugmentConfig::cifar_train().with_resize(Some((24, 24))),
        ),
        ("eval32", AugmentConfig::eval()),
    ] {
        let cfg = PipelineConfig {
            augment,
            ..PipelineConfig::train(128, 0)
        };
        let mut step = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                step = (step + 1) % 10;
                black_box(build_batch(&data, &cfg, step).unwrap())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
