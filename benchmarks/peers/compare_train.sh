#!/usr/bin/env bash
# psflow's single-process training speed against TensorFlow's, in one run:
# MobileNet v1 at the given widths, resolution 32, batch 128, RMSProp with
# momentum, random tensors (no input pipeline) on both sides.
#
#   benchmarks/peers/compare_train.sh [--alphas 1.0,0.5,0.25] [--repeats 3]
#       [--steps 30] [--warmup 5] [--classes 10] [--variants tf.function,tf.function+xla]
#       [--profile] [--json-out FILE] [--no-build]
#
# For each repeat and each alpha it runs TensorFlow (tf_train.py, one
# process) and `psflow bench train --json` one after the other, the order
# swapped every repeat, so both see the same machine state. The table gives
# per alpha the median over repeats of each run's median images/s, the range
# of those run medians, and psflow/TF. --profile adds a per-op profile of
# one step on each side (last repeat). Raw results: --json-out.
#
# The venv is the one compare_kernels.sh uses ($PSFLOW_TF_VENV, default
# .venv-tf), created with tensorflow-cpu if missing.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here="$root/benchmarks/peers"
venv=${PSFLOW_TF_VENV:-$root/.venv-tf}
alphas=1.0,0.5,0.25
repeats=3
steps=30
warmup=5
classes=10
variants=tf.function,tf.function+xla
profile=0
json_out=""
build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --alphas) alphas=$2; shift 2 ;;
        --repeats) repeats=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --classes) classes=$2; shift 2 ;;
        --variants) variants=$2; shift 2 ;;
        --profile) profile=1; shift ;;
        --json-out) json_out=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "compare_train.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
for n in "$repeats" "$steps" "$warmup" "$classes"; do
    case "$n" in
        ''|*[!0-9]*) echo "compare_train.sh: --repeats, --steps, --warmup and --classes take whole numbers, got '$n'" >&2; exit 2 ;;
    esac
done
[ "$repeats" -ge 1 ] && [ "$steps" -ge 1 ] && [ "$classes" -ge 2 ] || {
    echo "compare_train.sh: --repeats and --steps must be at least 1, --classes at least 2" >&2; exit 2; }

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
[ -x "$psflow" ] || { echo "compare_train.sh: $psflow not built" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

run_tf() { # alpha repeat [--profile]
    echo "  TensorFlow  alpha $1 (repeat $2)" >&2
    # TensorFlow's start-up chatter goes to a log, shown only on failure.
    if ! "$venv/bin/python" "$here/tf_train.py" --alphas "$1" --steps "$steps" --warmup "$warmup" \
        --classes "$classes" --variants "$variants" ${3:+"$3"} \
        >"$tmp/tf-$1-$2.json" 2>"$tmp/tf-$1-$2.log"; then
        cat "$tmp/tf-$1-$2.log" >&2
        echo "compare_train.sh: tf_train.py failed for alpha $1" >&2
        exit 1
    fi
}
run_psflow() { # alpha repeat [--profile]
    echo "  psflow      alpha $1 (repeat $2)" >&2
    "$psflow" bench train --model mobilenet --alpha "$1" --resolution 32 --batch-size 128 \
        --classes "$classes" --steps "$steps" --warmup "$warmup" --json ${3:+"$3"} >"$tmp/psflow-$1-$2.json"
}

IFS=, read -r -a list <<<"$alphas"
for r in $(seq 1 "$repeats"); do
    extra=""
    [ "$profile" = 1 ] && [ "$r" = "$repeats" ] && extra=--profile
    for a in "${list[@]}"; do
        if [ $((r % 2)) = 1 ]; then
            run_tf "$a" "$r" $extra
            run_psflow "$a" "$r" $extra
        else
            run_psflow "$a" "$r" $extra
            run_tf "$a" "$r" $extra
        fi
    done
done

"$venv/bin/python" "$here/compare_train.py" --dir "$tmp" ${json_out:+--json-out "$json_out"}
