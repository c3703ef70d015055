//! Pruning to fetches and targets follows data and control inputs and
//! stops at fed tensors.

mod common;

use std::collections::HashSet;

use common::*;
use psflow_graph::prune::needed_nodes;
use psflow_graph::{DType, Graph, Session, TensorName};

fn sample() -> Graph {
    let mut g = Graph::new();
    for n in [
        placeholder("x", DType::F32, &[-1, 3]),
        placeholder("unused_input", DType::F32, &[2]),
        op("a", "Identity", &["x"]),
        op("init", "NoOp", &[]),
        op("log", "NoOp", &["^init"]),
        op("b", "Identity", &["a", "^log"]),
        op("side", "ZerosLike", &["a"]),
        op("c", "Identity", &["unused_input"]),
    ] {
        g.add(n).unwrap();
    }
    g
}

fn names(g: &Graph, mask: &[bool]) -> Vec<String> {
    g.nodes()
        .iter()
        .zip(mask)
        .filter(|(_, &m)| m)
        .map(|(n, _)| n.name.clone())
        .collect()
}

#[test]
fn follows_control_inputs() {
    let g = sample();
    let m = needed_nodes(&g, &[t("b")], &[], &HashSet::new()).unwrap();
    assert_eq!(names(&g, &m), ["x", "a", "init", "log", "b"]);
}

#[test]
fn stops_at_feeds_and_adds_targets() {
    let g = sample();
    let feeds: HashSet<TensorName> = [t("a")].into();
    let m = needed_nodes(&g, &[t("b")], &["side".into()], &feeds).unwrap();
    assert_eq!(names(&g, &m), ["init", "log", "b", "side"]);
    // Fetching a fed tensor needs nothing.
    let m = needed_nodes(&g, &[t("a")], &[], &feeds).unwrap();
    assert_eq!(names(&g, &m), Vec::<String>::new());
}

#[test]
fn unknown_fetches_and_targets_are_named() {
    let g = sample();
    let err = needed_nodes(&g, &[t("nope:1")], &[], &HashSet::new()).unwrap_err();
    assert!(err.to_string().contains("nope:1"), "{err}");
    let err = needed_nodes(&g, &[], &["train_op".into()], &HashSet::new()).unwrap_err();
    assert!(err.to_string().contains("train_op"), "{err}");
}

#[test]
fn pruned_graph_keeps_order_and_runs() {
    let g = sample();
    let p = g.prune(&[t("b")], &[]).unwrap();
    let kept: Vec<_> = p.nodes().iter().map(|n| n.name.as_str()).collect();
    assert_eq!(kept, ["x", "a", "init", "log", "b"]);
    // The session's plan is the same pruned set, and an unneeded
    // placeholder need not be fed.
    let s = Session::new(g).unwrap();
    let plan = s.plan_nodes(&[], &[t("b")], &[]).unwrap();
    let mut plan_sorted = plan.clone();
    plan_sorted.sort();
    assert_eq!(plan_sorted, ["a", "b", "init", "log", "x"]);
    let pos = |n: &str| plan.iter().position(|p| p == n).unwrap();
    assert!(pos("x") < pos("a") && pos("init") < pos("log") && pos("log") < pos("b"));
}
