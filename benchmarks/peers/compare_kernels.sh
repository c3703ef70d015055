#!/usr/bin/env bash
# psflow's CPU kernels against TensorFlow's, on this machine, in one run.
#
#   benchmarks/peers/compare_kernels.sh [--json-out FILE] [--repeats N] [--no-build]
#
# Creates a venv with tensorflow-cpu (default .venv-tf in the repository
# root, gitignored; $PSFLOW_TF_VENV overrides), builds psflow in release,
# runs `psflow bench kernels --json` and benchmarks/peers/tf_kernels.py one
# after the other, and prints the joined table (compare.py). Set
# PSFLOW_TF_VERSION to pin tensorflow-cpu (e.g. 2.21.0).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here="$root/benchmarks/peers"
venv=${PSFLOW_TF_VENV:-$root/.venv-tf}
json_out=""
repeats=15
build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --json-out) json_out=$2; shift 2 ;;
        --repeats) repeats=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "compare_kernels.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

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

cd "$root"
if [ "$build" = 1 ]; then
    cargo build --release -p psflow
fi
psflow="$root/target/release/psflow"
[ -x "$psflow" ] || { echo "compare_kernels.sh: $psflow not built" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "psflow bench kernels ..." >&2
"$psflow" bench kernels --repeats "$repeats" --json >"$tmp/psflow.json"
echo "TensorFlow kernels ..." >&2
"$venv/bin/python" "$here/tf_kernels.py" --repeats "$repeats" >"$tmp/tf.json"

"$venv/bin/python" "$here/compare.py" --tf "$tmp/tf.json" --psflow "$tmp/psflow.json" \
    ${json_out:+--json-out "$json_out"}
