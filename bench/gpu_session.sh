#!/usr/bin/env bash
# Every GPU check of spikegrad in one command, with every table and log in one folder.
#
#   bash bench/gpu_session.sh [--cpu-dry-run] [--budget SECONDS] [OUT_DIR]
#
# OUT_DIR (default: $OUT) receives four files:
#   log.txt             everything the steps printed
#   tables.md           every table (steps, environment, CUDA tests, timings, training per epoch)
#   results.json        every number
#   gpu_session.tar.gz  step logs, the CUDA tests' JUnit XML, gpu_check.md/json, the training run's
#                       metrics.jsonl, config.yaml and summary.json (no checkpoints)
# The steps, in order, each under its own timeout and within the budget (default 330 s; a step
# that would overrun is cut short), each recorded whatever its outcome, the next one run anyway:
#   env          nvidia-smi; Python, torch, CUDA, cuDNN, NCCL, Triton and package versions
#   triton_grid  python3 -m spikegrad.fused.check --backend triton --device cuda --jobs N
#   cuda_tests   python3 -m pytest -m cuda tests/test_cuda.py
#   gpu_check    python3 -m bench.gpu_check: neuron fwd+bwd against SpikingJelly and the copy floor,
#                spiking ResNet-18 step against the ANN, AMP off and on, peak memory, the goals
#   train        spikegrad train bench/gpu_mnist_resnet18.yaml: ResNet-18, adaptive Dspike and
#                evolutionary shortcut on full MNIST (digits, said in the log, if no dataset
#                `mnist` is registered), mixed precision on CUDA; accuracy per epoch
#   experiments  bash bench/gpu_experiments.sh WORK_DIR MODE, if that file exists
# Wheels in .whl/ are installed into /tmp/site (put first on PYTHONPATH) when spikingjelly cannot
# be imported: with pip, or unpacked where pip is missing (they are all pure Python). --cpu-dry-run runs the same steps on the CPU at tiny sizes (the Triton kernels
# through Triton's interpreter), skipping only what needs CUDA, with the reason in the log.
# Exit status 0 when every step passed, 1 otherwise, 2 for bad arguments.

set -u
set -o pipefail

usage() {
    sed -n '2,4p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

ARGS="$*"
MODE=gpu
BUDGET=""
OUT_DIR=""
while (( $# > 0 )); do
    case "$1" in
        --cpu-dry-run) MODE=cpu-dry-run ;;
        --budget)
            if (( $# < 2 )); then usage >&2; exit 2; fi
            BUDGET=$2
            shift ;;
        -h|--help) usage; exit 0 ;;
        -*) printf 'unknown option %s\n' "$1" >&2; usage >&2; exit 2 ;;
        *)
            if [[ -n "$OUT_DIR" ]]; then usage >&2; exit 2; fi
            OUT_DIR=$1 ;;
    esac
    shift
done
OUT_DIR=${OUT_DIR:-${OUT:-}}
if [[ -z "$OUT_DIR" ]]; then
    printf 'give the output folder (or set OUT)\n' >&2
    usage >&2
    exit 2
fi
if [[ -z "$BUDGET" ]]; then
    if [[ $MODE == gpu ]]; then BUDGET=330; else BUDGET=1500; fi
fi
if ! [[ "$BUDGET" =~ ^[0-9]+$ ]] || (( BUDGET < 30 )); then
    printf -- '--budget must be a whole number of seconds, at least 30, got %s\n' "$BUDGET" >&2
    exit 2
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$OUT_DIR" || exit 2
OUT_DIR=$(cd "$OUT_DIR" && pwd)
cd "$ROOT" || exit 2
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_session.XXXXXX") || exit 2
mkdir -p "$WORK/steps"
LOG="$OUT_DIR/log.txt"
: > "$LOG"
: > "$WORK/steps.tsv"
START=$(date +%s)
DEADLINE=$(( START + BUDGET ))
RESERVE=15  # seconds kept for the report and the archive at the end
FAILED=0
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$ROOT/src:$ROOT"
export PYTHONUNBUFFERED=1
export PYTHONDONTWRITEBYTECODE=1
if [[ -z "${TRITON_CACHE_DIR:-}" ]] && ! [[ -w "${HOME:-/nonexistent}" ]]; then
    export TRITON_CACHE_DIR=/tmp/triton_cache  # Triton compiles into $HOME/.triton otherwise
