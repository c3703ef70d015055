//! `psflow graph partition G.pb --ps P --workers W`: the placement of the
//! graph's variables on P parameter-server shards and the partitions the
//! cluster would run (one worker graph per worker, the shard side per PS),
//! as tables or JSON. Nothing runs; user errors exit 2 (see `graph.rs`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use psflow_coordinator::partition::training::{split_training, TrainingPlan, TrainingSplitConfig};
use psflow_coordinator::placement::PlacementConfig;
use psflow_graph::Graph;
use serde_json::{json, Value};

use super::graph::{group, human};
use crate::table::Table;

#[derive(Args)]
pub struct PartitionArgs {
    /// The GraphDef (binary protobuf), e.g. from `psflow graph build --train`.
    pub graph: PathBuf,
    /// Parameter-server shards (at least 1).
    #[arg(long)]
    pub ps: usize,
    /// Workers (at least 1); every worker runs the same worker graph.
    #[arg(long)]
    pub workers: usize,
    /// Variables larger than this many MiB are split across shards.
    #[arg(long, default_value_t = 4.0)]
    pub split_threshold_mib: f64,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &PartitionArgs) -> Result<()> {
    if args.ps == 0 {
        bail!("--ps 0: a cluster needs at least one parameter-server shard");
    }
    if args.workers == 0 {
        bail!("--workers 0: a cluster needs at least one worker");
    }
    let threshold = args.split_threshold_mib * (1u64 << 20) as f64;
    if !threshold.is_finite() || threshold < 1.0 {
        bail!(
            "--split-threshold-mib {}: must be a positive size",
            args.split_threshold_mib
        );
    }
    let graph = Graph::load(&args.graph)?;
    let cfg = TrainingSplitConfig {
        placement: PlacementConfig {
            shards: args.ps,
            split_threshold: threshold as u64,
        },
        incarnation: 1,
    };
    let plan = split_training(&graph, &cfg)
        .with_context(|| format!("partitioning {}", args.graph.display()))?;
    let tasks = tasks(&plan, args.workers);
    if args.json {
        let v = json!({
            "graph": args.graph,
            "ps": args.ps,
            "workers": args.workers,
            "split_threshold_bytes": cfg.placement.split_threshold,
            "imbalance": finite(plan.placement.imbalance()),
            "placement": plan.placement,
            "shards": plan.shards,
            "tasks": tasks,
            "pulls": plan.pulls,
            "pushes": plan.pushes,
            "worker_targets": plan.worker_targets,
            "ps_updates": plan.ps_updates,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_tables(args, &plan, &tasks);
    }
    Ok(())
}

fn finite(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        Value::Null
    }
}

/// One row per task: the worker graph for each worker, the shard side
/// (variables and slots held; a send per pull, a receive per push, per
/// worker) for each PS.
fn tasks(plan: &TrainingPlan, workers: usize) -> Vec<Value> {
    let mut out = Vec::new();
    for w in 0..workers {
        out.push(json!({
            "task": format!("/job:worker/replica:0/task:{w}"),
            "kind": "worker",
            "nodes": plan.worker.len(),
            "sends": plan.pushes.len(),
            "recvs": plan.pulls.len(),
        }));
    }
    for s in &plan.shards {
        let held: usize = s.vars.iter().map(|v| 1 + v.slots.len()).sum();
        let sends = plan.pulls.iter().filter(|p| p.shard == s.index).count() * workers;
        let recvs = plan.pushes.iter().filter(|p| p.shard == s.index).count() * workers;
        out.push(json!({
            "task": format!("/job:ps/replica:0/task:{}", s.index),
            "kind": "ps",
            "nodes": held,
            "sends": sends,
            "recvs": recvs,
        }));
    }
    out
}

fn print_tables(args: &PartitionArgs, plan: &TrainingPlan, tasks: &[Value]) {
    let mut t = Table::new(&["shard", "variables", "parts", "slots", "bytes", ""])
        .right_align(&[1, 2, 3, 4]);
    for s in &plan.shards {
        let whole = s.vars.iter().filter(|v| v.part.is_none()).count();
        let parts = s.vars.len() - whole;
        let slots: usize = s.vars.iter().map(|v| v.slots.len()).sum();
        t.row(vec![
            format!("ps/{}", s.index),
            whole.to_string(),
            parts.to_string(),
            slots.to_string(),
            group(s.bytes),
            format!("{}B", human(s.bytes)),
        ]);
    }
    print!("{}", t.render());
    let split: Vec<&str> = plan
        .placement
        .shards
        .iter()
        .flat_map(|s| &s.vars)
        .filter(|v| v.part.as_ref().is_some_and(|p| p.index == 0))
        .map(|v| v.name.as_str())
        .collect();
    println!(
        "{}: {} shards, max/min bytes {:.3}; {} variable(s) split over {} MiB{}",
        args.graph.display(),
        args.ps,
        plan.placement.imbalance(),
        split.len(),
        args.split_threshold_mib,
        if split.is_empty() {
            String::new()
        } else {
            format!(" ({})", split.join(", "))
        },
    );
    println!();
    let mut t = Table::new(&["task", "nodes", "sends", "recvs"]).right_align(&[1, 2, 3]);
    for task in tasks {
        t.row(vec![
            task["task"].as_str().unwrap_or_default().to_string(),
            task["nodes"].to_string(),
            task["sends"].to_string(),
            task["recvs"].to_string(),
        ]);
    }
    print!("{}", t.render());
    println!(
        "worker: pulls {} variable tensor(s), pushes {} gradient/assign tensor(s), runs {}",
        plan.pulls.len(),
        plan.pushes.len(),
        if plan.worker_targets.len() == 1 {
            plan.worker_targets[0].clone()
        } else {
            format!("{} sends", plan.worker_targets.len())
        }
    );
    println!("ps: node counts are variables and slots held; sends and recvs count all workers");
}
