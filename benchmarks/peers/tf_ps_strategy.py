#!/usr/bin/env python3
"""Times TensorFlow's ParameterServerStrategy training MobileNet v1 on a
cluster of local processes, the peer of `psflow train --workers W --ps P`,
and prints one JSON object (schema below).

The cluster, all on 127.0.0.1 on free ports:

- P parameter-server tasks and W worker tasks, each its own process
  (this script re-run with `--serve ps|worker`): a `tf.distribute.Server`
  with the cluster's `ClusterSpec`, joined forever;
- the chief (this process) is the coordinator:
  `tf.distribute.ParameterServerStrategy` over a `SimpleClusterResolver`
  of that ClusterSpec, and a `tf.distribute.coordinator.ClusterCoordinator`
  that schedules one training step at a time on whichever worker is free.

The model and step are those of tf_train.py: keras.applications.MobileNet
(weights=None, alpha=A, input RxRx3, C classes, logits out), sparse softmax
cross-entropy plus 4e-5 L2 weight decay on the conv, pointwise and
classifier kernels, Keras' RMSprop(learning_rate=0.01, rho=0.9,
momentum=0.9, epsilon=1.0), created under `strategy.scope()` so that every
variable and slot lives on the PS tasks (round-robin, no partitioner). Each
worker reads batches of `--batch-size` random tensors from a per-worker
`tf.data.Dataset.from_tensors(...).repeat()` (generated once on the worker:
no input pipeline to speak of).

ParameterServerStrategy training is asynchronous: each step pulls the
variables it reads from the PS tasks, computes its gradients on one worker
and applies them on the PS tasks, without waiting for the other workers.

Timing: one step (tracing, first remote call) then `--warmup` x W steps,
untimed, each batch joined; then `--steps` x W steps are scheduled and
`join()`ed, and images/s is steps x W x batch over that wall time: the
whole cluster's rate. The last step's loss is read back and must be
finite.

Threads (the machine's cores, `--cores`, default: those this process may
use, are shared by every process): each worker's intra-op pool gets
max(1, cores // W) threads, each PS task's max(1, cores // P), the chief's
1 (`--worker-threads` and `--ps-threads` override); every inter-op pool
gets max(2, intra) (with one inter-op thread per task, 2 workers + 2 PS
hung for good in its first steps). The compute of a step runs
in the worker's intra-op pool (oneDNN included), so on 2 cores 1+1 gives
the worker both cores and 2+2 one each, as psflow's in-process cluster
shares its kernel threads (one per core) between its workers.

A run that has no result after `--deadline` seconds reports the hang as
its error; the server processes die with the chief (PR_SET_PDEATHSIG).

Output (one line of JSON on stdout; the servers' logs go to stderr on
failure):

    {"tensorflow", "keras", "workers", "ps", "alpha", "resolution",
     "classes", "batch_per_worker", "mode": "async", "cores",
     "threads": {"worker", "ps", "chief"}, "variables_on": {device: count},
     "startup_s", "first_step_s",
     "warmup", "steps", "closures", "seconds", "images_per_sec",
     "final_loss"}
  | {..., "error": "one line: what failed"}   (exit status 3)
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

WEIGHT_DECAY = 4e-5


def cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def inter_threads(intra):
    """Inter-op threads for a task with `intra` intra-op threads: never
    below 2 (a task with one inter-op thread can block for good on a remote
    receive or an iterator inside a function)."""
    return max(2, intra)


def set_threads(tf, intra):
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter_threads(intra))


def serve(args):
    """One PS or worker task: a tf.distribute.Server, joined forever."""
    try:  # Linux: end with the chief, however the chief ends
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != args.parent:
            return
    except (OSError, AttributeError):
        pass
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import tensorflow as tf

    set_threads(tf, args.threads)
    config = tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=args.threads,
        inter_op_parallelism_threads=inter_threads(args.threads),
    )
    cluster = tf.train.ClusterSpec(json.loads(args.cluster))
    server = tf.distribute.Server(cluster, job_name=args.serve, task_index=args.index,
                                  protocol="grpc", config=config, start=True)
    print(f"{args.serve}:{args.index} serving {server.target}", file=sys.stderr, flush=True)
    server.join()


def free_ports(n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_listening(addrs, procs, deadline):
    """Waits until every address accepts a TCP connection."""
    pending = list(addrs)
    while pending:
        for p, name, log in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with status {p.returncode} before serving: "
                                   f"{tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"servers not listening after the timeout: {', '.join(pending)}")
        addr = pending[0]
        host, port = addr.rsplit(":", 1)
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                pending.pop(0)
        except OSError:
            time.sleep(0.2)


def tail(path, n=3):
    try:
        with open(path, errors="replace") as fh:
            lines = [ln.strip() for ln in fh if ln.strip()]
    except OSError:
        return "(no log)"
    return " | ".join(lines[-n:]) if lines else "(empty log)"


def decayed(v):
    """psflow's L2 rule: conv, pointwise and dense kernels, not depthwise."""
    path = getattr(v, "path", v.name)
    return path.endswith("kernel") and "depthwise" not in path


