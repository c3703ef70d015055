#!/usr/bin/env python3
"""Times TensorFlow training MobileNet v1 on random tensors, the peer of
`psflow bench train`, and prints JSON:

    {"tensorflow": version, "keras": version, "threads": N,
     "results": [{"alpha": A, "resolution": R, "batch": B, "images_per_sec": x}, ...]}

The model is keras.applications.MobileNet (weights=None, logits out),
RMSprop(learning_rate=0.01, rho=0.9, momentum=0.9, epsilon=1.0) — the
TF-slim recipe psflow uses — sparse softmax cross-entropy, `model.fit` over a repeated
in-memory batch, `--warmup` untimed steps (tracing included), then `--steps`
timed ones. TensorFlow's threading is left at its defaults.
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402


JIT = "auto"  # Keras 3 default: what a user gets


def bench(alpha, resolution, batch, classes, warmup, steps):
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNet(
        input_shape=(resolution, resolution, 3),
        alpha=alpha,
        weights=None,
        classes=classes,
        classifier_activation=None,
    )
    model.compile(
        optimizer=keras.optimizers.RMSprop(
            learning_rate=0.01, rho=0.9, momentum=0.9, epsilon=1.0
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=JIT,
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, resolution, resolution, 3), dtype=np.float32)
    y = rng.integers(0, classes, size=(batch,), dtype=np.int32)
    # model.fit over a repeated in-memory batch: TensorFlow's own training
    # loop (one compiled step per batch, no per-step Python round trip).
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    model.fit(ds, steps_per_epoch=max(warmup, 1), epochs=1, verbose=0)
    t0 = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    dt = time.perf_counter() - t0
    return batch * steps / dt


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alphas", default="1.0,0.5,0.25")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    results = []
    for a in [float(s) for s in args.alphas.split(",")]:
        ips = bench(a, args.resolution, args.batch_size, args.classes, args.warmup, args.steps)
        results.append({"alpha": a, "resolution": args.resolution,
                        "batch": args.batch_size, "images_per_sec": ips})
    print(json.dumps({
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "threads": os.cpu_count(),
        "results": results,
    }, indent=1))


if __name__ == "__main__":
    main()
