#!/usr/bin/env python3
"""Checks kernels/tests/fixtures/tf_kernels.json against plain float64 numpy
references (batch norm and its gradient, the fused Relu6 pair, pooling,
Relu6Grad, sparse softmax cross-entropy), with the tolerance the Rust test
uses. It shows that a correct implementation can meet that tolerance and
pins down TensorFlow's semantics (Bessel-corrected running variance, first
maximum wins in MaxPoolGrad, ...). Needs only numpy.

    python3 tools/tf/check_kernel_fixtures.py [PATH]
"""

import json
import sys

import numpy as np

ATOL = RTOL = 1e-5


def arr(t):
    return np.asarray(t["values"], dtype=np.float64).reshape(t["shape"])


def windows(h, k, s, padding):
    if padding == "SAME":
        out = -(-h // s)
        pad = max((out - 1) * s + k - h, 0) // 2
    else:
        out = (h - k) // s + 1
        pad = 0
    return out, pad


def pool_ref(x, k, s, padding, kind, dy=None):
    n, h, w, c = x.shape
    oh, ph = windows(h, k[0], s[0], padding)
    ow, pw = windows(w, k[1], s[1], padding)
    y = np.zeros((n, oh, ow, c))
    dx = np.zeros_like(x)
    for i in range(oh):
        for j in range(ow):
            h0, w0 = i * s[0] - ph, j * s[1] - pw
            hs = slice(max(h0, 0), min(h0 + k[0], h))
            ws = slice(max(w0, 0), min(w0 + k[1], w))
            win = x[:, hs, ws, :]
            if kind == "avg":
                cnt = win.shape[1] * win.shape[2]
                y[:, i, j] = win.mean(axis=(1, 2))
                if dy is not None:
                    dx[:, hs, ws, :] += dy[:, i, j][:, None, None, :] / cnt
            else:
                y[:, i, j] = win.max(axis=(1, 2))
                if dy is not None:
                    flat = win.reshape(n, -1, c)
                    first = flat.argmax(axis=1)  # first maximum, row-major
                    for b in range(n):
                        for ch in range(c):
                            a, bb = divmod(first[b, ch], win.shape[2])
                            dx[b, hs.start + a, ws.start + bb, ch] += dy[b, i, j, ch]
    return y, dx


def bn_ref(x, scale, offset, mean, var, eps, eaf, training):
    axes = tuple(range(x.ndim - 1))
    if training:
        m = x.mean(axis=axes)
        v = x.var(axis=axes)
        cnt = x.size // x.shape[-1]
        unbiased = v * cnt / max(cnt - 1, 1)
        y = (x - m) / np.sqrt(v + eps) * scale + offset
        if mean.size == 0:
            rm, rv = m, unbiased
        else:
            rm = (1 - eaf) * mean + eaf * m
            rv = (1 - eaf) * var + eaf * unbiased
        return {"y": y, "batch_mean": rm, "batch_variance": rv, "reserve_space_1": m,
                "reserve_space_2": v, "reserve_space_3": np.zeros(())}
    y = (x - mean) / np.sqrt(var + eps) * scale + offset
    return {"y": y, "batch_mean": mean, "batch_variance": var, "reserve_space_3": np.zeros(())}


def bn_grad_ref(dy, x, scale, m, v, eps, training):
    axes = tuple(range(x.ndim - 1))
    inv = 1 / np.sqrt(v + eps)
    xhat = (x - m) * inv
    dscale = (dy * xhat).sum(axis=axes)
    doffset = dy.sum(axis=axes)
    if training:
        cnt = x.size // x.shape[-1]
        dx = scale * inv * (dy - doffset / cnt - xhat * dscale / cnt)
    else:
        dx = dy * scale * inv
    return {"x_backprop": dx, "scale_backprop": dscale, "offset_backprop": doffset}


def refs(c):
    op, a = c["op"], c["attrs"]
    i = {k: arr(v) for k, v in c["inputs"].items()}
    if op in ("FusedBatchNormV3", "FusedBatchNormV3+Relu6"):
        r = bn_ref(i["x"], i["scale"], i["offset"], i["mean"], i["variance"], a["epsilon"],
                   a["exponential_avg_factor"], a["is_training"])
        if op.endswith("Relu6"):
            r["y"] = np.clip(r["y"], 0, 6)
        return r
    if op == "FusedBatchNormGradV3":
        return bn_grad_ref(i["y_backprop"], i["x"], i["scale"], i["reserve_space_1"],
                           i["reserve_space_2"], a["epsilon"], a["is_training"])
    if op == "Relu6Grad+FusedBatchNormGradV3":
        y = i["y"]
        dy = i["y_backprop"] * ((y > 0) & (y < 6))
        return bn_grad_ref(dy, i["x"], i["scale"], i["reserve_space_1"], i["reserve_space_2"],
                           a["epsilon"], a["is_training"])
    if op == "Relu6Grad":
        f = i["features"]
        return {"backprops": i["gradients"] * ((f > 0) & (f < 6))}
    if op in ("AvgPool", "MaxPool"):
        x = i["value"] if op == "AvgPool" else i["input"]
        return {"output": pool_ref(x, a["ksize"], a["strides"], a["padding"], op[:3].lower())[0]}
    if op == "AvgPoolGrad":
        x = np.zeros(a["orig_input_shape"])
        return {"output": pool_ref(x, a["ksize"], a["strides"], a["padding"], "avg", i["grad"])[1]}
    if op == "MaxPoolGrad":
        return {"output": pool_ref(i["orig_input"], a["ksize"], a["strides"], a["padding"], "max",
                                   i["grad"])[1]}
    if op == "SparseSoftmaxCrossEntropyWithLogits":
        z = i["features"]
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        lab = i["labels"].astype(int)
        onehot = np.eye(z.shape[1])[lab]
        return {"loss": -(logp * onehot).sum(axis=1), "backprop": np.exp(logp) - onehot}
    return None  # convolutions: checked against TF float64 by the generator


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "kernels/tests/fixtures/tf_kernels.json"
    doc = json.load(open(path))
    checked = failed = 0
    worst = {}
    for c in doc["cases"]:
        r = refs(c)
        if r is None:
            continue
        for k, t in c["outputs"].items():
            want, got = arr(t), np.asarray(r[k], dtype=np.float64)
            checked += 1
            if want.shape != got.shape:
                print(f"{c['name']} {k}: shape {got.shape} vs TF {want.shape}")
                failed += 1
                continue
            err = np.abs(got - want)
            ok = err <= ATOL + RTOL * np.abs(want)
            worst[c["op"]] = max(worst.get(c["op"], 0.0), float(err.max(initial=0)))
            if not ok.all():
                failed += 1
                print(f"{c['name']} {k}: max |diff| {err.max():.3e}")
    for op, e in sorted(worst.items()):
        print(f"  {op}: max |f64 ref - tf| = {e:.2e}")
    print(f"{checked} outputs checked, {failed} outside {ATOL:g} + {RTOL:g}*|tf|")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
