#!/usr/bin/env bash
# Train on every worker of a Cloud TPU VM slice (a pod): copy this checkout to each worker,
# install, and start `python -m sleep_lm.main --distributed=on ...` on all of them at once
# (JAX reads the slice's topology from the TPU VM metadata). See launch/README.md.
#
#   bash launch/tpu_pod.sh --tpu NAME --zone ZONE [--project PROJECT] [--dir DIR]
#       [--install CMD] [--no-copy] [--dry-run] -- MAIN_ARGS...
#
# MAIN_ARGS go to sleep_lm.main, e.g. --config=experiments/rule110.py --workdir=/mnt/runs/a;
# the workdir must be a directory every worker shares (gcsfuse bucket or Filestore mount).
# --dry-run prints the commands instead of running them.
set -euo pipefail

usage() {
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-2}"
}

tpu="" zone="" project="" dir="sleep_lm" dry_run=0 copy=1
install="pip install -q -U 'jax[tpu]' -e ."
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) tpu="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --install) install="$2"; shift 2 ;;
    --no-copy) copy=0; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown option $1 (main's arguments go after --)" >&2; usage ;;
  esac
done
main_args=("$@")
if [[ -z "$tpu" || -z "$zone" ]]; then
  echo "tpu_pod.sh: --tpu and --zone are required" >&2
  usage
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
archive="${TMPDIR:-/tmp}/sleep_lm-$tpu.tar.gz"
gcloud_flags=(--zone="$zone")
if [[ -n "$project" ]]; then
  gcloud_flags+=(--project="$project")
fi

# Shell-quotes one word: as is when safe, else in single quotes.
q() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,~-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Runs (or, with --dry-run, prints) one command, quoted so that it can be pasted.
run() {
  if [[ "$dry_run" == 1 ]]; then
    local words=()
    for word in "$@"; do words+=("$(q "$word")"); done
    echo "${words[*]}"
  else
    "$@"
  fi
}

# The command every worker runs, as one string for `gcloud ... ssh --command`.
quoted_args=""
for arg in "${main_args[@]+"${main_args[@]}"}"; do
  quoted_args+=" $(q "$arg")"
done
remote="set -e; cd $dir"
if [[ "$copy" == 1 ]]; then
  remote="set -e; mkdir -p $dir && tar -xzf ~/$(basename "$archive") -C $dir && cd $dir"
fi
remote+=" && $install && python -m sleep_lm.main --distributed=on$quoted_args"

if [[ "$copy" == 1 ]]; then
  # Tracked files as they are in the working tree (uncommitted edits included).
  if [[ "$dry_run" == 1 ]]; then
    echo "(cd $(q "$repo") && git ls-files -z | tar --null -czf $(q "$archive") -T -)"
  else
    (cd "$repo" && git ls-files -z | tar --null -czf "$archive" -T -)
  fi
  run gcloud compute tpus tpu-vm scp "$archive" "$tpu:~/" --worker=all "${gcloud_flags[@]}"
fi
run gcloud compute tpus tpu-vm ssh "$tpu" --worker=all "${gcloud_flags[@]}" --command="$remote"
