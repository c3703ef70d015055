//! A [`Profile`] of one step for people (two tables) and programs (JSON):
//! time per op type and the slowest nodes. The step is scheduled serially
//! by default (one kernel at a time, each with every thread: per-kernel
//! times are clean and add up to the step) or as the timed steps run
//! (`--profile-schedule parallel`).
//!
//! Times are kernel **self** times (a kernel's interval less the kernels
//! rayon ran nested inside it on the same thread); percentages are of their
//! sum, the step's kernel work over all threads, which can exceed the step's
//! wall time when kernels run side by side. "Outside kernels" is the step's
//! wall time during which no kernel ran: planning, feed checks, scheduling.

use psflow_graph::{NodeTiming, Profile};
use serde_json::{json, Value};

use crate::table::Table;

/// Slowest nodes listed.
pub const TOP_NODES: usize = 15;

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percent(part: std::time::Duration, whole: std::time::Duration) -> f64 {
    if whole.is_zero() {
        0.0
    } else {
        100.0 * part.as_secs_f64() / whole.as_secs_f64()
    }
}

fn shapes(n: &NodeTiming) -> String {
    n.output_shapes
        .iter()
        .map(|s| {
            let dims: Vec<String> = s.iter().map(usize::to_string).collect();
            format!("[{}]", dims.join("x"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The summary line and the two tables.
pub fn render(p: &Profile, threads: usize) -> String {
    let kernel = p.kernel_total();
    let busy = p.busy();
    let mut out = format!(
        "profile of one step ({} schedule): {:.1} ms wall, {:.1} ms of kernels over {threads} threads \
         ({} nodes), {:.1} ms with no kernel running\n\n",
        p.schedule.name(),
        ms(p.wall),
        ms(kernel),
        p.nodes.len(),
        ms(p.wall.saturating_sub(busy)),
    );
    let mut t =
        Table::new(&["op", "count", "ms", "% kernel", "ms/node"]).right_align(&[1, 2, 3, 4]);
    for o in p.by_op() {
        t.row(vec![
            o.op.clone(),
            o.count.to_string(),
            format!("{:.2}", ms(o.total)),
            format!("{:.1}", percent(o.total, kernel)),
            format!("{:.3}", ms(o.total) / o.count as f64),
        ]);
    }
    out += &t.render();
    out += &format!("\nslowest {TOP_NODES} nodes:\n");
    let mut t = Table::new(&["node", "op", "output", "ms", "% kernel"]).right_align(&[3, 4]);
    for n in p.top_nodes(TOP_NODES) {
        t.row(vec![
            n.node.clone(),
            n.op.clone(),
            shapes(n),
            format!("{:.2}", ms(n.self_time)),
            format!("{:.1}", percent(n.self_time, kernel)),
        ]);
    }
    out += &t.render();
    out
}

/// The `profile` object of `psflow bench train --json`.
pub fn to_json(p: &Profile, threads: usize) -> Value {
    let kernel = p.kernel_total();
    let busy = p.busy();
    let by_op: Vec<Value> = p
        .by_op()
        .iter()
        .map(|o| {
            json!({
                "op": o.op,
                "count": o.count,
                "ms": ms(o.total),
                "percent": percent(o.total, kernel),
            })
        })
        .collect();
    let top: Vec<Value> = p
        .top_nodes(TOP_NODES)
        .iter()
        .map(|n| {
            json!({
                "node": n.node,
                "op": n.op,
                "output_shapes": n.output_shapes,
                "ms": ms(n.self_time),
                "percent": percent(n.self_time, kernel),
                "start_ms": ms(n.start),
                "end_ms": ms(n.end),
                "thread": n.thread,
            })
        })
        .collect();
    json!({
        "schedule": p.schedule.name(),
        "step_ms": ms(p.wall),
        "kernel_ms": ms(kernel),
        "busy_ms": ms(busy),
        "outside_kernels_ms": ms(p.wall.saturating_sub(busy)),
        "threads": threads,
        "nodes": p.nodes.len(),
        "percent_basis": "kernel self time summed over threads",
        "by_op": by_op,
        "top_nodes": top,
    })
}
