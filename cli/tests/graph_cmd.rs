//! `psflow graph build` and `psflow graph summary` through the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use psflow_graph::Graph;
use serde_json::Value;

fn psflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_psflow"))
        .args(args)
        .output()
        .expect("psflow runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

fn build(dir: &Path, name: &str, extra: &[&str]) -> (PathBuf, Value) {
    let out = dir.join(name);
    let mut args = vec!["graph", "build", "--out", out.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let v = json(&psflow(&args));
    (out, v)
}

#[test]
fn builds_a_cifar_mobilenet_and_summarises_it() {
    let dir = tempfile::tempdir().unwrap();
    let (g, built) = build(
        dir.path(),
        "m.pb",
        &[
            "--model",
            "mobilenet",
            "--alpha",
            "1.0",
            "--resolution",
            "32",
            "--classes",
            "10",
        ],
    );
    assert_eq!(built["model"], "mobilenet_v1_1.00_32");
    assert_eq!(built["training"], false);
    assert_eq!(built["input"], "input:0");
    assert_eq!(built["logits"], "MobilenetV1/Logits/SpatialSqueeze:0");
    assert_eq!(built["labels"], Value::Null);
    assert_eq!(built["init"], "init");
    // 11.6 M multiply-adds at 32×32 (see graph/tests/zoo.rs for the count).
    assert_eq!(built["macs"], 11_596_288);
    assert_eq!(built["trainable_params"], 3_217_226);
    assert_eq!(built["moving_average_updates"], serde_json::json!([]));
    let graph = Graph::load(&g).unwrap();
    assert!(graph
        .node("MobilenetV1/Conv2d_13_pointwise/Conv2D")
        .is_some());
    assert_eq!(graph.len(), built["nodes"].as_u64().unwrap() as usize);

    let s = json(&psflow(&[
        "graph",
        "summary",
        g.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(s["macs"], 11_596_288);
    assert_eq!(s["trainable_params"], 3_217_226);
    assert_eq!(s["params"], 3_217_226 + 2 * 10_944);
    assert_eq!(s["model_bytes"], 4 * (3_217_226 + 2 * 10_944));
    let layers = s["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 28);
    assert_eq!(layers[0]["name"], "MobilenetV1/Conv2d_0");
    assert_eq!(layers[0]["output"], serde_json::json!([1, 16, 16, 32]));
    assert_eq!(layers[0]["macs"], 16 * 16 * 27 * 32);
    assert_eq!(layers[1]["op"], "DepthwiseConv2dNative");
    assert_eq!(layers[27]["name"], "MobilenetV1/Logits/Conv2d_1c_1x1");
    assert_eq!(s["inputs"][0]["shape"], serde_json::json!([-1, 32, 32, 3]));

    // The table for people.
    let o = psflow(&["graph", "summary", g.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("MobilenetV1/Conv2d_7_pointwise"), "{text}");
    assert!(
        text.contains("multiply-adds per example: 11,596,288 (11.60 M)"),
        "{text}"
    );
    assert!(text.contains("parameters: 3,217,226 trainable"), "{text}");
}

#[test]
fn builds_training_and_standard_and_resnet_graphs() {
    let dir = tempfile::tempdir().unwrap();
    let (_, t) = build(
        dir.path(),
        "t.pb",
        &[
            "--model",
            "mobilenet",
            "--alpha",
            "0.25",
            "--resolution",
            "16",
            "--train",
        ],
    );
    assert_eq!(t["training"], true);
    assert_eq!(t["labels"], "labels:0");
    assert_eq!(t["moving_average_updates"].as_array().unwrap().len(), 54);
    let trainable = t["trainable"].as_array().unwrap();
    let dw = trainable
        .iter()
        .find(|v| v["name"] == "MobilenetV1/Conv2d_1_depthwise/depthwise_weights")
        .unwrap();
    assert_eq!(dw["regularize"], false);
    assert_eq!(dw["shape"], serde_json::json!([3, 3, 8, 1]));

    // --model mobilenet-standard and --conv standard are the same graph.
    let (a, sa) = build(
        dir.path(),
        "a.pb",
        &["--model", "mobilenet-standard", "--alpha", "0.5"],
    );
    let (b, sb) = build(
        dir.path(),
        "b.pb",
        &[
            "--model",
            "mobilenet",
            "--conv",
            "standard",
            "--alpha",
            "0.5",
        ],
    );
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(sa["model"], "mobilenet_v1_0.50_32_standard");
    assert_eq!(sa["macs"], sb["macs"]);

    let (_, r) = build(dir.path(), "r.pb", &["--model", "resnet18"]);
    assert_eq!(r["trainable_params"], 11_173_962);
    assert_eq!(r["logits"], "resnet_v1_18/SpatialSqueeze:0");
}

#[test]
fn summarises_a_graph_tensorflow_wrote() {
    let g = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../graph/tests/fixtures/mobilenet_fusedbn_a025.pb");
    let s = json(&psflow(&[
        "graph",
        "summary",
        g.to_str().unwrap(),
        "--json",
    ]));
    // Keras' MobileNet α=0.25, 32×32, 10 classes: the same counts as ours.
    assert_eq!(s["macs"], 834_688);
    assert_eq!(s["trainable_params"], 215_642);
    assert_eq!(s["params"], 221_114);
    assert_eq!(s["layers"].as_array().unwrap().len(), 28);
}

fn fails_with_2(args: &[&str], wanted: &str) {
    let o = psflow(args);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains(wanted), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_flags_are_clear_errors_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("g.pb");
    let out = out.to_str().unwrap();
    let b = |extra: &[&str]| {
        let mut a = vec!["graph", "build", "--out", out];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (b(&["--model", "mobilenet", "--alpha", "0"]), "--alpha 0"),
        (b(&["--model", "mobilenet", "--alpha", "1.5"]), "(0, 1]"),
        (b(&["--model", "mobilenet", "--alpha", "-0.5"]), "(0, 1]"),
        (
            b(&["--model", "mobilenet", "--resolution", "7"]),
            "at least 8",
        ),
        (
            b(&["--model", "mobilenet", "--classes", "0"]),
            "--classes 0",
        ),
        (b(&["--model", "vgg16"]), "unknown model \"vgg16\""),
        (
            b(&["--model", "resnet50", "--alpha", "0.5"]),
            "no width multiplier",
        ),
        (
            b(&["--model", "resnet18", "--conv", "standard"]),
            "MobileNet only",
        ),
        (b(&["--model", "mobilenet", "--alpha", "abc"]), "--alpha"),
        (b(&[]), "--model"),
    ];
    for (args, wanted) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_with_2(&args, wanted);
    }
    // Nothing was written by the failed builds.
    assert!(!Path::new(out).exists());
    let missing = dir.path().join("nope.pb");
    fails_with_2(
        &["graph", "summary", missing.to_str().unwrap()],
        "No such file",
    );
    let junk = dir.path().join("junk.pb");
    std::fs::write(&junk, b"not a graph at all").unwrap();
    fails_with_2(
        &["graph", "summary", junk.to_str().unwrap()],
        "not a TensorFlow GraphDef",
    );
    let nodir = dir.path().join("no/such/dir/g.pb");
    fails_with_2(
        &[
            "graph",
            "build",
            "--model",
            "mobilenet",
            "--out",
            nodir.to_str().unwrap(),
        ],
        "does not exist",
    );
}
