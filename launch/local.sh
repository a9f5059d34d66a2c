#!/usr/bin/env bash
# One host: all its devices (GPUs) in one process, or a rehearsal of a multi-host run on CPU.
# See launch/README.md.
#
#   bash launch/local.sh [--devices N] [--processes P] [--dry-run] -- MAIN_ARGS...
#
# (no option)     python -m sleep_lm.main MAIN_ARGS (one process, every local device)
# --devices N     N simulated CPU devices per process (XLA_FLAGS=...device_count=N, CPU only)
# --processes P   P processes on this host, coordinated at localhost:PORT as P hosts would
#                 be (CPU; process 0 prints, the others log to WORKDIR-less files
#                 ${TMPDIR:-/tmp}/sleep_lm.process<i>.log)
# --dry-run       print the commands instead of running them
# Environment: PYTHON (default python3), SLEEP_LM_PORT (default 12355).
set -euo pipefail

usage() {
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-2}"
}

devices="" processes=1 dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --devices) devices="$2"; shift 2 ;;
    --processes) processes="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
python="${PYTHON:-python3}"
port="${SLEEP_LM_PORT:-12355}"

env_vars=()
if [[ -n "$devices" ]]; then
  env_vars+=(JAX_PLATFORMS=cpu "XLA_FLAGS=--xla_force_host_platform_device_count=$devices")
fi
if [[ "$processes" -gt 1 ]]; then
  # Several processes on one host rehearse multi-host on CPU; their collectives use gloo.
  if [[ -z "$devices" ]]; then env_vars+=(JAX_PLATFORMS=cpu); fi
  env_vars+=(JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo)
fi

command_for() {  # the command of process $1
  local cmd=("$python" -m sleep_lm.main)
  if [[ ${#env_vars[@]} -gt 0 ]]; then cmd=(env "${env_vars[@]}" "${cmd[@]}"); fi
  if [[ "$processes" -gt 1 ]]; then
    cmd+=(--coordinator_address="localhost:$port" --num_processes="$processes" --process_id="$1")
  fi
  printf '%q ' "${cmd[@]}" "${@:2}"
}

if [[ "$processes" -le 1 ]]; then
  line="$(command_for 0 "$@")"
  if [[ "$dry_run" == 1 ]]; then
    echo "$line"
  else
    eval "$line"
  fi
  exit
fi

pids=()
for ((i = processes - 1; i >= 0; i--)); do
  line="$(command_for "$i" "$@")"
  log="${TMPDIR:-/tmp}/sleep_lm.process$i.log"
  if [[ "$dry_run" == 1 ]]; then
    if [[ "$i" == 0 ]]; then echo "$line"; else echo "$line> $log 2>&1 &"; fi
  elif [[ "$i" == 0 ]]; then
    eval "$line" &
    pids+=("$!")
  else
    eval "$line" > "$log" 2>&1 &
    pids+=("$!")
  fi
done
status=0
for pid in "${pids[@]+"${pids[@]}"}"; do
  wait "$pid" || status=$?
done
exit "$status"
