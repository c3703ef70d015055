//! `psflow run` as a user runs it: the real binary on the frozen MobileNet
//! GraphDefs TensorFlow wrote (graph/tests/fixtures, made by
//! tools/tf/gen_graph_fixtures.py), and on every kind of bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use psflow_graph::format::npy;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../graph/tests/fixtures")
}

fn psflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_psflow"))
        .args(args)
        .output()
        .expect("psflow runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn max_rel_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / (1e-6 + y.abs()))
        .fold(0.0, f64::max)
}

fn run_mobilenet(graph: &str, expected: &str) {
    let out = tempfile::tempdir().unwrap();
    let g = fixtures().join(graph);
    let feed = format!("input={}", fixtures().join("input.npy").display());
    let o = psflow(&[
        "run",
        "--graph",
        g.to_str().unwrap(),
        "--feed",
        &feed,
        "--fetch",
        "Identity:0",
        "--out-dir",
        out.path().to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let fetch = &report["fetches"][0];
    assert_eq!(fetch["name"], "Identity:0");
    assert_eq!(fetch["dtype"], "float32");
    assert_eq!(fetch["shape"], serde_json::json!([2, 10]));
    assert!(report["wall_seconds"].as_f64().unwrap() > 0.0);
    let file = out.path().join("Identity_0.npy");
    assert_eq!(Path::new(fetch["file"].as_str().unwrap()), file);
    let got = npy::read(&file).unwrap();
    let want = npy::read(fixtures().join(expected)).unwrap();
    assert_eq!(got.shape(), want.shape());
    let d = max_rel_diff(&got.to_f64_vec(), &want.to_f64_vec());
    assert!(
        d < 1e-4,
        "{graph}: max relative difference to TensorFlow {d}"
    );
}

#[test]
fn runs_keras3_mobilenet_like_tensorflow() {
    run_mobilenet("mobilenet_keras3_a025.pb", "expected_keras3.npy");
}

#[test]
fn runs_fused_batch_norm_mobilenet_like_tensorflow() {
    run_mobilenet("mobilenet_fusedbn_a025.pb", "expected_fusedbn.npy");
}

/// Runs psflow on the Keras 3 graph with the given feed and fetch and
/// expects a one-line error mentioning `needle`, exit code 2 and no output.
fn expect_error(feed: Option<&str>, fetch: &str, graph: Option<&Path>, needle: &str) {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("out");
    let g = graph
        .map(Path::to_path_buf)
        .unwrap_or_else(|| fixtures().join("mobilenet_keras3_a025.pb"));
    let mut args = vec![
        "run".to_string(),
        "--graph".into(),
        g.display().to_string(),
        "--fetch".into(),
        fetch.into(),
        "--out-dir".into(),
        dir.display().to_string(),
    ];
    if let Some(f) = feed {
        args.push("--feed".into());
        args.push(f.into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = psflow(&args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(needle),
        "error {err:?} should mention {needle:?}"
    );
    assert!(
        !dir.exists() || dir.read_dir().unwrap().next().is_none(),
        "nothing written"
    );
}

fn input_feed() -> String {
    format!("input={}", fixtures().join("input.npy").display())
}

#[test]
fn missing_feed_names_the_placeholder() {
    expect_error(None, "Identity", None, "input");
}

#[test]
fn unknown_fetch_names_the_node() {
    expect_error(Some(&input_feed()), "no_such_node", None, "no_such_node");
}

#[test]
fn wrong_shape_names_the_placeholder() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.npy");
    let t = psflow_graph::Tensor::new(vec![2, 16, 16, 3], vec![0f32; 2 * 16 * 16 * 3]).unwrap();
    npy::write(&bad, &t).unwrap();
    expect_error(
        Some(&format!("input={}", bad.display())),
        "Identity",
        None,
        "input",
    );
}

#[test]
fn a_file_that_is_not_npy_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("notes.npy");
    std::fs::write(&bad, b"hello, not numpy").unwrap();
    expect_error(
        Some(&format!("input={}", bad.display())),
        "Identity",
        None,
        "notes.npy",
    );
}

#[test]
fn a_graph_that_is_not_a_graphdef_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("garbage.pb");
    std::fs::write(&bad, [0xff_u8, 0xff, 0xff, 0x07, 0x01, 0x02]).unwrap();
    expect_error(Some(&input_feed()), "Identity", Some(&bad), "garbage.pb");
}

#[test]
fn a_missing_graph_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pb");
    expect_error(
        Some(&input_feed()),
        "Identity",
        Some(&missing),
        "missing.pb",
    );
}

