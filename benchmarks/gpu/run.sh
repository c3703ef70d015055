#!/usr/bin/env bash
# Everything psflow measures on a GPU, in one call on a GPU machine with no
# network (it installs nothing):
#
#   benchmarks/gpu/run.sh [--out DIR] [--device cuda:0] [--steps N] [--repeats N]
#                         [--no-build] [--no-tests]
#
#  1. env      what the machine has: nvidia-smi, the CUDA libraries found
#              (NVRTC and cuBLAS: $PSFLOW_NVRTC_LIB / $PSFLOW_CUBLAS_LIB if
#              set, else .cache/nvrtc, Python's site-packages (the nvidia-*
#              wheels PyTorch brings), /usr/local/cuda*, the loader's cache)
#  2. build    $PSFLOW_BIN if set, else `cargo build --release --bin psflow`
#  3. tests    every gated GPU test file (a tests/*.rs naming PSFLOW_CUDA_TESTS
#              or "needs a CUDA GPU": kernels/tests/cuda_ops.rs,
#              cli/tests/bench_cuda.rs, graph/tests/cuda_train.rs when it
#              exists, ...) with PSFLOW_CUDA_TESTS=1 ... -- --include-ignored
#  4. bench-cuda   psflow bench cuda --json (kernels, copy and SGEMM roofs)
#  5. bench-train  psflow bench train --model mobilenet --alpha 1
#                  --resolution 32 --batch-size 128 --device cuda:0 --json
#  6. torch        benchmarks/gpu/torch_train.py --json, when `import torch`
#                  works; else "PyTorch not available" is recorded
#  7. summary  summary.json and a table: each stage's outcome, psflow's and
#              PyTorch's images/s and their ratio (target >= 1.0), the card's
#              roofs, the depthwise kernels below 60 % of the copy roof.
#
# Results go to --out, else $OUT if set, else
# benchmarks/results/gpu-<date>/: per stage NAME.out / NAME.err (and .json
# where the stage prints JSON), stages.tsv, summary.json. Each stage has a
# time limit (seconds; override with the environment variables named below)
# so the whole run fits in about 8 minutes once psflow is built:
#   LIMIT_BUILD=240 LIMIT_BUILD_TESTS=240 (compiling the test files)
#   LIMIT_TEST=90 (running each test file) LIMIT_BENCH_CUDA=90
#   LIMIT_BENCH_TRAIN=90 LIMIT_TORCH=90
# They are ceilings: a machine with psflow already built (or $PSFLOW_BIN
# and a warm target/) spends a fraction of them.
# A failed or timed-out stage is recorded and the next one runs; the script
# exits 1 naming the failed stages (0 when all passed), 2 on bad arguments.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here="$root/benchmarks/gpu"
out=${OUT:-}
device=cuda:0
steps=30
repeats=10
build=1
tests=1
while [ $# -gt 0 ]; do
    case "$1" in
        --out|--device|--steps|--repeats)
            [ $# -ge 2 ] || { echo "run.sh: $1 needs a value" >&2; exit 2; }
            case "$1" in
                --out) out=$2 ;;
                --device) device=$2 ;;
                --steps) steps=$2 ;;
                --repeats) repeats=$2 ;;
            esac
            shift 2 ;;
        --no-build) build=0; shift ;;
        --no-tests) tests=0; shift ;;
        -h|--help) sed -n '2,39p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -n "$out" ] || out="$root/benchmarks/results/gpu-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out" || { echo "run.sh: cannot create $out" >&2; exit 2; }
out=$(cd "$out" && pwd)
stages="$out/stages.tsv"
printf 'stage\tstatus\tseconds\tnote\n' >"$stages"
cd "$root" || exit 2

log() { printf '== %s\n' "$*" >&2; }

