#!/usr/bin/env bash
# Experiment arms for the GPU session: bench/gpu_session.sh runs this file last, within what is
# left of its budget, as
#
#   bash bench/gpu_experiments.sh WORK_DIR MODE        # MODE: gpu or cpu-dry-run
#
# Results go under WORK_DIR (they land in the session's archive, without checkpoints);
# WORK_DIR/tables.md and WORK_DIR/results.json are added to the session's tables.md and
# results.json.
#
# The arm: the Dspike experiment on Animal-MNIST at its small scale (five surrogates, each
# tuned on a validation split, 5 paired seeds), twelve runs at a time on the one GPU, for
# EXPERIMENT_SECONDS (default 240); the runs that finish in time are tabulated (the runner
# marks an arm with missing seeds). On a 2-core CPU this experiment takes hours, most of it in
# the adaptive arm's temperature searches. cpu-dry-run: the same commands with --smoke.

set -u
set -o pipefail

WORK_DIR=${1:?usage: bash bench/gpu_experiments.sh WORK_DIR MODE}
MODE=${2:-gpu}
PY=${PYTHON:-python3}
SECONDS_LEFT=${EXPERIMENT_SECONDS:-240}
mkdir -p "$WORK_DIR"
OUT="$WORK_DIR/dspike_surrogates"

case "$MODE" in
    gpu) ARGS=(--datasets animal_mnist --device cuda --jobs 12 --threads 1) ;;
    cpu-dry-run) ARGS=(--smoke --jobs 2 --threads 1) ;;
    *) printf 'MODE must be gpu or cpu-dry-run, got %s\n' "$MODE" >&2; exit 2 ;;
esac

printf '== experiments.dspike_surrogates %s for at most %s s\n' "${ARGS[*]}" "$SECONDS_LEFT"
timeout -k 10 "$SECONDS_LEFT" "$PY" -m experiments.dspike_surrogates --out "$OUT" "${ARGS[@]}" --quiet
rc=$?
if (( rc == 124 || rc == 137 )); then
    printf '== stopped after %s s; tabulating the runs that finished\n' "$SECONDS_LEFT"
fi
timeout -k 5 60 "$PY" -m experiments.dspike_surrogates --out "$OUT" "${ARGS[@]}" --report --quiet
report_rc=$?
[[ -f "$OUT/results.md" ]] && cp "$OUT/results.md" "$WORK_DIR/tables.md"
[[ -f "$OUT/results.json" ]] && cp "$OUT/results.json" "$WORK_DIR/results.json"
# a run cut short by the time limit is expected; a failed report is not
exit "$report_rc"
