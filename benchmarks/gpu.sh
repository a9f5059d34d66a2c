#!/usr/bin/env bash
# The performance suite on one GPU, JAX and PyTorch + fla side by side.
#
#   bash benchmarks/gpu.sh --part 1         # the goals: torch, train, ops (~9.3 min at most)
#   bash benchmarks/gpu.sh --part 2         # the rest: attention, check, wake, large, wake512, cli (~8 min)
#   bash benchmarks/gpu.sh                  # both parts in one go (~15 min; not in a lease)
#   bash benchmarks/gpu.sh --out DIR        # write under DIR instead of $OUT
#   bash benchmarks/gpu.sh --quick          # every script in its quick mode (a smoke run)
#
# A session lent a GPU has 15 minutes of device time, start-up included, and at most 10
# minutes per command: part 1 is sized to fit one command, and part 2 is for what is left
# (run it at once, while the machine is still warm). Within a part the phases run most
# important first, each under its own time limit; a failing or timed-out phase is logged
# and the next one runs, and every finished phase's JSON is already on disk.
#
# Expects Python 3 with jax (CUDA), torch and triton installed, and the rest of sleep_lm's
# dependencies (flax, optax, orbax-checkpoint, chex, absl-py, pytest); ml-collections and
# fla-core may be carried as wheels in .whl/ (installed here with --no-deps into /tmp/site).
#
# Phases:
#   part 1
#   torch     benchmarks/torch_rule110.py: the Rule 110 Algorithm 1 step in PyTorch eager +
#             fla's chunk_gated_delta_rule, bf16, batch 512, N = 1, 2, 4 (+ a loss
#             cross-check against sleep_lm on the same parameters)
#   train     benchmarks/train_throughput.py --settings rule110: the JAX trainer's step, same
#             setting, N = 1, 2, 4, remat none and pass (issue 5's goal: >= 5x torch); the
#             first configuration is also profiled (kernels per step, GPU busy time, top
#             kernels) and its compiled program saved (train_rule110_hlo.txt.gz)
#   ops       benchmarks/ops.py --chunk_sizes 64,128: the GDN kernels alone at precision
#             "highest" and "default" (TF32), each with its error against a float32 oracle
#             (issue 2's goal: within 2x of fla); the chunked forward+backward profiled
#             at each shape (kernels per call, busy time, top kernels)
#   part 2
#   attention benchmarks/attention.py: model.attention_impl xla / chunked / cudnn in bfloat16
#             at (1, 2048, 16, 128): gradient temporaries, fwd+bwd ms, error vs float32
#             (the cuDNN path is checked on hardware nowhere else)
#   check     tests/ops on the GPU: the kernels exact there (precision="highest")
#   wake      benchmarks/wake_sleep.py at batch 1: decode ms/token, sleep ms/window
#   large     benchmarks/train_throughput.py --settings large: width 1024, 8 layers, L = 2048
#   wake512   benchmarks/wake_sleep.py at batch 512
#   cli       the README's smoke run through `python -m sleep_lm.main` on the GPU, 100 steps
#             in bfloat16 (checkpoints, eval and resume as a user runs them)
# Files written (at most 8, as the device tool brings back): gpu.log (environment and every
# phase's output) and one file per phase.
# Knobs (environment): PASSES (default 1,2,4), TRAIN_REMATS (none,pass), LARGE_REMATS (pass),
# LARGE_BATCH (4), TORCH_BATCH (512), SKIP (space-separated phase names to skip), PYTHON (python3).
set -u -o pipefail

cd "$(dirname "$0")/.." || exit 1
OUT_DIR="${OUT:-/tmp/sleep_lm_gpu_bench}"
QUICK=""  # "" or "--quick", expanded unquoted (empty: no argument)
PART=all
usage="usage: bash benchmarks/gpu.sh [--part 1|2] [--out DIR] [--quick]"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT_DIR="$2"; shift 2 ;;
    --out=*) OUT_DIR="${1#--out=}"; shift ;;
    --part) PART="$2"; shift 2 ;;
    --part=*) PART="${1#--part=}"; shift ;;
    --quick) QUICK="--quick"; shift ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
case "$PART" in
  1) PHASES="torch train ops" ;;
  2) PHASES="attention check wake large wake512 cli" ;;
  all) PHASES="torch train ops attention check wake large wake512 cli" ;;
  *) echo "--part must be 1 or 2, got '$PART'; $usage" >&2; exit 2 ;;
