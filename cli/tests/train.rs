//! `psflow train`, `psflow eval` and `psflow bench train` through the real
//! binary, on the synthetic dataset (generated once under the target
//! directory).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn psflow(args: &[&str]) -> Output {
    psflow_threads(args, 2)
}

fn psflow_threads(args: &[&str], threads: usize) -> Output {
    Command::new(env!("CARGO_BIN_EXE_psflow"))
        .args(args)
        .env("PSFLOW_THREADS", threads.to_string())
        .output()
        .expect("psflow runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: &Output) {
    assert!(o.status.success(), "exit {:?}: {}", o.status, stderr(o));
}

/// The synthetic dataset, shared by the tests (its writer is safe for
/// concurrent processes).
fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("psflow-train-synthetic")
}

fn train(out: &Path, extra: &[&str]) -> Output {
    train_threads(out, extra, 2)
}

fn train_threads(out: &Path, extra: &[&str], threads: usize) -> Output {
    let data = data_dir();
    let mut args = vec!["train", "--model", "mobilenet"];
    if !extra.contains(&"--alpha") {
        args.extend_from_slice(&["--alpha", "0.25"]);
    }
    args.extend_from_slice(&[
        "--dataset",
        "synthetic",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--progress",
        "plain",
    ]);
    args.extend_from_slice(extra);
    psflow_threads(&args, threads)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap()
}

/// MobileNet α=0.25 learns the synthetic shapes in 800 steps of 64
/// (about 5 epochs): measured 0.82-0.96 top-1 (four runs, before the
/// kernels' reductions were made deterministic) on the 2000 test images
/// (chance is 0.10); the bar leaves a margin for other machines.
#[test]
fn learns_synthetic_and_writes_the_run_directory() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let o = train(
        &run,
        &[
            "--batch-size",
            "64",
            "--steps",
            "800",
            "--no-augment",
            "--checkpoint-every",
            "400",
            "--log-every",
            "50",
        ],
    );
    ok(&o);
    let s = read_json(&run.join("summary.json"));
    let top1 = s["top1"].as_f64().unwrap();
    let top5 = s["top5"].as_f64().unwrap();
    assert!(top1 >= 0.70, "top-1 {top1} after 800 steps: {s}");
    assert!(top5 >= top1 && top5 <= 1.0, "{s}");
    assert_eq!(s["model"], "mobilenet_v1_0.25_32");
    assert_eq!(s["steps"], 800);
    assert_eq!(s["batch_size"], 64);
    assert_eq!(s["dataset"], "synthetic");
    assert_eq!(s["optimizer"], "rmsprop");
    let params = s["params"].as_u64().unwrap();
    assert!(params > 100_000 && params < 400_000, "{s}");
    assert_eq!(s["model_bytes"].as_u64().unwrap(), 4 * params);
    assert!(s["images_per_sec"].as_f64().unwrap() > 0.0);
    assert!(s["wall_seconds"].as_f64().unwrap() > 0.0);
    // The learning rate decays 0.94 every 2 epochs (2 × 156 steps): the
    // last step, 799, is in the third stair.
    let lr = s["final_learning_rate"].as_f64().unwrap();
    assert!((lr - 0.01 * 0.94f64.powi(2)).abs() < 1e-6, "lr {lr}");
    let losses = &s["final_losses"];
    assert!(losses["total"].as_f64().unwrap() < 1.0, "{s}");

    let events: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("events.out.tfevents.")
        })
        .collect();
    assert_eq!(events.len(), 1);
    // 16 logging points × 5 scalars, well over a few hundred bytes.
    assert!(events[0].metadata().unwrap().len() > 2000);
    let svg = std::fs::read_to_string(run.join("loss.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") || svg.starts_with("<?xml"),
        "{svg:.80}"
    );
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    assert_eq!(latest.trim(), "ckpt-800");
    assert!(run.join("checkpoints/ckpt-400/manifest.json").is_file());

    // psflow eval reads the same checkpoint and finds the same accuracy.
    let o = psflow(&["eval", "--run", run.to_str().unwrap(), "--json"]);
    ok(&o);
    let e: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(e["step"], 800);
    assert_eq!(e["examples"], 2000);
    assert_eq!(e["top1"].as_f64().unwrap(), top1);
    assert_eq!(e["top5"].as_f64().unwrap(), top5);
}

/// MobileNet α=0.5 learns the synthetic dataset to ≥ 95 % test top-1:
/// the default recipe (RMSProp 0.9/0.9/1.0, lr 0.01 × 0.94 every 2
/// epochs, no augmentation for this set: the generator already jitters
/// colour, position and noise) with batch 64 for 10 epochs of its 10,000
/// training images. Measured 0.984 (1560 steps, 92 s on the loaded
/// 2-core machine, about 36 s quiet).
#[test]
fn learns_synthetic_to_95_percent() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let o = train(
        &run,
        &[
            "--alpha",
            "0.5",
            "--batch-size",
            "64",
            "--epochs",
            "10",
            "--checkpoint-every",
            "0",
            "--log-every",
            "100",
        ],
    );
    ok(&o);
    let s = read_json(&run.join("summary.json"));
    let top1 = s["top1"].as_f64().unwrap();
    assert!(top1 >= 0.95, "synthetic top-1 {top1} < 0.95: {s}");
}

