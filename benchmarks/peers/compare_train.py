#!/usr/bin/env python3
"""Joins the runs of compare_train.sh and prints the training-speed table.

Reads, from --dir, `tf-<alpha>-<repeat>.json` (tf_train.py) and
`psflow-<alpha>-<repeat>.json` (`psflow bench train --json`). Per alpha and
side, the figure is the median over repeats of each run's median images/s,
with the range of those run medians beside it; the ratio is psflow/TF (above
1: psflow is faster). Per-op profiles found in the files are printed after
the table (top op types per side). Standard library only.

    python3 compare_train.py --dir DIR [--json-out joined.json] [--top 12]
"""

import argparse
import glob
import json
import os
import re
import statistics
import sys

NAME = re.compile(r"^(tf|psflow)-(.+)-(\d+)\.json$")


def load(path):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"compare_train.py: cannot read {path}: {e}")


def summary(values):
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values),
            "max": max(values), "runs": values}


def fmt(s):
    if s is None:
        return "-"
    return f"{s['median']:.0f} ({s['min']:.0f}-{s['max']:.0f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True, help="the runs' JSON files")
    ap.add_argument("--json-out", help="write the joined results here")
    ap.add_argument("--top", type=int, default=12, help="op types listed per profile")
    args = ap.parse_args()

    runs = {}  # alpha -> {"psflow": [ips], variant: [ips], "errors": [...]}
    profiles = {}
    meta = {}
    files = sorted(glob.glob(os.path.join(args.dir, "*.json")))
    for path in files:
        m = NAME.match(os.path.basename(path))
        if not m:
            continue
        side, doc = m.group(1), load(path)
        if side == "psflow":
            a = float(doc["alpha"])
            entry = runs.setdefault(a, {})
            entry.setdefault("psflow", []).append(doc["images_per_sec_median"])
            meta["psflow_threads"] = doc.get("threads")
            if "profile" in doc:
                profiles.setdefault(a, {})["psflow"] = doc["profile"]
        else:
            meta.update(tensorflow=doc.get("tensorflow"), keras=doc.get("keras"),
                        tf_threads=doc.get("threads"))
            for r in doc["results"]:
                entry = runs.setdefault(float(r["alpha"]), {})
                if "error" in r:
                    entry.setdefault("errors", []).append(f"{r['variant']}: {r['error']}")
                else:
                    entry.setdefault(r["variant"], []).append(r["images_per_sec_median"])
            if "profile" in doc:
                profiles.setdefault(float(doc["profile"]["alpha"]), {})["tensorflow"] = doc["profile"]
    if not runs:
        sys.exit(f"compare_train.py: no tf-*.json or psflow-*.json results in {args.dir}")

    variants = sorted({k for e in runs.values() for k in e if k not in ("psflow", "errors")})
    header = ["alpha"] + [f"TF {v}" for v in variants] + ["psflow"] + \
             [f"psflow/TF {v}" for v in variants]
    rows, joined = [], []
    for a in sorted(runs, reverse=True):
        e = runs[a]
        ps = summary(e.get("psflow", []))
        tf = {v: summary(e.get(v, [])) for v in variants}
        ratio = {v: (ps["median"] / tf[v]["median"] if ps and tf[v] else None) for v in variants}
        rows.append([f"{a:g}"] + [fmt(tf[v]) for v in variants] + [fmt(ps)] +
                    ["-" if ratio[v] is None else f"{ratio[v]:.2f}" for v in variants])
        joined.append({"alpha": a, "psflow": ps, "tensorflow": tf, "ratio": ratio,
                       "errors": e.get("errors", [])})
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))  # noqa: E731
    print("images/s: median over repeats of each run's median (range of run medians)")
    print(line(header))
    print(line(["-" * w for w in widths]))
    for r in rows:
        print(line(r))
    for j in joined:
        for err in sorted(set(j["errors"])):
            print(f"alpha {j['alpha']:g}: TensorFlow {err}")
    print(f"TensorFlow {meta.get('tensorflow')} (Keras {meta.get('keras')}), "
          f"{meta.get('tf_threads')} intra/inter-op threads; psflow {meta.get('psflow_threads')} threads")

    for a in sorted(profiles, reverse=True):
        for side, p in sorted(profiles[a].items()):
            if "by_op" not in p:
                print(f"\nprofile alpha {a:g}, {side}: {p.get('error')}")
                continue
            total = p.get("kernel_ms", p.get("op_ms"))
            print(f"\nprofile alpha {a:g}, {side}: one step {p['step_ms']:.1f} ms, "
                  f"{total:.1f} ms in ops (summed over threads)")
            for o in p["by_op"][: args.top]:
                print(f"  {o['op']:<48} {o['count']:>5} {o['ms']:>9.2f} ms {o['percent']:>5.1f} %")

    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump({**meta, "results": joined, "profiles": {
                f"{a:g}": p for a, p in profiles.items()}}, fh, indent=1)


if __name__ == "__main__":
    main()
