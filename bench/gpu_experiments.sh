#!/usr/bin/env bash
# Experiment arms for the GPU session: bench/gpu_session.sh runs this file last, within what is
# left of its budget, as
#
#   bash bench/gpu_experiments.sh WORK_DIR MODE        # MODE: gpu or cpu-dry-run
#
# Write results under WORK_DIR (it lands in the session's archive); WORK_DIR/tables.md and
# WORK_DIR/results.json, if written, are added to the session's tables.md and results.json.
# Keep every arm short and under its own `timeout`. No arms yet.

set -u
set -o pipefail

WORK_DIR=${1:?usage: bash bench/gpu_experiments.sh WORK_DIR MODE}
MODE=${2:-gpu}
mkdir -p "$WORK_DIR"
printf 'no experiment arms (mode %s)\n' "$MODE"
