//! Resource variables and the optimizer ops that update them, as TF2
//! writes them: VarHandleOp, ReadVariableOp, AssignVariableOp,
//! AssignAddVariableOp, AssignSubVariableOp, VarIsInitializedOp and
//! ResourceApply{GradientDescent, Momentum, RMSProp, CenteredRMSProp, Adam}.
//!
//! A variable's value lives in the session's [`crate::ResourceStore`] under its
//! `shared_name` (the node name when that is empty; `container/shared_name`
//! when a container is given). The handle a `VarHandleOp` outputs is a
//! small rank-1 `uint8` tensor holding that name in UTF-8 (see
//! [`resource_handle`]), so it names its variable wherever it flows
//! (through `Identity`, or later across processes). For shape inference,
//! a handle's [`TensorInfo`] describes the *variable* (the VarHandleOp's
//! `dtype` and `shape` attrs), as TensorFlow's resource handle data does:
//! reads then know their shape statically.
//!
//! Every op here is stateful: never evaluated during shape inference.
//! The update ops write in place when nothing else holds the variable's
//! buffer (a value read earlier in the step stays as it was read), with
//! TensorFlow's formulas (`psflow_kernels::ops::optim`). Reading or
//! updating a variable that was never assigned is an error naming it.
//!
//! The TF1 ref-variable ops (VariableV2, Assign, ApplyRMSProp, …) are not
//! implemented: their ref-typed outputs have no counterpart here.

use std::sync::{PoisonError, RwLockWriteGuard};

use psflow_kernels::ops::optim;
use psflow_kernels::{DType, Tensor};

use super::{expect_inputs, FnKernel, InferCtx, OpContext, OpKernel, Registry, TensorInfo};
use crate::executor::VarSlot;
use crate::ir::Node;
use crate::shape::Shape;
use crate::{Error, Result};

type Built = Result<Box<dyn OpKernel>>;

pub(super) fn register(r: &mut Registry) {
    r.register("VarHandleOp", var_handle);
    r.register("ReadVariableOp", read_variable);
    r.register("AssignVariableOp", assign_variable);
    r.register("AssignAddVariableOp", assign_update);
    r.register("AssignSubVariableOp", assign_update);
    r.register("VarIsInitializedOp", var_is_initialized);
    for spec in APPLY_OPS {
        r.register(spec.op, resource_apply);
    }
}

/// The handle tensor that names variable `name`: its UTF-8 bytes as a
/// rank-1 uint8 tensor.
pub fn resource_handle(name: &str) -> Tensor {
    let bytes = name.as_bytes().to_vec();
    Tensor::new(vec![bytes.len()], bytes).expect("length matches")
}

/// The variable name a handle tensor carries; `None` when `t` is not a
/// handle.
pub fn resource_name(t: &Tensor) -> Option<&str> {
    if t.rank() != 1 {
        return None;
    }
    let bytes = t.values::<u8>("resource handle").ok()?;
    std::str::from_utf8(bytes).ok()
}

/// Wraps a kernel so that it reports itself stateful.
struct Stateful(Box<dyn OpKernel>);

impl OpKernel for Stateful {
    fn num_outputs(&self) -> usize {
        self.0.num_outputs()
    }
    fn infer(&self, ctx: &InferCtx) -> Result<Vec<TensorInfo>> {
        self.0.infer(ctx)
    }
    fn compute(&self, ctx: &mut OpContext) -> Result<Vec<Tensor>> {
        self.0.compute(ctx)
    }
    fn is_stateful(&self) -> bool {
        true
    }
}

pub(super) fn stateful(kernel: Result<Box<dyn OpKernel>>) -> Built {
    Ok(Box::new(Stateful(kernel?)))
}

/// The variable name that data input `i` (a handle) carries.
fn handle_input(ctx: &OpContext, i: usize) -> Result<String> {
    resource_name(ctx.input(i))
        .map(str::to_string)
        .ok_or_else(|| {
            ctx.err(format!(
                "input {i} is not a resource handle (the output of a VarHandleOp), \
                 got a {} tensor of shape {:?}",
                ctx.input(i).dtype(),
                ctx.input(i).shape()
            ))
        })
}

