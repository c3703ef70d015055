//! `psflow bench cuda`: the MobileNet-shaped CUDA kernels at batch 128 (the
//! shapes of `psflow bench kernels`), timed with CUDA events on the
//! device's stream, next to what the card measurably does at most: a large
//! device-to-device copy (the bandwidth roof) and cuBLAS SGEMM at 4096³ with
//! and without TF32 (the matrix roof). The pointwise convolution runs three
//! ways: our TF32 GEMM (the path training uses) and cuBLAS in TF32 and f32.
//!
//! Each depthwise kernel's achieved bandwidth is given as a fraction of the
//! measured copy bandwidth and flagged below [`DEPTHWISE_TARGET`] (issue 5:
//! the depthwise kernels are memory-bound and should reach 60 % of it).
//!
//! Without a CUDA device it fails at once with `pick_device`'s or
//! `CudaDevice::new`'s error (exit 2).

use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use psflow_kernels::cuda::cublas::{self, CublasMath};
use psflow_kernels::cuda::ops::depthwise::DepthwisePath;
use psflow_kernels::cuda::{pick_device, CudaDevice, Device, DeviceTensor};
use psflow_kernels::{BatchNormParams, Conv2dParams, Padding, Tensor};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::kernels::{shape_key, STAGES};
use crate::table::Table;

/// The fraction of the measured copy bandwidth each depthwise kernel should
/// reach (issue 5).
pub const DEPTHWISE_TARGET: f64 = 0.60;

/// Bytes of each buffer of the bandwidth roof's copy (256 MiB: far beyond
/// any cache).
const COPY_BYTES: usize = 256 << 20;

/// The size of the matrix roof's square SGEMM.
const ROOF_GEMM: usize = 4096;

/// Each timed sample queues enough calls to last about this long, so tiny
/// kernels are not measured by the event resolution (~0.5 µs).
const SAMPLE_MS: f64 = 1.0;

