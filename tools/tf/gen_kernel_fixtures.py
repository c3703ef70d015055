#!/usr/bin/env python3
"""Writes kernels/tests/fixtures/tf_kernels.json: kernel cases computed by
TensorFlow itself (tf.raw_ops, CPU, Eigen kernels with oneDNN off), which
kernels/tests/tf_fixtures.rs replays against psflow_kernels.

Usage (from the repository root):
    /opt/tfvenv/bin/python tools/tf/gen_kernel_fixtures.py [--out PATH]

Deterministic: every input comes from numpy's PCG64 seeded with SEED, and the
same TensorFlow version writes the same file byte for byte.

Each case: {"name", "op", "attrs", "inputs", "outputs"}; a tensor is
{"dtype", "shape", "values"} with row-major values (float32 values written
as their shortest round-trip decimal). An output whose value TensorFlow does
not define (FusedBatchNormV3's reserve spaces in inference mode) is left out.
"""

import argparse
import json
import os
import sys

os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"  # the reference Eigen kernels
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

SEED = 20240611
SCRIPT = "tools/tf/gen_kernel_fixtures.py"

rng = np.random.default_rng(SEED)
cases = []
# Largest |TF float32 - TF float64| over the ops that have a float64 kernel:
# it shows how much of the comparison tolerance rounding alone uses.
f64_check = {}


def f32(v):
    """Shortest decimal that rounds back to the same float32."""
    return float(str(np.float32(v))) if np.isfinite(v) else None


def tensor(a):
    a = np.asarray(a)
    if a.dtype == np.float32:
        vals = [f32(v) for v in a.reshape(-1)]
        dt = "float32"
    elif a.dtype in (np.int32, np.int64):
        vals = [int(v) for v in a.reshape(-1)]
        dt = str(a.dtype)
    else:
        raise TypeError(a.dtype)
    return {"dtype": dt, "shape": list(a.shape), "values": vals}


def add(name, op, attrs, inputs, outputs):
    assert not any(c["name"] == name for c in cases), name
    cases.append(
        {
            "name": name,
            "op": op,
            "attrs": attrs,
            "inputs": {k: tensor(v) for k, v in inputs.items()},
            "outputs": {k: tensor(np.asarray(v)) for k, v in outputs.items()},
        }
    )


def unif(*shape, lo=-1.0, hi=1.0):
    return rng.uniform(lo, hi, size=shape).astype(np.float32)


def note_f64(op, fn, args32):
    """Runs fn in float64 on the same values and records the max deviation."""
    out32 = np.asarray(fn(*args32))
    args64 = [a.astype(np.float64) if a.dtype == np.float32 else a for a in args32]
    out64 = np.asarray(fn(*args64))
    err = float(np.max(np.abs(out32.astype(np.float64) - out64), initial=0.0))
    scale = float(np.max(np.abs(out64), initial=0.0))
    prev = f64_check.get(op, {"max_abs_err": 0.0, "max_abs_value": 0.0})
    f64_check[op] = {
        "max_abs_err": max(prev["max_abs_err"], err),
        "max_abs_value": max(prev["max_abs_value"], scale),
    }
    return out32


# ---------------------------------------------------------------- convolutions
# (input shape, filter hw): odd sizes, width 1, batch 1 and 2.
CONV_GEOMETRY = [
    ([1, 7, 5, 3], [3, 3]),
    ([2, 7, 5, 2], [1, 1]),
    ([1, 7, 5, 2], [5, 5]),
    ([2, 6, 7, 3], [2, 3]),
    ([2, 5, 1, 2], [3, 1]),  # width 1
]
CONV_STRIDES = [[1, 1], [2, 2], [2, 1]]


