#!/bin/bash
# Sleep longer at test time (results/README.md): the t = 2 models of rule110.py:repro2b
# (N = 1, 2, 4 x seeds 0, 1, 2; 200 steps each), each evaluated at N_test = 1, 2, 4, 8
# (results/eval_test_time.py), then the report (trained N x test N). Resumable: finished
# trainings and existing eval records are skipped.
#
#   nohup bash results/run_testtime2b.sh &      # log: results/testtime2b/run.log (appended)
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
ROOT=results/testtime2b
mkdir -p "$ROOT"
exec >>"$ROOT/run.log" 2>&1
for seed in 0 1 2; do
  for n in 1 2 4; do
    echo "[$(date -u +%FT%TZ)] passes${n}_seed$seed start"
    "$PY" -m sleep_lm.main --config=experiments/rule110.py:repro2b --config.sleep.passes=$n \
      --config.seed=$seed --workdir="$ROOT/passes${n}_seed$seed"
    echo "[$(date -u +%FT%TZ)] passes${n}_seed$seed end: $?"
    "$PY" results/eval_test_time.py --root="$ROOT" --config=experiments/rule110.py:repro2b \
      --passes=1,2,4,8
  done
done
"$PY" -m sleep_lm.report "$ROOT" --out "$ROOT/report"