fn uninitialized(node: &Node, var: &str) -> Error {
    Error::Resource {
        node: node.name.clone(),
        resource: var.to_string(),
        detail: "the variable is not initialized: run the `init` target (which runs every \
                 variable's `…/Assign` initializer) before using it"
            .into(),
    }
}

fn resource_error(node: &Node, var: &str, detail: impl Into<String>) -> Error {
    Error::Resource {
        node: node.name.clone(),
        resource: var.to_string(),
        detail: detail.into(),
    }
}

fn write_lock(slot: &VarSlot) -> RwLockWriteGuard<'_, Option<Tensor>> {
    slot.write().unwrap_or_else(PoisonError::into_inner)
}

// ------------------------------------------------------------ variables --

fn var_handle(node: &Node) -> Built {
    expect_inputs(node, 0)?;
    let dtype = node.attr_dtype("dtype")?;
    let shape = node.attr_shape_or_unknown("shape")?;
    let handle = resource_handle(&variable_key(node)?);
    stateful(FnKernel::boxed(
        1,
        move |_| Ok(vec![TensorInfo::new(dtype, shape.clone())]),
        move |_| Ok(vec![handle.clone()]),
    ))
}

/// The dtype attr of a variable op must agree with what inference knows
/// of the variable behind input 0.
fn check_var_dtype(ctx: &InferCtx, dtype: DType) -> Result<()> {
    match ctx.dtype(0) {
        Some(d) if d != dtype => Err(ctx.err(format!(
            "the op's dtype is {dtype} but the variable holds {d}"
        ))),
        _ => Ok(()),
    }
}

fn read_variable(node: &Node) -> Built {
    expect_inputs(node, 1)?;
    let dtype = node.attr_dtype("dtype")?;
    stateful(FnKernel::boxed(
        1,
        move |ctx| {
            check_var_dtype(ctx, dtype)?;
            Ok(vec![TensorInfo::new(dtype, ctx.shape(0).clone())])
        },
        move |ctx| {
            let name = handle_input(ctx, 0)?;
            let value = ctx
                .resources
                .get(&name)
                .ok_or_else(|| uninitialized(ctx.node, &name))?;
            if value.dtype() != dtype {
                return Err(resource_error(
                    ctx.node,
                    &name,
                    format!("read as {dtype} but the variable holds {}", value.dtype()),
                ));
            }
            Ok(vec![value])
        },
    ))
}

fn assign_variable(node: &Node) -> Built {
    expect_inputs(node, 2)?;
    let dtype = node.attr_dtype("dtype")?;
    // TF's AssignVariableOp: a new value must keep the variable's shape
    // unless validate_shape is false.
    let validate_shape = node.attr_bool_or("validate_shape", true)?;
    stateful(FnKernel::boxed(
        0,
        move |ctx| {
            check_var_dtype(ctx, dtype)?;
            if let Some(d) = ctx.dtype(1) {
                if d != dtype {
                    return Err(ctx.err(format!("value is {d}, the variable is {dtype}")));
                }
            }
            if validate_shape && ctx.shape(0).merge(ctx.shape(1)).is_none() {
                return Err(ctx.err(format!(
                    "value of shape {} does not fit the variable's shape {}",
                    ctx.shape(1),
                    ctx.shape(0)
                )));
            }
            Ok(vec![])
        },
        move |ctx| {
            let name = handle_input(ctx, 0)?;
            let value = std::mem::replace(&mut ctx.inputs[1], Tensor::scalar(0u8));
            if value.dtype() != dtype {
                return Err(resource_error(
                    ctx.node,
                    &name,
                    format!("assigned a {} value to a {dtype} variable", value.dtype()),
                ));
            }
            let slot = ctx.resources.variable(&name);
            let mut v = write_lock(&slot);
            if let Some(old) = v.as_ref() {
                if validate_shape && old.shape() != value.shape() {
                    return Err(resource_error(
                        ctx.node,
                        &name,
                        format!(
                            "assigned a value of shape {:?} to a variable of shape {:?}",
                            value.shape(),
                            old.shape()
                        ),
                    ));
                }
            }
            *v = Some(value);
            Ok(vec![])
        },
    ))
}

