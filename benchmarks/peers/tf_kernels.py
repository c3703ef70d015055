#!/usr/bin/env python3
"""Times TensorFlow's CPU kernels for the MobileNet building blocks, with the
same keys as `psflow bench kernels --json`, and prints JSON:

    {"tensorflow": version, "threads": N, "results":
      [{"kernel": K, "shape": "128x16x16x64", "stride": S, "ms": median_ms}, ...]}

Each kernel is one raw op (or the pair named) inside a tf.function whose
inputs are arguments (so Grappler cannot constant-fold the work away); it is
called `--warmup` times, then timed `--repeats` times and the median kept.
TensorFlow's threading is left at its defaults (inter/intra op = 0: one
thread per core) and oneDNN at TensorFlow's default, as a user would run it.

Kernels (input shapes N x H x W x C, 3x3 depthwise with multiplier 1 and SAME
padding; 1x1 pointwise from C to 2C channels; batch norm in training mode):
  depthwise_fwd, depthwise_bwd_input, depthwise_bwd_filter   stride 1 and 2
  pointwise_fwd, pointwise_bwd_input, pointwise_bwd_filter   stride 1
  bn_relu6_fwd  (FusedBatchNormV3 training + Relu6)           stride 1
  bn_relu6_bwd  (Relu6Grad + FusedBatchNormGradV3)            stride 1
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

SHAPES = [(16, 16, 64), (8, 8, 128), (4, 4, 256), (2, 2, 512)]
KERNELS = [
    "depthwise_fwd",
    "depthwise_bwd_input",
    "depthwise_bwd_filter",
    "pointwise_fwd",
    "pointwise_bwd_input",
    "pointwise_bwd_filter",
    "bn_relu6_fwd",
    "bn_relu6_bwd",
]
EPS = 1e-3


def out_hw(h, s):
    return -(-h // s)  # SAME


def make_case(kernel, n, h, w, c, s, rng):
    """Returns (tf.function, list of argument tensors)."""

    def t(*shape, lo=-1.0, hi=1.0):
        return tf.constant(rng.uniform(lo, hi, size=shape).astype(np.float32))

    s4 = [1, s, s, 1]
    oh, ow = out_hw(h, s), out_hw(w, s)
    if kernel.startswith("depthwise"):
        x, f, dy = t(n, h, w, c), t(3, 3, c, 1), t(n, oh, ow, c)
        if kernel == "depthwise_fwd":
            fn = lambda x, f: tf.raw_ops.DepthwiseConv2dNative(  # noqa: E731
                input=x, filter=f, strides=s4, padding="SAME")
            return fn, [x, f]
        if kernel == "depthwise_bwd_input":
            fn = lambda f, dy: tf.raw_ops.DepthwiseConv2dNativeBackpropInput(  # noqa: E731
                input_sizes=[n, h, w, c], filter=f, out_backprop=dy, strides=s4, padding="SAME")
            return fn, [f, dy]
        fn = lambda x, dy: tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(  # noqa: E731
            input=x, filter_sizes=[3, 3, c, 1], out_backprop=dy, strides=s4, padding="SAME")
        return fn, [x, dy]
    if kernel.startswith("pointwise"):
        o = 2 * c
        x, f, dy = t(n, h, w, c), t(1, 1, c, o), t(n, oh, ow, o)
        if kernel == "pointwise_fwd":
            fn = lambda x, f: tf.raw_ops.Conv2D(  # noqa: E731
                input=x, filter=f, strides=s4, padding="SAME")
            return fn, [x, f]
        if kernel == "pointwise_bwd_input":
            fn = lambda f, dy: tf.raw_ops.Conv2DBackpropInput(  # noqa: E731
                input_sizes=[n, h, w, c], filter=f, out_backprop=dy, strides=s4, padding="SAME")
            return fn, [f, dy]
        fn = lambda x, dy: tf.raw_ops.Conv2DBackpropFilter(  # noqa: E731
            input=x, filter_sizes=[1, 1, c, o], out_backprop=dy, strides=s4, padding="SAME")
        return fn, [x, dy]

    x = t(n, h, w, c, lo=-2.0, hi=4.0)
    scale, offset = t(c, lo=0.5, hi=1.5), t(c, lo=0.0, hi=1.0)
    mean, var = t(c), t(c, lo=0.5, hi=2.0)
    if kernel == "bn_relu6_fwd":

        def fn(x, scale, offset, mean, var):
            r = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=scale, offset=offset, mean=mean, variance=var, epsilon=EPS,
                exponential_avg_factor=0.1, is_training=True)
            return tf.raw_ops.Relu6(features=r[0]), r[1], r[2], r[3], r[4]

        return fn, [x, scale, offset, mean, var]
    # bn_relu6_bwd: the saved statistics and pre-activation come from a forward.
    r = tf.raw_ops.FusedBatchNormV3(
        x=x, scale=scale, offset=offset, mean=mean, variance=var, epsilon=EPS,
        exponential_avg_factor=0.1, is_training=True)
    bn_out, rs1, rs2, rs3 = r[0], r[3], r[4], r[5]
    dy = t(n, h, w, c)

    def fn(dy, bn_out, x, scale, rs1, rs2, rs3):
        g = tf.raw_ops.Relu6Grad(gradients=dy, features=bn_out)
        r = tf.raw_ops.FusedBatchNormGradV3(
            y_backprop=g, x=x, scale=scale, reserve_space_1=rs1, reserve_space_2=rs2,
            reserve_space_3=rs3, epsilon=EPS, is_training=True)
        return r[0], r[1], r[2]

    return fn, [dy, bn_out, x, scale, rs1, rs2, rs3]


def time_case(fn, args, warmup, repeats):
    f = tf.function(fn, jit_compile=False)
    for _ in range(warmup):
        f(*args)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = f(*args)
        # Results are computed by the time the call returns on CPU; touching
        # a shape keeps the output alive without copying it.
        _ = out[0].shape if isinstance(out, (tuple, list)) else out.shape
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--kernels", default=",".join(KERNELS), help="comma-separated subset")
    ap.add_argument("--shapes", default=",".join(f"{h}x{w}x{c}" for h, w, c in SHAPES),
                    help="comma-separated HxWxC")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    results = []
    for kernel in args.kernels.split(","):
        if kernel not in KERNELS:
            sys.exit(f"unknown kernel {kernel!r}; known: {', '.join(KERNELS)}")
        strides = [1, 2] if kernel.startswith("depthwise") else [1]
        for h, w, c in shapes:
            for s in strides:
                fn, fargs = make_case(kernel, args.batch, h, w, c, s, rng)
                ms = time_case(fn, fargs, args.warmup, args.repeats)
                shape = f"{args.batch}x{h}x{w}x{c}"
                results.append({"kernel": kernel, "shape": shape, "stride": s, "ms": round(ms, 4)})
                print(f"{kernel:22s} {shape:14s} s{s} {ms:9.3f} ms", file=sys.stderr)

    try:
        threads = len(os.sched_getaffinity(0))
    except AttributeError:
        threads = os.cpu_count()
    doc = {
        "tensorflow": tf.__version__,
        "threads": threads,
        "tf_threading": {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
            "note": "0 = TensorFlow's default (one thread per core)",
        },
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on for x86 CPUs)"),
        "warmup": args.warmup,
        "repeats": args.repeats,
        "results": results,
    }
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
