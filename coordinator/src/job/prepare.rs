//! From a submitted [`JobSpec`] to what the tasks run: validate and prune
//! the training graph, place and split it, compute the initial values by
//! running its `init` target once, and fill the task templates.

use std::collections::HashSet;

use psflow_graph::train::optimizer::Optimizer;
use psflow_graph::train::schedule::Schedule;
use psflow_graph::{Graph, Registry, Session, Tensor, TensorName};
use psflow_proto::coordinator::JobSpec;
use psflow_proto::ps as pps;
use psflow_proto::worker::{self as pw, SyncMode};
use psflow_ps::{Mode, ShardConfig};

use super::{JobError, Result};
use crate::partition::training::{split_training, PushKind, TrainingPlan, TrainingSplitConfig};
use crate::placement::{PlacementConfig, DEFAULT_SPLIT_THRESHOLD};

/// A job ready to start.
pub struct Prepared {
    pub plan: TrainingPlan,
    /// Per shard: the initial values of its variables (slots are made by
    /// the shard itself).
    pub shard_values: Vec<Vec<(String, Tensor)>>,
    /// The shard configuration (its `shard` is set per shard).
    pub shard_config: ShardConfig,
    pub schedule: Schedule,
    /// The worker task, without worker index and shard addresses.
    pub task: pw::TaskSpec,
    /// The final evaluation, without shard addresses (None: no inference
    /// graph was given).
    pub eval: Option<pw::EvalSpec>,
}

fn need(s: &str, what: &str) -> Result<String> {
    if s.is_empty() {
        Err(JobError::InvalidSpec(format!(
            "the job spec names no {what}"
        )))
    } else {
        Ok(s.to_string())
    }
}

fn name(s: &str, what: &str) -> Result<TensorName> {
    TensorName::parse(&need(s, what)?)
        .map_err(|e| JobError::InvalidSpec(format!("{what} {s:?}: {e}")))
}

/// The `ResourceApply*` op an optimizer runs as.
fn apply_op(o: &Optimizer) -> &'static str {
    match o {
        Optimizer::RmsProp(c) if c.centered => "ResourceApplyCenteredRMSProp",
        Optimizer::RmsProp(_) => "ResourceApplyRMSProp",
        Optimizer::Momentum(_) => "ResourceApplyMomentum",
        Optimizer::Sgd(_) => "ResourceApplyGradientDescent",
        Optimizer::Adam(_) => "ResourceApplyAdam",
    }
}