#[test]
fn a_lossless_feed_dtype_is_cast() {
    // float64 values that are exactly float32 values are accepted.
    let dir = tempfile::tempdir().unwrap();
    let input = npy::read(fixtures().join("input.npy")).unwrap();
    let f64s: Vec<f64> = input
        .f32s("test")
        .unwrap()
        .iter()
        .map(|&x| x as f64)
        .collect();
    let feed = dir.path().join("input64.npy");
    npy::write(
        &feed,
        &psflow_graph::Tensor::new(input.shape().to_vec(), f64s).unwrap(),
    )
    .unwrap();
    let out = dir.path().join("out");
    let o = psflow(&[
        "run",
        "--graph",
        fixtures()
            .join("mobilenet_fusedbn_a025.pb")
            .to_str()
            .unwrap(),
        "--feed",
        &format!("input={}", feed.display()),
        "--fetch",
        "Identity",
        "--out-dir",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("Identity.npy").exists());
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("Identity") && table.contains("[2, 10]"),
        "{table}"
    );
}

#[test]
fn a_lossy_feed_dtype_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = npy::read(fixtures().join("input.npy")).unwrap();
    let f64s: Vec<f64> = input
        .f32s("test")
        .unwrap()
        .iter()
        .map(|&x| x as f64 + 1e-12)
        .collect();
    let feed = dir.path().join("lossy.npy");
    npy::write(
        &feed,
        &psflow_graph::Tensor::new(input.shape().to_vec(), f64s).unwrap(),
    )
    .unwrap();
    expect_error(
        Some(&format!("input={}", feed.display())),
        "Identity",
        None,
        "input",
    );
}

/// `psflow graph build --train` writes the whole training step (forward in
/// training mode, losses, gradients, RMSProp, here with the weight
/// averages), and `psflow run` executes
/// it: `--init init` initialises the variables, `--target` runs the
/// optimizer updates beside the fetched losses, which are finite and add
/// up (total = cross-entropy + regularization). A `--target` that is not
/// a node is a usage error naming it.
#[test]
fn a_built_training_graph_runs_a_training_step() {
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("train.pb");
    let o = psflow(&[
        "graph",
        "build",
        "--model",
        "mobilenet",
        "--alpha",
        "0.25",
        "--resolution",
        "16",
        "--classes",
        "3",
        "--train",
        "--moving-average-decay",
        "0.9999",
        "--json",
        "--out",
        g.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let step = &v["train_step"];
    // With the weight averages psflow train keeps: one per trained variable.
    let averages = step["averages"].as_array().unwrap();
    assert_eq!(averages.len(), v["trainable"].as_array().unwrap().len());
    assert_eq!(
        averages[0]["average"].as_str().unwrap(),
        format!(
            "{}/ExponentialMovingAverage",
            averages[0]["variable"].as_str().unwrap()
        )
    );
    let target = step["target"].as_str().unwrap();
    let lr_feed = step["learning_rate"]
        .as_str()
        .unwrap()
        .trim_end_matches(":0");
    assert_eq!(step["optimizer"], "rmsprop");

    let x: Vec<f32> = (0..4 * 16 * 16 * 3)
        .map(|i| ((i * 31 % 97) as f32 / 48.0) - 1.0)
        .collect();
    let feeds = [
        (
            "input",
            psflow_graph::Tensor::new(vec![4, 16, 16, 3], x).unwrap(),
        ),
        (
            "labels",
            psflow_graph::Tensor::new(vec![4], vec![0i32, 1, 2, 1]).unwrap(),
        ),
        (lr_feed, psflow_graph::Tensor::scalar(0.01f32)),
    ];
    let mut args: Vec<String> = vec!["run".into(), "--graph".into(), g.display().to_string()];
    for (name, t) in &feeds {
        let f = dir.path().join(format!("{}.npy", name.replace('/', "_")));
        npy::write(&f, t).unwrap();
        args.push("--feed".into());
        args.push(format!("{name}={}", f.display()));
    }
    let out = dir.path().join("out");
    for (flag, value) in [
        ("--init", "init"),
        ("--target", target),
        ("--fetch", step["total_loss"].as_str().unwrap()),
        ("--fetch", step["cross_entropy_loss"].as_str().unwrap()),
        ("--fetch", step["regularization_loss"].as_str().unwrap()),
        ("--out-dir", out.to_str().unwrap()),
    ] {
        args.push(flag.into());
        args.push(value.into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = psflow(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let read = |fetch: &str| -> f64 {
        let file = out.join(format!("{}.npy", fetch.replace(['/', ':'], "_")));
        npy::read(&file).unwrap().to_f64_vec()[0]
    };
    let (total, xent, reg) = (
        read(step["total_loss"].as_str().unwrap()),
        read(step["cross_entropy_loss"].as_str().unwrap()),
        read(step["regularization_loss"].as_str().unwrap()),
    );
    assert!(xent.is_finite() && xent > 0.0, "{xent}");
    assert!(reg > 0.0, "{reg}");
    assert!(
        (total - (xent + reg)).abs() < 1e-4 * total,
        "{total} vs {xent} + {reg}"
    );

    // A target that is not a node is named.
    let o = psflow(&[
        "run",
        "--graph",
        g.to_str().unwrap(),
        "--target",
        "no_such_op",
        "--fetch",
        step["total_loss"].as_str().unwrap(),
        "--out-dir",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--target \"no_such_op\""),
        "{}",
        stderr(&o)
    );
}
