#!/usr/bin/env python3
"""A/B of psflow binaries on the training step, single process and 1 worker + 1 PS.

    benchmarks/ab_train.py [--rounds 8] [--steps 70] [--workers 1] [--ps 1] [--data-dir DIR]
        NAME=BINARY[,ENV=VALUE...] ...

On a shared or noisy machine consecutive runs of the same binary differ by
10-25 %, more than most changes worth measuring. This runs every binary in
turn, round after round (`psflow train --model mobilenet --alpha 0.5
--batch-size 128 --dataset synthetic --no-eval --moving-average-decay 0`,
then the same with `--workers W --ps P`, 1 and 1 unless given), and after
each round prints the medians so far and the median of the per-round
cluster/single ratios. Every other round runs in reverse order.
Standard library only; `--json` prints the raw rates at the end.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile


def parse_config(text):
    name, _, rest = text.partition("=")
    if not name or not rest:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=BINARY[,ENV=VALUE...]")
    binary, *envs = rest.split(",")
    env = {}
    for kv in envs:
        k, sep, v = kv.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"{kv!r}: expected ENV=VALUE")
        env[k] = v
    if not os.access(binary, os.X_OK):
        raise argparse.ArgumentTypeError(f"{binary}: not an executable file")
    return name, binary, env


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="+", type=parse_config, metavar="NAME=BINARY[,ENV=VALUE...]")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=70)
    ap.add_argument("--workers", type=int, default=1, help="workers of the cluster runs")
    ap.add_argument("--ps", type=int, default=1, help="parameter servers of the cluster runs")
    ap.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "psflow-ab-synthetic"))
    ap.add_argument("--json", action="store_true", help="print the raw rates as JSON at the end")
    args = ap.parse_args()

    common = ["train", "--model", "mobilenet", "--alpha", "0.5", "--batch-size", "128",
              "--dataset", "synthetic", "--data-dir", args.data_dir, "--steps", str(args.steps),
              "--no-eval", "--progress", "quiet", "--checkpoint-every", "0",
              "--moving-average-decay", "0"]
    if args.workers < 1 or args.ps < 1:
        ap.error("--workers and --ps must be at least 1")
    cluster = f"{args.workers}w+{args.ps}ps"
    modes = [("single", []), (cluster, ["--workers", str(args.workers), "--ps", str(args.ps)])]
    rates = {(name, mode): [] for name, _, _ in args.configs for mode, _ in modes}
    out = tempfile.mkdtemp(prefix="psflow-ab-")
    try:
        for r in range(args.rounds):
            # Every other round in reverse order, so that a slow stretch of
            # a shared machine does not always fall on the same runs.
            step = 1 if r % 2 == 0 else -1
            for name, binary, env in args.configs[::step]:
                for mode, extra in modes[::step]:
                    run = os.path.join(out, "run")
                    shutil.rmtree(run, ignore_errors=True)
                    p = subprocess.run([binary] + common + extra + ["--out", run],
                                       env={**os.environ, **env}, capture_output=True, text=True)
                    if p.returncode != 0:
                        sys.exit(f"{name} {mode} failed (exit {p.returncode}):\n{p.stderr[-2000:]}")
                    with open(os.path.join(run, "summary.json")) as f:
                        rates[(name, mode)].append(json.load(f)["images_per_sec"])
            parts = []
            for name, _, _ in args.configs:
                s, c = rates[(name, "single")], rates[(name, cluster)]
                ratio = statistics.median(b / a for a, b in zip(s, c))
                parts.append(f"{name}: single {statistics.median(s):,.0f} "
                             f"{cluster} {statistics.median(c):,.0f} ratio {ratio:.3f}")
            print(f"round {r + 1}/{args.rounds}: " + " | ".join(parts), flush=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if args.json:
        print(json.dumps({f"{n} {m}": v for (n, m), v in rates.items()}, indent=1))


if __name__ == "__main__":
    main()