esac
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu.log"
: >"$LOG"
PY="${PYTHON:-python3}"
PASSES="${PASSES:-1,2,4}"
SKIP=" ${SKIP:-} "

log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }

# Carried wheels (ml-collections, fla-core), without touching the system site-packages.
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | tee -a "$LOG"
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

log "sleep_lm $(git rev-parse --short HEAD 2>/dev/null || echo '?') on $(hostname), part $PART: $PHASES"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  "$PY" - <<'EOF' 2>&1
import importlib, platform
print("python", platform.python_version())
for name in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "chex", "ml_collections",
             "absl", "torch", "triton", "fla"):
    try:
        module = importlib.import_module(name)
        print(f"{name:18} {getattr(module, '__version__', 'ok')}")
    except Exception as err:  # noqa: BLE001
        print(f"{name:18} MISSING ({type(err).__name__}: {err})")
try:
    import jax
    print("jax devices", jax.devices())
except Exception as err:  # noqa: BLE001
    print("jax devices: FAILED", err)
try:
    import torch
    print("torch cuda", torch.cuda.is_available(), torch.version.cuda)
except Exception as err:  # noqa: BLE001
    print("torch: FAILED", err)
EOF
} | tee -a "$LOG"

# run NAME SECONDS CMD...: one phase under a time limit; its output goes to the log.
run() {
  local name="$1" limit="$2"
  shift 2
  if [[ " $PHASES " != *" $name "* ]]; then
    return 0
  fi
  if [[ "$SKIP" == *" $name "* ]]; then
    log "skip $name (SKIP)"
    return 0
  fi
  log "start $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  log "end $name: exit $rc after $((SECONDS - t0)) s$([ "$rc" = 124 ] && echo ' (TIMED OUT)')"
}

# Part 1. torch + fla first (the reference the JAX numbers are compared with). JAX inside it
# (the cross-check) runs on the CPU and must not take the GPU's memory.
XLA_PYTHON_CLIENT_PREALLOCATE=false run torch 140 \
  "$PY" benchmarks/torch_rule110.py --passes "$PASSES" --batch "${TORCH_BATCH:-512}" \
  --crosscheck $QUICK --out "$OUT_DIR/torch_rule110.json"
run train 230 "$PY" benchmarks/train_throughput.py --settings rule110 --passes "$PASSES" \
  --remats "${TRAIN_REMATS:-none,pass}" --profile --hlo_out "$OUT_DIR/train_rule110_hlo.txt.gz" \
  $QUICK --out "$OUT_DIR/train_rule110.json"
run ops 170 "$PY" benchmarks/ops.py --chunk_sizes 64,128 --profile $QUICK --out "$OUT_DIR/ops.json"

# Part 2. The attention implementations first (cuDNN's fused path has no CPU check), then
# the ops tests on this GPU, at the ops' default precision="highest" (full float32
# dots; JAX's own default here is TF32, whose error ops.py reports in its "default" rows).
run attention 60 "$PY" benchmarks/attention.py --impls xla,chunked,cudnn --dtype bfloat16 \
  --out "$OUT_DIR/attention.json"
XLA_PYTHON_CLIENT_PREALLOCATE=false run check 100 "$PY" -m pytest tests/ops -q -x \
  -p no:cacheprovider --junitxml "$OUT_DIR/check_ops.xml"
run wake 50 "$PY" benchmarks/wake_sleep.py --passes "$PASSES" --batch 1 $QUICK \
  --out "$OUT_DIR/wake_sleep_b1.json"
run large 120 "$PY" benchmarks/train_throughput.py --settings large --passes "$PASSES" \
  --remats "${LARGE_REMATS:-pass}" --large_batch "${LARGE_BATCH:-4}" --repeats 3 \
  $QUICK --out "$OUT_DIR/train_large.json"
run wake512 50 "$PY" benchmarks/wake_sleep.py --passes "$PASSES" --batch 512 $QUICK \
  --out "$OUT_DIR/wake_sleep_b512.json"
CLI_DIR="$(mktemp -d)"
run cli 90 "$PY" -m sleep_lm.main --config=experiments/rule110.py:smoke --workdir="$CLI_DIR" \
  --config.task.steps=0 --config.sleep.passes=2 --config.model.dtype=bfloat16 \
  --config.train.steps=100 --config.train.eval_every=50 --config.train.checkpoint_every=50

log "done; files in $OUT_DIR:"
ls -la "$OUT_DIR" | tee -a "$LOG"