#[derive(Args, Debug)]
pub struct BenchCudaArgs {
    /// The CUDA device (`cuda:N`).
    #[arg(long, default_value = "cuda:0")]
    pub device: String,
    /// Batch size.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Timed samples per kernel (the median is reported).
    #[arg(long, default_value_t = 15)]
    pub repeats: usize,
    /// Only kernels whose key (kernel/gemm/shape/sSTRIDE) contains this text.
    #[arg(long)]
    pub filter: Option<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct CudaKernelResult {
    pub kernel: String,
    /// For the pointwise GEMMs: `ours-tf32`, `cublas-tf32` or `cublas-f32`.
    pub gemm: Option<String>,
    pub shape: String,
    pub stride: usize,
    pub ms: f64,
    pub gflops: f64,
    /// Bytes read + written per second.
    pub gbps: f64,
    /// `gbps` over the measured copy bandwidth.
    pub fraction_of_copy: f64,
    /// For the GEMMs: `gflops` over cuBLAS's 4096³ rate in the same
    /// arithmetic (TF32 or f32), when cuBLAS loaded.
    pub fraction_of_gemm_roof: Option<f64>,
    /// For the depthwise kernels: whether `fraction_of_copy` reaches
    /// [`DEPTHWISE_TARGET`].
    pub meets_target: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GemmRoof {
    /// `cublas-f32`, `cublas-tf32` or `ours-tf32`.
    pub gemm: String,
    pub size: usize,
    pub ms: f64,
    pub gflops: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CudaBenchReport {
    pub device: String,
    pub name: String,
    pub compute_capability: String,
    pub batch: usize,
    pub repeats: usize,
    /// Device-to-device copy of 256 MiB, bytes read + written per second.
    pub copy_gbps: f64,
    /// SGEMM 4096³: cuBLAS f32 and TF32 (when cuBLAS loaded) and ours.
    pub gemm_roofs: Vec<GemmRoof>,
    /// Why the cuBLAS rows are missing, when they are.
    pub cublas_unavailable: Option<String>,
    pub depthwise_target: f64,
    /// Depthwise kernels below the target.
    pub depthwise_below_target: usize,
    pub results: Vec<CudaKernelResult>,
}

/// Opens the device named by `spec`: `pick_device`'s error for a missing
/// driver or device, and an error for the CPU (this bench is CUDA only).
pub fn open_device(spec: &str) -> Result<Arc<CudaDevice>> {
    let choice = pick_device(spec)?;
    let Device::Cuda(n) = choice.device else {
        return Err(anyhow!(
            "psflow bench cuda needs a CUDA device; --device {spec} chose the CPU ({}); \
             use `psflow bench kernels` for the CPU kernels",
            choice.reason
        ));
    };
    Ok(CudaDevice::new(n)?)
}

pub fn run(args: &BenchCudaArgs) -> std::result::Result<(), (bool, anyhow::Error)> {
    if args.batch == 0 || args.repeats == 0 {
        return Err((true, anyhow!("--batch and --repeats must be at least 1")));
    }
    let dev = open_device(&args.device).map_err(|e| (true, e))?;
    let report = measure(&dev, args).map_err(|e| (false, e))?;
    if args.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| (false, e.into()))?;
        println!("{text}");
    } else {
        print_table(&report);
    }
    Ok(())
}

type Launch = Box<dyn FnMut() -> psflow_kernels::Result<()>>;

/// One benchmark case: what it is, its work counts, and the launch to time.
struct Case {
    kernel: &'static str,
    gemm: Option<&'static str>,
    shape: [usize; 4],
    stride: usize,
    flops: f64,
    bytes: f64,
    run: Launch,
}

impl Case {
    fn key(&self) -> String {
        format!(
            "{}/{}{}/s{}",
            self.kernel,
            self.gemm.map(|g| format!("{g}/")).unwrap_or_default(),
            shape_key(&self.shape),
            self.stride
        )
    }
}

fn elems(s: &[usize]) -> f64 {
    s.iter().product::<usize>() as f64
}

fn upload_random(dev: &CudaDevice, shape: &[usize], rng: &mut impl Rng) -> Result<DeviceTensor> {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Ok(dev.upload(&Tensor::new(shape.to_vec(), v)?)?)
}

/// Drops a launcher's output: the buffer goes back to the pool, to be
/// reused by the next call (as in a training step).
fn done<T>(r: psflow_kernels::Result<T>) -> psflow_kernels::Result<()> {
    r.map(drop)
}

fn depthwise_cases(dev: &Arc<CudaDevice>, batch: usize, rng: &mut impl Rng) -> Result<Vec<Case>> {
    let mut out = Vec::new();
    for &(h, w, c) in &STAGES {
        let xs = [batch, h, w, c];
        for stride in [1usize, 2] {
            let p = Conv2dParams {
                strides: [stride, stride],
                padding: Padding::Same,
            };
            let ys = [batch, h.div_ceil(stride), w.div_ceil(stride), c];
            let x = Arc::new(upload_random(dev, &xs, rng)?);
            let f = Arc::new(upload_random(dev, &[3, 3, c, 1], rng)?);
            let dy = Arc::new(upload_random(dev, &ys, rng)?);
            // The same counts as `psflow bench kernels`: 9 multiply-adds per
            // output, x and y (or dx, dy) once each, the filter once.
            let flops = 2.0 * 9.0 * elems(&ys);
            let bytes = 4.0 * (elems(&xs) + elems(&ys) + 9.0 * c as f64);
            let (d, x1, f1) = (dev.clone(), x.clone(), f.clone());
            out.push(Case {
                kernel: "depthwise_fwd",
                gemm: None,
                shape: xs,
                stride,
                flops,
                bytes,
                run: Box::new(move || done(d.depthwise_conv2d(&x1, &f1, &p, DepthwisePath::Auto))),
            });
            let (d, f2, dy2) = (dev.clone(), f.clone(), dy.clone());
            out.push(Case {
                kernel: "depthwise_bwd_input",
                gemm: None,
                shape: xs,
                stride,
                flops,
                bytes,
                run: Box::new(move || done(d.depthwise_conv2d_backprop_input(xs, &f2, &dy2, &p))),
            });
            let d = dev.clone();
            out.push(Case {
                kernel: "depthwise_bwd_filter",
                gemm: None,
                shape: xs,
                stride,
                flops,
                bytes,
                run: Box::new(move || {
                    done(d.depthwise_conv2d_backprop_filter(&x, [3, 3, c, 1], &dy, &p))
                }),
            });
        }
    }
    Ok(out)
}

/// The pointwise convolution (c → 2c channels at each stage) and both its
/// gradients, by our TF32 GEMM through the convolution launchers, and by
/// cuBLAS on the same data viewed as matrices (rows = n·h·w).
fn pointwise_cases(
    dev: &Arc<CudaDevice>,
    batch: usize,
    with_cublas: bool,
    rng: &mut impl Rng,
) -> Result<Vec<Case>> {
    let mut out = Vec::new();
    for &(h, w, c) in &STAGES {
        let xs = [batch, h, w, c];
        let ys = [batch, h, w, 2 * c];
        let rows = batch * h * w;
        let x = Arc::new(upload_random(dev, &xs, rng)?);
        let f = Arc::new(upload_random(dev, &[1, 1, c, 2 * c], rng)?);
        let dy = Arc::new(upload_random(dev, &ys, rng)?);
        let flops = 2.0 * elems(&xs) * (2 * c) as f64;
        let bytes = 4.0 * (elems(&xs) + elems(&ys) + (2 * c * c) as f64);
        let case = |kernel, gemm, run: Launch| Case {
            kernel,
            gemm: Some(gemm),
            shape: xs,
            stride: 1,
            flops,
            bytes,
            run,
        };
        let (d, x1, f1) = (dev.clone(), x.clone(), f.clone());
        out.push(case(
            "pointwise_fwd",
            "ours-tf32",
            Box::new(move || done(d.pointwise_conv2d(&x1, &f1))),
        ));
        let (d, f1, dy1) = (dev.clone(), f.clone(), dy.clone());
        out.push(case(
            "pointwise_bwd_input",
            "ours-tf32",
            Box::new(move || done(d.pointwise_conv2d_backprop_input(xs, &f1, &dy1))),
        ));
        let (d, x1, dy1) = (dev.clone(), x.clone(), dy.clone());
        out.push(case(
            "pointwise_bwd_filter",
            "ours-tf32",
            Box::new(move || done(d.pointwise_conv2d_backprop_filter(&x1, [1, 1, c, 2 * c], &dy1))),
        ));
        if !with_cublas {
            continue;
        }
        // The same values as matrices: x [rows, c], W [c, 2c], dy [rows, 2c].
        let xm = Arc::new(upload_random(dev, &[rows, c], rng)?);
        let wm = Arc::new(upload_random(dev, &[c, 2 * c], rng)?);
        let dym = Arc::new(upload_random(dev, &[rows, 2 * c], rng)?);
        for (math, name) in [
            (CublasMath::Tf32, "cublas-tf32"),
            (CublasMath::F32, "cublas-f32"),
        ] {
            let (d, a, b) = (dev.clone(), xm.clone(), wm.clone());
            out.push(case(
                "pointwise_fwd",
                name,
                Box::new(move || done(d.matmul_cublas_with(&a, &b, false, false, math))),
            ));
            let (d, a, b) = (dev.clone(), dym.clone(), wm.clone());
            out.push(case(
                "pointwise_bwd_input",
                name,
                Box::new(move || done(d.matmul_cublas_with(&a, &b, false, true, math))),
            ));
            let (d, a, b) = (dev.clone(), xm.clone(), dym.clone());
            out.push(case(
                "pointwise_bwd_filter",
                name,
                Box::new(move || done(d.matmul_cublas_with(&a, &b, true, false, math))),
            ));
        }
    }
    Ok(out)
}

fn batchnorm_cases(dev: &Arc<CudaDevice>, batch: usize, rng: &mut impl Rng) -> Result<Vec<Case>> {
    let mut out = Vec::new();
    let p = BatchNormParams {
        epsilon: 1e-3,
        exponential_avg_factor: 1.0,
        is_training: true,
    };
    for &(h, w, c) in &STAGES {
        let xs = [batch, h, w, c];
        let n = elems(&xs);
        let x = Arc::new(upload_random(dev, &xs, rng)?);
        let scale = Arc::new(upload_random(dev, &[c], rng)?);
        let offset = Arc::new(upload_random(dev, &[c], rng)?);
        let empty = Arc::new(dev.upload(&Tensor::new(vec![0], Vec::<f32>::new())?)?);
        let dy = Arc::new(upload_random(dev, &xs, rng)?);
        let fwd = Arc::new(
            dev.fused_batch_norm(&x, &scale, &offset, &empty, &empty, &p, true)
                .context("fused batch norm + ReLU6 for the backward benchmark's inputs")?,
        );
        let (d, x1, s1, o1, e1) = (
            dev.clone(),
            x.clone(),
            scale.clone(),
            offset.clone(),
            empty.clone(),
        );
        out.push(Case {
            kernel: "bn_relu6_fwd",
            gemm: None,
            shape: xs,
            stride: 1,
            // The counts of `psflow bench kernels`: ~8 flops per element;
            // x read twice (statistics, then normalise), y written.
            flops: 8.0 * n,
            bytes: 4.0 * 3.0 * n,
            run: Box::new(move || done(d.fused_batch_norm(&x1, &s1, &o1, &e1, &e1, &p, true))),
        });
        let d = dev.clone();
        out.push(Case {
            kernel: "bn_relu6_bwd",
            gemm: None,
            shape: xs,
            stride: 1,
            // dy, y, x read for the sums and again for dx; dx written.
            flops: 12.0 * n,
            bytes: 4.0 * 7.0 * n,
            run: Box::new(move || {
                done(d.fused_batch_norm_grad(
                    &dy,
                    Some(&fwd.y),
                    &x,
                    &scale,
                    &fwd.reserve_space_1,
                    &fwd.reserve_space_2,
                    p.epsilon,
                    true,
                ))
            }),
        });
    }
    Ok(out)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median milliseconds per call of `run`: one untimed call (which also
/// compiles the kernel's source on first use and surfaces errors), then
/// `repeats` samples of enough back-to-back calls to last ~[`SAMPLE_MS`].
fn time_case(
    dev: &CudaDevice,
    repeats: usize,
    run: &mut dyn FnMut() -> psflow_kernels::Result<()>,
) -> Result<f64> {
    run()?;
    dev.synchronize()?;
    let once = dev.time_ms(1, &mut *run)?;
    let calls = (SAMPLE_MS / once.max(1e-4)).ceil().clamp(1.0, 1000.0) as usize;
    let mut samples = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        samples.push(dev.time_ms(calls, &mut *run)?);
    }
    Ok(median(samples))
}

/// The copy roof: a 256 MiB device-to-device copy, GB/s of bytes read +
/// written.
fn copy_roof(dev: &CudaDevice, repeats: usize) -> Result<f64> {
    let n = COPY_BYTES / 4;
    let host = Tensor::new(vec![n], vec![1.0f32; n])?;
    let src = dev.upload(&host)?;
    let mut dst = dev.upload(&host)?;
    drop(host);
    let ms = time_case(dev, repeats, &mut || {
        dev.copy_device_to_device(&src, &mut dst)
    })?;
    Ok(2.0 * COPY_BYTES as f64 / (ms * 1e-3) / 1e9)
}

/// The matrix roofs: 4096³ SGEMM by cuBLAS (f32, TF32) and by our kernel.
fn gemm_roofs(
    dev: &CudaDevice,
    repeats: usize,
    with_cublas: bool,
    rng: &mut impl Rng,
) -> Result<Vec<GemmRoof>> {
    let s = ROOF_GEMM;
    let a = upload_random(dev, &[s, s], rng)?;
    let b = upload_random(dev, &[s, s], rng)?;
    let flops = 2.0 * (s as f64).powi(3);
    let mut out = Vec::new();
    let mut push = |gemm: &str, ms: f64| {
        out.push(GemmRoof {
            gemm: gemm.into(),
            size: s,
            ms,
            gflops: flops / (ms * 1e-3) / 1e9,
        })
    };
    if with_cublas {
        for math in [CublasMath::F32, CublasMath::Tf32] {
            let ms = time_case(dev, repeats, &mut || {
                done(dev.matmul_cublas_with(&a, &b, false, false, math))
            })
            .with_context(|| format!("cuBLAS {} SGEMM {s}³", math.name()))?;
            push(&format!("cublas-{}", math.name()), ms);
        }
    }
    let ms = time_case(dev, repeats, &mut || {
        done(dev.matmul_tf32(&a, &b, false, false))
    })
    .with_context(|| format!("our TF32 GEMM {s}³"))?;
    push("ours-tf32", ms);
    Ok(out)
}

/// Runs every case (those matching the filter) and the roofs.
pub fn measure(dev: &Arc<CudaDevice>, args: &BenchCudaArgs) -> Result<CudaBenchReport> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let cublas_unavailable = cublas::available().err().map(|e| e.to_string());
    let with_cublas = cublas_unavailable.is_none();
    let progress = |what: &str| {
        if !args.json {
            eprintln!("… {what}");
        }
    };
    progress("copy roof (256 MiB device to device)");
    let copy_gbps = copy_roof(dev, args.repeats).context("the copy roof")?;
    progress("matrix roofs (SGEMM 4096³)");
    let gemm_roofs = gemm_roofs(dev, args.repeats, with_cublas, &mut rng)?;
    dev.trim_pool();

    let mut cases = depthwise_cases(dev, args.batch, &mut rng)?;
    cases.extend(pointwise_cases(dev, args.batch, with_cublas, &mut rng)?);
    cases.extend(batchnorm_cases(dev, args.batch, &mut rng)?);
    if let Some(f) = &args.filter {
        cases.retain(|c| c.key().contains(f.as_str()));
    }
    let roof_of = |gemm: &str| -> Option<f64> {
        let want = if gemm.ends_with("f32") && !gemm.ends_with("tf32") {
            "cublas-f32"
        } else {
            "cublas-tf32"
        };
        gemm_roofs.iter().find(|r| r.gemm == want).map(|r| r.gflops)
    };
    let mut results = Vec::with_capacity(cases.len());
    for case in cases.iter_mut() {
        let key = case.key();
        progress(&key);
        let ms = time_case(dev, args.repeats, &mut case.run)
            .with_context(|| format!("benchmark {key}"))?;
        let secs = ms * 1e-3;
        let gflops = case.flops / secs / 1e9;
        let gbps = case.bytes / secs / 1e9;
        let fraction_of_copy = gbps / copy_gbps;
        results.push(CudaKernelResult {
            kernel: case.kernel.into(),
            gemm: case.gemm.map(String::from),
            shape: shape_key(&case.shape),
            stride: case.stride,
            ms,
            gflops,
            gbps,
            fraction_of_copy,
            fraction_of_gemm_roof: case.gemm.and_then(roof_of).map(|r| gflops / r),
            meets_target: case
                .kernel
                .starts_with("depthwise")
                .then_some(fraction_of_copy >= DEPTHWISE_TARGET),
        });
    }
    Ok(CudaBenchReport {
        device: format!("cuda:{}", dev.ordinal()),
        name: dev.name().to_string(),
        compute_capability: format!("{}.{}", dev.arch().major, dev.arch().minor),
        batch: args.batch,
        repeats: args.repeats,
        copy_gbps,
        gemm_roofs,
        cublas_unavailable,
        depthwise_target: DEPTHWISE_TARGET,
        depthwise_below_target: results
            .iter()
            .filter(|r| r.meets_target == Some(false))
            .count(),
        results,
    })
}

fn print_table(r: &CudaBenchReport) {
    let mut t = Table::new(&[
        "kernel", "gemm", "shape", "stride", "ms", "GFLOP/s", "GB/s", "% copy", "% GEMM", "target",
    ])
    .right_align(&[3, 4, 5, 6, 7, 8]);
    for k in &r.results {
        t.row(vec![
            k.kernel.clone(),
            k.gemm.clone().unwrap_or_default(),
            k.shape.clone(),
            k.stride.to_string(),
            format!("{:.4}", k.ms),
            format!("{:.0}", k.gflops),
            format!("{:.0}", k.gbps),
            format!("{:.0}", 100.0 * k.fraction_of_copy),
            k.fraction_of_gemm_roof
                .map(|f| format!("{:.0}", 100.0 * f))
                .unwrap_or_default(),
            match k.meets_target {
                Some(true) => "ok".into(),
                Some(false) => format!("BELOW {:.0}%", 100.0 * r.depthwise_target),
                None => String::new(),
            },
        ]);
    }
    print!("{}", t.render());
    println!(
        "{} ({}, compute capability {}), batch {}, median of {}",
        r.device, r.name, r.compute_capability, r.batch, r.repeats
    );
    println!(
        "copy roof: {:.0} GB/s (256 MiB device to device, read + write)",
        r.copy_gbps
    );
    for g in &r.gemm_roofs {
        println!(
            "matrix roof: {} SGEMM {}³: {:.0} GFLOP/s ({:.3} ms)",
            g.gemm, g.size, g.gflops, g.ms
        );
    }
    if let Some(why) = &r.cublas_unavailable {
        println!("no cuBLAS rows: {why}");
    }
    let depthwise = r
        .results
        .iter()
        .filter(|k| k.meets_target.is_some())
        .count();
    println!(
        "depthwise kernels below {:.0}% of the copy roof: {} of {}",
        100.0 * r.depthwise_target,
        r.depthwise_below_target,
        depthwise
    );
}