def one_line(e):
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0] if s else ''}"[:400]


def run_chief(args, out):
    n_threads = args.worker_threads or max(1, args.cores // args.workers)
    p_threads = args.ps_threads or max(1, args.cores // args.ps)
    out["threads"] = {"worker": n_threads, "ps": p_threads, "chief": 1}
    ports = free_ports(args.workers + args.ps + 1)
    cluster = {
        "worker": [f"127.0.0.1:{p}" for p in ports[: args.workers]],
        "ps": [f"127.0.0.1:{p}" for p in ports[args.workers: args.workers + args.ps]],
        "chief": [f"127.0.0.1:{ports[-1]}"],
    }
    logdir = tempfile.mkdtemp(prefix="tf-ps-")
    procs = []
    t_start = time.monotonic()
    try:
        for job, threads in (("ps", p_threads), ("worker", n_threads)):
            for i in range(len(cluster[job])):
                log = os.path.join(logdir, f"{job}{i}.log")
                with open(log, "w") as fh:
                    p = subprocess.Popen(
                        [sys.executable, os.path.abspath(__file__), "--serve", job, "--index", str(i),
                         "--cluster", json.dumps(cluster), "--threads", str(threads),
                         "--parent", str(os.getpid())],
                        stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT)
                procs.append((p, f"{job}:{i}", log))
                CHILDREN.append(p)

        os.environ["OMP_NUM_THREADS"] = "1"
        import tensorflow as tf
        import keras

        out["tensorflow"], out["keras"] = tf.__version__, keras.__version__
        set_threads(tf, 1)
        wait_listening(cluster["ps"] + cluster["worker"], procs,
                       time.monotonic() + args.timeout)

        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster), task_type="chief", task_id=0, rpc_layer="grpc")
        strategy = tf.distribute.ParameterServerStrategy(resolver)
        coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)

        b, r, c = args.batch_size, args.resolution, args.classes
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = keras.applications.MobileNet(
                input_shape=(r, r, 3), alpha=args.alpha, weights=None, classes=c,
                classifier_activation=None)
            opt = keras.optimizers.RMSprop(learning_rate=0.01, rho=0.9, momentum=0.9, epsilon=1.0)
            params = model.trainable_variables
            opt.build(params)
        decay = [v for v in params if decayed(v)]
        placed = {}
        for v in model.variables + list(opt.variables):
            dev = getattr(getattr(v, "value", v), "device", "") or "?"
            placed[dev] = placed.get(dev, 0) + 1
        out["variables_on"] = placed
        xent = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="sum_over_batch_size")

        def dataset_fn():
            x = tf.random.stateless_normal((b, r, r, 3), seed=(0, 1))
            y = tf.random.stateless_uniform((b,), seed=(0, 2), minval=0, maxval=c, dtype=tf.int32)
            return tf.data.Dataset.from_tensors((x, y)).repeat()

        per_worker = coordinator.create_per_worker_dataset(dataset_fn)
        it = iter(per_worker)

        @tf.function
        def train_step(iterator):
            def replica(x, y):
                with tf.GradientTape() as tape:
                    logits = model(x, training=True)
                    loss = xent(y, logits) + WEIGHT_DECAY * tf.add_n(
                        [tf.nn.l2_loss(v) for v in decay])
                grads = tape.gradient(loss, params)
                opt.apply_gradients(zip(grads, params))
                return loss

            x, y = next(iterator)
            return strategy.run(replica, args=(x, y))

        out["startup_s"] = time.monotonic() - t_start
        t0 = time.monotonic()
        last = coordinator.schedule(train_step, args=(it,))
        coordinator.join()
        out["first_step_s"] = time.monotonic() - t0
        for _ in range(args.warmup):
            for _ in range(args.workers):
                last = coordinator.schedule(train_step, args=(it,))
            coordinator.join()
        closures = args.steps * args.workers
        t0 = time.monotonic()
        for _ in range(closures):
            last = coordinator.schedule(train_step, args=(it,))
        coordinator.join()
        secs = time.monotonic() - t0
        loss = float(last.fetch())
        out.update(warmup=args.warmup, steps=args.steps, closures=closures, seconds=secs,
                   images_per_sec=closures * b / secs, final_loss=loss)
        if loss != loss:
            out.pop("images_per_sec")
            out["error"] = "the loss is NaN"
    except Exception as e:  # report what failed, one line, rather than a number
        out["error"] = one_line(e)
        for _, name, log in procs:
            print(f"--- {name} ---\n{tail(log, 20)}", file=sys.stderr)
    finally:
        if "error" not in out:
            # The chief's eager context logs every remote clean-up call that
            # fails once the servers are gone: nothing to see after success.
            sys.stdout.flush()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
        for p, _, _ in procs:
            if p.poll() is None:
                p.terminate()
        for p, _, _ in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for _, _, log in procs:
            try:
                os.remove(log)
            except OSError:
                pass
        try:
            os.rmdir(logdir)
        except OSError:
            pass