/// Every tensor of a checkpoint's data file (values, names, order).
fn checkpoint_data(run: &Path, step: u64) -> (Vec<u8>, Value) {
    let dir = run.join(format!("checkpoints/ckpt-{step}"));
    let data = std::fs::read(dir.join("data-00000-of-00001")).unwrap();
    let manifest = read_json(&dir.join("manifest.json"));
    (data, manifest["tensors"].clone())
}

/// N steps straight and N/2 + `--resume` to N give identical variables,
/// optimizer slots, global_step and random-op counters (with augmentation
/// and dropout on, so the pipeline position and RNG state matter), on two
/// kernel threads: every parallel reduction adds its partial sums in a
/// fixed order (kernels/tests/determinism.rs).
#[test]
fn resume_continues_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    let split = dir.path().join("split");
    let common = ["--batch-size", "16", "--no-eval", "--checkpoint-every", "0"];
    fn with<'a>(common: &[&'a str], steps: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut v = common.to_vec();
        v.extend_from_slice(&["--steps", steps]);
        v.extend_from_slice(extra);
        v
    }
    let with = |steps, extra| with(&common, steps, extra);
    let train = |out: &Path, extra: &[&str]| train_threads(out, extra, 2);
    ok(&train(&straight, &with("24", &[])));
    ok(&train(&split, &with("12", &[])));
    let o = train(&split, &with("24", &["--resume"]));
    ok(&o);
    let (a, ta) = checkpoint_data(&straight, 24);
    let (b, tb) = checkpoint_data(&split, 24);
    assert_eq!(ta, tb, "tensor lists differ");
    let names: Vec<&str> = ta
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for want in [
        "global_step",
        "MobilenetV1/Conv2d_0/weights",
        "MobilenetV1/Conv2d_0/weights/RMSProp",
        "MobilenetV1/Conv2d_0/weights/RMSProp_1",
        "MobilenetV1/Conv2d_0/BatchNorm/moving_mean",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert!(a == b, "the resumed run's tensors differ");
    let s = read_json(&split.join("summary.json"));
    assert_eq!(s["resumed_from_step"], 12);
    assert_eq!(s["steps"], 24);

    // The first half really differs from the end (the test can fail).
    let (half, _) = checkpoint_data(&split, 12);
    assert!(half != a);

    // Resuming with other hyper-parameters is refused.
    let o = train(&split, &with("30", &["--resume", "--lr", "0.05"]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("differ"), "{}", stderr(&o));
}

#[test]
fn bad_flags_exit_2_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let out = out.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--model", "lenet", "--dataset", "synthetic", "--steps", "1"],
            "unknown model",
        ),
        (
            &[
                "--model",
                "mobilenet",
                "--dataset",
                "synthetic",
                "--steps",
                "1",
                "--moving-average-decay",
                "1",
            ],
            "--moving-average-decay must be in [0, 1)",
        ),
        (
            &["--model", "mobilenet", "--dataset", "mnist", "--steps", "1"],
            "unknown dataset",
        ),
        (
            &["--model", "mobilenet", "--dataset", "synthetic"],
            "--steps",
        ),
        (
            &[
                "--model",
                "mobilenet",
                "--dataset",
                "synthetic",
                "--steps",
                "1",
                "--epochs",
                "1",
            ],
            "cannot be used with",
        ),
        (
            &[
                "--model",
                "mobilenet",
                "--dataset",
                "synthetic",
                "--steps",
                "0",
            ],
            "--steps",
        ),
        (
            &[
                "--model",
                "mobilenet",
                "--dataset",
                "synthetic",
                "--steps",
                "1",
                "--batch-size",
                "0",
            ],
            "--batch-size",
        ),
        (
            &[
                "--model",
                "mobilenet",
                "--dataset",
                "synthetic",
                "--steps",
                "1",
                "--alpha",
                "1.5",
            ],
            "alpha",
        ),
        (
            &[
                "--model",
                "resnet18",
                "--dataset",
                "synthetic",
                "--steps",
                "1",
                "--alpha",
                "0.5",
            ],
            "alpha",
        ),
        (
            &[
                "--model",
                "mobilenet",
                "--dataset",
                "synthetic",
                "--steps",
                "1",
                "--optimizer",
                "lbfgs",
            ],
            "lbfgs",
        ),
        (
            &[
                "--model",
                "mobilenet",
                "--dataset",
                "cifar10",
                "--steps",
                "1",
                "--data-dir",
                "/nonexistent/psflow",
            ],
            "cifar",
        ),
    ];
    for (args, needle) in cases {
        let mut v = vec!["train", "--out", out];
        v.extend_from_slice(args);
        let o = psflow(&v);
        assert_eq!(o.status.code(), Some(2), "{v:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains(needle), "{v:?}: {err:?} lacks {needle:?}");
    }
    let o = psflow(&["eval", "--run", out]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no checkpoint"), "{}", stderr(&o));
}

#[test]
fn an_existing_run_needs_resume() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let args = ["--batch-size", "8", "--steps", "2", "--no-eval"];
    ok(&train(&run, &args));
    let o = train(&run, &args);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));
}