/// Prepares job `job_id` (see the module docs).
pub fn prepare(job_id: &str, spec: &JobSpec) -> Result<Prepared> {
    if spec.workers == 0 {
        return Err(JobError::InvalidSpec("workers must be at least 1".into()));
    }
    if spec.ps == 0 {
        return Err(JobError::InvalidSpec(
            "ps (parameter-server shards) must be at least 1".into(),
        ));
    }
    if spec.steps == 0 {
        return Err(JobError::InvalidSpec("steps must be at least 1".into()));
    }
    let data = spec
        .data
        .clone()
        .ok_or_else(|| JobError::InvalidSpec("the job spec has no data spec".into()))?;
    if data.batch_size == 0 {
        return Err(JobError::InvalidSpec(
            "batch size must be at least 1".into(),
        ));
    }
    if data.dataset.is_empty() {
        return Err(JobError::InvalidSpec(
            "the job spec names no dataset".into(),
        ));
    }
    let names = spec
        .names
        .clone()
        .ok_or_else(|| JobError::InvalidSpec("the job spec has no node names".into()))?;
    let fetches = [
        name(&names.total_loss, "total loss")?,
        name(&names.cross_entropy_loss, "cross-entropy loss")?,
        name(&names.regularization_loss, "regularization loss")?,
        name(&names.logits, "logits")?,
    ];
    let (input, labels) = (name(&names.input, "input")?, name(&names.labels, "labels")?);
    let train_op = need(&names.train_op, "train op")?;
    let init = need(&names.init, "init target")?;

    // The shard configuration: optimizer, schedule and mode as the shards
    // will check them.
    let mode = match spec.mode.as_ref().and_then(|m| m.kind) {
        None => pps::mode::Kind::Sync(pps::SyncMode {
            workers: spec.workers,
            backup_workers: 0,
        }),
        Some(pps::mode::Kind::Sync(s)) => {
            if s.backup_workers >= spec.workers {
                return Err(JobError::InvalidSpec(format!(
                    "{} backup worker(s) leave none of the {} workers to wait for",
                    s.backup_workers, spec.workers
                )));
            }
            pps::mode::Kind::Sync(pps::SyncMode {
                workers: spec.workers,
                backup_workers: s.backup_workers,
            })
        }
        Some(k) => k,
    };
    let header = pps::InitHeader {
        job_id: job_id.to_string(),
        shard: 0,
        optimizer: spec.optimizer,
        schedule: spec.schedule,
        mode: Some(pps::Mode { kind: Some(mode) }),
        version: 0,
        force: false,
        moving_average_decay: spec.moving_average_decay,
    };
    let shard_config =
        ShardConfig::from_header(&header).map_err(|e| JobError::InvalidSpec(e.to_string()))?;
    let schedule = shard_config.schedule;

    // Validate the whole graph, then keep what the step and init need.
    let registry = Registry::standard();
    let def = spec
        .training_graph
        .clone()
        .ok_or_else(|| JobError::InvalidSpec("the job spec has no training graph".into()))?;
    let graph = Graph::from_graph_def(def).map_err(|e| JobError::InvalidGraph(e.to_string()))?;
    psflow_graph::validate(&graph, &registry).map_err(|e| JobError::InvalidGraph(e.to_string()))?;
    for t in fetches.iter().chain([&input, &labels]) {
        if graph.node(&t.node).is_none() {
            return Err(JobError::InvalidGraph(format!(
                "the job names {t}, which is not a node of the training graph"
            )));
        }
    }
    let graph = graph
        .prune(&fetches, &[train_op.clone(), init.clone()])
        .map_err(|e| JobError::InvalidGraph(e.to_string()))?;

    let cfg = TrainingSplitConfig {
        placement: PlacementConfig {
            shards: spec.ps as usize,
            split_threshold: match spec.split_threshold {
                0 => DEFAULT_SPLIT_THRESHOLD,
                t => t,
            },
        },
        incarnation: 1,
    };
    let plan = split_training(&graph, &cfg).map_err(|e| JobError::Partition(e.to_string()))?;
    let want = apply_op(&shard_config.optimizer);
    for v in plan.shards.iter().flat_map(|s| &s.vars) {
        if let Some(o) = &v.optimizer {
            if o.op != want {
                return Err(JobError::InvalidSpec(format!(
                    "variable {:?} is updated by {} in the graph, but the job's optimizer runs as {want}",
                    v.variable, o.op
                )));
            }
        }
    }

    // Initial values: run `init` once here.
    let session = Session::with_registry(graph.clone(), &registry)
        .map_err(|e| JobError::InvalidGraph(e.to_string()))?;
    session
        .run(&[], &[], std::slice::from_ref(&init))
        .map_err(|e| JobError::InvalidGraph(format!("running {init:?}: {e}")))?;
    let all = plan
        .shard_values(&graph, session.resources())
        .map_err(|e| JobError::Partition(e.to_string()))?;
    let shard_values = plan
        .shards
        .iter()
        .zip(all)
        .map(|(s, mut values)| {
            s.vars
                .iter()
                .map(|v| {
                    let t = values.remove(&v.stored).ok_or_else(|| {
                        JobError::Internal(format!("no initial value for {:?}", v.stored))
                    })?;
                    Ok((v.stored.clone(), t))
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()?;

    let worker_graph = &plan.worker;
    let pushes = plan
        .pushes
        .iter()
        .map(|p| {
            let send = worker_graph.node(&p.send_node).ok_or_else(|| {
                JobError::Internal(format!(
                    "the worker graph has no send node {:?}",
                    p.send_node
                ))
            })?;
            let value = send.data_inputs().next().ok_or_else(|| {
                JobError::Internal(format!("send node {:?} has no input", p.send_node))
            })?;
            Ok(pw::PushSpec {
                stored: p.stored.clone(),
                shard: p.shard as u32,
                role: match p.kind {
                    PushKind::Gradient => pps::TensorRole::Gradient,
                    PushKind::Assign => pps::TensorRole::Assign,
                } as i32,
                key: p.key.clone(),
                send_node: p.send_node.clone(),
                value: value.to_string(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let task = pw::TaskSpec {
        job_id: job_id.to_string(),
        worker: 0,
        workers: spec.workers,
        graph: Some(worker_graph.to_graph_def()),
        pulls: plan
            .pulls
            .iter()
            .map(|p| pw::PullSpec {
                stored: p.stored.clone(),
                shard: p.shard as u32,
                key: p.key.clone(),
                recv_node: p.recv_node.clone(),
            })
            .collect(),
        pushes,
        targets: vec![],
        input: input.to_string(),
        labels: labels.to_string(),
        total_loss: fetches[0].to_string(),
        cross_entropy_loss: fetches[1].to_string(),
        regularization_loss: fetches[2].to_string(),
        logits: fetches[3].to_string(),
        shards: vec![],
        start_step: 0,
        end_step: spec.steps,
        mode: match shard_config.mode {
            Mode::Sync { .. } => SyncMode::Sync,
            _ => SyncMode::Async,
        } as i32,
        data: Some(data.clone()),
        pull_timeout_ms: 0,
        push_batch_bytes: spec.push_batch_bytes,
    };
    let eval = match &spec.inference_graph {
        None => None,
        Some(def) => Some(eval_spec(
            job_id,
            spec,
            def.clone(),
            &plan,
            &data,
            &shard_config,
        )?),
    };
    Ok(Prepared {
        plan,
        shard_values,
        shard_config,
        schedule,
        task,
        eval,
    })
}

/// The final evaluation of the inference graph `def`: every variable it
/// reads, with the shards holding its parts.
fn eval_spec(
    job_id: &str,
    spec: &JobSpec,
    def: psflow_proto::tensorflow::GraphDef,
    plan: &TrainingPlan,
    data: &pw::DataSpec,
    shard_config: &ShardConfig,
) -> Result<pw::EvalSpec> {
    let graph = Graph::from_graph_def(def.clone())
        .map_err(|e| JobError::InvalidGraph(format!("inference graph: {e}")))?;
    psflow_graph::validate(&graph, &Registry::standard())
        .map_err(|e| JobError::InvalidGraph(format!("inference graph: {e}")))?;
    // With weight averages, a trained variable (one whose gradient the
    // workers push) is evaluated with its average, which the shard serves
    // as `<stored>/ExponentialMovingAverage`.
    let trained: HashSet<&str> = plan
        .pushes
        .iter()
        .filter(|p| p.kind == PushKind::Gradient)
        .map(|p| p.stored.as_str())
        .collect();
    let averaged = |stored: String| {
        if shard_config.moving_average_decay.is_some() && trained.contains(stored.as_str()) {
            psflow_graph::train::ema::shadow_name(&stored)
        } else {
            stored
        }
    };
    let mut seen = HashSet::new();
    let mut variables = vec![];
    for n in graph.nodes().iter().filter(|n| n.op == "VarHandleOp") {
        let key = psflow_graph::registry::variable_key(n)
            .map_err(|e| JobError::InvalidGraph(format!("inference graph: {e}")))?;
        if !seen.insert(key.clone()) {
            continue;
        }
        let parts = plan.placement.parts(&n.name);
        let parts = if parts.is_empty() {
            let (shard, _) = plan.placement.locate(&n.name, None).ok_or_else(|| {
                JobError::InvalidGraph(format!(
                    "the inference graph reads variable {:?}, which the training graph does not have",
                    n.name
                ))
            })?;
            vec![pw::EvalPart {
                stored: averaged(n.name.clone()),
                shard: shard as u32,
            }]
        } else {
            parts
                .iter()
                .map(|p| {
                    let (shard, v) =
                        plan.placement
                            .locate(&n.name, Some(p.index))
                            .ok_or_else(|| {
                                JobError::Internal(format!(
                                    "part {} of {:?} not placed",
                                    p.index, n.name
                                ))
                            })?;
                    Ok(pw::EvalPart {
                        stored: averaged(v.stored_name()),
                        shard: shard as u32,
                    })
                })
                .collect::<Result<Vec<_>>>()?
        };
        variables.push(pw::EvalVariable { name: key, parts });
    }
    Ok(pw::EvalSpec {
        job_id: job_id.to_string(),
        graph: Some(def),
        input: need(&spec.inference_input, "inference input")?,
        logits: need(&spec.inference_logits, "inference logits")?,
        variables,
        shards: vec![],
        min_version: match shard_config.mode {
            Mode::Sync { .. } => spec.steps,
            _ => 0,
        },
        data: Some(data.clone()),
        split: "test".into(),
    })
}
