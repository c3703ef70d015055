//! `psflow graph build`: write a model of the zoo as a GraphDef;
//! `psflow graph summary`: parameters, multiply-adds and a per-layer table
//! of any GraphDef.
//!
//! Errors the user can fix (bad flags, unreadable graphs) exit with 2.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use psflow_graph::summary::{summarize, Summary};
use psflow_graph::train::builder::{TrainConfig, TrainGraph};
use psflow_graph::train::optimizer::Optimizer;
use psflow_graph::zoo::{Architecture, Model, ModelSpec};
use psflow_graph::Graph;
use serde_json::{json, Value};

use crate::table::Table;

#[derive(Subcommand)]
pub enum GraphCommand {
    /// Build a model (MobileNet v1, ResNet-18/50) as a TensorFlow GraphDef:
    /// variables with initialisers (run target `init` first), input
    /// `input` [-1, R, R, 3], logits and softmax predictions.
    Build(BuildArgs),
    /// Parameters, multiply-adds and a per-layer table of a GraphDef.
    Summary(SummaryArgs),
    /// How the cluster would split a (training) GraphDef: variables on PS
    /// shards (bytes per shard, split variables) and the worker partition.
    Partition(super::graph_partition::PartitionArgs),
}

#[derive(Args)]
pub struct BuildArgs {
    /// mobilenet, mobilenet-standard (every separable block one 3×3 conv),
    /// resnet18 or resnet50 (CIFAR stem).
    #[arg(long, value_parser = parse_arch)]
    pub model: Architecture,
    /// MobileNet width multiplier, in (0, 1].
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub alpha: f32,
    /// Input height and width (at least 8).
    #[arg(long, default_value_t = 32)]
    pub resolution: usize,
    /// Number of classes.
    #[arg(long, default_value_t = 10)]
    pub classes: usize,
    /// MobileNet convolutions: separable (default) or standard; the same as
    /// `--model mobilenet-standard`.
    #[arg(long, value_parser = ["separable", "standard"])]
    pub conv: Option<String>,
    /// The training graph instead of inference: the forward pass in
    /// training mode (BN on batch statistics with moving-average updates,
    /// dropout, a `labels` placeholder), the losses, the gradients and the
    /// optimizer updates (target `train_op`, feed `learning_rate`), as
    /// `psflow train` runs it.
    #[arg(long)]
    pub train: bool,
    /// With --train: the optimizer (default hyper-parameters; TF-slim's
    /// RMSProp ρ 0.9, μ 0.9, ε 1).
    #[arg(long, default_value = "rmsprop", value_parser = ["rmsprop", "momentum", "sgd", "adam"], requires = "train")]
    pub optimizer: String,
    /// With --train: the L2 weight-decay λ (loss λ·Σw²/2).
    #[arg(long, default_value_t = 4e-5, requires = "train")]
    pub weight_decay: f32,
    /// With --train: also keep exponential moving averages of the trained
    /// weights with this decay (`V/ExponentialMovingAverage`, TensorFlow's
    /// ExponentialMovingAverage with num_updates = global_step; psflow
    /// train's default is 0.9999). 0: none. The cluster's training split
    /// does not take such a graph yet.
    #[arg(long, default_value_t = 0.0, requires = "train")]
    pub moving_average_decay: f32,
    /// With --train: only the forward pass in training mode (no losses,
    /// gradients or optimizer).
    #[arg(long, requires = "train")]
    pub forward_only: bool,
    /// Graph-level seed of the random initialisers.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write the GraphDef (binary protobuf).
    #[arg(long)]
    pub out: PathBuf,
    /// Print one JSON object instead of a line for people.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct SummaryArgs {
    /// The GraphDef (binary protobuf).
    pub graph: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_arch(s: &str) -> Result<Architecture, String> {
    s.parse()
}

/// Runs a `psflow graph` command; user errors print and exit 2.
pub fn dispatch(cmd: GraphCommand) -> Result<ExitCode> {
    let result = match cmd {
        GraphCommand::Build(a) => build(&a),
        GraphCommand::Summary(a) => summary(&a),
        GraphCommand::Partition(a) => super::graph_partition::run(&a),
    };
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            Ok(ExitCode::from(2))
        }
    }
}

/// An error and its causes on one line, leaving out a cause whose text
/// the message already shows (graph errors print their source).
fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out.replace('\n', " ")
}

