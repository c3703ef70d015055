#!/usr/bin/env bash
# The cost of distribution: psflow's local cluster (1 worker + 1 PS, 2
# workers + 2 PS) next to single-process psflow and TensorFlow's
# ParameterServerStrategy with the same shapes, on this machine: MobileNet v1
# alpha 0.5, resolution 32, batch 128 per worker, RMSProp with momentum.
#
#   benchmarks/peers/compare_cluster.sh [--repeats 5] [--steps 60] [--warmup 10]
#       [--only bench,single,1w+1ps,2w+2ps,tf-single,tf-1w+1ps,tf-2w+2ps]
#       [--run-timeout 600]
#       [--wait-idle S] [--json-out FILE] [--no-tf] [--no-build]
#
# Per repeat it runs, one after the other (the order reversed every other
# repeat): `psflow bench train` (no input pipeline), `psflow train` on the
# synthetic set in one process, the same with `--workers 1 --ps 1` and with
# `--workers 2 --ps 2` (in-process clusters over loopback gRPC),
# tf_train.py (TensorFlow, one process, the same step) and tf_ps_strategy.py
# with 1+1 and 2+2 (every task a local process).
# compare_cluster.py runs them and prints per configuration the median
# images/s over repeats with the range, and the ratios (1w+1ps / single is
# the issue's target, >= 0.9). Raw results: --json-out. --wait-idle S:
# before each run wait up to S seconds for other processes to use under 0.2
# cores (a shared machine); every run records what other processes used.
#
# psflow: $PSFLOW_BIN, else `cargo build --release -p psflow` (unless
# --no-build) and target/release/psflow. TensorFlow: the venv
# $PSFLOW_TF_VENV (default .venv-tf), created with tensorflow-cpu if
# missing ($PSFLOW_TF_VERSION pins it); --no-tf skips TensorFlow.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here="$root/benchmarks/peers"
venv=${PSFLOW_TF_VENV:-$root/.venv-tf}
build=1
tf=1
pass=()
while [ $# -gt 0 ]; do
    case "$1" in
        --repeats|--steps|--warmup|--only|--run-timeout|--wait-idle|--json-out)
            [ $# -ge 2 ] || { echo "compare_cluster.sh: $1 needs a value" >&2; exit 2; }
            pass+=("$1" "$2"); shift 2 ;;
        --no-tf) tf=0; shift ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) echo "compare_cluster.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [ "$tf" = 1 ]; then
    if [ ! -x "$venv/bin/python" ]; then
        echo "creating venv $venv" >&2
        python3 -m venv "$venv"
    fi
    if ! "$venv/bin/python" -c 'import tensorflow' >/dev/null 2>&1; then
        spec=tensorflow-cpu${PSFLOW_TF_VERSION:+==$PSFLOW_TF_VERSION}
        echo "installing $spec into $venv" >&2
        "$venv/bin/python" -m pip install --quiet --upgrade pip
        "$venv/bin/python" -m pip install --quiet "$spec"
    fi
    tf_args=(--tf-python "$venv/bin/python")
else
    tf_args=(--no-tf)
fi

cd "$root"
if [ -n "${PSFLOW_BIN:-}" ]; then
    psflow=$PSFLOW_BIN
else
    if [ "$build" = 1 ]; then
        cargo build --release -p psflow
    fi
    psflow="$root/target/release/psflow"
fi
[ -x "$psflow" ] || { echo "compare_cluster.sh: $psflow not built (or set PSFLOW_BIN)" >&2; exit 1; }

exec python3 "$here/compare_cluster.py" --psflow "$psflow" "${tf_args[@]}" "${pass[@]+"${pass[@]}"}"
