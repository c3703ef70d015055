//! `psflow bench train --profile`: the per-op profile of one step and the
//! per-step statistics, through the real binary on a tiny model.

use std::process::{Command, Output};

use serde_json::Value;

fn bench(extra: &[&str]) -> Output {
    let mut args = vec![
        "bench",
        "train",
        "--model",
        "mobilenet",
        "--alpha",
        "0.25",
        "--resolution",
        "16",
        "--batch-size",
        "8",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--profile",
    ];
    args.extend_from_slice(extra);
    Command::new(env!("CARGO_BIN_EXE_psflow"))
        .args(&args)
        .env("PSFLOW_THREADS", "2")
        .output()
        .expect("psflow runs")
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn json_has_step_statistics_and_a_profile() {
    let o = bench(&["--json"]);
    ok(&o);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();

    let times: Vec<f64> = v["step_times_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(f)
        .collect();
    assert_eq!(times.len(), 3, "{v}");
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let st = &v["step_ms"];
    assert_eq!(f(&st["median"]), sorted[1]);
    assert_eq!(f(&st["min"]), sorted[0]);
    assert_eq!(f(&st["max"]), sorted[2]);
    assert!(f(&st["p25"]) <= f(&st["median"]) && f(&st["median"]) <= f(&st["p75"]));
    let ips = f(&v["images_per_sec_median"]);
    assert!((ips - 8e3 / sorted[1]).abs() < 1e-6 * ips, "{v}");

    let p = &v["profile"];
    assert_eq!(p["schedule"], "serial");
    let nodes = p["nodes"].as_u64().unwrap();
    assert!(nodes > 300, "{p}");
    let by_op = p["by_op"].as_array().unwrap();
    let count: u64 = by_op.iter().map(|o| o["count"].as_u64().unwrap()).sum();
    assert_eq!(count, nodes);
    let total: f64 = by_op.iter().map(|o| f(&o["ms"])).sum();
    assert!(
        (total - f(&p["kernel_ms"])).abs() < 1e-6 * total.max(1.0),
        "{p}"
    );
    let pct: f64 = by_op.iter().map(|o| f(&o["percent"])).sum();
    assert!((pct - 100.0).abs() < 1e-6, "{pct}");
    assert!(
        by_op.iter().any(|o| o["op"] == "DepthwiseConv2dNative"),
        "{p}"
    );
    assert!(f(&p["busy_ms"]) <= f(&p["step_ms"]));
    let top = p["top_nodes"].as_array().unwrap();
    assert_eq!(top.len(), 15);
    assert!(top[0]["node"].is_string() && top[0]["output_shapes"].is_array());
}

#[test]
fn table_lists_op_types_and_slowest_nodes() {
    let o = bench(&["--profile-schedule", "parallel"]);
    ok(&o);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("profile of one step (parallel schedule)"),
        "{text}"
    );
    assert!(text.contains("Conv2DBackpropFilter"), "{text}");
    assert!(text.contains("slowest 15 nodes"), "{text}");
}

#[test]
fn unknown_schedule_is_a_usage_error() {
    let o = bench(&["--profile-schedule", "sideways"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("parallel or serial"), "{err}");
}

/// `--device cuda:0`: on a machine without CUDA a usage error naming what
/// is missing and what to use instead; on a GPU machine the whole step on
/// the GPU, with a finite loss (the command fails otherwise).
#[test]
fn device_cuda_trains_on_the_gpu_or_says_why_not() {
    let o = Command::new(env!("CARGO_BIN_EXE_psflow"))
        .args([
            "bench",
            "train",
            "--model",
            "mobilenet",
            "--alpha",
            "0.25",
            "--batch-size",
            "8",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--device",
            "cuda:0",
            "--json",
        ])
        .output()
        .expect("psflow runs");
    match psflow_kernels::cuda::cuda_device_count() {
        Ok(n) if n > 0 => {
            ok(&o);
            let v: Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(v["device"], "cuda:0");
            assert!(v["images_per_sec"].as_f64().unwrap() > 0.0, "{v}");
        }
        _ => {
            assert_eq!(o.status.code(), Some(2), "{o:?}");
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                err.contains("--device cuda:0") && err.contains("use --device cpu"),
                "{err}"
            );
        }
    }
}
