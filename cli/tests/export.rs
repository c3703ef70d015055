//! `psflow export` through the real binary: a short `psflow train` run on
//! the synthetic dataset, exported folded and unfolded, run with
//! `psflow run`, and compared with the variable graph the checkpoint
//! restores (built here from the run configuration, as `psflow eval`
//! does). Bad runs and outputs exit 2 with one line and write nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, OnceLock};

use psflow_graph::format::npy;
use psflow_graph::zoo::ModelSpec;
use psflow_graph::{Graph, Registry, ResourceStore, Session, Tensor};
use psflow_worker::run::Checkpoint;
use serde_json::Value;

fn psflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_psflow"))
        .args(args)
        .env("PSFLOW_THREADS", "2")
        .output()
        .expect("psflow runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "exit {:?}: {}", o.status, stderr(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Exit 2, one line on stderr containing `want`.
fn usage_error(o: &Output, want: &str) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert_eq!(e.trim_end().lines().count(), 1, "one line: {e}");
    assert!(e.contains(want), "{want:?} not in {e}");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const RESOLUTION: usize = 16;

/// One training run shared by the tests (made once per test process,
/// under the target directory): MobileNet α=0.25 at 16×16, 30 steps of 16
/// (enough for the batch-norm moving statistics to move away from 0 and 1).
fn trained_run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let run = Path::new(env!("CARGO_TARGET_TMPDIR")).join("psflow-export-run");
        let _ = std::fs::remove_dir_all(&run);
        let data = Path::new(env!("CARGO_TARGET_TMPDIR")).join("psflow-train-synthetic");
        let res = RESOLUTION.to_string();
        ok(&psflow(&[
            "train",
            "--model",
            "mobilenet",
            "--alpha",
            "0.25",
            "--resolution",
            &res,
            "--dataset",
            "synthetic",
            "--data-dir",
            s(&data),
            "--batch-size",
            "16",
            "--steps",
            "30",
            "--no-eval",
            "--progress",
            "plain",
            "--out",
            s(&run),
        ]));
        run
    })
}

/// `psflow export --json` of the shared run; the report.
fn export(out: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "export",
        "--run",
        s(trained_run()),
        "--out",
        s(out),
        "--json",
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(&psflow(&args))).unwrap()
}

/// `psflow run` of an exported graph on `x`: (logits, probabilities).
fn run_exported(model: &Path, x: &Path, out: &Path) -> (Tensor, Tensor) {
    let feed = format!("input={}", s(x));
    ok(&psflow(&[
        "run",
        "--graph",
        s(model),
        "--feed",
        &feed,
        "--fetch",
        "logits",
        "--fetch",
        "probabilities",
        "--out-dir",
        s(out),
    ]));
    (
        npy::read(out.join("logits.npy")).unwrap(),
        npy::read(out.join("probabilities.npy")).unwrap(),
    )
}

/// The inference model of the run's latest checkpoint with the variables
/// in a store, as `psflow eval` rebuilds it: (logits, probabilities) of `x`.
fn variable_graph_outputs(run: &Path, x: &Tensor) -> (Tensor, Tensor) {
    let ckpt = Checkpoint::latest(&run.join("checkpoints"))
        .unwrap()
        .expect("a checkpoint");
    let (tensors, manifest) = ckpt.load().unwrap();
    let cfg = &manifest.meta["config"];
    assert_eq!(cfg["model"], "mobilenet");
    let model = ModelSpec {
        arch: psflow_graph::zoo::Architecture::MobileNet,
        alpha: cfg["alpha"].as_f64().unwrap() as f32,
        resolution: cfg["resolution"].as_u64().unwrap() as usize,
        classes: cfg["classes"].as_u64().unwrap() as usize,
        training: false,
        seed: cfg["seed"].as_u64().unwrap(),
    }
    .build()
    .unwrap();
    // The run kept weight averages (psflow train's default): the export,
    // like psflow eval, computes with them.
    assert!(psflow_graph::train::ema::has_averages(&tensors));
    let store = Arc::new(ResourceStore::new());
    for (n, t) in psflow_graph::train::ema::averaged(tensors) {
        store.set(&n, t);
    }
    let session =
        Session::with_resources(model.graph.clone(), &Registry::standard(), store).unwrap();
    let out = session
        .run(
            &[(model.input.clone(), x.clone())],
            &[model.logits.clone(), model.predictions.clone()],
            &[],
        )
        .unwrap();
    (out[0].clone(), out[1].clone())
}

/// max |a - b| / max(|b|∞, 1e-6): relative to the tensor's scale.
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
    let scale = b.iter().fold(1e-6f64, |m, x| m.max(x.abs()));
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
        / scale
}

