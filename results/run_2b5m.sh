#!/bin/bash
# Fig. 2b where N = 1 stays at chance (results/README.md): calibrate the depth t on N = 1,
# seed 0 (results/calibrate_2b.py), then N = 1, 2, 4 x seeds 0, 1, 2 at that depth for 5.1M
# tokens each, then the report. Resumable: rerun after a kill.
#
#   nohup bash results/run_2b5m.sh &      # log: results/run_2b5m.log (appended)
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
ROOT=results/repro2b5m
mkdir -p "$ROOT"
exec >>results/run_2b5m.log 2>&1

stamp() { echo "[$(date -u +%Y-%m-%dT%H:%M:%SZ)] $*"; }
stamp "run_2b5m.sh start; commit $(git rev-parse HEAD 2>/dev/null || echo unknown)" \
  "($(git status --porcelain 2>/dev/null | grep -cv '^??') modified tracked files)"
stamp "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'); $(uptime)"
stamp "$("$PY" -c 'import sleep_lm, jax, flax; print("sleep_lm", sleep_lm.__file__, "jax", jax.__version__, "flax", flax.__version__)')"

start=$(date +%s)
"$PY" results/calibrate_2b.py --root="$ROOT" || { stamp "calibration failed: $?"; exit 1; }
depth=$(cat "$ROOT/depth.txt")
stamp "calibration end: t = $depth, $(($(date +%s) - start)) s; $(uptime)"

start=$(date +%s)
config="experiments/rule110.py:repro2b5m,steps=$depth"
# train.eval_seed=-1 scores each seed on its own held-out set, as the first runs (made
# before the field existed) were. Points whose metrics.jsonl has the final eval line are
# finished even without checkpoints (git holds metrics, not checkpoints): sleep_lm.sweep
# skips them.
stamp "sweep start: $PY -m sleep_lm.sweep --config=$config --workdir=$ROOT"
"$PY" -m sleep_lm.sweep --config="$config" --workdir="$ROOT" --config.train.eval_seed=-1
stamp "sweep: exit status $?"
stamp "sweep end: $(($(date +%s) - start)) s; $(uptime)"
"$PY" -m sleep_lm.report "$ROOT" --out "$ROOT/report"
stamp "report: exit status $?"