/// AssignAddVariableOp / AssignSubVariableOp: `var ±= value`, same shapes.
fn assign_update(node: &Node) -> Built {
    expect_inputs(node, 2)?;
    let dtype = node.attr_dtype("dtype")?;
    let sub = node.op == "AssignSubVariableOp";
    stateful(FnKernel::boxed(
        0,
        move |ctx| {
            check_var_dtype(ctx, dtype)?;
            if ctx.shape(0).merge(ctx.shape(1)).is_none() {
                return Err(ctx.err(format!(
                    "value of shape {} does not match the variable's shape {}",
                    ctx.shape(1),
                    ctx.shape(0)
                )));
            }
            Ok(vec![])
        },
        move |ctx| {
            let name = handle_input(ctx, 0)?;
            let slot = ctx.resources.variable(&name);
            let mut guard = write_lock(&slot);
            let old = guard
                .as_ref()
                .ok_or_else(|| uninitialized(ctx.node, &name))?;
            check_update(old, ctx.input(1), dtype)
                .map_err(|detail| resource_error(ctx.node, &name, detail))?;
            // Taken, not cloned, so the buffer is updated in place when
            // nothing else holds it.
            let old = guard.take().expect("checked above");
            let new = add_in_place(old, ctx.input(1), sub, dtype);
            *guard = Some(new.map_err(|detail| resource_error(ctx.node, &name, detail))?);
            Ok(vec![])
        },
    ))
}

/// What AssignAdd/SubVariableOp require: matching dtypes and equal shapes.
fn check_update(var: &Tensor, value: &Tensor, dtype: DType) -> std::result::Result<(), String> {
    if var.dtype() != dtype || value.dtype() != dtype {
        return Err(format!(
            "the op is {dtype}, the variable {} and the value {}",
            var.dtype(),
            value.dtype()
        ));
    }
    if var.shape() != value.shape() {
        return Err(format!(
            "cannot update a variable of shape {:?} with a value of shape {:?}",
            var.shape(),
            value.shape()
        ));
    }
    Ok(())
}

/// `var ± value` (checked by [`check_update`]), in place when `var` holds
/// the only reference to its buffer.
fn add_in_place(
    var: Tensor,
    value: &Tensor,
    sub: bool,
    dtype: DType,
) -> std::result::Result<Tensor, String> {
    fn go<T: psflow_kernels::Element>(
        var: Tensor,
        value: &Tensor,
        f: fn(T, T) -> T,
    ) -> std::result::Result<Tensor, String> {
        let shape = var.shape().to_vec();
        let mut v = var
            .into_vec::<T>("AssignAddVariableOp")
            .map_err(|e| e.to_string())?;
        let x = value
            .values::<T>("AssignAddVariableOp")
            .map_err(|e| e.to_string())?;
        v.iter_mut().zip(x).for_each(|(a, &b)| *a = f(*a, b));
        Tensor::new(shape, v).map_err(|e| e.to_string())
    }
    use std::ops::{Add, Sub};
    match (dtype, sub) {
        (DType::F32, false) => go::<f32>(var, value, Add::add),
        (DType::F32, true) => go::<f32>(var, value, Sub::sub),
        (DType::F64, false) => go::<f64>(var, value, Add::add),
        (DType::F64, true) => go::<f64>(var, value, Sub::sub),
        // Integer counters (global_step) wrap like TensorFlow's.
        (DType::I32, false) => go::<i32>(var, value, i32::wrapping_add),
        (DType::I32, true) => go::<i32>(var, value, i32::wrapping_sub),
        (DType::I64, false) => go::<i64>(var, value, i64::wrapping_add),
        (DType::I64, true) => go::<i64>(var, value, i64::wrapping_sub),
        (d, _) => Err(format!("{d} variables cannot be added to")),
    }
}

fn var_is_initialized(node: &Node) -> Built {
    expect_inputs(node, 1)?;
    stateful(FnKernel::boxed(
        1,
        |_| Ok(vec![TensorInfo::new(DType::Bool, Shape::scalar())]),
        |ctx| {
            let name = handle_input(ctx, 0)?;
            let init = ctx.resources.get(&name).is_some();
            Ok(vec![Tensor::scalar(init)])
        },
    ))
}

// ------------------------------------------------------------- updates --

/// An update over (variable, slots…), scalar hyper-parameters in the
/// spec's order, the gradient and `use_nesterov`.
type UpdateFn = fn(&mut [Vec<f32>], &[f32], &[f32], bool) -> psflow_kernels::Result<()>;

