//! Quick timing of the depthwise kernels at the benchmark shapes: median ms,
//! GFLOP/s (2·kh·kw·n·oh·ow·c) and GB/s (bytes each op must read and write:
//! forward x + out, backprop-input dy + dx, backprop-filter x + dy).
//!
//! `cargo run -p psflow-kernels --release --example depthwise_speed`
//! (`RAYON_NUM_THREADS=1` for one core, `DW_BATCH=16` for another batch). On a shared machine compare the
//! min column; GFLOP/s and GB/s are from the median.

use std::time::Instant;

use psflow_kernels::ops::depthwise::{
    depthwise_conv2d, depthwise_conv2d_backprop_filter, depthwise_conv2d_backprop_input,
};
use psflow_kernels::{Conv2dParams, Padding, Tensor};

/// CPU seconds (user + system, all threads) this process has used, from
/// /proc (10 ms ticks): on a loaded machine wall time measures the
/// neighbours, CPU time measures the kernel.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    if f.len() < 13 {
        return 0.0;
    }
    (f[11] + f[12]) / 100.0
}

/// (median wall ms, min wall ms, CPU ms per call).
fn time_ms(mut run: impl FnMut()) -> (f64, f64, f64) {
    for _ in 0..5 {
        run();
    }
    let iters = 61;
    let cpu0 = cpu_seconds();
    let mut t: Vec<f64> = (0..iters)
        .map(|_| {
            let s = Instant::now();
            run();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    let cpu = (cpu_seconds() - cpu0) * 1e3 / iters as f64;
    t.sort_by(f64::total_cmp);
    (t[t.len() / 2], t[0], cpu)
}

/// An op to time, by name.
type Named<'a> = (&'static str, Box<dyn FnMut() + 'a>);

fn main() {
    let n = std::env::var("DW_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    println!(
        "{:<16} {:>3} {:<16} {:>8} {:>8} {:>7} {:>8} {:>8}",
        "shape", "s", "op", "med ms", "GFLOP/s", "GB/s", "min ms", "cpu ms"
    );
    for (hw, c) in [(16usize, 64usize), (8, 128), (4, 256), (2, 512)] {
        for s in [1usize, 2] {
            let p = Conv2dParams {
                strides: [s, s],
                padding: Padding::Same,
            };
            let o = hw.div_ceil(s);
            let x = Tensor::full(vec![n, hw, hw, c], 0.25f32);
            let f = Tensor::full(vec![3, 3, c, 1], 0.5f32);
            let dy = Tensor::full(vec![n, o, o, c], 0.75f32);
            let flops = 2.0 * 9.0 * (n * o * o * c) as f64;
            let bytes = 4.0 * (n * hw * hw * c + n * o * o * c) as f64;
            let runs: [Named; 3] = [
                (
                    "forward",
                    Box::new(|| drop(depthwise_conv2d(&x, &f, &p).unwrap())),
                ),
                (
                    "backprop_input",
                    Box::new(|| {
                        drop(depthwise_conv2d_backprop_input([n, hw, hw, c], &f, &dy, &p).unwrap())
                    }),
                ),
                (
                    "backprop_filter",
                    Box::new(|| {
                        drop(depthwise_conv2d_backprop_filter(&x, [3, 3, c, 1], &dy, &p).unwrap())
                    }),
                ),
            ];
            for (name, mut run) in runs {
                let (ms, min, cpu) = time_ms(&mut run);
                println!(
                    "{:<16} {:>3} {:<16} {:>8.3} {:>8.1} {:>7.1} {:>8.3} {:>8.3}",
                    format!("{n}x{hw}x{hw}x{c}"),
                    s,
                    name,
                    ms,
                    flops / ms / 1e6,
                    bytes / ms / 1e6,
                    min,
                    cpu
                );
            }
        }
    }
}
