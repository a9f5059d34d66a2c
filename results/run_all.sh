#!/bin/bash
# The laptop-scale reproductions (results/README.md): three sweeps one after another, then a
# report for each. Run from anywhere in a checkout; everything is relative to the checkout:
#
#   nohup bash results/run_all.sh &      # log: results/run_all.log (appended)
#
# Rerunnable: sleep_lm.sweep skips finished points and resumes unfinished ones from their
# last checkpoint, so rerunning after a kill (or a reboot) continues where it stopped; the
# reports are rebuilt from whatever has been run. It imports sleep_lm from this checkout
# (PYTHONPATH), not from wherever the package is installed.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
mkdir -p results
exec >>results/run_all.log 2>&1

stamp() { echo "[$(date -u +%Y-%m-%dT%H:%M:%SZ)] $*"; }
stamp "run_all.sh start; commit $(git rev-parse HEAD 2>/dev/null || echo unknown)" \
  "($(git status --porcelain 2>/dev/null | grep -cv '^??') modified tracked files)"
stamp "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'); $(uptime)"
stamp "$("$PY" -c 'import sleep_lm, jax, flax; print("sleep_lm", sleep_lm.__file__, "jax", jax.__version__, "flax", flax.__version__)')"

SWEEPS=(
  "repro2a experiments/rule110.py:repro2a"
  "repro2b experiments/rule110.py:repro2b"
  "repro3 experiments/depo.py:repro3"
)
for sweep in "${SWEEPS[@]}"; do
  read -r name config <<<"$sweep"
  stamp "sweep $name start: $PY -m sleep_lm.sweep --config=$config --workdir=results/$name"
  start=$(date +%s)
  "$PY" -m sleep_lm.sweep --config="$config" --workdir="results/$name"
  status=$?
  stamp "sweep $name end: exit status $status, $(($(date +%s) - start)) s; $(uptime)"
done
for sweep in "${SWEEPS[@]}"; do
  read -r name config <<<"$sweep"
  stamp "report $name: $PY -m sleep_lm.report results/$name --out results/$name/report"
  "$PY" -m sleep_lm.report "results/$name" --out "results/$name/report"
  stamp "report $name: exit status $?"
done
stamp "run_all.sh end"