# record NAME STATUS SECONDS NOTE: one line of stages.tsv.
record() {
    local note=${4//$'\t'/ }
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${note//$'\n'/ }" >>"$stages"
    log "$1: $2 (${3}s) $note"
}

# stage NAME LIMIT CMD...: runs CMD with a time limit, stdout to NAME.out,
# stderr to NAME.err, and records ok / failed (exit N) / timed out.
stage() {
    local name=$1 limit=$2 t0 rc secs note
    shift 2
    log "$name (limit ${limit}s): $*"
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$out/$name.out" 2>"$out/$name.err" </dev/null
    rc=$?
    secs=$(( $(date +%s) - t0 ))
    if [ "$rc" -eq 0 ]; then
        record "$name" ok "$secs" ""
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        record "$name" "timed out" "$secs" "over the ${limit}s limit"
    else
        note=$(why "$name")
        record "$name" "failed (exit $rc)" "$secs" "$note"
    fi
    return "$rc"
}

skip() { record "$1" skipped 0 "$2"; }

# why NAME: one line on why stage NAME failed: for cargo test the result
# line and the first panic's message, else the last `error:` line of its
# stderr, else its last non-empty line.
why() {
    local o="$out/$1.out" e="$out/$1.err" result panic line
    result=$(grep -h -m1 '^test result: FAILED' "$o" "$e" 2>/dev/null | head -n 1)
    if [ -n "$result" ]; then
        panic=$(grep -h -A1 -m1 'panicked at' "$o" "$e" 2>/dev/null | sed -n 2p)
        line="$result; first failure: $panic"
    else
        line=$(grep -h '^error' "$e" 2>/dev/null | tail -n 1)
        [ -n "$line" ] || line=$(grep -v '^[[:space:]]*$' "$e" 2>/dev/null | tail -n 1)
    fi
    printf '%s' "$line" | cut -c1-400
}

# --- 1. environment -----------------------------------------------------------
t0=$(date +%s)
{
    echo "date: $(date -u +%FT%TZ)"
    echo "host: $(uname -a)"
    echo "git: $(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
    if command -v nvidia-smi >/dev/null 2>&1; then
        timeout 20 nvidia-smi 2>&1 || echo "nvidia-smi failed"
    else
        echo "nvidia-smi: not found"
    fi
} >"$out/env.txt"

# find_lib FILE SUBDIR: the first FILE under the usual places, or nothing.
find_lib() {
    local file=$1 sub=$2 d
    local dirs=("$root/.cache/nvrtc/nvidia/$sub/lib")
    if command -v python3 >/dev/null 2>&1; then
        while IFS= read -r d; do
            dirs+=("$d/nvidia/$sub/lib")
        done < <(timeout 20 python3 -c 'import site, sys
print("\n".join(site.getsitepackages() + [site.getusersitepackages()] + sys.path[1:]))' 2>/dev/null)
    fi
    for d in /usr/local/cuda/lib64 /usr/local/cuda-*/lib64 /usr/local/cuda*/targets/x86_64-linux/lib; do
        dirs+=("$d")
    done
    for d in "${dirs[@]}"; do
        if [ -f "$d/$file" ]; then
            echo "$d/$file"
            return 0
        fi
    done
    ldconfig -p 2>/dev/null | awk -v f="$file" '$1 == f { print $NF; exit }'
}

if [ -z "${PSFLOW_NVRTC_LIB:-}" ]; then
    nvrtc=$(find_lib libnvrtc.so.12 cuda_nvrtc)
    [ -n "$nvrtc" ] && export PSFLOW_NVRTC_LIB=$nvrtc
fi
if [ -z "${PSFLOW_CUBLAS_LIB:-}" ]; then
    cublas=$(find_lib libcublas.so.12 cublas)
    [ -n "$cublas" ] && export PSFLOW_CUBLAS_LIB=$cublas
fi
# libcublas.so.12 loads libcublasLt.so.12 from its own folder or the path.
if [ -n "${PSFLOW_CUBLAS_LIB:-}" ]; then
    LD_LIBRARY_PATH="$(dirname "$PSFLOW_CUBLAS_LIB")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export LD_LIBRARY_PATH
fi
{
    echo "PSFLOW_NVRTC_LIB=${PSFLOW_NVRTC_LIB:-<not found>}"
    echo "PSFLOW_CUBLAS_LIB=${PSFLOW_CUBLAS_LIB:-<not found>}"
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
} >>"$out/env.txt"
env_note="NVRTC ${PSFLOW_NVRTC_LIB:-not found}; cuBLAS ${PSFLOW_CUBLAS_LIB:-not found}"
if command -v nvidia-smi >/dev/null 2>&1 && timeout 20 nvidia-smi -L >/dev/null 2>&1; then
    record env ok $(( $(date +%s) - t0 )) "$(timeout 20 nvidia-smi -L | head -n 1); $env_note"
else
    record env "no GPU" $(( $(date +%s) - t0 )) "nvidia-smi missing or failing; $env_note"
fi

# --- 2. build -----------------------------------------------------------------
bin=""
if [ -n "${PSFLOW_BIN:-}" ]; then
    if [ -x "$PSFLOW_BIN" ]; then
        bin=$PSFLOW_BIN
        record build ok 0 "PSFLOW_BIN=$PSFLOW_BIN"
    else
        record build failed 0 "PSFLOW_BIN=$PSFLOW_BIN is not an executable file"
    fi
elif [ "$build" = 0 ]; then
    if [ -x "$root/target/release/psflow" ]; then
        bin="$root/target/release/psflow"
        record build ok 0 "--no-build: using $bin"
    else
        record build failed 0 "--no-build and no $root/target/release/psflow"
    fi
elif ! command -v cargo >/dev/null 2>&1; then
    record build failed 0 "cargo not found and PSFLOW_BIN not set"
elif stage build "${LIMIT_BUILD:-240}" cargo build --release --bin psflow; then
    bin="$root/target/release/psflow"
fi

# --- 3. GPU tests ---------------------------------------------------------------
if [ "$tests" = 0 ]; then
    skip tests "--no-tests"
elif ! command -v cargo >/dev/null 2>&1; then
    skip tests "cargo not found"
else
    specs=()
    for f in "$root"/*/tests/*.rs; do
        grep -q -e 'PSFLOW_CUDA_TESTS' -e 'needs a CUDA GPU' "$f" || continue
        crate_dir=$(dirname "$(dirname "$f")")
        pkg=$(sed -n 's/^name = "\(.*\)"/\1/p' "$crate_dir/Cargo.toml" | head -n 1)
        specs+=("$pkg:$(basename "$f" .rs)")
    done
    if [ ${#specs[@]} -eq 0 ]; then
        skip tests "no gated GPU test file found"
    else
        # Compile them all first (one limit), then run each (its own limit),
        # so a slow build is not mistaken for a hanging test.
        no_run=(cargo test --release --no-run)
        for s in "${specs[@]}"; do
            no_run+=(-p "${s%%:*}" --test "${s#*:}")
        done
        if stage build-tests "${LIMIT_BUILD_TESTS:-240}" "${no_run[@]}"; then
            for s in "${specs[@]}"; do
                stage "test-${s#*:}" "${LIMIT_TEST:-90}" env PSFLOW_CUDA_TESTS=1 \
                    cargo test --release -p "${s%%:*}" --test "${s#*:}" -- --include-ignored
            done
        fi
    fi
fi

# --- 4. psflow bench cuda -----------------------------------------------------------
if [ -n "$bin" ]; then
    stage bench-cuda "${LIMIT_BENCH_CUDA:-90}" \
        "$bin" bench cuda --device "$device" --repeats "$repeats" --json
    cp "$out/bench-cuda.out" "$out/bench-cuda.json"
else
    skip bench-cuda "no psflow binary (see the build stage)"
fi

# --- 5. psflow bench train on the GPU -------------------------------------------------
if [ -n "$bin" ]; then
    stage bench-train "${LIMIT_BENCH_TRAIN:-90}" \
        "$bin" bench train --model mobilenet --alpha 1 --resolution 32 \
        --batch-size 128 --steps "$steps" --device "$device" --json
    cp "$out/bench-train.out" "$out/bench-train.json"
else
    skip bench-train "no psflow binary (see the build stage)"
fi

# --- 6. PyTorch -------------------------------------------------------------------
if ! command -v python3 >/dev/null 2>&1; then
    skip torch "python3 not found: PyTorch not available"
elif ! timeout 60 python3 -c 'import torch' >"$out/torch-import.err" 2>&1; then
    skip torch "PyTorch not available ($(tail -n 1 "$out/torch-import.err" | cut -c1-200))"
else
    stage torch "${LIMIT_TORCH:-90}" python3 "$here/torch_train.py" \
        --alpha 1 --resolution 32 --batch-size 128 --steps "$steps" --device "$device" --json
    cp "$out/torch.out" "$out/torch.json"
fi

# --- 7. summary -------------------------------------------------------------------------
if command -v python3 >/dev/null 2>&1; then
    timeout 30 python3 "$here/summarize.py" "$out" || log "summary: summarize.py failed"
else
    column -t -s $'\t' "$stages" 2>/dev/null || cat "$stages"
fi

failed=$(awk -F'\t' 'NR > 1 && $2 != "ok" && $2 != "skipped" { printf "%s%s", sep, $1; sep = ", " }' "$stages")
if [ -n "$failed" ]; then
    if grep -q $'^env\tno GPU' "$stages"; then
        echo "run.sh: no GPU on this machine (nvidia-smi missing or failing): the GPU stages could not run" >&2
    fi
    echo "run.sh: not every stage passed: $failed (why: $stages, and NAME.err beside it in $out)" >&2
    exit 1
fi
echo "run.sh: every stage passed; results in $out" >&2