fi

say() {
    printf '%s\n' "$*" | tee -a "$LOG"
}

record() {  # record NAME STATUS SECONDS NOTE
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$WORK/steps.tsv"
    case "$2" in
        ok|skipped) ;;
        *) FAILED=1 ;;
    esac
    say "--- $1: $2 (${3} s)${4:+; $4}"
}

pack() {  # tables.md, results.json and the archive, from what is there now
    timeout -k 5 60 "$PY" -m bench.gpu_session_report report "$WORK" "$OUT_DIR" >> "$LOG" 2>&1 \
        || say "(the report could not be written; see the lines above)"
    local archive="$OUT_DIR/gpu_session.tar.gz"
    if tar -czf "$archive.part" --exclude='*.pt' -C "$WORK" . 2>> "$LOG"; then
        if (( $(stat -c %s "$archive.part") > 15 * 1024 * 1024 )); then
            tar -czf "$archive.part" --exclude='*.pt' --exclude='./train' -C "$WORK" . 2>> "$LOG"
            say "(the archive leaves out the training folder: it would exceed 15 MiB)"
        fi
        mv -f "$archive.part" "$archive"
    else
        rm -f "$archive.part"
        say "(the archive could not be written)"
    fi
}

run_step() {  # run_step NAME CAP_SECONDS COMMAND [ARG...]: the command under a timeout, logged
    local name=$1 cap=$2
    shift 2
    local now left limit t0 rc status note=""
    now=$(date +%s)
    left=$(( DEADLINE - now - RESERVE ))
    if (( left < 5 )); then
        record "$name" "SKIPPED" 0 "the budget of $BUDGET s is spent"
        return 0
    fi
    limit=$cap
    if (( limit > left )); then
        limit=$left
        note="cut to $limit s by the budget"
    fi
    say ""
    say "=== $name (at most $limit s): $*"
    t0=$(date +%s)
    timeout -k 10 "$limit" "$@" < /dev/null 2>&1 | tee "$WORK/steps/$name.log" | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    case "$rc" in
        0) status=ok ;;
        124) status="TIMEOUT after $limit s" ;;
        137) status="KILLED after $limit s" ;;
        *) status="FAILED (exit $rc)" ;;
    esac
    record "$name" "$status" "$(( $(date +%s) - t0 ))" "$note"
    pack
}

skip_step() {  # skip_step NAME REASON
    record "$1" skipped 0 "$2"
}

"$PY" - "$WORK/session.json" "$MODE" "$BUDGET" "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" \
    "bash bench/gpu_session.sh $ARGS" <<'PYEOF' || say "(session.json not written)"
import json, sys
path, mode, budget, started, command = sys.argv[1:6]
with open(path, "w") as f:
    json.dump({"mode": mode, "budget_s": int(budget), "started": started, "command": command}, f)
PYEOF

say "# bench/gpu_session.sh: mode $MODE, budget $BUDGET s, output $OUT_DIR, work folder $WORK"
say "# $(date -u '+%Y-%m-%d %H:%M:%S UTC'); repository $ROOT; python $("$PY" --version 2>&1)"

# --- wheels brought along (spikingjelly and its loguru, the dataset packages)
if ! "$PY" -c "import spikingjelly, loguru" > /dev/null 2>&1; then
    if compgen -G "$ROOT/.whl/*.whl" > /dev/null; then
        run_step wheels 120 "$PY" -m bench.gpu_session_report install-wheels "$ROOT/.whl" /tmp/site
        export PYTHONPATH="/tmp/site:$PYTHONPATH"
    else
        say "spikingjelly is not importable and there are no wheels in .whl/: its rows will say unavailable"
    fi
fi

# --- 1. environment
# shellcheck disable=SC2016  # $0 and $1 belong to the inner shell
run_step env 60 bash -c '
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit \
            --format=csv
    else
        echo "nvidia-smi: not found"
    fi
    exec "$0" -m bench.gpu_session_report env "$1"' "$PY" "$WORK"
