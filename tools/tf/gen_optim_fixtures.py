#!/usr/bin/env python3
"""Writes graph/tests/fixtures/optim/tf_optim.json: a few steps of
TensorFlow's resource optimizer ops (tf.raw_ops.ResourceApplyRMSProp,
ResourceApplyCenteredRMSProp, ResourceApplyMomentum, ResourceApplyAdam,
ResourceApplyGradientDescent; CPU, Eigen kernels with oneDNN off) on small
seeded tensors. graph/tests/state.rs builds the same updates with psflow's
ops (through psflow_graph::train::optimizer) and compares every variable and
slot after every step.

Usage (from the repository root):
    /opt/tfvenv/bin/python tools/tf/gen_optim_fixtures.py [--out PATH]

Deterministic: inputs come from numpy's PCG64 seeded with SEED.

Each case: {"name", "optimizer", "hyper", "var", "slots", "grads", "lrs",
"steps"}: `var` and `slots` (name -> tensor) are the initial values (slots
as TF1's optimizers initialise them: RMSProp ms = ones, everything else
zeros; Adam's beta powers start at beta1 and beta2), `grads[k]` and `lrs[k]`
are fed at step k, and `steps[k]` holds {"var", "slots"} after step k.
A tensor is {"shape", "values"} (float32, row-major, each value written as
the shortest decimal that rounds back to the same float32).
"""

import argparse
import json
import os

os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

SEED = 20240612
STEPS = 3
SHAPE = (3, 5)  # 15 elements: not a multiple of any vector width
OUT = "graph/tests/fixtures/optim/tf_optim.json"

rng = np.random.default_rng(SEED)


def f32(v):
    return float(str(np.float32(v)))


def tensor(a):
    a = np.asarray(a, dtype=np.float32)
    return {"shape": list(a.shape), "values": [f32(v) for v in a.reshape(-1)]}


def rand(lo, hi, shape=SHAPE):
    return rng.uniform(lo, hi, size=shape).astype(np.float32)


def run_case(name, optimizer, hyper, slot_init, apply):
    """`slot_init`: name -> initial array; `apply(var, slots, lr, grad)`
    runs one TF update on the resource variables."""
    var0 = rand(-1.0, 1.0)
    grads = [rand(-2.0, 2.0) for _ in range(STEPS)]
    lrs = [0.05, 0.04, 0.03]
    var = tf.Variable(var0)
    slots = {k: tf.Variable(v) for k, v in slot_init.items()}
    steps = []
    for k in range(STEPS):
        apply(var, slots, np.float32(lrs[k]), grads[k])
        steps.append(
            {
                "var": tensor(var.numpy()),
                "slots": {s: tensor(v.numpy()) for s, v in slots.items()},
            }
        )
    return {
        "name": name,
        "optimizer": optimizer,
        "hyper": hyper,
        "var": tensor(var0),
        "slots": {k: tensor(v) for k, v in slot_init.items()},
        "grads": [tensor(g) for g in grads],
        "lrs": [f32(x) for x in lrs],
        "steps": steps,
    }


def c(x):
    return tf.constant(np.float32(x))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    zeros = np.zeros(SHAPE, np.float32)
    ones = np.ones(SHAPE, np.float32)
    cases = []

    rms = {"decay": 0.9, "momentum": 0.9, "epsilon": 1.0}
    for centered in (False, True):
        hyper = dict(rms, centered=centered)
        if centered:
            init = {"ms": ones, "mom": zeros, "mg": zeros}

            def apply(v, s, lr, g, h=hyper):
                tf.raw_ops.ResourceApplyCenteredRMSProp(
                    var=v.handle, mg=s["mg"].handle, ms=s["ms"].handle,
                    mom=s["mom"].handle, lr=c(lr), rho=c(h["decay"]),
                    momentum=c(h["momentum"]), epsilon=c(h["epsilon"]),
                    grad=tf.constant(g))
        else:
            init = {"ms": ones, "mom": zeros}

            def apply(v, s, lr, g, h=hyper):
                tf.raw_ops.ResourceApplyRMSProp(
                    var=v.handle, ms=s["ms"].handle, mom=s["mom"].handle,
                    lr=c(lr), rho=c(h["decay"]), momentum=c(h["momentum"]),
                    epsilon=c(h["epsilon"]), grad=tf.constant(g))
        name = "centered_rmsprop" if centered else "rmsprop"
        cases.append(run_case(name, "rmsprop", hyper, init, apply))

    for nesterov in (False, True):
        hyper = {"momentum": 0.9, "nesterov": nesterov}

        def apply(v, s, lr, g, h=hyper):
            tf.raw_ops.ResourceApplyMomentum(
                var=v.handle, accum=s["accum"].handle, lr=c(lr),
                grad=tf.constant(g), momentum=c(h["momentum"]),
                use_nesterov=h["nesterov"])
        name = "momentum_nesterov" if nesterov else "momentum"
        cases.append(run_case(name, "momentum", hyper, {"accum": zeros}, apply))

    def apply_sgd(v, s, lr, g):
        tf.raw_ops.ResourceApplyGradientDescent(
            var=v.handle, alpha=c(lr), delta=tf.constant(g))
    cases.append(run_case("sgd", "sgd", {}, {}, apply_sgd))

    for nesterov in (False, True):
        hyper = {"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8,
                 "nesterov": nesterov}
        init = {
            "m": zeros,
            "v": zeros,
            "beta1_power": np.float32(0.9).reshape(()),
            "beta2_power": np.float32(0.999).reshape(()),
        }

        def apply(v, s, lr, g, h=hyper):
            tf.raw_ops.ResourceApplyAdam(
                var=v.handle, m=s["m"].handle, v=s["v"].handle,
                beta1_power=s["beta1_power"].read_value(),
                beta2_power=s["beta2_power"].read_value(), lr=c(lr),
                beta1=c(h["beta1"]), beta2=c(h["beta2"]),
                epsilon=c(h["epsilon"]), grad=tf.constant(g),
                use_nesterov=h["nesterov"])
            # TF1's AdamOptimizer._finish: the powers advance after the update.
            s["beta1_power"].assign(s["beta1_power"] * c(h["beta1"]))
            s["beta2_power"].assign(s["beta2_power"] * c(h["beta2"]))
        name = "adam_nesterov" if nesterov else "adam"
        cases.append(run_case(name, "adam", hyper, init, apply))

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    doc = {
        "generator": "tools/tf/gen_optim_fixtures.py",
        "tensorflow": tf.__version__,
        "seed": SEED,
        "cases": cases,
    }
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}: {len(cases)} cases x {STEPS} steps")


if __name__ == "__main__":
    main()
