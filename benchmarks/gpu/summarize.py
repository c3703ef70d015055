#!/usr/bin/env python3
"""The summary of one benchmarks/gpu/run.sh results directory: reads
stages.tsv, bench-cuda.json, bench-train.json and torch.json (whichever
exist and parse), writes summary.json beside them and prints a table:
each stage's outcome, psflow's and PyTorch's training images/s and the
ratio psflow / PyTorch (the issue's target is >= 1.0), the card's measured
roofs and the depthwise kernels below 60 % of the copy roof.

    python3 benchmarks/gpu/summarize.py RESULTS_DIR

Standard library only.
"""

import csv
import json
import os
import sys

TARGET_RATIO = 1.0


def load_json(path):
    """(object, None) or (None, why not)."""
    if not os.path.exists(path):
        return None, "not produced"
    try:
        with open(path) as f:
            return json.load(f), None
    except (OSError, ValueError) as e:
        return None, f"unreadable: {e}"


def read_stages(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def table(rows):
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows
    )


def summarize(out):
    stages = read_stages(os.path.join(out, "stages.tsv"))
    cuda, cuda_err = load_json(os.path.join(out, "bench-cuda.json"))
    train, train_err = load_json(os.path.join(out, "bench-train.json"))
    torch, torch_err = load_json(os.path.join(out, "torch.json"))
    stage_status = {s["stage"]: s for s in stages}

    def stage_err(name, err):
        # A stage that did not pass says why better than its empty output.
        s = stage_status.get(name)
        if s and s["status"] != "ok":
            return f"{s['status']}: {s['note']}" if s["note"] else s["status"]
        return err

    cuda_err = stage_err("bench-cuda", cuda_err)
    train_err = stage_err("bench-train", train_err)
    torch_err = stage_err("torch", torch_err)

    psflow_ips = train.get("images_per_sec_median") if isinstance(train, dict) else None
    torch_ips = torch.get("images_per_sec_median") if isinstance(torch, dict) else None
    ratio = psflow_ips / torch_ips if psflow_ips and torch_ips else None
    summary = {
        "stages": stages,
        "psflow_images_per_sec": psflow_ips,
        "psflow_error": None if psflow_ips else (train_err or "no images_per_sec_median"),
        "torch_images_per_sec": torch_ips,
        "torch_error": None if torch_ips else (torch_err or "no images_per_sec_median"),
        "ratio_psflow_over_torch": ratio,
        "target_ratio": TARGET_RATIO,
        "meets_target": None if ratio is None else ratio >= TARGET_RATIO,
        "note_rmsprop": "PyTorch's RMSprop adds eps outside the square root, TensorFlow's "
        "and psflow's inside: with eps = 1.0 the steps differ in size (the work per step "
        "is the same)",
    }
    if isinstance(cuda, dict):
        dw = [r for r in cuda.get("results", []) if r.get("meets_target") is not None]
        summary["card"] = {
            "name": cuda.get("name"),
            "compute_capability": cuda.get("compute_capability"),
            "copy_gbps": cuda.get("copy_gbps"),
            "gemm_roofs": cuda.get("gemm_roofs"),
            "cublas_unavailable": cuda.get("cublas_unavailable"),
        }
        summary["depthwise_below_target"] = [
            f"{r['kernel']}/{r['shape']}/s{r['stride']}: {100 * r['fraction_of_copy']:.0f}%"
            for r in dw
            if not r["meets_target"]
        ]
        summary["depthwise_kernels"] = len(dw)
    else:
        summary["card"] = None
        summary["bench_cuda_error"] = cuda_err

    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)

    print()
    print(table([["stage", "status", "s", "note"]]
                + [[s["stage"], s["status"], s["seconds"], s["note"][:100]] for s in stages]))
    print()

    def ips(v, err):
        return f"{v:.0f}" if v else f"- ({err})"[:200]

    rows = [
        ["training, MobileNet v1 a=1, 32x32, batch 128", "images/s"],
        ["psflow bench train --device cuda", ips(psflow_ips, summary["psflow_error"])],
        ["PyTorch (torch_train.py)", ips(torch_ips, summary["torch_error"])],
        [f"ratio psflow / PyTorch (target >= {TARGET_RATIO})",
         "-" if ratio is None else f"{ratio:.2f} ({'meets' if ratio >= TARGET_RATIO else 'BELOW'} target)"],
    ]
    print(table(rows))
    print("note: " + summary["note_rmsprop"])
    card = summary.get("card")
    if card:
        print(f"card: {card['name']} (compute capability {card['compute_capability']}), "
              f"copy roof {card['copy_gbps']:.0f} GB/s")
        for g in card.get("gemm_roofs") or []:
            print(f"  SGEMM {g['size']}^3 {g['gemm']}: {g['gflops']:.0f} GFLOP/s")
        if card.get("cublas_unavailable"):
            print(f"  cuBLAS unavailable: {card['cublas_unavailable']}")
        below = summary["depthwise_below_target"]
        print(f"depthwise kernels below 60% of the copy roof: {len(below)} of "
              f"{summary['depthwise_kernels']}")
        for b in below:
            print(f"  {b}")
    else:
        print(f"no kernel benchmark: {summary.get('bench_cuda_error')}"[:300])
    print(f"\nsummary: {os.path.join(out, 'summary.json')}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: summarize.py RESULTS_DIR", file=sys.stderr)
        sys.exit(2)
    sys.exit(summarize(sys.argv[1]))
