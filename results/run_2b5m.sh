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
# Points whose metrics.jsonl already has the final eval line are kept as they are, even
# without checkpoints (git holds metrics, not checkpoints; the sweep itself would re-run
# them on a fresh machine). train.eval_seed=-1 scores each seed on its own held-out set, as
# the first runs (made before the field existed) were.
stamp "sweep start: $PY -m sleep_lm.sweep --config=$config --workdir=$ROOT"
final=$("$PY" -c "import sys; sys.path.insert(0, 'experiments'); import rule110; print(rule110.get_config('repro2b5m,steps=$depth').train.steps)")
"$PY" -m sleep_lm.sweep --config="$config" --workdir="$ROOT" --print_only \
    --config.train.eval_seed=-1 | while read -r cmd; do
  dir=$(sed -n 's/.*--workdir=\([^ ]*\).*/\1/p' <<<"$cmd")
  if grep -q "\"step\": $final, \"eval/" "$dir/metrics.jsonl" 2>/dev/null; then
    stamp "$dir: finished (final eval line at step $final), kept"
    continue
  fi
  stamp "run: $cmd"
  eval "$cmd"
  stamp "$dir: exit status $?; $(uptime)"
done
stamp "sweep end: $(($(date +%s) - start)) s; $(uptime)"
"$PY" -m sleep_lm.report "$ROOT" --out "$ROOT/report"
stamp "report: exit status $?"
