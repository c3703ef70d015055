#!/usr/bin/env python3
"""TensorFlow's figure for the Fashion-MNIST learning bar of docs/training.md.

Keras MobileNet (alpha 0.5, 32x32x3, no pretrained weights, 10 classes)
trained on the real Fashion-MNIST files with the recipe psflow's default
uses: RMSProp (rho 0.9, momentum 0.9, epsilon 1.0), learning rate 0.01,
batch 128, 2 epochs; images resized 28 -> 32 (bilinear), grey replicated
to RGB, per-image standardization (psflow's `--augment none`). Prints the
test top-1 of each seed and their mean, as JSON with --json.

With --ema M, Keras' own weight averaging (RMSprop(use_ema=True,
ema_momentum=M)) is on: `fit` ends by writing the averages into the
model, so the top-1 reported is the averaged weights' (psflow's default
also evaluates averages).

Usage: fashion_mnist_keras.py [--data-dir DIR] [--epochs 2] [--seeds 1 2]
       [--preprocess standardize|scale] [--ema 0.99] [--json]
Needs tensorflow-cpu (e.g. the venv benchmarks/peers/ uses).
"""

import argparse
import gzip
import json
import os
import struct
import time

import numpy as np


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find(data_dir, stem):
    for name in (stem + ".gz", stem):
        p = os.path.join(data_dir, name)
        if os.path.exists(p):
            return p
    raise SystemExit(f"{stem}(.gz) not found in {data_dir}; install dataset-fashion-mnist")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--preprocess", choices=["standardize", "scale"], default="standardize",
                    help="per-image standardization (psflow's default) or MobileNet's [-1, 1] scaling")
    ap.add_argument("--ema", type=float, default=None,
                    help="Keras' use_ema with this ema_momentum; reports the averaged weights too")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import tensorflow as tf

    x_train = read_idx(find(args.data_dir, "train-images-idx3-ubyte"))
    y_train = read_idx(find(args.data_dir, "train-labels-idx1-ubyte")).astype(np.int32)
    x_test = read_idx(find(args.data_dir, "t10k-images-idx3-ubyte"))
    y_test = read_idx(find(args.data_dir, "t10k-labels-idx1-ubyte")).astype(np.int32)

    def prep(x):
        x = tf.image.resize(tf.convert_to_tensor(x[..., None], tf.float32), [32, 32])
        x = tf.image.grayscale_to_rgb(x)
        if args.preprocess == "standardize":
            x = tf.image.per_image_standardization(x)
        else:
            x = x / 127.5 - 1.0
        return x.numpy()

    xtr, xte = prep(x_train), prep(x_test)
    results = []
    for seed in args.seeds:
        tf.keras.utils.set_random_seed(seed)
        model = tf.keras.applications.MobileNet(
            input_shape=(32, 32, 3), alpha=0.5, weights=None, classes=10)
        ema = {} if args.ema is None else {"use_ema": True, "ema_momentum": args.ema}
        opt = tf.keras.optimizers.RMSprop(
            learning_rate=args.lr, rho=0.9, momentum=0.9, epsilon=1.0, **ema)
        model.compile(optimizer=opt, loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        t0 = time.time()
        model.fit(xtr, y_train, batch_size=args.batch_size, epochs=args.epochs,
                  shuffle=True, verbose=0 if args.json else 2)
        wall = time.time() - t0
        _, acc = model.evaluate(xte, y_test, batch_size=250, verbose=0)
        results.append({"seed": seed, "top1": float(acc), "train_seconds": wall})
        if not args.json:
            weights = "averaged" if args.ema is not None else "last"
            print(f"seed {seed}: test top-1 {acc:.4f}, {weights} weights ({wall:.0f} s)")
    out = {
        "tensorflow": tf.__version__,
        "recipe": {"alpha": 0.5, "resolution": 32, "batch_size": args.batch_size,
                   "epochs": args.epochs, "lr": args.lr, "rho": 0.9, "momentum": 0.9,
                   "epsilon": 1.0, "preprocess": args.preprocess, "ema_momentum": args.ema},
        "runs": results,
        "mean_top1": float(np.mean([r["top1"] for r in results])),
    }
    print(json.dumps(out, indent=2) if args.json else f"mean top-1 {out['mean_top1']:.4f}")


if __name__ == "__main__":
    main()