/// The inputs of one ResourceApply op: `vars` resource handles first (the
/// variable, then its slots), scalar hyper-parameters at `scalars`, the
/// gradient at `grad`.
struct ApplySpec {
    op: &'static str,
    vars: &'static [&'static str],
    scalars: &'static [(usize, &'static str)],
    grad: usize,
    update: UpdateFn,
}

const APPLY_OPS: &[ApplySpec] = &[
    ApplySpec {
        op: "ResourceApplyGradientDescent",
        vars: &["var"],
        scalars: &[(1, "alpha")],
        grad: 2,
        update: |v, s, g, _| optim::apply_gradient_descent(&mut v[0], g, s[0]),
    },
    ApplySpec {
        op: "ResourceApplyMomentum",
        vars: &["var", "accum"],
        scalars: &[(2, "lr"), (4, "momentum")],
        grad: 3,
        update: |v, s, g, nesterov| {
            let [var, accum] = v else { unreachable!() };
            let h = optim::MomentumHyper {
                lr: s[0],
                momentum: s[1],
                use_nesterov: nesterov,
            };
            optim::apply_momentum(var, accum, g, h)
        },
    },
    ApplySpec {
        op: "ResourceApplyRMSProp",
        vars: &["var", "ms", "mom"],
        scalars: &[(3, "lr"), (4, "rho"), (5, "momentum"), (6, "epsilon")],
        grad: 7,
        update: |v, s, g, _| {
            let [var, ms, mom] = v else { unreachable!() };
            optim::apply_rmsprop(var, ms, mom, g, rms_hyper(s))
        },
    },
    ApplySpec {
        op: "ResourceApplyCenteredRMSProp",
        vars: &["var", "mg", "ms", "mom"],
        scalars: &[(4, "lr"), (5, "rho"), (6, "momentum"), (7, "epsilon")],
        grad: 8,
        update: |v, s, g, _| {
            let [var, mg, ms, mom] = v else {
                unreachable!()
            };
            optim::apply_centered_rmsprop(var, mg, ms, mom, g, rms_hyper(s))
        },
    },
    ApplySpec {
        op: "ResourceApplyAdam",
        vars: &["var", "m", "v"],
        scalars: &[
            (3, "beta1_power"),
            (4, "beta2_power"),
            (5, "lr"),
            (6, "beta1"),
            (7, "beta2"),
            (8, "epsilon"),
        ],
        grad: 9,
        update: |v, s, g, nesterov| {
            let [var, m, vv] = v else { unreachable!() };
            let h = optim::AdamHyper {
                beta1_power: s[0],
                beta2_power: s[1],
                lr: s[2],
                beta1: s[3],
                beta2: s[4],
                epsilon: s[5],
                use_nesterov: nesterov,
            };
            optim::apply_adam(var, m, vv, g, h)
        },
    },
];

fn rms_hyper(s: &[f32]) -> optim::RmsPropHyper {
    optim::RmsPropHyper {
        lr: s[0],
        rho: s[1],
        momentum: s[2],
        epsilon: s[3],
    }
}

struct ResourceApply {
    spec: &'static ApplySpec,
    use_nesterov: bool,
}

fn resource_apply(node: &Node) -> Built {
    let spec = APPLY_OPS
        .iter()
        .find(|s| s.op == node.op)
        .expect("registered for these ops only");
    expect_inputs(
        node,
        spec.grad
            .max(spec.scalars.iter().map(|s| s.0).max().unwrap_or(0))
            + 1,
    )?;
    node.require_f32("T")?;
    Ok(Box::new(ResourceApply {
        spec,
        use_nesterov: node.attr_bool_or("use_nesterov", false)?,
    }))
}

impl OpKernel for ResourceApply {
    fn num_outputs(&self) -> usize {
        0
    }

    fn is_stateful(&self) -> bool {
        true
    }