def conv_cases():
    out_ch = 4
    for gi, (ishape, (kh, kw)) in enumerate(CONV_GEOMETRY):
        for padding in ["SAME", "VALID"]:
            for strides in CONV_STRIDES:
                if strides == [2, 1] and gi % 2 == 1:
                    continue  # keep the file small: asymmetric strides on some
                n, h, w, c = ishape
                if padding == "VALID" and (kh > h or kw > w):
                    continue
                x = unif(*ishape)
                f = unif(kh, kw, c, out_ch)
                s4 = [1, strides[0], strides[1], 1]
                attrs = {"strides": strides, "padding": padding}
                tag = f"n{n}_{h}x{w}x{c}_k{kh}x{kw}_s{strides[0]}{strides[1]}_{padding.lower()}"

                def fwd(x, f):
                    return tf.raw_ops.Conv2D(input=x, filter=f, strides=s4, padding=padding).numpy()

                y = note_f64("Conv2D", fwd, [x, f])
                add(f"conv2d/{tag}", "Conv2D", attrs, {"input": x, "filter": f}, {"output": y})
                dy = unif(*y.shape)

                def bin_(f, dy):
                    return tf.raw_ops.Conv2DBackpropInput(
                        input_sizes=ishape, filter=f, out_backprop=dy, strides=s4, padding=padding
                    ).numpy()

                dx = note_f64("Conv2DBackpropInput", bin_, [f, dy])
                add(
                    f"conv2d_backprop_input/{tag}",
                    "Conv2DBackpropInput",
                    {**attrs, "input_sizes": ishape},
                    {"filter": f, "out_backprop": dy},
                    {"output": dx},
                )

                def bfi(x, dy):
                    return tf.raw_ops.Conv2DBackpropFilter(
                        input=x, filter_sizes=list(f.shape), out_backprop=dy, strides=s4, padding=padding
                    ).numpy()

                df = note_f64("Conv2DBackpropFilter", bfi, [x, dy])
                add(
                    f"conv2d_backprop_filter/{tag}",
                    "Conv2DBackpropFilter",
                    {**attrs, "filter_sizes": list(f.shape)},
                    {"input": x, "out_backprop": dy},
                    {"output": df},
                )


def depthwise_cases():
    for gi, (ishape, (kh, kw)) in enumerate(CONV_GEOMETRY):
        for mult in [1, 2]:
            for padding in ["SAME", "VALID"]:
                # TensorFlow's depthwise kernels reject unequal strides.
                for strides in [[1, 1], [2, 2]]:
                    n, h, w, c = ishape
                    if padding == "VALID" and (kh > h or kw > w):
                        continue
                    x = unif(*ishape)
                    f = unif(kh, kw, c, mult)
                    s4 = [1, strides[0], strides[1], 1]
                    attrs = {"strides": strides, "padding": padding}
                    tag = (
                        f"n{n}_{h}x{w}x{c}_k{kh}x{kw}_m{mult}_s{strides[0]}{strides[1]}"
                        f"_{padding.lower()}"
                    )

                    def fwd(x, f):
                        return tf.raw_ops.DepthwiseConv2dNative(
                            input=x, filter=f, strides=s4, padding=padding
                        ).numpy()

                    y = note_f64("DepthwiseConv2dNative", fwd, [x, f])
                    add(
                        f"depthwise/{tag}",
                        "DepthwiseConv2dNative",
                        attrs,
                        {"input": x, "filter": f},
                        {"output": y},
                    )
                    dy = unif(*y.shape)

                    def bin_(f, dy):
                        return tf.raw_ops.DepthwiseConv2dNativeBackpropInput(
                            input_sizes=ishape, filter=f, out_backprop=dy, strides=s4, padding=padding
                        ).numpy()

                    dx = note_f64("DepthwiseConv2dNativeBackpropInput", bin_, [f, dy])
                    add(
                        f"depthwise_backprop_input/{tag}",
                        "DepthwiseConv2dNativeBackpropInput",
                        {**attrs, "input_sizes": ishape},
                        {"filter": f, "out_backprop": dy},
                        {"output": dx},
                    )

                    def bfi(x, dy):
                        return tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
                            input=x,
                            filter_sizes=list(f.shape),
                            out_backprop=dy,
                            strides=s4,
                            padding=padding,
                        ).numpy()

                    df = note_f64("DepthwiseConv2dNativeBackpropFilter", bfi, [x, dy])
                    add(
                        f"depthwise_backprop_filter/{tag}",
                        "DepthwiseConv2dNativeBackpropFilter",
                        {**attrs, "filter_sizes": list(f.shape)},
                        {"input": x, "out_backprop": dy},
                        {"output": df},
                    )


