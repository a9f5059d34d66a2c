#!/bin/bash
# A Depo that learns, longer budget (results/README.md, "A Depo that learns, 3000 steps"):
# experiments/depo.py:learns with 12 names and GDN blocks (attn,gdn,attn,gdn: the fastest
# start and the fastest step measured in the 600-step calibration), 3000 steps, N = 1 and
# N = 2 side by side (seed 0). Resumable: `main` resumes each workdir from its last
# checkpoint; rerun the same command after a kill. PASSES="2" SEED=1 runs other points
# (workdir passes<N>_seed<S> for a seed other than 0).
#
#   nohup bash results/run_depo_long.sh &      # log: results/depo_learns/long/run.log
#   PASSES=2 SEED=1 nohup bash results/run_depo_long.sh &
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
ROOT=results/depo_learns/long
STEPS="${STEPS:-3000}"
SEED="${SEED:-0}"
SUFFIX=""
[ "$SEED" != 0 ] && SUFFIX="_seed$SEED"
mkdir -p "$ROOT"
exec >>"$ROOT/run.log" 2>&1
stamp() { echo "[$(date -u +%Y-%m-%dT%H:%M:%SZ)] $*"; }
stamp "run_depo_long.sh start; commit $(git rev-parse HEAD 2>/dev/null || echo unknown)" \
  "($(git status --porcelain 2>/dev/null | grep -cv '^??') modified tracked files)"
stamp "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'); $(uptime)"
pids=()
for n in ${PASSES:-1 2}; do
  nice -n 10 "$PY" -m sleep_lm.main \
    --config="experiments/depo.py:learns,names=12,train_steps=$STEPS,passes=$n" \
    --config.model.layers=attn,gdn,attn,gdn --config.train.eval_every=100 \
    --config.train.checkpoint_every=100 --config.seed="$SEED" \
    --workdir="$ROOT/passes$n$SUFFIX" >>"$ROOT/passes$n$SUFFIX.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; stamp "pid $p exit status $?; $(uptime)"; done
"$PY" -m sleep_lm.report "$ROOT" --out "$ROOT/report"
stamp "report: exit status $?"