#[test]
fn bench_train_reports_images_per_second() {
    let o = psflow(&[
        "bench",
        "train",
        "--model",
        "mobilenet",
        "--alpha",
        "0.25",
        "--resolution",
        "24",
        "--batch-size",
        "16",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--json",
    ]);
    ok(&o);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let ips = v["images_per_sec"].as_f64().unwrap();
    assert!(ips > 0.0 && ips.is_finite(), "{v}");
    assert_eq!(v["model"], "mobilenet_v1_0.25_24");
    assert_eq!(v["steps"], 3);
}

/// Where Debian's `dataset-fashion-mnist` puts the files (`scripts/test`
/// installs it).
const FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// MobileNet α=0.5 at resolution 32 on Fashion-MNIST, 2 epochs, with
/// `psflow train`'s defaults (TF-slim's recipe: RMSProp ρ 0.9, μ 0.9,
/// ε 1, lr 0.01 × 0.94 every 2 epochs, L2 4e-5, weight averages with
/// decay 0.9999 and TF's num_updates cap; batch 128; no augmentation for
/// Fashion-MNIST) reaches the 0.86 (0.863-0.874 over seeds and
/// thread counts, docs/training.md; TensorFlow's Keras MobileNet without
/// averaging: 0.856 quoted, 0.83-0.85 measured here). `psflow eval` and
/// `psflow export` of the run use the averages too, and `--last-weights`
/// gives the last weights' figure the summary reports beside them.
#[test]
fn fashion_mnist_learns_in_2_epochs() {
    assert!(
        Path::new(FASHION_MNIST).is_dir(),
        "{FASHION_MNIST} is missing: apt-get install dataset-fashion-mnist (scripts/test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let o = psflow_threads(
        &[
            "train",
            "--model",
            "mobilenet",
            "--alpha",
            "0.5",
            "--resolution",
            "32",
            "--dataset",
            "fashion-mnist",
            "--epochs",
            "2",
            "--out",
            run.to_str().unwrap(),
            "--progress",
            "plain",
            "--log-every",
            "200",
        ],
        2,
    );
    ok(&o);
    let s = read_json(&run.join("summary.json"));
    let top1 = s["top1"].as_f64().unwrap();
    assert_eq!(s["dataset"], "fashion-mnist");
    assert_eq!(s["epochs"], 2.0);
    assert!(
        top1 >= 0.86,
        "Fashion-MNIST top-1 {top1} < 0.86 after 2 epochs: {s}"
    );
    assert_eq!(s["weights"], "moving_average", "{s}");
    assert_eq!(s["moving_average_decay"], 0.9999, "{s}");
    let last = s["last_weights"]["top1"].as_f64().unwrap();
    assert!(last > 0.7 && last != top1, "{s}");

    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "--run", run.to_str().unwrap(), "--json"];
        args.extend_from_slice(extra);
        let o = psflow_threads(&args, 2);
        ok(&o);
        serde_json::from_slice::<Value>(&o.stdout).unwrap()
    };
    let e = eval(&[]);
    assert_eq!(e["weights"], "moving_average");
    assert_eq!(e["top1"].as_f64().unwrap(), top1, "{e}");
    let e = eval(&["--last-weights"]);
    assert_eq!(e["weights"], "last");
    assert_eq!(e["top1"].as_f64().unwrap(), last, "{e}");

    let pb = dir.path().join("model.pb");
    let o = psflow(&[
        "export",
        "--run",
        run.to_str().unwrap(),
        "--out",
        pb.to_str().unwrap(),
        "--json",
    ]);
    ok(&o);
    let x: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(x["weights"], "moving_average", "{x}");
}

/// `--device cuda:0`: without CUDA a usage error that leaves no run
/// directory behind; on a GPU machine a short run on the GPU whose summary
/// names the device and whose loss is finite (the command fails otherwise).
#[test]
fn device_cuda_trains_on_the_gpu_or_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let data = dir.path().join("data");
    let o = psflow(&[
        "train",
        "--model",
        "mobilenet",
        "--alpha",
        "0.25",
        "--resolution",
        "16",
        "--dataset",
        "synthetic",
        "--data-dir",
        data.to_str().unwrap(),
        "--steps",
        "4",
        "--batch-size",
        "16",
        "--out",
        run.to_str().unwrap(),
        "--progress",
        "plain",
        "--device",
        "cuda:0",
    ]);
    match psflow_kernels::cuda::cuda_device_count() {
        Ok(n) if n > 0 => {
            ok(&o);
            let s = read_json(&run.join("summary.json"));
            assert!(s["device"].as_str().unwrap().starts_with("cuda:0"), "{s}");
            assert!(s["top1"].as_f64().unwrap() >= 0.0);
        }
        _ => {
            assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
            assert!(stderr(&o).contains("use --device cpu"), "{}", stderr(&o));
            assert!(!run.exists(), "a refused run left {}", run.display());
        }
    }
}