# ----------------------------------------------------------------- batch norm
BN_NAMES = ["y", "batch_mean", "batch_variance", "reserve_space_1", "reserve_space_2", "reserve_space_3"]


def bn_inputs(shape):
    c = shape[-1]
    x = (rng.standard_normal(shape) * 1.7 + rng.uniform(-1, 1, size=c)).astype(np.float32)
    scale = unif(c, lo=0.5, hi=1.5)
    offset = unif(c, lo=-0.5, hi=0.5)
    mean = unif(c, lo=-1.0, hi=1.0)  # running averages far from the batch's
    var = unif(c, lo=0.3, hi=2.5)
    if x.size == 2 * c:
        # Two samples per channel: keep them apart. Two nearly equal samples
        # make y = (x - mean) / sqrt(var + eps) lose most of its float32
        # digits in any implementation, and the case would test rounding.
        flat = x.reshape(2, c)
        gap = rng.uniform(0.5, 2.0, size=c) * rng.choice([-1.0, 1.0], size=c)
        flat[1] = flat[0] + gap.astype(np.float32)
    return x, scale, offset, mean, var


def bn_cases():
    configs = [
        # (shape, epsilon, eaf, training, empty running stats)
        ([2, 3, 5, 4], 1e-3, 1.0, True, False),
        ([2, 3, 5, 4], 1e-3, 0.1, True, False),
        ([1, 4, 3, 3], 1e-5, 1.0, True, True),  # mean/variance may be empty
        ([1, 4, 3, 3], 1e-5, 0.1, True, False),
        ([2, 1, 1, 5], 1e-3, 0.1, True, False),  # 2 samples per channel
        ([2, 3, 5, 4], 1e-3, 1.0, False, False),
        ([1, 4, 3, 3], 1e-5, 1.0, False, False),
    ]
    for shape, eps, eaf, training, empty in configs:
        x, scale, offset, mean, var = bn_inputs(shape)
        if empty:
            mean = np.zeros([0], np.float32)
            var = np.zeros([0], np.float32)
        mode = "train" if training else "infer"
        tag = f"{mode}_{'x'.join(map(str, shape))}_eps{eps:g}_eaf{eaf:g}{'_empty' if empty else ''}"
        attrs = {"epsilon": eps, "exponential_avg_factor": eaf, "is_training": training}
        r = tf.raw_ops.FusedBatchNormV3(
            x=x,
            scale=scale,
            offset=offset,
            mean=mean,
            variance=var,
            epsilon=eps,
            exponential_avg_factor=eaf,
            is_training=training,
        )
        r = [t.numpy() for t in r]
        outs = dict(zip(BN_NAMES, r))
        if not training:
            # TensorFlow's CPU kernel leaves the reserve spaces uninitialized
            # in inference mode; only y, batch_mean, batch_variance (= the
            # given mean/variance) and reserve_space_3 are defined.
            del outs["reserve_space_1"], outs["reserve_space_2"]
        ins = {"x": x, "scale": scale, "offset": offset, "mean": mean, "variance": var}
        add(f"fused_batch_norm/{tag}", "FusedBatchNormV3", attrs, ins, outs)

        # The gradient, fed what the forward saved (training) or the
        # population statistics (inference).
        dy = unif(*shape)
        rs1, rs2 = (r[3], r[4]) if training else (mean, var)
        g = tf.raw_ops.FusedBatchNormGradV3(
            y_backprop=dy,
            x=x,
            scale=scale,
            reserve_space_1=rs1,
            reserve_space_2=rs2,
            reserve_space_3=r[5],
            epsilon=eps,
            is_training=training,
        )
        add(
            f"fused_batch_norm_grad/{tag}",
            "FusedBatchNormGradV3",
            {"epsilon": eps, "is_training": training},
            {"y_backprop": dy, "x": x, "scale": scale, "reserve_space_1": rs1, "reserve_space_2": rs2},
            {"x_backprop": g[0].numpy(), "scale_backprop": g[1].numpy(), "offset_backprop": g[2].numpy()},
        )

        # Batch norm + Relu6, and Relu6Grad + FusedBatchNormGradV3: what
        # psflow fuses. The inputs are spread so that some outputs clip at 0
        # and some at 6.
        if empty:
            continue
        x6 = (x * 2.0).astype(np.float32)
        off6 = (offset + 2.5).astype(np.float32)
        r = tf.raw_ops.FusedBatchNormV3(
            x=x6,
            scale=scale * 2.0,
            offset=off6,
            mean=mean,
            variance=var,
            epsilon=eps,
            exponential_avg_factor=eaf,
            is_training=training,
        )
        r = [t.numpy() for t in r]
        y6 = tf.raw_ops.Relu6(features=r[0]).numpy()
        outs = dict(zip(BN_NAMES, [y6] + r[1:]))
        if not training:
            del outs["reserve_space_1"], outs["reserve_space_2"]
        ins = {"x": x6, "scale": scale * 2.0, "offset": off6, "mean": mean, "variance": var}
        add(f"fused_batch_norm_relu6/{tag}", "FusedBatchNormV3+Relu6", attrs, ins, outs)
        rs1, rs2 = (r[3], r[4]) if training else (mean, var)
        dbn = tf.raw_ops.Relu6Grad(gradients=dy, features=r[0]).numpy()
        g = tf.raw_ops.FusedBatchNormGradV3(
            y_backprop=dbn,
            x=x6,
            scale=scale * 2.0,
            reserve_space_1=rs1,
            reserve_space_2=rs2,
            reserve_space_3=r[5],
            epsilon=eps,
            is_training=training,
        )
        add(
            f"fused_batch_norm_relu6_grad/{tag}",
            "Relu6Grad+FusedBatchNormGradV3",
            {"epsilon": eps, "is_training": training},
            {
                "y_backprop": dy,
                "y": y6,
                "x": x6,
                "scale": scale * 2.0,
                "reserve_space_1": rs1,
                "reserve_space_2": rs2,
            },
            {"x_backprop": g[0].numpy(), "scale_backprop": g[1].numpy(), "offset_backprop": g[2].numpy()},
        )


