#!/bin/bash
# A Depo that learns (results/README.md, "A Depo that learns"): experiments/depo.py:learns
# (cycles of 3..6 nodes from 24 names, 8 queries, hops 1..4, L = 24, the smoke model; 600
# steps) at N = 1, 2, 4 (seed 0), each evaluated per k = 1, 2, 4 in its run and then at
# N_test = 1, 2, 4, 8 (results/eval_test_time.py), then the report. Resumable: finished runs
# and existing eval records are skipped; rerun the same command after a kill.
# (The calibration runs are summarised by results/calibrate_depo.py.)
#
#   nohup bash results/run_depo_learns.sh &      # log: results/depo_learns/run.log (appended)
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
ROOT=results/depo_learns
mkdir -p "$ROOT"
exec >>"$ROOT/run.log" 2>&1

stamp() { echo "[$(date -u +%Y-%m-%dT%H:%M:%SZ)] $*"; }
stamp "run_depo_learns.sh start; commit $(git rev-parse HEAD 2>/dev/null || echo unknown)" \
  "($(git status --porcelain 2>/dev/null | grep -cv '^??') modified tracked files)"
stamp "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'); $(uptime)"

start=$(date +%s)
"$PY" -m sleep_lm.sweep --config=experiments/depo.py:learns --workdir="$ROOT"
stamp "sweep end: exit status $?, $(($(date +%s) - start)) s; $(uptime)"
"$PY" results/eval_test_time.py --root="$ROOT" --config=experiments/depo.py:learns \
  --passes=1,2,4,8
stamp "test-time evals end; $(uptime)"
"$PY" -m sleep_lm.report "$ROOT" --out "$ROOT/report"
stamp "report: exit status $?"