REPORT = threading.Lock()
CHILDREN = []


def hung(out, deadline):
    """The watchdog: the run took longer than --deadline (a hang)."""
    REPORT.acquire()  # never released: the main thread must not print too
    for p in CHILDREN:
        if p.poll() is None:
            p.kill()
    bad = {k: v for k, v in out.items() if k not in ("images_per_sec", "seconds")}
    bad["error"] = f"no result after {deadline:.0f} s (--deadline): the cluster hung"
    print(json.dumps(bad), flush=True)
    os._exit(3)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--ps", type=int, default=1)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=128, help="per worker")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5, help="untimed rounds of W steps")
    ap.add_argument("--steps", type=int, default=30, help="timed rounds of W steps")
    ap.add_argument("--cores", type=int, default=cores(),
                    help="cores shared by all tasks (default: those usable)")
    ap.add_argument("--worker-threads", type=int, default=0,
                    help="intra/inter-op threads per worker (0: max(1, cores // W))")
    ap.add_argument("--ps-threads", type=int, default=0,
                    help="intra/inter-op threads per PS task (0: max(1, cores // P))")
    ap.add_argument("--timeout", type=float, default=120,
                    help="seconds to wait for the servers to listen")
    ap.add_argument("--deadline", type=float, default=900,
                    help="seconds for the whole run; past it the run is reported as hung")
    # Internal: run one server task.
    ap.add_argument("--serve", choices=["ps", "worker"], help=argparse.SUPPRESS)
    ap.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--cluster", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--parent", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args)
        return
    if min(args.workers, args.ps, args.steps, args.batch_size, args.cores) < 1 or args.warmup < 0:
        sys.exit("tf_ps_strategy.py: --workers, --ps, --steps, --batch-size and --cores must be "
                 "at least 1, --warmup at least 0")
    out = {"workers": args.workers, "ps": args.ps, "alpha": args.alpha,
           "resolution": args.resolution, "classes": args.classes,
           "batch_per_worker": args.batch_size, "mode": "async", "cores": args.cores}
    watchdog = threading.Timer(args.deadline, hung, args=(out, args.deadline))
    watchdog.daemon = True
    watchdog.start()
    run_chief(args, out)
    with REPORT:
        print(json.dumps(out), flush=True)
    # The coordinator's threads can keep the interpreter alive: leave now.
    os._exit(3 if "error" in out else 0)


if __name__ == "__main__":
    main()
