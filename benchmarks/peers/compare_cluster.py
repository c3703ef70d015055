#!/usr/bin/env python3
"""The cost of distribution: psflow's cluster images/s next to single-process
psflow and TensorFlow's ParameterServerStrategy, on one machine.

MobileNet v1 alpha=0.5, 32x32, 10 classes, batch 128 per worker, RMSProp
(0.01, decay 0.9, momentum 0.9, epsilon 1.0). Per repeat, one after the
other (the order reversed every other repeat, so that every configuration
sees the same machine state on average):

  bench     `psflow bench train --json`: one process, random tensors, no
            input pipeline; `images_per_sec` (mean over the timed steps).
  single    `psflow train --dataset synthetic`: one process with the input
            pipeline; `images_per_sec` of RUN/summary.json.
  1w+1ps    the same with `--workers 1 --ps 1`: an in-process cluster over
            loopback gRPC (coordinator, 1 PS shard, 1 worker; sync).
  2w+2ps    the same with `--workers 2 --ps 2`: each worker batch 128; the
            whole cluster's images/s.
  tf-single tf_train.py (the peer of `bench`, the same model and step
            without a cluster): one process, random tensors, the
            `jit_compile=False` step; images/s over the timed steps.
  tf-1w+1ps, tf-2w+2ps
            tf_ps_strategy.py: TensorFlow's ParameterServerStrategy with
            separate local processes per task (async); the whole cluster's
            images/s.

psflow train runs --warmup + --steps steps; summary.json's images_per_sec
counts every step after the first (psflow's own rule). The rate over just
the last --steps steps, from the TensorBoard events' wall times (logged
every --warmup steps), is kept in the JSON as `window_images_per_sec`.

Per configuration: the median over repeats, with min-max. Ratios are of
the medians, with the range of the same ratio taken within each repeat
(runs of one repeat are minutes apart at most). Every run also records
`others_cpu_cores`: the machine's busy CPU time during the run (/proc/stat)
less the benchmark's own (getrusage of this process and its children), per
second of the run; 0 is a quiet machine. `--wait-idle S` waits up to S
seconds before each run for other processes to use under 0.2 cores.
Standard library only; the TensorFlow runs use --tf-python (a venv with
tensorflow-cpu).

    python3 compare_cluster.py --psflow BIN [--tf-python PY | --no-tf]
        [--repeats 5] [--steps 60] [--warmup 10] [--only ...] [--wait-idle S]
        [--run-timeout 600] [--json-out FILE]
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ALPHA, RESOLUTION, BATCH, CLASSES = 0.5, 32, 128, 10

# name -> (label for people, workers, ps)
CONFIGS = {
    "bench": ("psflow bench train (1 process, no input pipeline)", 1, 0),
    "single": ("psflow train (1 process)", 1, 0),
    "1w+1ps": ("psflow train --workers 1 --ps 1", 1, 1),
    "2w+2ps": ("psflow train --workers 2 --ps 2", 2, 2),
    "tf-single": ("TF tf.function step (1 process, no input pipeline)", 1, 0),
    "tf-1w+1ps": ("TF ParameterServerStrategy 1 worker + 1 PS", 1, 1),
    "tf-2w+2ps": ("TF ParameterServerStrategy 2 workers + 2 PS", 2, 2),
}


def loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def binary_time(path):
    try:
        t = os.stat(path).st_mtime
    except OSError:
        return None
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="seconds")


def sha256(path):
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def git_state():
    """The checkout's commit and whether it had local changes (a binary
    given in $PSFLOW_BIN may have been built from another state)."""
    root = os.path.dirname(os.path.dirname(HERE))
    head, _ = run(["git", "-C", root, "rev-parse", "--short", "HEAD"], 30)
    dirty, _ = run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"], 30)
    return {"commit": head.strip() or None, "uncommitted_changes": bool(dirty.strip())}


def cpu_sample():
    """(busy seconds of the whole machine, CPU seconds of this process and
    its waited-for descendants, wall time), or None off Linux."""
    try:
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    busy = (sum(f[:8]) - f[3] - f[4]) / hz  # all but idle and iowait
    own = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        own += ru.ru_utime + ru.ru_stime
    return busy, own, time.monotonic()


def others_cpu(c0, c1):
    """Cores used on average by processes other than the benchmark's own
    between two samples: the machine's busy time less ours."""
    if c0 is None or c1 is None or c1[2] <= c0[2]:
        return None
    # (Tick-granular accounting makes a quiet machine read a hair below 0.)
    return max(0.0, round(((c1[0] - c0[0]) - (c1[1] - c0[1])) / (c1[2] - c0[2]), 3))