# -------------------------------------------------------------------- pooling
def pool_cases():
    configs = [
        ([1, 7, 5, 3], [2, 2], [2, 2], "VALID"),
        ([2, 7, 5, 2], [3, 3], [2, 2], "SAME"),
        ([1, 6, 6, 2], [3, 3], [1, 1], "SAME"),
        ([2, 5, 7, 3], [2, 3], [1, 2], "SAME"),
        ([1, 5, 1, 2], [3, 1], [2, 1], "VALID"),  # width 1
        ([2, 4, 4, 3], [4, 4], [1, 1], "VALID"),  # global pooling
    ]
    for shape, k, s, padding in configs:
        k4, s4 = [1, *k, 1], [1, *s, 1]
        attrs = {"ksize": k, "strides": s, "padding": padding}
        tag = f"{'x'.join(map(str, shape))}_k{k[0]}x{k[1]}_s{s[0]}{s[1]}_{padding.lower()}"
        x = unif(*shape)

        def avg(x):
            return tf.raw_ops.AvgPool(value=x, ksize=k4, strides=s4, padding=padding).numpy()

        y = note_f64("AvgPool", avg, [x])
        add(f"avg_pool/{tag}", "AvgPool", attrs, {"value": x}, {"output": y})
        dy = unif(*y.shape)

        def avg_grad(dy):
            return tf.raw_ops.AvgPoolGrad(
                orig_input_shape=shape, grad=dy, ksize=k4, strides=s4, padding=padding
            ).numpy()

        dx = note_f64("AvgPoolGrad", avg_grad, [dy])
        add(
            f"avg_pool_grad/{tag}",
            "AvgPoolGrad",
            {**attrs, "orig_input_shape": shape},
            {"grad": dy},
            {"output": dx},
        )

        # Max pooling, once on distinct values and once on values with ties
        # (a few levels only), where the gradient goes to the first maximum
        # of each window in row-major order.
        for ties in [False, True]:
            xm = np.round(unif(*shape) * 2) / 2 if ties else unif(*shape)
            xm = xm.astype(np.float32)
            t2 = tag + ("_ties" if ties else "")
            ym = tf.raw_ops.MaxPool(input=xm, ksize=k4, strides=s4, padding=padding).numpy()
            add(f"max_pool/{t2}", "MaxPool", attrs, {"input": xm}, {"output": ym})
            dym = unif(*ym.shape)
            dxm = tf.raw_ops.MaxPoolGrad(
                orig_input=xm, orig_output=ym, grad=dym, ksize=k4, strides=s4, padding=padding
            ).numpy()
            add(
                f"max_pool_grad/{t2}",
                "MaxPoolGrad",
                attrs,
                {"orig_input": xm, "orig_output": ym, "grad": dym},
                {"output": dxm},
            )


