#!/usr/bin/env python3
"""Loads a GraphDef written by `psflow export` into TensorFlow, runs it on an
.npy input and compares its `logits` and `probabilities` with what
`psflow run` wrote for the same input. Prints the largest absolute and
relative differences; exits 1 when a relative difference (|a - b| /
max(1, |b|)) exceeds --tol. Needs tensorflow (not part of CI; a by-hand
check, see docs/training.md "Export").

    psflow export --run RUN_DIR --out model.pb
    python3 tools/tf/check_export.py --make-input x.npy --shape 8,32,32,3
    psflow run --graph model.pb --feed input=x.npy \\
        --fetch logits --fetch probabilities --out-dir out
    /opt/tfvenv/bin/python tools/tf/check_export.py model.pb x.npy out
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

OUTPUTS = ("logits", "probabilities")


def make_input(path, shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    np.save(path, x)
    print(f"wrote {path}: float32 {list(shape)}")


def run_tf(model, x):
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    with open(model, "rb") as f:
        graph_def.ParseFromString(f.read())
    ops = sorted({n.op for n in graph_def.node})
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        fetches = [graph.get_tensor_by_name(f"{o}:0") for o in OUTPUTS]
        out = sess.run(fetches, {graph.get_tensor_by_name("input:0"): x})
    return tf.__version__, ops, dict(zip(OUTPUTS, out))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", help="the exported .pb")
    p.add_argument("input", nargs="?", help="the .npy fed as `input`")
    p.add_argument("psflow_out", nargs="?", help="psflow run's --out-dir")
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--make-input", metavar="PATH", help="write a random input and exit")
    p.add_argument("--shape", default="8,32,32,3", help="with --make-input: N,H,W,C")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.make_input:
        make_input(a.make_input, [int(d) for d in a.shape.split(",")], a.seed)
        return 0
    if not (a.model and a.input and a.psflow_out):
        p.error("give MODEL INPUT PSFLOW_OUT (or --make-input)")
    x = np.load(a.input)
    version, ops, tf_out = run_tf(a.model, x)
    print(f"tensorflow {version}: loaded {a.model} (ops: {', '.join(ops)})")
    worst = 0.0
    for name in OUTPUTS:
        ours = np.load(os.path.join(a.psflow_out, f"{name}.npy"))
        theirs = tf_out[name]
        if ours.shape != theirs.shape:
            print(f"{name}: shape {ours.shape} (psflow) vs {theirs.shape} (tensorflow)")
            return 1
        d = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
        rel = d / np.maximum(1.0, np.abs(theirs.astype(np.float64)))
        worst = max(worst, float(rel.max()))
        same_top1 = float(np.mean(ours.argmax(-1) == theirs.argmax(-1)))
        print(
            f"{name} {list(ours.shape)}: max abs diff {d.max():.3e}, "
            f"max rel diff {rel.max():.3e}, same argmax {same_top1:.0%}"
        )
    ok = worst <= a.tol
    print("OK" if ok else f"FAIL: relative difference {worst:.3e} > {a.tol:g}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
