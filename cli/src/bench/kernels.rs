//! `psflow bench kernels`: the MobileNet-shaped kernels at batch 128 (NHWC),
//! timed one by one. The same shapes and keys as
//! `benchmarks/peers/tf_kernels.py`, so the two can be joined.

use anyhow::{Context, Result};
use psflow_kernels::ops::{batchnorm, conv, depthwise};
use psflow_kernels::{BatchNormParams, Conv2dParams, Padding, Tensor};
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// The depthwise stages of MobileNet at 32×32 input: (h, w, c).
pub const STAGES: [(usize, usize, usize); 4] =
    [(16, 16, 64), (8, 8, 128), (4, 4, 256), (2, 2, 512)];

#[derive(Debug, Clone, Serialize)]
pub struct KernelResult {
    pub kernel: String,
    pub shape: String,
    pub stride: usize,
    pub ms: f64,
    pub gflops: f64,
    pub gbps: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct KernelReport {
    pub threads: usize,
    /// The machine's measured compute and bandwidth roofs.
    pub machine: super::machine::MachineRoofs,
    pub batch: usize,
    pub results: Vec<KernelResult>,
}

pub struct Options {
    pub batch: usize,
    pub repeats: usize,
    pub filter: Option<String>,
}

fn random(shape: &[usize], rng: &mut impl Rng) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::new(shape.to_vec(), v).expect("length matches shape")
}

/// One benchmark case: a name, its work counts and a closure to time.
struct Case<'a> {
    kernel: &'static str,
    shape: [usize; 4],
    stride: usize,
    flops: f64,
    bytes: f64,
    run: Box<dyn FnMut() -> Result<()> + 'a>,
}

fn elems(s: &[usize]) -> f64 {
    s.iter().product::<usize>() as f64
}

fn cases(batch: usize, rng: &mut impl Rng) -> Vec<Case<'static>> {
    let mut out = Vec::new();
    for &(h, w, c) in &STAGES {
        let xs = [batch, h, w, c];
        for stride in [1usize, 2] {
            let p = Conv2dParams {
                strides: [stride, stride],
                padding: Padding::Same,
            };
            let (oh, ow) = (h.div_ceil(stride), w.div_ceil(stride));
            let ys = [batch, oh, ow, c];
            let x = random(&xs, rng);
            let f = random(&[3, 3, c, 1], rng);
            let dy = random(&ys, rng);
            let flops = 2.0 * 9.0 * elems(&ys);
            let fbytes = 9.0 * c as f64 * 4.0;
            let (x1, f1) = (x.clone(), f.clone());
            out.push(Case {
                kernel: "depthwise_fwd",
                shape: xs,
                stride,
                flops,
                bytes: 4.0 * (elems(&xs) + elems(&ys)) + fbytes,
                run: Box::new(move || {
                    depthwise::depthwise_conv2d(&x1, &f1, &p)?;
                    Ok(())
                }),
            });
            let (f2, dy2) = (f.clone(), dy.clone());
            out.push(Case {
                kernel: "depthwise_bwd_input",
                shape: xs,
                stride,
                flops,
                bytes: 4.0 * (elems(&xs) + elems(&ys)) + fbytes,
                run: Box::new(move || {
                    depthwise::depthwise_conv2d_backprop_input(xs, &f2, &dy2, &p)?;
                    Ok(())
                }),
            });
            out.push(Case {
                kernel: "depthwise_bwd_filter",
                shape: xs,
                stride,
                flops,
                bytes: 4.0 * (elems(&xs) + elems(&ys)) + fbytes,
                run: Box::new(move || {
                    depthwise::depthwise_conv2d_backprop_filter(&x, [3, 3, c, 1], &dy, &p)?;
                    Ok(())
                }),
            });
        }
    }
    for &(h, w, c) in &STAGES {
        let xs = [batch, h, w, c];
        let ys = [batch, h, w, 2 * c];
        let p = Conv2dParams {
            strides: [1, 1],
            padding: Padding::Same,
        };
        let x = random(&xs, rng);
        let f = random(&[1, 1, c, 2 * c], rng);
        let dy = random(&ys, rng);
        let flops = 2.0 * elems(&xs) * (2 * c) as f64;
        let bytes = 4.0 * (elems(&xs) + elems(&ys) + (2 * c * c) as f64);
        let (x1, f1) = (x.clone(), f.clone());
        out.push(Case {
            kernel: "pointwise_fwd",
            shape: xs,
            stride: 1,
            flops,
            bytes,
            run: Box::new(move || {
                conv::conv2d(&x1, &f1, &p)?;
                Ok(())
            }),
        });
        let (f2, dy2) = (f.clone(), dy.clone());
        out.push(Case {
            kernel: "pointwise_bwd_input",
            shape: xs,
            stride: 1,
            flops,
            bytes,
            run: Box::new(move || {
                conv::conv2d_backprop_input(xs, &f2, &dy2, &p)?;
                Ok(())
            }),
        });
        out.push(Case {
            kernel: "pointwise_bwd_filter",
            shape: xs,
            stride: 1,
            flops,
            bytes,
            run: Box::new(move || {
                conv::conv2d_backprop_filter(&x, [1, 1, c, 2 * c], &dy, &p)?;
                Ok(())
            }),
        });
    }
    for &(h, w, c) in &STAGES {
        let xs = [batch, h, w, c];
        let x = random(&xs, rng);
        let scale = random(&[c], rng);
        let offset = random(&[c], rng);
        let empty = Tensor::new(vec![0], Vec::<f32>::new()).expect("empty");
        let p = BatchNormParams {
            epsilon: 1e-3,
            exponential_avg_factor: 1.0,
            is_training: true,
        };
        let n = elems(&xs);
        let fwd = batchnorm::fused_batch_norm_relu6(&x, &scale, &offset, &empty, &empty, &p)
            .context("fused_batch_norm_relu6 for the backward benchmark's inputs")
            .ok();
        let (x1, s1, o1, e1) = (x.clone(), scale.clone(), offset.clone(), empty.clone());
        out.push(Case {
            kernel: "bn_relu6_fwd",
            shape: xs,
            stride: 1,
            // mean, variance, normalise, clamp: ~8 flops per element
            flops: 8.0 * n,
            // read x (twice: statistics, then normalise), write y
            bytes: 4.0 * 3.0 * n,
            run: Box::new(move || {
                batchnorm::fused_batch_norm_relu6(&x1, &s1, &o1, &e1, &e1, &p)?;
                Ok(())
            }),
        });
        let dy = random(&xs, rng);
        out.push(Case {
            kernel: "bn_relu6_bwd",
            shape: xs,
            stride: 1,
            flops: 12.0 * n,
            // read dy, y, x for the sums, again for dx, write dx
            bytes: 4.0 * 7.0 * n,
            run: Box::new(move || {
                let fwd = fwd
                    .as_ref()
                    .context("the forward pass failed, so there is nothing to differentiate")?;
                batchnorm::fused_batch_norm_relu6_grad(
                    &dy,
                    &fwd.y,
                    &x,
                    &scale,
                    &fwd.reserve_space_1,
                    &fwd.reserve_space_2,
                    p.epsilon,
                    true,
                )?;
                Ok(())
            }),
        });
    }
    out
}