/// The model `args` describe.
pub fn spec(args: &BuildArgs) -> Result<ModelSpec> {
    let arch = match (args.model, args.conv.as_deref()) {
        (Architecture::MobileNet, Some("standard")) => Architecture::MobileNetStandard,
        (Architecture::MobileNetStandard, Some("separable")) => {
            bail!("--conv separable contradicts --model mobilenet-standard")
        }
        (Architecture::ResNet18 | Architecture::ResNet50, Some(_)) => {
            bail!(
                "--conv applies to MobileNet only, not --model {}",
                args.model
            )
        }
        (arch, _) => arch,
    };
    Ok(ModelSpec {
        arch,
        alpha: args.alpha,
        resolution: args.resolution,
        classes: args.classes,
        training: args.train,
        seed: args.seed,
    })
}

fn build(args: &BuildArgs) -> Result<()> {
    let spec = spec(args)?;
    let mut model = spec.build().map_err(|e| {
        let flag = match e.field {
            "alpha" => "--alpha",
            "resolution" => "--resolution",
            "classes" => "--classes",
            _ => "",
        };
        anyhow::anyhow!("{flag} {}: {e}", flag_value(args, e.field))
    })?;
    let s = summarize(&model.graph).context("summarising the built graph")?;
    let training = if args.train && !args.forward_only {
        let moving_average_decay = crate::trainer::moving_average_flag(args.moving_average_decay)?;
        let optimizer = Optimizer::with_defaults(&args.optimizer)
            .ok_or_else(|| anyhow::anyhow!("--optimizer {}: unknown", args.optimizer))?;
        Some(
            model
                .add_training(&TrainConfig {
                    optimizer,
                    weight_decay: args.weight_decay,
                    moving_average_decay,
                })
                .context("adding the training step")?,
        )
    } else {
        None
    };
    write_atomically(&args.out, &model.graph.to_graph_def_bytes())?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&build_json(args, &model, &s, training.as_ref()))?
        );
    } else {
        println!(
            "wrote {}: {} ({}), {} nodes, {} trainable parameters, {} multiply-adds per image",
            args.out.display(),
            model.name,
            if model.training {
                "training"
            } else {
                "inference"
            },
            model.graph.len(),
            human(model.params),
            human(s.macs),
        );
        let labels = model
            .labels
            .as_ref()
            .map(|l| format!(", labels {l}"))
            .unwrap_or_default();
        println!(
            "input {} [-1, {r}, {r}, 3]{labels}; logits {}; predictions {}; run target {:?} to initialise",
            model.input,
            model.logits,
            model.predictions,
            model.init,
            r = model.resolution
        );
        if let Some(t) = &training {
            println!(
                "training step: target {:?}, feed {} (the learning rate); losses {} (total), {} \
                 (cross-entropy), {} (regularization); {} optimizer",
                t.train_op,
                t.learning_rate,
                t.total_loss,
                t.cross_entropy_loss,
                t.regularization_loss,
                args.optimizer
            );
        }
    }
    Ok(())
}

fn flag_value(args: &BuildArgs, field: &str) -> String {
    match field {
        "alpha" => args.alpha.to_string(),
        "resolution" => args.resolution.to_string(),
        "classes" => args.classes.to_string(),
        _ => String::new(),
    }
}

fn build_json(args: &BuildArgs, m: &Model, s: &Summary, t: Option<&TrainGraph>) -> Value {
    let trainable: Vec<Value> = m
        .trainable
        .iter()
        .map(|v| json!({"name": v.name, "shape": v.shape, "regularize": v.regularize}))
        .collect();
    json!({
        "out": args.out,
        "model": m.name,
        "training": m.training,
        "resolution": m.resolution,
        "classes": m.classes,
        "nodes": m.graph.len(),
        "input": m.input.to_string(),
        "labels": m.labels.as_ref().map(|l| l.to_string()),
        "logits": m.logits.to_string(),
        "predictions": m.predictions.to_string(),
        "init": m.init,
        "trainable_params": m.params,
        "params": s.params,
        "model_bytes": s.model_bytes,
        "macs": s.macs,
        "trainable": trainable,
        "moving_average_updates": m.moving_average_updates,
        "train_step": t.map(|t| json!({
            "target": t.train_op,
            "learning_rate": t.learning_rate.to_string(),
            "total_loss": t.total_loss.to_string(),
            "cross_entropy_loss": t.cross_entropy_loss.to_string(),
            "regularization_loss": t.regularization_loss.to_string(),
            "global_step": t.global_step,
            "optimizer": args.optimizer,
            // As written on the command line (4e-5, not its f32 widened).
            "weight_decay": psflow_graph::train::as_written(args.weight_decay),
            "averages": t.averages.iter().map(|(v, s)| json!({"variable": v, "average": s})).collect::<Vec<_>>(),
        })),
    })
}