def wait_idle(limit, threshold=0.2):
    """Waits (at most `limit` seconds) until other processes use under
    `threshold` cores over one second; returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        c0 = cpu_sample()
        time.sleep(1.0)
        other = others_cpu(c0, cpu_sample())
        if other is None or other < threshold:
            break
    return round(time.monotonic() - t0, 1) if limit > 0 else 0.0


def one_line(text, limit=300):
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return (lines[-1] if lines else "no output")[:limit]


def run(cmd, timeout, env=None):
    """Runs cmd; returns (stdout, error or None)."""
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return "", f"timed out after {timeout} s"
    except OSError as e:
        return "", f"cannot run {cmd[0]}: {e}"
    if p.returncode != 0:
        return p.stdout, f"exit status {p.returncode}: {one_line(p.stderr or p.stdout)}"
    return p.stdout, None


def event_times(run_dir):
    """{step: wall_time} of the TensorBoard events in run_dir (TFRecord of
    Event protos; only fields 1 wall_time and 2 step are read)."""
    out = {}
    for name in os.listdir(run_dir):
        if not name.startswith("events.out.tfevents"):
            continue
        with open(os.path.join(run_dir, name), "rb") as fh:
            data = fh.read()
        i = 0
        while i + 12 <= len(data):
            (n,) = struct.unpack_from("<Q", data, i)
            rec = data[i + 12: i + 12 + n]
            i += 12 + n + 4
            wall, step, j = None, None, 0
            while j < len(rec):
                key, j = varint(rec, j)
                field, wire = key >> 3, key & 7
                if wire == 0:
                    v, j = varint(rec, j)
                    if field == 2:
                        step = v
                elif wire == 1:
                    if field == 1:
                        (wall,) = struct.unpack_from("<d", rec, j)
                    j += 8
                elif wire == 2:
                    ln, j = varint(rec, j)
                    j += ln
                elif wire == 5:
                    j += 4
                else:
                    break
            if wall is not None and step is not None:
                out[step] = max(wall, out.get(step, wall))
    return out


def varint(b, i):
    v, shift = 0, 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return v, i


class Runner:
    def __init__(self, args, tmp):
        self.a, self.tmp = args, tmp
        self.data = os.path.join(tmp, "data")
        # (psflow train takes the classes from the dataset: synthetic has 10.)
        self.common = ["--model", "mobilenet", "--alpha", str(ALPHA), "--resolution",
                       str(RESOLUTION), "--batch-size", str(BATCH)]

    def prepare(self):
        """Generates the synthetic dataset once, outside the timed runs."""
        out = os.path.join(self.tmp, "prepare")
        _, err = run([self.a.psflow, "train", *self.common, "--dataset", "synthetic",
                      "--data-dir", self.data, "--steps", "1", "--no-eval", "--progress",
                      "quiet", "--out", out], self.a.run_timeout)
        shutil.rmtree(out, ignore_errors=True)
        if err:
            sys.exit(f"compare_cluster.py: preparing the synthetic dataset failed: {err}")

    def bench(self):
        out, err = run([self.a.psflow, "bench", "train", *self.common, "--classes",
                        str(CLASSES), "--steps",
                        str(self.a.steps), "--warmup", str(self.a.warmup), "--json"],
                       self.a.run_timeout)
        if err:
            return {"error": err}
        d = json.loads(out)
        return {"images_per_sec": d["images_per_sec"],
                "images_per_sec_median_step": d["images_per_sec_median"],
                "threads": d.get("threads")}

    def train(self, workers=None, ps=None):
        out = tempfile.mkdtemp(dir=self.tmp, prefix="run-")
        total = self.a.warmup + self.a.steps
        cmd = [self.a.psflow, "train", *self.common, "--dataset", "synthetic",
               "--data-dir", self.data, "--steps", str(total), "--no-eval",
               "--progress", "quiet", "--checkpoint-every", "0",
               # The step as `bench` and TensorFlow's peers time it: no
               # weight averages (psflow train's default keeps them).
               "--moving-average-decay", "0",
               "--log-every", str(max(1, self.a.warmup)), "--out", out]
        if workers:
            cmd += ["--workers", str(workers), "--ps", str(ps)]
        try:
            _, err = run(cmd, self.a.run_timeout)
            if err:
                return {"error": err}
            with open(os.path.join(out, "summary.json")) as fh:
                s = json.load(fh)
            r = {"images_per_sec": s["images_per_sec"], "wall_seconds": s.get("wall_seconds"),
                 "threads": s.get("threads"), "steps": s.get("steps")}
            for k in ("bytes_pulled", "bytes_pushed", "mode"):
                if k in s:
                    r[k] = s[k]
            times = event_times(out)
            w = max(1, self.a.warmup)
            if w in times and total in times and total > w and times[total] > times[w]:
                r["window_images_per_sec"] = (
                    (total - w) * BATCH * (workers or 1) / (times[total] - times[w]))
            return r
        finally:
            shutil.rmtree(out, ignore_errors=True)

    def tf_single(self):
        if not self.a.tf_python:
            return {"error": self.a.no_tf_reason}
        out, err = run([self.a.tf_python, os.path.join(HERE, "tf_train.py"), "--alphas",
                        str(ALPHA), "--resolution", str(RESOLUTION), "--batch-size", str(BATCH),
                        "--classes", str(CLASSES), "--variants", "tf.function", "--steps",
                        str(self.a.steps), "--warmup", str(self.a.warmup)], self.a.run_timeout)
        if err:
            return {"error": err}
        d = json.loads(out)
        row = d["results"][0]
        if "error" in row:
            return {"error": row["error"]}
        secs = sum(row["step_times_ms"]) / 1e3
        return {"images_per_sec": BATCH * len(row["step_times_ms"]) / secs,
                "images_per_sec_median_step": row["images_per_sec_median"],
                "tensorflow": d.get("tensorflow"), "keras": d.get("keras"),
                "threads": d.get("threads")}

    def tf(self, workers, ps):
        if not self.a.tf_python:
            return {"error": self.a.no_tf_reason}
        out, err = run([self.a.tf_python, os.path.join(HERE, "tf_ps_strategy.py"),
                        "--workers", str(workers), "--ps", str(ps), "--steps",
                        str(self.a.steps), "--warmup", str(self.a.warmup),
                        "--deadline", str(self.a.run_timeout - 30)],
                       self.a.run_timeout)
        try:
            d = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"error": err or "tf_ps_strategy.py printed no JSON"}
        if "error" in d:
            return {"error": d["error"], "detail": d}
        return d

    def measure(self, name):
        _, w, p = CONFIGS[name]
        if name == "bench":
            return self.bench()
        if name == "single":
            return self.train()
        if name == "tf-single":
            return self.tf_single()
        if name.startswith("tf-"):
            return self.tf(w, p)
        return self.train(w, p)


def summary(values):
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}


def fmt(s, digits=0):
    if s is None:
        return "-"
    return f"{s['median']:,.{digits}f} ({s['min']:,.{digits}f}-{s['max']:,.{digits}f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--psflow", required=True, help="the psflow binary")
    ap.add_argument("--tf-python", help="python of a venv with tensorflow-cpu")
    ap.add_argument("--no-tf", action="store_true", help="skip the TensorFlow runs")
    ap.add_argument("--no-tf-reason", default="skipped (--no-tf)", help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=60, help="timed steps (per worker)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    ap.add_argument("--run-timeout", type=int, default=600, help="seconds per run")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="S",
                    help="before each run, wait up to S seconds until other processes use "
                         "under 0.2 cores (a shared machine)")
    ap.add_argument("--only", help="comma-separated configurations (default: all): "
                    + ", ".join(CONFIGS))
    ap.add_argument("--json-out", help="write the results here")
    a = ap.parse_args()
    if a.repeats < 1 or a.steps < 1 or a.warmup < 1:
        ap.error("--repeats, --steps and --warmup must be at least 1")
    if a.no_tf:
        a.tf_python = None
    elif not a.tf_python:
        ap.error("give --tf-python (a venv with tensorflow-cpu) or --no-tf")
    names = list(CONFIGS)
    if a.only:
        names = [n.strip() for n in a.only.split(",") if n.strip()]
        bad = [n for n in names if n not in CONFIGS]
        if bad or not names:
            ap.error(f"unknown --only {bad}: use {', '.join(CONFIGS)}")
    a.psflow = os.path.abspath(a.psflow)

    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load_before = loadavg()
    t_begin = time.monotonic()
    runs = {n: [] for n in names}  # name -> [result per repeat]
    with tempfile.TemporaryDirectory(prefix="psflow-cluster-") as tmp:
        r = Runner(a, tmp)
        if any(n not in ("bench",) and not n.startswith("tf-") for n in names):
            r.prepare()
        for rep in range(1, a.repeats + 1):
            order = names if rep % 2 == 1 else names[::-1]
            for n in order:
                waited = wait_idle(a.wait_idle)
                print(f"  repeat {rep}/{a.repeats}  {n:<10}", end="", file=sys.stderr, flush=True)
                l0, t0, c0 = loadavg(), time.monotonic(), cpu_sample()
                res = r.measure(n)
                other = others_cpu(c0, cpu_sample())
                res.update(repeat=rep, load_before=l0, load_after=loadavg(),
                           seconds_total=time.monotonic() - t0, others_cpu_cores=other,
                           waited_for_idle_s=waited)
                runs[n].append(res)
                shown = (f"{res['images_per_sec']:8.0f} images/s" if "images_per_sec" in res
                         else f"failed: {res['error']}")
                print(f"  {shown}  ({res['seconds_total']:.0f} s; other processes used "
                      f"{'?' if other is None else f'{other:.2f}'} cores"
                      f"{f', waited {waited:.0f} s for idle' if waited > 1.5 else ''})",
                      file=sys.stderr, flush=True)
    load_after = loadavg()
    elapsed = time.monotonic() - t_begin

    results = {}
    for n in names:
        ok = [x["images_per_sec"] for x in runs[n] if "images_per_sec" in x]
        errs = sorted({x["error"] for x in runs[n] if "error" in x})
        results[n] = {"label": CONFIGS[n][0], "workers": CONFIGS[n][1], "ps": CONFIGS[n][2],
                      "images_per_sec": summary(ok), "errors": errs, "runs": runs[n]}
        oth = [x["others_cpu_cores"] for x in runs[n] if x.get("others_cpu_cores") is not None]
        results[n]["others_cpu_cores"] = summary(oth)
        win = [x["window_images_per_sec"] for x in runs[n] if "window_images_per_sec" in x]
        if win:
            results[n]["window_images_per_sec"] = summary(win)

    def ratio(num, den):
        if num not in results or den not in results:
            return None
        a_, b_ = results[num]["images_per_sec"], results[den]["images_per_sec"]
        if not a_ or not b_:
            return None
        per = []
        for x, y in zip(runs[num], runs[den]):
            if "images_per_sec" in x and "images_per_sec" in y:
                per.append(x["images_per_sec"] / y["images_per_sec"])
        return {"of_medians": a_["median"] / b_["median"],
                "per_repeat": summary(per)}

    ratio_defs = [
        ("1w+1ps / single", "1w+1ps", "single", "the issue's target: >= 0.9"),
        ("2w+2ps / single", "2w+2ps", "single", "same 2 cores: cost, not scaling"),
        ("1w+1ps / bench", "1w+1ps", "bench", ""),
        ("single / bench", "single", "bench", "the input pipeline's cost"),
        ("psflow 1w+1ps / TF 1w+1ps", "1w+1ps", "tf-1w+1ps", ""),
        ("psflow 2w+2ps / TF 2w+2ps", "2w+2ps", "tf-2w+2ps", ""),
        ("TF 1w+1ps / TF single", "tf-1w+1ps", "tf-single", "TF's own cost"),
        ("TF 2w+2ps / TF single", "tf-2w+2ps", "tf-single", ""),
        ("psflow bench / TF single", "bench", "tf-single", "as compare_train.sh"),
    ]
    ratios = {}
    for label, num, den, note in ratio_defs:
        rr = ratio(num, den)
        if rr is not None:
            rr["note"] = note
            ratios[label] = rr

    # The table for people.
    print(f"MobileNet v1 alpha={ALPHA}, {RESOLUTION}x{RESOLUTION}, batch {BATCH} per worker; "
          f"{a.repeats} repeat(s) of {a.warmup} + {a.steps} steps; images/s of the whole "
          f"process or cluster: median (min-max over repeats)")
    rows = [["configuration", "images/s", "others' CPU"]]
    for n in names:
        res = results[n]
        cell = fmt(res["images_per_sec"])
        if res["errors"] and not res["images_per_sec"]:
            cell = "did not run: " + res["errors"][0]
        elif res["errors"]:
            cell += f"  [{len(res['errors'])} failed: {res['errors'][0]}]"
        rows.append([f"{n:<10} {res['label']}", cell, fmt(res["others_cpu_cores"], 2)])
    w = [max(len(r_[i]) for r_ in rows) for i in range(3)]
    for i, r_ in enumerate(rows):
        print(f"{r_[0]:<{w[0]}}  {r_[1]:<{w[1]}}  {r_[2]}")
        if i == 0:
            print("  ".join("-" * x for x in w))
    if ratios:
        print()
        print("ratio (of medians; per-repeat range)")
        for label, rr in ratios.items():
            pr = rr["per_repeat"]
            rng = f"({pr['min']:.2f}-{pr['max']:.2f})" if pr else ""
            note = f"  {rr['note']}" if rr["note"] else ""
            print(f"  {label:<28} {rr['of_medians']:5.2f}  {rng}{note}")
    tgt = ratios.get("1w+1ps / single")
    if tgt:
        print(f"\ntarget 1w+1ps >= 0.9 x single: {'met' if tgt['of_medians'] >= 0.9 else 'NOT met'} "
              f"({tgt['of_medians']:.2f})")
    ncpu = os.cpu_count()
    print("others' CPU: cores used by other processes during the runs (median, range); "
          "0 is a quiet machine")
    print(f"{ncpu} cores: 2w+2ps shares the same cores as 1 process (cost of distribution, "
          f"not scaling). psflow clusters are sync, TF's ParameterServerStrategy async. "
          f"load average {load_before[0] if load_before else '?'} before, "
          f"{load_after[0] if load_after else '?'} after; {elapsed / 60:.1f} min")

    if a.json_out:
        tf_meta = next((x for n in names if n.startswith("tf-") for x in runs[n]
                        if "tensorflow" in x), {})
        doc = {
            "what": "cost of distribution: psflow cluster vs single process vs TF "
                    "ParameterServerStrategy, one machine",
            "started_utc": started,
            "minutes": elapsed / 60,
            "machine": {"cores": ncpu, "platform": platform.platform(),
                        "processor": platform.processor() or platform.machine()},
            "load_average_before": load_before,
            "load_average_after": load_after,
            "model": {"name": "mobilenet_v1", "alpha": ALPHA, "resolution": RESOLUTION,
                      "classes": CLASSES, "batch_per_worker": BATCH,
                      "optimizer": "rmsprop lr 0.01 decay 0.9 momentum 0.9 epsilon 1.0"},
            "repeats": a.repeats, "steps": a.steps, "warmup": a.warmup,
            "psflow": {"binary": a.psflow, "modified_utc": binary_time(a.psflow),
                       "sha256": sha256(a.psflow), "checkout_when_run": git_state()},
            "tensorflow": tf_meta.get("tensorflow"), "keras": tf_meta.get("keras"),
            "tf_threads": {n: next((x.get("threads") for x in runs[n] if x.get("threads")), None)
                           for n in names if n.startswith("tf-")},
            "results": results,
            "ratios": ratios,
            "target_1w1ps_over_single": {
                "target": 0.9, "measured": tgt["of_medians"] if tgt else None,
                "met": (tgt["of_medians"] >= 0.9) if tgt else None},
        }
        with open(a.json_out, "w") as fh:
            json.dump(doc, fh, indent=1)
            fh.write("\n")


if __name__ == "__main__":
    main()
