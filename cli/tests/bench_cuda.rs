//! `psflow bench cuda` through the real binary. Without a GPU (or asked for
//! a device that is not there, or for the CPU) it exits 2 at once with a
//! one-line error naming what is missing. On a GPU the `#[ignore]`d test
//! runs a few kernels and checks the report (`PSFLOW_CUDA_TESTS=1
//! scripts/test`, or `--ignored`; not yet run on hardware).

use std::process::{Command, Output};

use psflow_kernels::cuda::cuda_device_count;
use serde_json::Value;

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_psflow"))
        .args(["bench", "cuda"])
        .args(args)
        .output()
        .expect("psflow runs")
}

/// Exit 2, nothing on stdout, and one `error: …` line on stderr; returns it.
fn usage_error(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert!(
        o.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

#[test]
fn a_missing_cuda_device_exits_2_naming_what_is_missing() {
    // cuda:64 is beyond any machine's devices: on a GPU machine the error
    // names how many there are, without a driver the missing library.
    for json in [false, true] {
        let mut args = vec!["--device", "cuda:64"];
        if json {
            args.push("--json");
        }
        let err = usage_error(&bench(&args));
        assert!(
            err.starts_with("error: device cuda:64 is not available: "),
            "{err}"
        );
        match cuda_device_count() {
            Err(_) => assert!(
                err.contains("no CUDA driver (libcuda.so.1 not found"),
                "{err}"
            ),
            Ok(0) => assert!(err.contains("reports no device"), "{err}"),
            Ok(n) => assert!(err.contains(&format!("reports {n} device(s)")), "{err}"),
        }
    }
}

#[test]
fn the_default_device_without_a_gpu_exits_2() {
    if matches!(cuda_device_count(), Ok(n) if n > 0) {
        return; // a GPU is here: the default cuda:0 would run the bench
    }
    let err = usage_error(&bench(&["--json"]));
    assert!(
        err.starts_with("error: device cuda:0 is not available: "),
        "{err}"
    );
}

#[test]
fn the_cpu_is_refused_with_the_cpu_bench_named() {
    let err = usage_error(&bench(&["--device", "cpu"]));
    assert!(
        err.contains("psflow bench cuda needs a CUDA device"),
        "{err}"
    );
    assert!(err.contains("psflow bench kernels"), "{err}");
}

#[test]
fn bad_flags_exit_2() {
    let err = usage_error(&bench(&["--device", "gpu0"]));
    assert!(err.contains("`auto`, `cpu` or `cuda:N`"), "{err}");
    let err = usage_error(&bench(&["--repeats", "0"]));
    assert!(err.contains("--repeats must be at least 1"), "{err}");
}

#[test]
#[ignore = "needs a CUDA GPU: PSFLOW_CUDA_TESTS=1 scripts/test"]
fn on_a_gpu_the_report_has_roofs_and_flags_the_depthwise_target() {
    let o = bench(&["--json", "--repeats", "3", "--filter", "x2x2x512"]);
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON report");
    let num = |v: &Value| v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    assert!(num(&v["copy_gbps"]) > 1.0, "{v}");
    let roofs = v["gemm_roofs"].as_array().unwrap();
    assert!(roofs.iter().any(|r| r["gemm"] == "ours-tf32"), "{v}");
    if v["cublas_unavailable"].is_null() {
        assert_eq!(roofs.len(), 3, "{v}");
    }
    let results = v["results"].as_array().unwrap();
    // Stage 4 (2×2×512): 6 depthwise (3 kernels × 2 strides), 3 pointwise
    // per GEMM, 2 batch norm.
    let gemms = if v["cublas_unavailable"].is_null() {
        3
    } else {
        1
    };
    assert_eq!(results.len(), 6 + 3 * gemms + 2, "{v}");
    for r in results {
        assert!(num(&r["ms"]) > 0.0 && num(&r["gbps"]) > 0.0, "{r}");
        let depthwise = r["kernel"].as_str().unwrap().starts_with("depthwise");
        assert_eq!(r["meets_target"].is_boolean(), depthwise, "{r}");
        assert_eq!(
            r["meets_target"].as_bool(),
            depthwise.then(|| num(&r["fraction_of_copy"]) >= 0.6),
            "{r}"
        );
    }
}