/// Writes to a temporary file beside `path`, syncs, renames.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!(
            "--out {}: directory {} does not exist",
            path.display(),
            dir.display()
        );
    }
    let name = path
        .file_name()
        .with_context(|| format!("--out {}: not a file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> Result<()> {
        let mut f = fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn summary(args: &SummaryArgs) -> Result<()> {
    let graph = Graph::load(&args.graph)?;
    let s = summarize(&graph).with_context(|| format!("summarising {}", args.graph.display()))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary_json(&args.graph, &s))?
        );
    } else {
        print_summary(&args.graph, &s);
    }
    Ok(())
}

fn opt_dims(d: &[i64]) -> String {
    // Drop the batch dimension of activations; kernels are shown whole.
    d.iter()
        .map(|&x| {
            if x < 0 {
                "?".to_string()
            } else {
                x.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("x")
}

fn print_summary(path: &Path, s: &Summary) {
    let mut t = Table::new(&[
        "layer", "op", "output", "kernel", "stride", "params", "MACs",
    ])
    .right_align(&[4, 5, 6]);
    for l in &s.layers {
        let out = if l.output.len() > 1 {
            &l.output[1..]
        } else {
            &l.output[..]
        };
        t.row(vec![
            l.name.clone(),
            short_op(&l.op).to_string(),
            opt_dims(out),
            opt_dims(&l.kernel),
            l.stride.to_string(),
            group(l.params),
            l.macs.map_or("?".into(), group),
        ]);
    }
    print!("{}", t.render());
    println!(
        "{}: {} nodes, {} layers",
        path.display(),
        s.nodes,
        s.layers.len()
    );
    println!(
        "parameters: {} trainable; {} with batch-norm statistics ({}, {} bytes as stored)",
        group(s.trainable_params),
        group(s.params),
        human(s.params),
        group(s.model_bytes),
    );
    if s.variable_elements > s.params {
        println!(
            "variables: {} elements including optimizer slots and counters",
            group(s.variable_elements)
        );
    }
    println!(
        "multiply-adds per example: {} ({})",
        group(s.macs),
        human(s.macs)
    );
    if s.backward_macs > 0 {
        println!(
            "gradient multiply-adds per example: {} ({})",
            group(s.backward_macs),
            human(s.backward_macs)
        );
    }
    if s.unknown_mac_layers > 0 {
        println!(
            "note: {} layer(s) have shapes inference could not work out and are not counted",
            s.unknown_mac_layers
        );
    }
}

fn short_op(op: &str) -> &str {
    match op {
        "DepthwiseConv2dNative" => "Depthwise",
        other => other,
    }
}

fn summary_json(path: &Path, s: &Summary) -> Value {
    let layers: Vec<Value> = s
        .layers
        .iter()
        .map(|l| {
            json!({
                "name": l.name,
                "node": l.node,
                "op": l.op,
                "input": l.input,
                "output": l.output,
                "kernel": l.kernel,
                "stride": l.stride,
                "params": l.params,
                "trainable_params": l.trainable_params,
                "macs": l.macs,
            })
        })
        .collect();
    let inputs: Vec<Value> = s
        .inputs
        .iter()
        .map(|i| {
            json!({
                "name": i.name,
                "dtype": i.dtype.map(|d| d.name()),
                "shape": i.shape.dims(),
            })
        })
        .collect();
    json!({
        "graph": path,
        "nodes": s.nodes,
        "inputs": inputs,
        "trainable_params": s.trainable_params,
        "params": s.params,
        "variable_elements": s.variable_elements,
        "model_bytes": s.model_bytes,
        "macs": s.macs,
        "backward_macs": s.backward_macs,
        "unknown_mac_layers": s.unknown_mac_layers,
        "unattributed_params": s.unattributed_params,
        "layers": layers,
    })
}

/// 1234567 → "1,234,567".
pub(crate) fn group(mut n: u64) -> String {
    let mut parts = vec![];
    while n >= 1000 {
        parts.push(format!("{:03}", n % 1000));
        n /= 1000;
    }
    parts.push(n.to_string());
    parts.reverse();
    parts.join(",")
}

/// 11596288 → "11.60 M".
pub(crate) fn human(n: u64) -> String {
    let x = n as f64;
    if x >= 1e9 {
        format!("{:.2} G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_for_people() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(11_596_288), "11,596,288");
        assert_eq!(human(11_596_288), "11.60 M");
        assert_eq!(human(1_300_000_000), "1.30 G");
        assert_eq!(human(12), "12");
    }
}
