#!/bin/bash
# GSM-Infinite from scratch on the benchmark-faithful generator (issue 17 item 6; results/README.md,
# "GSM-Infinite scratch"): experiments/gsm_infinite.py:scratch (2-4 operations in 384 bytes,
# 600 steps of batch 16) at N = 1 and N = 2, each then evaluated by `--mode=eval`
# (teacher-forced and parsed accuracy per op), then the most-frequent-answer baseline of the
# same held-out problems. Resumable: a finished run resumes at its last step and stops; rerun
# the same command after a kill.
#
#   nohup bash results/run_gsm_scratch.sh &      # log: results/gsm_scratch/run.log (appended)
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
ROOT=results/gsm_scratch
mkdir -p "$ROOT"
exec >>"$ROOT/run.log" 2>&1

stamp() { echo "[$(date -u +%Y-%m-%dT%H:%M:%SZ)] $*"; }
stamp "run_gsm_scratch.sh start; commit $(git rev-parse HEAD 2>/dev/null || echo unknown)" \
  "($(git status --porcelain 2>/dev/null | grep -cv '^??') modified tracked files)"
stamp "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'); $(uptime)"

for n in ${PASSES:-1 2}; do
  start=$(date +%s)
  "$PY" -m sleep_lm.main --config=experiments/gsm_infinite.py:scratch \
    --config.sleep.passes="$n" --workdir="$ROOT/passes$n"
  stamp "train N = $n end: exit status $?, $(($(date +%s) - start)) s; $(uptime)"
  start=$(date +%s)
  "$PY" -m sleep_lm.main --config=experiments/gsm_infinite.py:scratch \
    --config.sleep.passes="$n" --workdir="$ROOT/passes$n" --mode=eval
  stamp "eval N = $n end: exit status $?, $(($(date +%s) - start)) s; $(uptime)"
done
"$PY" -m sleep_lm.tasks.gsm_infinite.export --out "$ROOT/heldout.jsonl" --ops 2-4 \
  --per_op 200 --seq_len 384
stamp "export: exit status $?"
