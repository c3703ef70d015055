//! `psflow graph partition` through the real binary.

use std::path::Path;
use std::process::{Command, Output};

use psflow_graph::{Graph, Node};
use serde_json::Value;

fn psflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_psflow"))
        .args(args)
        .output()
        .expect("psflow runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn build_train_graph(dir: &Path) -> String {
    let g = dir.join("train.pb");
    let o = psflow(&[
        "graph",
        "build",
        "--model",
        "mobilenet",
        "--alpha",
        "0.5",
        "--train",
        "--out",
        g.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    g.to_str().unwrap().to_string()
}

#[test]
fn shows_placement_and_partitions_as_json_and_tables() {
    let dir = tempfile::tempdir().unwrap();
    let g = build_train_graph(dir.path());
    let o = psflow(&[
        "graph",
        "partition",
        &g,
        "--ps",
        "2",
        "--workers",
        "3",
        "--split-threshold-mib",
        "0.015625",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ps"], 2);
    let shards = v["placement"]["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    let bytes: Vec<f64> = shards
        .iter()
        .map(|s| s["bytes"].as_f64().unwrap())
        .collect();
    assert!(
        bytes[0].max(bytes[1]) / bytes[0].min(bytes[1]) < 1.1,
        "{bytes:?}"
    );
    // At 0.015625 MiB (16 KiB) the [3, 3, 512, 1] depthwise filters
    // (18 KiB) split by rows into parts on both shards; pointwise filters
    // ([1, 1, …]) have one row and never split.
    let parts: Vec<&Value> = shards
        .iter()
        .flat_map(|s| s["vars"].as_array().unwrap())
        .filter(|v| v["part"].is_object())
        .collect();
    assert!(!parts.is_empty());
    for p in &parts {
        assert!(p["name"].as_str().unwrap().contains("depthwise"), "{p}");
        assert!(p["part"]["rows"]["end"].as_u64() > p["part"]["rows"]["start"].as_u64());
    }
    let tasks = v["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 5);
    assert_eq!(tasks[0]["kind"], "worker");
    assert!(tasks[0]["recvs"].as_u64().unwrap() > 50, "{}", tasks[0]);
    // The training graph pushes every variable's gradient (a part's for a
    // split variable) and the batch-norm moving statistics.
    let pushes = v["pushes"].as_array().unwrap();
    let kinds = |k: &str| pushes.iter().filter(|p| p["kind"] == k).count();
    assert!(kinds("gradient") >= 83, "{}", kinds("gradient"));
    assert_eq!(kinds("assign"), 54);
    assert_eq!(kinds("gradient") + kinds("assign"), pushes.len());
    let ps_sends: u64 = tasks[3..]
        .iter()
        .map(|t| t["sends"].as_u64().unwrap())
        .sum();
    assert_eq!(ps_sends, 3 * tasks[0]["recvs"].as_u64().unwrap());

    let o = psflow(&["graph", "partition", &g, "--ps", "3", "--workers", "1"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    for want in [
        "ps/0",
        "ps/2",
        "max/min bytes",
        "/job:worker/replica:0/task:0",
        "/job:ps/replica:0/task:2",
    ] {
        assert!(out.contains(want), "{want} missing in:\n{out}");
    }
}

fn fails_with_one_line(args: &[&str], want: &str) {
    let o = psflow(args);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o.stdout));
    let e = text(&o.stderr);
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    assert!(e.contains(want), "{want} not in {e}");
}

#[test]
fn bad_input_exits_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let g = build_train_graph(dir.path());
    fails_with_one_line(
        &["graph", "partition", &g, "--ps", "0", "--workers", "1"],
        "--ps 0",
    );
    fails_with_one_line(
        &["graph", "partition", &g, "--ps", "1", "--workers", "0"],
        "--workers 0",
    );

    let mut bad = Graph::new();
    bad.add(Node::new("x", "FancyOp")).unwrap();
    let p = dir.path().join("unknown.pb");
    std::fs::write(&p, bad.to_graph_def_bytes()).unwrap();
    fails_with_one_line(
        &[
            "graph",
            "partition",
            p.to_str().unwrap(),
            "--ps",
            "1",
            "--workers",
            "1",
        ],
        "FancyOp",
    );

    let mut cyc = Graph::new();
    cyc.add(Node::new("a", "Identity").input("b")).unwrap();
    cyc.add(Node::new("b", "Identity").input("a")).unwrap();
    let p = dir.path().join("cycle.pb");
    std::fs::write(&p, cyc.to_graph_def_bytes()).unwrap();
    fails_with_one_line(
        &[
            "graph",
            "partition",
            p.to_str().unwrap(),
            "--ps",
            "2",
            "--workers",
            "1",
        ],
        "cycle",
    );
    fails_with_one_line(
        &[
            "graph",
            "partition",
            "/nonexistent.pb",
            "--ps",
            "2",
            "--workers",
            "1",
        ],
        "/nonexistent.pb",
    );
}
