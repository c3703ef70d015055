#!/usr/bin/env bash
# psflow's single-process training speed against TensorFlow's, in one run:
# MobileNet v1 at the given widths, resolution 32, batch 128, RMSProp with
# momentum, random tensors (no input pipeline) on both sides.
#
#   benchmarks/peers/compare_train.sh [--alphas 1.0,0.5,0.25] [--steps N] [--no-build]
#
# The venv is the one compare_kernels.sh uses ($PSFLOW_TF_VENV, default
# .venv-tf), created with tensorflow-cpu if missing.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here="$root/benchmarks/peers"
venv=${PSFLOW_TF_VENV:-$root/.venv-tf}
alphas=1.0,0.5,0.25
steps=20
build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --alphas) alphas=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "compare_train.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import tensorflow' >/dev/null 2>&1; then
    "$venv/bin/python" -m pip install --quiet "tensorflow-cpu${PSFLOW_TF_VERSION:+==$PSFLOW_TF_VERSION}"
fi
cd "$root"
[ "$build" = 1 ] && cargo build --release -p psflow
psflow="$root/target/release/psflow"

printf '%-6s %12s %14s %10s\n' alpha "TF img/s" "psflow img/s" "ps/TF"
tf_json=$("$venv/bin/python" "$here/tf_train.py" --alphas "$alphas" --steps "$steps")
IFS=, read -r -a list <<<"$alphas"
for a in "${list[@]}"; do
    ps=$("$psflow" bench train --model mobilenet --alpha "$a" --resolution 32 \
        --batch-size 128 --steps "$steps" --json | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["images_per_sec"])')
    tf=$(printf '%s' "$tf_json" | "$venv/bin/python" -c "import json,sys; d=json.load(sys.stdin); print([r['images_per_sec'] for r in d['results'] if abs(r['alpha']-$a)<1e-9][0])")
    "$venv/bin/python" -c "print(f'{float($a):<6} {$tf:12.0f} {$ps:14.0f} {$ps/$tf:10.2f}')"
done
printf '%s\n' "$tf_json" | "$venv/bin/python" -c 'import json,sys; d=json.load(sys.stdin); print("TensorFlow", d["tensorflow"], "Keras", d["keras"])'