if [[ $MODE == gpu ]] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    say "!!! torch sees no CUDA device: the CUDA steps below will fail"
fi

JOBS=$(( $(nproc 2> /dev/null || echo 2) / 2 ))
(( JOBS > 8 )) && JOBS=8
(( JOBS < 1 )) && JOBS=1

if [[ $MODE == gpu ]]; then
    # --- 2. the Triton correctness grid on CUDA (212 cases: float32, float64, float16, bfloat16)
    run_step triton_grid 120 "$PY" -m spikegrad.fused.check --backend triton --device cuda --jobs "$JOBS"
    # --- 3. the CUDA tests
    run_step cuda_tests 150 "$PY" -m pytest -m cuda -q -rA -p no:cacheprovider --timeout 120 \
        --junitxml "$WORK/cuda_tests.xml" tests/test_cuda.py
    # --- 4. timings and memory
    run_step gpu_check 150 "$PY" -m bench.gpu_check --out "$WORK/gpu_check"
else
    run_step triton_grid 600 env TRITON_INTERPRET=1 "$PY" -m spikegrad.fused.check --backend triton \
        --device cpu --jobs "$JOBS"
    say "(dry run: the CUDA tests are collected and skipped without a GPU)"
    run_step cuda_tests 300 "$PY" -m pytest -m cuda -q -rA -p no:cacheprovider --timeout 240 \
        --junitxml "$WORK/cuda_tests.xml" tests/test_cuda.py
    run_step gpu_check 600 env TRITON_INTERPRET=1 "$PY" -m bench.gpu_check --device cpu --tiny \
        --out "$WORK/gpu_check"
fi

# --- 5. one short training on a real benchmark
RECIPE=bench/gpu_mnist_resnet18.yaml
DATASET=mnist
NOTE=""
if ! "$PY" -m bench.gpu_session_report has-dataset mnist > /dev/null 2>&1; then
    DATASET=digits
    NOTE="no dataset 'mnist' is registered in this spikegrad: fell back to digits"
    say "!!! $NOTE"
fi
TRAIN_ARGS=(-m spikegrad train "$RECIPE" --out "$WORK/train" --overwrite --set "data.name=$DATASET")
if [[ $MODE == gpu ]]; then
    TRAIN_ARGS+=(--set train.device=cuda)
else
    if [[ $DATASET == mnist ]]; then  # the real dataset and model are built; the training is tiny
        run_step train_build 300 "$PY" -m bench.gpu_session_report build "$RECIPE" --set data.name=mnist \
            --set train.device=cpu
    fi
    NOTE="${NOTE:+$NOTE; }dry run: digits, width 0.125, T = 2, one epoch on the CPU (bfloat16 autocast)"
    TRAIN_ARGS=(-m spikegrad train "$RECIPE" --out "$WORK/train" --overwrite --set data.name=digits
                --set train.device=cpu --set model.width=0.125 --set model.T=2 --set train.epochs=1
                --set data.batch_size=64)
fi
"$PY" - "$WORK/train_info.json" "$RECIPE" "${TRAIN_ARGS[*]}" "$NOTE" "$DATASET" <<'PYEOF' \
    || say "(train_info.json not written)"
import json, sys
path, recipe, command, note, dataset = sys.argv[1:6]
with open(path, "w") as f:
    json.dump({"recipe": recipe, "command": "python3 " + command, "note": note,
               "dataset": "digits" if "data.name=digits" in command else dataset}, f)
PYEOF
run_step train 120 "$PY" "${TRAIN_ARGS[@]}"

# --- 6. the experiments hook
if [[ -f bench/gpu_experiments.sh ]]; then
    run_step experiments 600 bash bench/gpu_experiments.sh "$WORK/experiments" "$MODE"
else
    skip_step experiments "bench/gpu_experiments.sh does not exist"
fi

pack
say ""
say "=== steps"
while IFS=$'\t' read -r name status seconds note; do
    say "$(printf '%-12s %-24s %5s s  %s' "$name" "$status" "$seconds" "$note")"
done < "$WORK/steps.tsv"
say "=== $(( $(date +%s) - START )) s in all; files in $OUT_DIR: $(cd "$OUT_DIR" && echo *)"
rm -rf "$WORK"
exit "$FAILED"