pub fn shape_key(s: &[usize; 4]) -> String {
    format!("{}x{}x{}x{}", s[0], s[1], s[2], s[3])
}

/// Runs every case whose `kernel/shape/sstride` key contains the filter.
pub fn run(opts: &Options, progress: impl Fn(usize, usize, &str)) -> Result<KernelReport> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut all = cases(opts.batch, &mut rng);
    all.retain(|c| match &opts.filter {
        Some(f) => {
            format!("{}/{}/s{}", c.kernel, shape_key(&c.shape), c.stride).contains(f.as_str())
        }
        None => true,
    });
    let total = all.len();
    let mut results = Vec::with_capacity(total);
    for (i, case) in all.iter_mut().enumerate() {
        let key = format!(
            "{}/{}/s{}",
            case.kernel,
            shape_key(&case.shape),
            case.stride
        );
        progress(i, total, &key);
        // The first call both warms up and surfaces errors.
        (case.run)().with_context(|| format!("benchmark {key}"))?;
        let mut failed = None;
        let t = super::median_time(1, opts.repeats, || {
            if let Err(e) = (case.run)() {
                failed.get_or_insert(e);
            }
        });
        if let Some(e) = failed {
            return Err(e.context(format!("benchmark {key}")));
        }
        let secs = t.as_secs_f64();
        results.push(KernelResult {
            kernel: case.kernel.to_string(),
            shape: shape_key(&case.shape),
            stride: case.stride,
            ms: secs * 1e3,
            gflops: case.flops / secs / 1e9,
            gbps: case.bytes / secs / 1e9,
        });
    }
    progress(total, total, "machine roofs");
    let machine = super::machine::measure();
    Ok(KernelReport {
        threads: psflow_kernels::threads::current(),
        machine,
        batch: opts.batch,
        results,
    })
}
