#!/usr/bin/env python3
"""Times TensorFlow training MobileNet v1 on random tensors, the peer of
`psflow bench train`, and prints one JSON object (schema below).

The recipe, the same on both sides:

- keras.applications.MobileNet(weights=None, alpha=A, input 32x32x3,
  classes=C, logits out), training mode (batch norm on batch statistics);
- sparse softmax cross-entropy plus 4e-5 L2 weight decay on the conv,
  pointwise and classifier kernels (not depthwise filters, biases or batch
  norm: psflow's rule), as psflow's training graph has;
- RMSprop(learning_rate=0.01, rho=0.9, momentum=0.9, epsilon=1.0);
- batch 128 of random tensors resident in memory (no input pipeline),
  passed to the step as arguments (captured constants could be folded).

The step is a custom `@tf.function(jit_compile=False)` with a GradientTape:
one graph per step, no Keras `fit` callbacks or data adapter in the timed
window. The XLA variant (`jit_compile=True`) is timed separately as its own
column. The first call (tracing, and XLA compilation) and `--warmup` more
steps are untimed; then each of `--steps` steps is timed on its own, the
loss read back to the host (so the step has finished). TensorFlow's intra-
and inter-op thread pools are both set to `--threads` (default: the cores
this process may use), as psflow uses every core.

`--profile` adds a per-op profile of one more (non-XLA) step, taken with
tf.profiler and read from its XPlane trace: wall time per op type summed
over threads (ops of one step can overlap on the inter-op pool).

Output:

    {"tensorflow": version, "keras": version, "threads": N,
     "results": [{"alpha", "resolution", "batch", "classes", "variant",
                  "jit_compile", "first_call_s", "warmup", "steps",
                  "step_ms": {"median", "min", "max", "p25", "p75"},
                  "step_times_ms": [...], "images_per_sec_median",
                  "images_per_sec_min", "images_per_sec_max"}
                 | {"alpha", ..., "variant", "error": "..."}],
     "profile": {"alpha", "step_ms", "op_ms", "by_op": [{"op", "count", "ms", "percent"}]}}
"""

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

WEIGHT_DECAY = 4e-5
VARIANTS = {"tf.function": False, "tf.function+xla": True}


def cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def spread(times):
    """Median, quartiles (linear interpolation) and extremes of a list."""
    v = sorted(times)

    def q(f):
        x = f * (len(v) - 1)
        lo, hi = int(x), min(int(x) + 1, len(v) - 1)
        return v[lo] + (v[hi] - v[lo]) * (x - lo)

    return {"median": q(0.5), "min": v[0], "max": v[-1], "p25": q(0.25), "p75": q(0.75)}


def decayed(v):
    """psflow's L2 rule: conv, pointwise and dense kernels, not depthwise."""
    path = getattr(v, "path", v.name)
    return path.endswith("kernel") and "depthwise" not in path


def build_step(tf, keras, alpha, resolution, classes, jit):
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNet(
        input_shape=(resolution, resolution, 3),
        alpha=alpha,
        weights=None,
        classes=classes,
        classifier_activation=None,
    )
    opt = keras.optimizers.RMSprop(learning_rate=0.01, rho=0.9, momentum=0.9, epsilon=1.0)
    params = model.trainable_variables
    opt.build(params)
    decay = [v for v in params if decayed(v)]
    xent = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(jit_compile=jit)
    def step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = xent(y, logits) + WEIGHT_DECAY * tf.add_n([tf.nn.l2_loss(v) for v in decay])
        grads = tape.gradient(loss, params)
        opt.apply_gradients(zip(grads, params))
        return loss

    return step


