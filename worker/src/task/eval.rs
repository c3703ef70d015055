//! Evaluate: pull a job's variables from its shards (re-joining split
//! variables), load them into a fresh store and run the inference graph
//! over a split.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use futures::future::try_join_all;
use psflow_graph::{Graph, Registry, ResourceStore, Session, TensorName};
use psflow_kernels::{Data, Tensor};
use psflow_proto::worker::{EvalResult as EvalReply, EvalSpec};
use psflow_ps::PsClient;

use super::data::{augment_for, load};
use super::metrics::evaluate_split;
use super::step::{CONNECT_TIMEOUT, DEFAULT_PULL_TIMEOUT};
use super::{Result, TaskError};

/// Evaluation batch size.
pub const EVAL_BATCH: usize = 250;

/// Runs `spec` (see the module docs).
pub async fn evaluate(spec: EvalSpec) -> Result<EvalReply> {
    let began = Instant::now();
    let def = spec
        .graph
        .clone()
        .ok_or_else(|| TaskError::Invalid("the eval spec has no graph".into()))?;
    let data_spec = spec
        .data
        .clone()
        .ok_or_else(|| TaskError::Invalid("the eval spec has no data spec".into()))?;
    let input = TensorName::parse(&spec.input)
        .map_err(|e| TaskError::Invalid(format!("input {:?}: {e}", spec.input)))?;
    let logits = TensorName::parse(&spec.logits)
        .map_err(|e| TaskError::Invalid(format!("logits {:?}: {e}", spec.logits)))?;
    // Names to pull, per shard.
    let mut wanted: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for v in &spec.variables {
        if v.parts.is_empty() {
            return Err(TaskError::Invalid(format!(
                "variable {:?} has no parts",
                v.name
            )));
        }
        for p in &v.parts {
            if !spec.shards.iter().any(|s| s.index == p.shard) {
                return Err(TaskError::Invalid(format!(
                    "variable {:?} is on shard {}, which the spec does not list",
                    v.name, p.shard
                )));
            }
            wanted.entry(p.shard).or_default().push(p.stored.clone());
        }
    }
    let pulled = try_join_all(wanted.into_iter().map(|(shard, names)| {
        let addr = spec
            .shards
            .iter()
            .find(|s| s.index == shard)
            .map(|s| s.addr.clone())
            .unwrap_or_default();
        let (job, min_version) = (spec.job_id.clone(), spec.min_version);
        async move {
            let fail = |source| TaskError::Shard {
                shard,
                addr: addr.clone(),
                source,
            };
            let mut client = PsClient::connect(&addr, job, CONNECT_TIMEOUT)
                .await
                .map_err(fail)?;
            let p = client
                .pull(&names, min_version, DEFAULT_PULL_TIMEOUT)
                .await
                .map_err(fail)?;
            Ok::<_, TaskError>(p.tensors.into_iter().map(move |(n, t)| ((shard, n), t)))
        }
    }))
    .await?;
    let mut values: BTreeMap<(u32, String), Tensor> = pulled.into_iter().flatten().collect();
    let store = Arc::new(ResourceStore::new());
    for v in &spec.variables {
        let parts = v
            .parts
            .iter()
            .map(|p| {
                values.remove(&(p.shard, p.stored.clone())).ok_or_else(|| {
                    TaskError::Internal(format!("shard {} sent no {:?}", p.shard, p.stored))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        store.set(&v.name, concat_rows(&v.name, parts)?);
    }
    let graph = Graph::from_graph_def(def)?;
    let session = Session::with_resources(graph, &Registry::standard(), store)?;
    let data = load(&data_spec)?;
    let split = match spec.split.as_str() {
        "" | "test" => data.test,
        "train" => data.train,
        other => {
            return Err(TaskError::Invalid(format!(
                "unknown split {other:?} (test or train)"
            )))
        }
    };
    let augment = augment_for(&data_spec.augment, data_spec.resolution as usize, &split)?;
    let r = tokio::task::spawn_blocking(move || {
        evaluate_split(&session, &input, &logits, split, &augment, EVAL_BATCH)
    })
    .await
    .map_err(|e| TaskError::Internal(format!("evaluation panicked: {e}")))??;
    Ok(EvalReply {
        top1: r.top1,
        top5: r.top5,
        loss: r.loss,
        examples: r.examples as u64,
        seconds: began.elapsed().as_secs_f64(),
    })
}

/// `parts` stacked along dimension 0 (one part: itself).
pub fn concat_rows(name: &str, mut parts: Vec<Tensor>) -> Result<Tensor> {
    if parts.len() == 1 {
        return Ok(parts.pop().expect("one part"));
    }
    let first = parts
        .first()
        .ok_or_else(|| TaskError::Invalid(format!("variable {name:?} has no parts")))?;
    let rest = first.shape().get(1..).unwrap_or(&[]).to_vec();
    let dtype = first.dtype();
    let mut rows = 0;
    for p in &parts {
        if p.dtype() != dtype || p.shape().is_empty() || p.shape()[1..] != rest[..] {
            return Err(TaskError::Invalid(format!(
                "variable {name:?}: parts of shapes {:?} and {:?} do not stack",
                first.shape(),
                p.shape()
            )));
        }
        rows += p.shape()[0];
    }
    macro_rules! cat {
        ($variant:ident) => {{
            let mut v = Vec::new();
            for p in &parts {
                if let Data::$variant(d) = p.data() {
                    v.extend_from_slice(d);
                }
            }
            Data::$variant(v.into())
        }};
    }
    let data = match first.data() {
        Data::F32(_) => cat!(F32),
        Data::F64(_) => cat!(F64),
        Data::I32(_) => cat!(I32),
        Data::I64(_) => cat!(I64),
        Data::U8(_) => cat!(U8),
        Data::Bool(_) => cat!(Bool),
    };
    let mut shape = vec![rows];
    shape.extend(rest);
    Ok(Tensor::from_data(shape, data)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_stack_by_rows() {
        let a = Tensor::new(vec![2, 2], vec![1f32, 2., 3., 4.]).unwrap();
        let b = Tensor::new(vec![1, 2], vec![5f32, 6.]).unwrap();
        let t = concat_rows("v", vec![a, b]).unwrap();
        assert_eq!(t.shape(), &[3, 2]);
        assert_eq!(t.f32s("t").unwrap(), &[1., 2., 3., 4., 5., 6.]);
        let c = Tensor::new(vec![1, 3], vec![1f32, 2., 3.]).unwrap();
        let d = Tensor::new(vec![1, 2], vec![1f32, 2.]).unwrap();
        assert!(concat_rows("v", vec![c, d]).is_err());
    }
}