# ------------------------------------------------------ activations and loss
def relu6_grad_cases():
    for shape in [[2, 3, 5, 4], [17]]:
        g = unif(*shape)
        f = unif(*shape, lo=-2.0, hi=8.0)
        flat = f.reshape(-1)
        flat[:6] = [0.0, 6.0, -0.0, 1e-7, 5.9999995, 6.0000005]  # the edges
        add(
            f"relu6_grad/{'x'.join(map(str, shape))}",
            "Relu6Grad",
            {},
            {"gradients": g, "features": f},
            {"backprops": tf.raw_ops.Relu6Grad(gradients=g, features=f).numpy()},
        )


def softmax_xent_cases():
    configs = [
        (4, 10, np.int32, 1.0),
        (3, 7, np.int64, 1.0),
        (1, 5, np.int32, 1.0),
        (3, 10, np.int32, 60.0),  # large logits: needs the max subtracted
    ]
    for batch, classes, ldt, spread in configs:
        logits = (unif(batch, classes) * spread).astype(np.float32)
        if spread > 1:
            logits[0, :] += 100.0
            logits[1, :] -= 100.0
        labels = rng.integers(0, classes, size=batch).astype(ldt)
        loss, backprop = tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits(features=logits, labels=labels)
        add(
            f"sparse_softmax_xent/{batch}x{classes}_{np.dtype(ldt).name}_spread{spread:g}",
            "SparseSoftmaxCrossEntropyWithLogits",
            {},
            {"features": logits, "labels": labels},
            {"loss": loss.numpy(), "backprop": backprop.numpy()},
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="kernels/tests/fixtures/tf_kernels.json")
    args = ap.parse_args()

    conv_cases()
    depthwise_cases()
    bn_cases()
    pool_cases()
    relu6_grad_cases()
    softmax_xent_cases()

    doc = {
        "header": {
            "tensorflow": tf.__version__,
            "numpy": np.__version__,
            "script": SCRIPT,
            "command": f"python {SCRIPT}",
            "seed": SEED,
            "device": "CPU, TF_ENABLE_ONEDNN_OPTS=0 (Eigen kernels)",
            "layout": "NHWC activations, HWIO filters, [kh, kw, in, multiplier] depthwise filters",
            "float_format": "float32 values as shortest round-trip decimals",
            "tf_f32_vs_f64_max_abs_err": f64_check,
            "num_cases": len(cases),
        },
        "cases": cases,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(doc, fh, separators=(",", ":"))
        fh.write("\n")
    size = os.path.getsize(args.out)
    by_op = {}
    for c in cases:
        by_op[c["op"]] = by_op.get(c["op"], 0) + 1
    print(f"wrote {args.out}: {len(cases)} cases, {size} bytes", file=sys.stderr)
    for op, n in sorted(by_op.items()):
        print(f"  {op}: {n}", file=sys.stderr)
    print(json.dumps(f64_check, indent=1), file=sys.stderr)


if __name__ == "__main__":
    main()