    fn infer(&self, ctx: &InferCtx) -> Result<Vec<TensorInfo>> {
        let spec = self.spec;
        let mut shape = ctx.shape(spec.grad).clone();
        for (i, what) in spec.vars.iter().enumerate() {
            if let Some(d) = ctx.dtype(i) {
                if d != DType::F32 {
                    return Err(ctx.err(format!(
                        "{what} is a {d} variable; only float32 is supported"
                    )));
                }
            }
            shape = shape.merge(ctx.shape(i)).ok_or_else(|| {
                ctx.err(format!(
                    "{what} has shape {} but grad has shape {}",
                    ctx.shape(i),
                    ctx.shape(spec.grad)
                ))
            })?;
        }
        for &(i, what) in spec.scalars {
            ctx.expect_rank(i, 0, what)?;
        }
        Ok(vec![])
    }

    fn compute(&self, ctx: &mut OpContext) -> Result<Vec<Tensor>> {
        let spec = self.spec;
        let op = spec.op;
        let names: Vec<String> = (0..spec.vars.len())
            .map(|i| handle_input(ctx, i))
            .collect::<Result<_>>()?;
        for (i, a) in names.iter().enumerate() {
            if let Some(j) = names[..i].iter().position(|b| b == a) {
                return Err(ctx.err(format!(
                    "{} and {} are the same variable {a:?}",
                    spec.vars[j], spec.vars[i]
                )));
            }
        }
        let mut scalars = Vec::with_capacity(spec.scalars.len());
        for &(i, what) in spec.scalars {
            let t = ctx.input(i);
            if t.rank() != 0 {
                return Err(ctx.err(format!(
                    "{what} must be a scalar, got shape {:?}",
                    t.shape()
                )));
            }
            scalars.push(ctx.k(t.scalar_value::<f32>(op))?);
        }
        let grad = ctx.input(spec.grad);
        let grad_values = ctx.k(grad.f32s(op))?;

        // Lock every variable, in name order so that concurrent updates
        // sharing variables cannot deadlock.
        let slots: Vec<VarSlot> = names.iter().map(|n| ctx.resources.variable(n)).collect();
        let mut order: Vec<usize> = (0..names.len()).collect();
        order.sort_by(|&a, &b| names[a].cmp(&names[b]));
        let mut guards: Vec<Option<RwLockWriteGuard<'_, Option<Tensor>>>> =
            (0..names.len()).map(|_| None).collect();
        for &i in &order {
            guards[i] = Some(write_lock(&slots[i]));
        }
        let mut guards: Vec<_> = guards.into_iter().map(|g| g.expect("locked")).collect();

        for (i, g) in guards.iter().enumerate() {
            let Some(t) = g.as_ref() else {
                return Err(uninitialized(ctx.node, &names[i]));
            };
            if t.dtype() != DType::F32 {
                return Err(resource_error(
                    ctx.node,
                    &names[i],
                    format!(
                        "{op} updates float32 variables, {} is {}",
                        spec.vars[i],
                        t.dtype()
                    ),
                ));
            }
            if t.shape() != grad.shape() {
                return Err(resource_error(
                    ctx.node,
                    &names[i],
                    format!(
                        "{} has shape {:?} but grad has shape {:?}",
                        spec.vars[i],
                        t.shape(),
                        grad.shape()
                    ),
                ));
            }
        }
        let shape = grad.shape().to_vec();
        let mut values: Vec<Vec<f32>> = guards
            .iter_mut()
            .map(|g| {
                g.take()
                    .expect("checked")
                    .into_vec::<f32>(op)
                    .expect("dtype checked")
            })
            .collect();
        let result = (spec.update)(&mut values, &scalars, grad_values, self.use_nesterov);
        // The update checks its arguments before writing, so on error the
        // values put back are the old ones.
        for (g, v) in guards.iter_mut().zip(values) {
            **g = Some(Tensor::new(shape.clone(), v).expect("same length"));
        }
        ctx.k(result)?;
        Ok(vec![])
    }
}

/// The [`ResourceStore`](crate::ResourceStore) key of the variable a
/// VarHandleOp node names: its `shared_name` (the node name when empty),
/// prefixed by `container/` when a container is given.
pub fn variable_key(node: &Node) -> Result<String> {
    let shared = node.attr_str_or("shared_name", "")?;
    let shared = if shared.is_empty() {
        node.name.as_str()
    } else {
        shared
    };
    Ok(match node.attr_str_or("container", "")? {
        "" => shared.to_string(),
        c => format!("{c}/{shared}"),
    })
}
