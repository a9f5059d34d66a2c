"""Truncated gradients through sleep: step time, XLA program memory and final accuracy.

    python benchmarks/truncation.py                     # Rule 110 smoke, t = 2, N = 2, 200 steps
    python benchmarks/truncation.py --quick             # wiring check (< 2 minutes on 2 cores)
    python benchmarks/truncation.py --settings full,M=1,K=2 --train_steps 400 --out trunc.json

Each setting is one (`sleep.grad_passes` M, `sleep.grad_windows` K) pair: `full` (0, 0: full
BPTT), `M=m` (gradients through the last m passes of each sleep window), `K=k` (through the
last k windows, the wake window included: on Rule 110's 4 sleep + 1 wake windows, K = 1
leaves no gradient in any sleep window), or `M=m+K=k`. Same config, seeds and data order for
every setting (experiments/rule110.py with `--config`'s argument, default the CPU smoke
preset at t = 2, N = 2, where N matters: N = 1 is worse there).

Two measurements per setting:

1. In this process, the trainer's own step (`loop.make_train_step`, jitted, state donated,
   as `loop.train` runs it) at the config's batch: compile time, XLA's buffer assignment of
   the compiled step (arguments + outputs - donated + temporaries, and temporaries alone),
   and the median and minimum of `--repeats` steps after `--warmup`.
2. A training run, `python -m sleep_lm.main --config=... --config.sleep.grad_passes=M
   --config.sleep.grad_windows=K` for `--train_steps` steps in a fresh workdir, whose
   metrics.jsonl gives eval/token_accuracy and eval/accuracy at each eval and at the end.

The 1-minute load average is recorded next to every timing: on a shared machine it, not
the method, can dominate the step time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import machine

from sleep_lm import sleep
from sleep_lm.config import load_config
from sleep_lm.model import build_model
from sleep_lm.tasks import get_task
from sleep_lm.train import loop, optim
from sleep_lm.train.state import TrainState

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = "experiments/rule110.py:smoke,steps=2,passes=2"


def parse_setting(text: str) -> tuple[int, int]:
    """'full' -> (0, 0); 'M=1' -> (1, 0); 'K=2' -> (0, 2); 'M=1+K=2' -> (1, 2)."""
    if text == "full":
        return 0, 0
    values = {"M": 0, "K": 0}
    for part in text.split("+"):
        name, sep, value = part.partition("=")
        if name not in values or not sep or not value.isdigit() or int(value) < 1:
            allowed = "'full', 'M=m', 'K=k' or 'M=m+K=k'"
            raise argparse.ArgumentTypeError(f"setting: {allowed}, got {text!r}")
        values[name] = int(value)
    return values["M"], values["K"]


def compile_step(config_arg: str, grad_passes: int, grad_windows: int) -> tuple[dict, object]:
    """The trainer's step at one setting, compiled: (row with compile time and memory, a
    function running one step and returning its metrics) (measurement 1)."""
    config = load_config(ROOT / config_arg)
    config.sleep.grad_passes = grad_passes
    config.sleep.grad_windows = grad_windows
    task = get_task(config.task)
    model = build_model(
        config.model, vocab_size=task.vocab_size, max_len=task.seq_len, window=config.sleep.window
    )
    batches = [task.eval_batch(config.train.batch_size, seed) for seed in (1, 2)]
    spec = sleep.SleepSpec.from_config(
        config.sleep, sleep.window_schedule(batches[0]["loss_mask"], config.sleep.window)
    )
    optimizer = optim.make_optimizer(config.train)

    def loss_fn(params, batch):
        return sleep.sequence_loss(model, params, batch, spec)

    step = jax.jit(loop.make_train_step(loss_fn, optimizer), donate_argnums=0)
    holder = [TrainState.create(model.init_params(jax.random.key(config.seed)), optimizer), 0]
    t0 = time.perf_counter()
    compiled = step.lower(holder[0], batches[0]).compile()
    row = dict(
        compile_s=time.perf_counter() - t0,
        program_bytes=machine.compiled_bytes(compiled),
        batch=config.train.batch_size,
    )
    try:
        row["temp_bytes"] = int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # noqa: BLE001 -- not every backend reports it
        row["temp_bytes"] = None

    def run():
        holder[0], metrics = compiled(holder[0], batches[holder[1] % 2])
        holder[1] += 1
        return jax.block_until_ready(metrics)

    return row, run


def time_steps(rows, runs, args) -> None:
    """Step times, the settings interleaved step by step, so that the machine's varying load
    falls on every setting alike: median and minimum of `--repeats` per setting."""
    for run in runs:
        for _ in range(args.warmup):
            run()
    times = [[] for _ in runs]
    loads = []
    for _ in range(args.repeats):
        loads.append(machine.load_average())
        for run, out in zip(runs, times, strict=True):
            t0 = time.perf_counter()
            run()
            out.append(time.perf_counter() - t0)
    for row, out in zip(rows, times, strict=True):
        row.update(
            step_ms=statistics.median(out) * 1e3,
            step_min_ms=min(out) * 1e3,
            load_min=min(loads),
            load_max=max(loads),
        )


def train_run(config_arg: str, grad_passes: int, grad_windows: int, args, workdir: Path) -> dict:
    """A fresh `sleep_lm.main` training run at one setting (measurement 2)."""
    command = [
        sys.executable,
        "-m",
        "sleep_lm.main",
        f"--config={config_arg}",
        f"--workdir={workdir}",
        f"--config.sleep.grad_passes={grad_passes}",
        f"--config.sleep.grad_windows={grad_windows}",
        f"--config.train.steps={args.train_steps}",
    ]
    load = machine.load_average()
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    row = dict(train_wall_s=time.perf_counter() - t0, train_load_before=load)
    row["train_load_after"] = machine.load_average()
    if done.returncode:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return dict(row, error=f"sleep_lm.main exit {done.returncode}: {' | '.join(tail)}")
    evals = []
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "eval/token_accuracy" in record:
            evals.append((record["step"], record["eval/token_accuracy"], record["eval/accuracy"]))
    row["evals"] = evals
    if evals:
        row.update(final_step=evals[-1][0], token_accuracy=evals[-1][1], accuracy=evals[-1][2])
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="experiments/<file>.py:<arg>")
    parser.add_argument(
        "--settings",
        type=lambda text: [s.strip() for s in text.split(",") if s.strip()],
        default=["full", "M=1", "K=1", "K=2"],
        help="comma-separated: full, M=m, K=k, M=m+K=k",
    )
    parser.add_argument("--train_steps", type=int, default=200, help="steps per training run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps (median, min)")
    parser.add_argument("--no_train", action="store_true", help="only step time and memory")
    parser.add_argument("--workdir", help="keep the runs' workdirs here (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help="wiring check: 20 steps, 2 timed")
    parser.add_argument("--out", help="write the results as JSON to this file")
    args = parser.parse_args(argv)
    settings = [(name, *parse_setting(name)) for name in args.settings]
    if args.quick:
        args.train_steps, args.warmup, args.repeats = 20, 1, 2
        settings = settings[:2]

    meta = dict(**machine.facts(), config=args.config, train_steps=args.train_steps)
    print(
        f"jax {meta['jax']}, backend {jax.default_backend()}, {meta['cpus']} host CPUs, "
        f"load {meta['load_average']}, {meta['date']}\nconfig {args.config}, median / min of "
        f"{args.repeats} steps after {args.warmup} warm-up; training runs of "
        f"{args.train_steps} steps",
        flush=True,
    )
    rows, runs = [], []
    for name, m, k in settings:
        row, run = compile_step(args.config, m, k)
        rows.append(dict(setting=name, grad_passes=m, grad_windows=k, **row))
        runs.append(run)
        print(
            f"  {name}: compiled in {row['compile_s']:.0f} s, program "
            f"{row['program_bytes'] / 2**20:.1f} MiB",
            flush=True,
        )
    time_steps(rows, runs, args)
    del runs
    if args.out:
        machine.write_json(args.out, dict(meta=meta, rows=rows, complete=False))
    if not args.no_train:
        root = Path(args.workdir or tempfile.mkdtemp(prefix="truncation_"))
        for row in rows:
            workdir = root / row["setting"].replace("+", "_").replace("=", "")
            m, k = row["grad_passes"], row["grad_windows"]
            row.update(train_run(args.config, m, k, args, workdir))
            if args.out:
                machine.write_json(args.out, dict(meta=meta, rows=rows, complete=False))
            result = row.get("error") or f"token acc {row.get('token_accuracy')}"
            print(f"  {row['setting']}: trained in {row['train_wall_s']:.0f} s, {result}")

    mib = lambda x: "-" if x is None else f"{x / 2**20:.1f}"
    print(
        f"\n{'setting':>9} {'M':>2} {'K':>2} {'step ms':>8} {'min ms':>7} "
        f"{'program MiB':>11} {'temp MiB':>9} {'compile s':>9} {'token acc':>9} {'exact acc':>9}"
    )
    for row in rows:
        acc = lambda key, row=row: "-" if key not in row else f"{row[key]:.3f}"
        print(
            f"{row['setting']:>9} {row['grad_passes']:>2} {row['grad_windows']:>2} "
            f"{row['step_ms']:>8.0f} {row['step_min_ms']:>7.0f} "
            f"{mib(row['program_bytes']):>11} {mib(row['temp_bytes']):>9} "
            f"{row['compile_s']:>9.1f} {acc('token_accuracy'):>9} {acc('accuracy'):>9}"
        )
    if not args.no_train:
        print("\neval/token_accuracy by step:")
        for row in rows:
            curve = " ".join(f"{s}:{t:.3f}" for s, t, _ in row.get("evals", []))
            print(f"{row['setting']:>9}  {curve or row.get('error', '-')}")
    print(
        "\nprogram MiB: XLA buffer assignment of the jitted step (arguments + outputs - donated "
        "+ temporaries); temp: temporaries alone. Step times interleaved across settings; 1-minute "
        f"load average during timing {rows[0]['load_min']}-{rows[0]['load_max']}."
    )
    if args.out:
        machine.write_json(args.out, dict(meta=meta, rows=rows, complete=True))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