fn random_input(n: usize, seed: u64) -> Tensor {
    let mut st = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n * RESOLUTION * RESOLUTION * 3)
        .map(|_| {
            st ^= st << 13;
            st ^= st >> 7;
            st ^= st << 17;
            ((st >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    Tensor::new(vec![n, RESOLUTION, RESOLUTION, 3], v).unwrap()
}

#[test]
fn exported_graphs_compute_what_the_checkpoint_computes() {
    let dir = tempfile::tempdir().unwrap();
    let folded = dir.path().join("model.pb");
    let unfolded = dir.path().join("unfolded.pb");
    let r = export(&folded, &[]);
    let u = export(&unfolded, &["--no-fold"]);

    // MobileNet v1: a batch norm after each of the 27 convolutions but
    // the logits.
    assert_eq!(r["batch_norms_folded"], 27, "{r}");
    assert_eq!(r["batch_norms_left"], 0, "{r}");
    assert_eq!(u["batch_norms_folded"], 0, "{u}");
    assert_eq!(u["batch_norms_left"], 27, "{u}");
    assert_eq!(r["step"], 30);
    assert_eq!(r["model"], "mobilenet_v1_0.25_16");
    assert_eq!(r["input_shape"], serde_json::json!([-1, 16, 16, 3]));
    assert_eq!(
        r["bytes"].as_u64().unwrap(),
        std::fs::metadata(&folded).unwrap().len()
    );
    assert!(
        r["nodes"].as_u64() < u["nodes"].as_u64(),
        "folding removes nodes"
    );
    // Only the pb files: no temporary file left behind.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["model.pb", "unfolded.pb"]);

    // A frozen graph: no variables, no batch norm, standard ops only.
    let g = Graph::load(&folded).unwrap();
    let mut ops: Vec<&str> = g.nodes().iter().map(|n| n.op.as_str()).collect();
    ops.sort();
    ops.dedup();
    assert_eq!(
        ops,
        [
            "BiasAdd",
            "Const",
            "Conv2D",
            "DepthwiseConv2dNative",
            "Identity",
            "Mean",
            "Placeholder",
            "Relu6",
            "Softmax",
            "Squeeze"
        ]
    );

    for batch in [1, 5] {
        let x = random_input(batch, batch as u64);
        let xf = dir.path().join(format!("x{batch}.npy"));
        npy::write(&xf, &x).unwrap();
        let (want_logits, want_probs) = variable_graph_outputs(trained_run(), &x);
        let spread = want_logits
            .to_f64_vec()
            .iter()
            .fold(0f64, |m, v| m.max(v.abs()));
        assert!(
            spread > 1e-2,
            "logits all ~0 ({spread}): the check would be empty"
        );
        for (pb, name) in [(&unfolded, "unfolded"), (&folded, "folded")] {
            let out = dir.path().join(format!("{name}-{batch}"));
            let (logits, probs) = run_exported(pb, &xf, &out);
            let dl = rel_diff(&logits, &want_logits);
            let dp = rel_diff(&probs, &want_probs);
            eprintln!("{name} batch {batch}: logits {dl:.2e}, probabilities {dp:.2e}");
            assert!(
                dl < 1e-4 && dp < 1e-4,
                "{name} batch {batch}: logits {dl:e}, probabilities {dp:e}"
            );
        }
    }
}

#[test]
fn prints_a_one_line_summary() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.pb");
    let o = psflow(&["export", "--run", s(trained_run()), "--out", s(&out)]);
    let text = ok(&o);
    assert_eq!(text.lines().count(), 1, "{text}");
    for want in [
        "mobilenet_v1_0.25_16 step 30",
        "27 batch norms folded",
        "bytes",
        "logits",
    ] {
        assert!(text.contains(want), "{want:?} not in {text}");
    }
    // Exporting again replaces the file.
    ok(&psflow(&[
        "export",
        "--run",
        s(trained_run()),
        "--out",
        s(&out),
    ]));
}

#[test]
fn bad_runs_and_outputs_exit_2_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.pb");
    let missing = dir.path().join("no-such-run");
    usage_error(
        &psflow(&["export", "--run", s(&missing), "--out", s(&out)]),
        "does not exist",
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    usage_error(
        &psflow(&["export", "--run", s(&empty), "--out", s(&out)]),
        "has no checkpoint",
    );
    assert!(!out.exists());

    let run = trained_run();
    usage_error(
        &psflow(&["export", "--run", s(run), "--out", s(dir.path())]),
        "is a directory",
    );
    // A parent that is a file: the output cannot be created.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let under_file = file.join("m.pb");
    usage_error(
        &psflow(&["export", "--run", s(run), "--out", s(&under_file)]),
        "cannot write",
    );
    // Missing --out: clap's usage error.
    let o = psflow(&["export", "--run", s(run)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--out"), "{}", stderr(&o));

    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["empty", "file"], "nothing written");
}
