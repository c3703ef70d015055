#!/usr/bin/env python3
"""Writes graph/tests/fixtures/: frozen inference GraphDefs of a Keras
MobileNet (alpha 0.25, 32x32x3 input, 10 classes, seeded random weights and
non-trivial batch-norm statistics) as TensorFlow 2 writes them, an input
batch and TensorFlow's outputs for it.

Usage (from the repository root; needs tensorflow and tf_keras):
    /opt/tfvenv/bin/python tools/tf/gen_graph_fixtures.py [--out DIR]

- mobilenet_keras3_a025.pb: Keras 3 (batch norm lowered to Rsqrt/Mul/Sub/AddV2)
- mobilenet_fusedbn_a025.pb: the same weights in tf_keras (Keras 2), whose
  BatchNormalization runs FusedBatchNormV3 at inference
- input.npy float32 [2, 32, 32, 3]; expected_keras3.npy, expected_fusedbn.npy
  float32 [2, 10] (softmax probabilities)

Both graphs are frozen with convert_variables_to_constants_v2 from a
tf.function whose input signature is TensorSpec([None, 32, 32, 3], float32).
"""

import argparse
import collections
import json
import os
import sys

os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.python.framework.convert_to_constants import (  # noqa: E402
    convert_variables_to_constants_v2,
)

SEED = 1234
SCRIPT = "tools/tf/gen_graph_fixtures.py"
SPEC = tf.TensorSpec([None, 32, 32, 3], tf.float32, name="input")


def build_keras3():
    import keras

    keras.utils.set_random_seed(SEED)
    model = keras.applications.MobileNet(
        input_shape=(32, 32, 3), alpha=0.25, weights=None, classes=10
    )
    rng = np.random.default_rng(SEED)
    # Batch-norm statistics near (but not at) what a calibration batch gives
    # at each layer, set layer by layer: every batch norm changes the result,
    # and activations neither die nor saturate through 27 ReLU6s (with
    # statistics unrelated to the data, the output no longer depends on the
    # input).
    calib = rng.uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            probe = keras.Model(model.inputs, layer.input)
            a = np.asarray(probe(calib, training=False)).astype(np.float64)
            mu, var = a.mean(axis=(0, 1, 2)), a.var(axis=(0, 1, 2))
            c = mu.shape[0]
            sd = np.sqrt(var + 1e-6)
            layer.set_weights(
                [
                    rng.uniform(0.6, 1.4, c).astype(np.float32),  # gamma
                    rng.uniform(0.5, 1.5, c).astype(np.float32),  # beta
                    (mu + rng.uniform(-0.3, 0.3, c) * sd).astype(np.float32),
                    (var * rng.uniform(0.6, 1.6, c)).astype(np.float32),
                ]
            )
    return model


def build_tf_keras(weights):
    import tf_keras

    tf_keras.utils.set_random_seed(SEED)
    model = tf_keras.applications.MobileNet(
        input_shape=(32, 32, 3), alpha=0.25, weights=None, classes=10
    )
    model.set_weights(weights)
    return model


def freeze(model):
    @tf.function(input_signature=[SPEC])
    def serve(x):
        return model(x, training=False)

    concrete = serve.get_concrete_function()
    frozen = convert_variables_to_constants_v2(concrete)
    gd = frozen.graph.as_graph_def()
    inputs = [t.name for t in frozen.inputs]
    outputs = [t.name for t in frozen.outputs]
    return gd, frozen, inputs, outputs


def op_counts(gd):
    c = collections.Counter(n.op for n in gd.node)
    for f in gd.library.function:
        for n in f.node_def:
            c[f"(function) {n.op}"] += 1
    return dict(sorted(c.items()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="graph/tests/fixtures")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    x = np.random.default_rng(SEED + 1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    np.save(os.path.join(args.out, "input.npy"), x)

    k3 = build_keras3()
    tk = build_tf_keras(k3.get_weights())

    summary = {"tensorflow": tf.__version__, "script": SCRIPT, "graphs": {}}
    results = {}
    for tag, model, fname, expname in [
        ("keras3", k3, "mobilenet_keras3_a025.pb", "expected_keras3.npy"),
        ("fusedbn", tk, "mobilenet_fusedbn_a025.pb", "expected_fusedbn.npy"),
    ]:
        gd, frozen, ins, outs = freeze(model)
        path = os.path.join(args.out, fname)
        with open(path, "wb") as fh:
            fh.write(gd.SerializeToString())
        y = frozen(tf.constant(x))
        y = (y[0] if isinstance(y, (list, tuple)) else y).numpy().astype(np.float32)
        direct = np.asarray(model(x, training=False))
        assert np.allclose(y, direct, atol=1e-6), (tag, np.abs(y - direct).max())
        # The frozen graph read back from the file gives the same output.
        gd2 = tf.compat.v1.GraphDef()
        with open(path, "rb") as fh:
            gd2.ParseFromString(fh.read())
        wrapped = tf.compat.v1.wrap_function(
            lambda: tf.compat.v1.import_graph_def(gd2, name=""), []
        )
        fn = wrapped.prune(
            wrapped.graph.get_tensor_by_name(ins[0]), wrapped.graph.get_tensor_by_name(outs[0])
        )
        y2 = fn(tf.constant(x)).numpy()
        assert np.array_equal(y2, y), (tag, np.abs(y2 - y).max())
        np.save(os.path.join(args.out, expname), y)
        results[tag] = y
        summary["graphs"][fname] = {
            "inputs": ins,
            "outputs": outs,
            "nodes": len(gd.node),
            "bytes": os.path.getsize(path),
            "ops": op_counts(gd),
            "expected": expname,
        }
    summary["max_abs_diff_keras3_vs_fusedbn"] = float(
        np.abs(results["keras3"] - results["fusedbn"]).max()
    )
    assert np.abs(results["keras3"][0] - results["keras3"][1]).max() > 1e-3, "output ignores input"
    summary["expected_keras3_argmax"] = results["keras3"].argmax(1).tolist()
    summary["expected_keras3_max_prob"] = results["keras3"].max(1).tolist()
    json.dump(summary, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
