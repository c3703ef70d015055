#!/usr/bin/env python3
"""Joins TensorFlow's and psflow's kernel timings and prints a table:

    kernel, shape, stride, TF ms, psflow ms, TF/psflow, psflow GFLOP/s, GB/s

Inputs are the JSON of benchmarks/peers/tf_kernels.py and of
`psflow bench kernels --json` ({"threads", "results": [{"kernel", "shape",
"stride", "ms", "gflops", "gbps"}]}), joined on (kernel, shape, stride).
A ratio above 1 means psflow is faster. Standard library only.

    python3 compare.py --tf tf.json --psflow psflow.json [--json-out joined.json]
"""

import argparse
import json
import math
import sys


def load(path, who):
    try:
        with open(path) as fh:
            doc = json.load(fh)
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"compare.py: cannot read {who} results from {path}: {e}")
    if not isinstance(doc.get("results"), list):
        sys.exit(f"compare.py: {path} has no \"results\" list")
    return doc


def key(r):
    return (r["kernel"], r["shape"], int(r["stride"]))


def geomean(xs):
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tf", required=True, help="JSON from tf_kernels.py")
    ap.add_argument("--psflow", required=True, help="JSON from psflow bench kernels --json")
    ap.add_argument("--json-out", help="write the joined results here")
    args = ap.parse_args()

    tf = load(args.tf, "TensorFlow")
    ps = load(args.psflow, "psflow")
    tf_by = {key(r): r for r in tf["results"]}
    ps_by = {key(r): r for r in ps["results"]}
    order = list(tf_by) + [k for k in ps_by if k not in tf_by]

    rows = []
    for k in order:
        t, p = tf_by.get(k), ps_by.get(k)
        tf_ms = t["ms"] if t else None
        ps_ms = p["ms"] if p else None
        rows.append({
            "kernel": k[0],
            "shape": k[1],
            "stride": k[2],
            "tf_ms": tf_ms,
            "psflow_ms": ps_ms,
            "ratio_tf_over_psflow": (tf_ms / ps_ms) if tf_ms and ps_ms else None,
            "psflow_gflops": p.get("gflops") if p else None,
            "psflow_gbps": p.get("gbps") if p else None,
        })
    roofs = ps.get("machine") or {}
    peak, dram = roofs.get("peak_gflops"), roofs.get("copy_gbps")
    for r in rows:
        r["psflow_pct_peak"] = 100 * r["psflow_gflops"] / peak if peak and r["psflow_gflops"] else None
        r["psflow_pct_dram"] = 100 * r["psflow_gbps"] / dram if dram and r["psflow_gbps"] else None

    head = ["kernel", "shape", "stride", "TF ms", "psflow ms", "TF/psflow", "GFLOP/s", "GB/s",
            "% peak", "% DRAM"]
    table = [[r["kernel"], r["shape"], str(r["stride"]), fmt(r["tf_ms"], ".3f"),
              fmt(r["psflow_ms"], ".3f"), fmt(r["ratio_tf_over_psflow"], ".2f"),
              fmt(r["psflow_gflops"], ".1f"), fmt(r["psflow_gbps"], ".1f"),
              fmt(r["psflow_pct_peak"], ".0f"), fmt(r["psflow_pct_dram"], ".0f")] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(head)]
    right = {2, 3, 4, 5, 6, 7, 8, 9}

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    print(f"TensorFlow {tf.get('tensorflow', '?')} ({tf.get('threads', '?')} threads) vs "
          f"psflow ({ps.get('threads', '?')} threads); TF/psflow > 1: psflow faster; "
          f"GFLOP/s and GB/s are psflow's")
    print(line(head))
    print("  ".join("-" * w for w in widths))
    for row in table:
        print(line(row))

    per_kernel = {}
    for r in rows:
        per_kernel.setdefault(r["kernel"], []).append(r["ratio_tf_over_psflow"])
    summary = {k: geomean(v) for k, v in per_kernel.items()}
    overall = geomean([r["ratio_tf_over_psflow"] for r in rows])
    print()
    print("geometric mean of TF/psflow per kernel:")
    for k, g in summary.items():
        print(f"  {k:22s} {fmt(g, '.2f')}")
    print(f"  {'all':22s} {fmt(overall, '.2f')}")
    if roofs:
        print(f"\nmachine roofs (measured by psflow): {peak:.0f} GFLOP/s f32 FMA ({roofs.get('isa')}), "
              f"copy {dram:.1f} GB/s (128 MiB), {roofs.get('copy_8mib_gbps', 0):.1f} GB/s (8 MiB, in cache)")
    missing = [r for r in rows if r["tf_ms"] is None or r["psflow_ms"] is None]
    if missing:
        print(f"\n{len(missing)} rows measured by only one side (shown with '-')")

    if args.json_out:
        doc = {
            "tensorflow": tf.get("tensorflow"),
            "tf_threads": tf.get("threads"),
            "psflow_threads": ps.get("threads"),
            "machine": roofs,
            "results": rows,
            "geomean_ratio_per_kernel": summary,
            "geomean_ratio": overall,
        }
        with open(args.json_out, "w") as fh:
            json.dump(doc, fh, indent=1)
            fh.write("\n")


if __name__ == "__main__":
    main()