def bench(tf, keras, args, alpha, variant):
    jit = VARIANTS[variant]
    b, r = args.batch_size, args.resolution
    row = {"alpha": alpha, "resolution": r, "batch": b, "classes": args.classes,
           "variant": variant, "jit_compile": jit}
    rng = __import__("numpy").random.default_rng(0)
    x = tf.constant(rng.standard_normal((b, r, r, 3), dtype="float32"))
    y = tf.constant(rng.integers(0, args.classes, size=(b,), dtype="int32"))
    try:
        step = build_step(tf, keras, alpha, r, args.classes, jit)
        t0 = time.perf_counter()
        loss = float(step(x, y).numpy())
        row["first_call_s"] = time.perf_counter() - t0
        for _ in range(args.warmup):
            loss = float(step(x, y).numpy())
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            loss = float(step(x, y).numpy())
            times.append(time.perf_counter() - t0)
    except Exception as e:  # XLA may refuse an op or a platform: report, go on
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return row, None
    if loss != loss:
        row["error"] = "the loss is NaN"
        return row, None
    s = spread(times)
    row.update({
        "warmup": args.warmup,
        "steps": args.steps,
        "step_ms": {k: 1e3 * v for k, v in s.items()},
        "step_times_ms": [1e3 * t for t in times],
        "images_per_sec_median": b / s["median"],
        "images_per_sec_min": b / s["max"],
        "images_per_sec_max": b / s["min"],
    })
    return row, (step, x, y)


def profile_step(tf, step, x, y, alpha):
    """Per-op wall time of one step from a tf.profiler trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        t0 = time.perf_counter()
        step(x, y).numpy()
        wall = time.perf_counter() - t0
        tf.profiler.experimental.stop()
        paths = [os.path.join(d, f) for d, _, fs in os.walk(logdir)
                 for f in fs if f.endswith(".xplane.pb")]
        if not paths:
            return {"alpha": alpha, "error": "tf.profiler wrote no .xplane.pb trace"}
        space = xplane_pb2.XSpace()
        with open(paths[0], "rb") as fh:
            space.ParseFromString(fh.read())
    by_op = {}
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            for ev in line.events:
                name = plane.event_metadata[ev.metadata_id].name
                # Op kernels are traced as "node_name:OpType".
                node, sep, op = name.rpartition(":")
                if not sep or not node or not op.isidentifier() or "::" in name:
                    continue
                c, ps = by_op.get(op, (0, 0))
                by_op[op] = (c + 1, ps + ev.duration_ps)
    total = sum(ps for _, ps in by_op.values())
    rows = sorted(by_op.items(), key=lambda kv: -kv[1][1])
    return {
        "alpha": alpha,
        "variant": "tf.function",
        "step_ms": 1e3 * wall,
        "op_ms": total / 1e9,
        "percent_basis": "op wall time summed over threads",
        "by_op": [{"op": op, "count": c, "ms": ps / 1e9,
                   "percent": 100.0 * ps / total if total else 0.0}
                  for op, (c, ps) in rows],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alphas", default="1.0,0.5,0.25")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=cores(),
                    help="intra- and inter-op threads (default: usable cores)")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="comma-separated: " + ", ".join(VARIANTS))
    ap.add_argument("--profile", action="store_true",
                    help="add a per-op profile of one tf.function step (first alpha)")
    args = ap.parse_args()
    try:
        alphas = [float(s) for s in args.alphas.split(",")]
    except ValueError:
        sys.exit(f"tf_train.py: --alphas must be numbers separated by commas, got {args.alphas!r}")
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        sys.exit(f"tf_train.py: unknown --variants {unknown}: use {', '.join(VARIANTS)}")
    if args.steps < 1 or args.batch_size < 1 or args.threads < 1 or args.warmup < 0:
        sys.exit("tf_train.py: --steps, --batch-size and --threads must be at least 1, --warmup at least 0")

    import tensorflow as tf
    import keras

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    results, profile = [], None
    for a in alphas:
        for v in variants:
            row, runnable = bench(tf, keras, args, a, v)
            results.append(row)
            if args.profile and profile is None and runnable and not VARIANTS[v]:
                profile = profile_step(tf, *runnable, a)
    out = {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "threads": args.threads,
        "results": results,
    }
    if profile is not None:
        out["profile"] = profile
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
