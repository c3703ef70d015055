//! TensorFlow's `_Send` and `_Recv`: the two ends of an edge cut by
//! partitioning. Both name their transfer with the attrs TensorFlow uses
//! (`tensor_name`, `send_device`, `send_device_incarnation`,
//! `recv_device`, `client_terminated`; `_Recv` also `tensor_type`), from
//! which the [`RendezvousKey`] is built.
//!
//! `_Send` hands its input to the session's rendezvous and never blocks.
//! `_Recv` is not run on a compute thread: the executor sees its key
//! ([`OpKernel::recv_key`]) and waits for the value with a callback, so a
//! partition waiting for a peer holds no pool thread. An optional
//! `_output_shapes` attr (a list of one shape, TensorFlow's convention)
//! tells shape inference what will arrive.

use std::time::Instant;

use psflow_kernels::{DType, Tensor};

use super::{expect_inputs, InferCtx, OpContext, OpKernel, Registry, TensorInfo};
use crate::executor::{RendezvousKey, DEFAULT_RECV_TIMEOUT};
use crate::ir::Node;
use crate::shape::Shape;
use crate::{Error, Result};

pub(super) fn register(r: &mut Registry) {
    r.register("_Send", send);
    r.register("_Recv", recv);
}

/// The rendezvous key a `_Send` or `_Recv` node names.
pub fn transfer_key(node: &Node) -> Result<RendezvousKey> {
    let name = node.attr_str("tensor_name")?;
    if name.is_empty() || name.contains(';') {
        return Err(node.attr_error("tensor_name", "must be non-empty and contain no ';'"));
    }
    let inc = node.attr_int("send_device_incarnation")?;
    let send_device = node.attr_str("send_device")?;
    let recv_device = node.attr_str("recv_device")?;
    for (attr, d) in [("send_device", send_device), ("recv_device", recv_device)] {
        if d.contains(';') {
            return Err(node.attr_error(attr, "must contain no ';'"));
        }
    }
    node.attr_bool_or("client_terminated", false)?;
    Ok(RendezvousKey::new(
        send_device,
        inc as u64,
        recv_device,
        name,
    ))
}

struct Send {
    key: RendezvousKey,
}

fn send(node: &Node) -> Result<Box<dyn OpKernel>> {
    expect_inputs(node, 1)?;
    Ok(Box::new(Send {
        key: transfer_key(node)?,
    }))
}

impl OpKernel for Send {
    fn num_outputs(&self) -> usize {
        0
    }
    fn infer(&self, _: &InferCtx) -> Result<Vec<TensorInfo>> {
        Ok(vec![])
    }
    fn is_stateful(&self) -> bool {
        true
    }
    fn compute(&self, ctx: &mut OpContext) -> Result<Vec<Tensor>> {
        let r = ctx.rendezvous.ok_or_else(|| Error::NoRendezvous {
            node: ctx.node.name.clone(),
            op: ctx.node.op.clone(),
        })?;
        let value = std::mem::replace(&mut ctx.inputs[0], Tensor::scalar(0u8));
        r.send(&self.key, value)?;
        Ok(vec![])
    }
}

struct Recv {
    key: RendezvousKey,
    dtype: DType,
    shape: Shape,
}

fn recv(node: &Node) -> Result<Box<dyn OpKernel>> {
    expect_inputs(node, 0)?;
    let shape = match node.attrs.get("_output_shapes") {
        None => Shape::Unknown,
        Some(v) => match v.as_list().map(|l| &l.shape[..]) {
            Some([s]) => Shape::from_proto(s),
            _ => return Err(node.attr_error("_output_shapes", "expected a list of one shape")),
        },
    };
    Ok(Box::new(Recv {
        key: transfer_key(node)?,
        dtype: node.attr_dtype("tensor_type")?,
        shape,
    }))
}

impl OpKernel for Recv {
    fn num_outputs(&self) -> usize {
        1
    }
    fn infer(&self, _: &InferCtx) -> Result<Vec<TensorInfo>> {
        Ok(vec![TensorInfo::new(self.dtype, self.shape.clone())])
    }
    fn is_stateful(&self) -> bool {
        true
    }
    fn recv_key(&self) -> Option<&RendezvousKey> {
        Some(&self.key)
    }
    /// The executor resolves `_Recv`s itself; this blocking path serves
    /// callers that run a kernel directly.
    fn compute(&self, ctx: &mut OpContext) -> Result<Vec<Tensor>> {
        let r = ctx.rendezvous.ok_or_else(|| Error::NoRendezvous {
            node: ctx.node.name.clone(),
            op: ctx.node.op.clone(),
        })?;
        let t = r.recv(&self.key, Instant::now() + DEFAULT_RECV_TIMEOUT)?;
        check_received(ctx.node, &self.key, self.dtype, &self.shape, t).map(|t| vec![t])
    }
}

/// A received tensor must be what the `_Recv` declares.
pub(crate) fn check_received(
    node: &Node,
    key: &RendezvousKey,
    dtype: DType,
    shape: &Shape,
    t: Tensor,
) -> Result<Tensor> {
    if t.dtype() != dtype || !shape.accepts(t.shape()) {
        return Err(Error::Rendezvous {
            key: key.to_string(),
            detail: format!(
                "node {:?} expects a {dtype} tensor of shape {shape}, received {} {:?}",
                node.name,
                t.dtype(),
                t.shape()
            ),
        });
    }
    Ok(t)
}
