"""Training throughput (tokens/s) and peak memory versus sleep passes N and remat mode.

    python benchmarks/train_throughput.py                       # backend defaults (below)
    python benchmarks/train_throughput.py --quick               # < 1 minute on a 2-core CPU
    python benchmarks/train_throughput.py --settings rule110 --passes 1,2,4 \\
        --remats none,pass,window --out train.json

The step timed is the trainer's own: ``sleep_lm.train.loop.make_train_step`` (Algorithm 1
loss ``sleep.sequence_loss``, gradients through all windows and passes, global-norm clip,
Muon + AdamW from ``sleep_lm.train.optim``, non-finite guard), jitted with the state donated,
exactly as ``loop.train`` runs it. Settings:

- ``rule110``: the paper's Rule 110 run (experiments/rule110.py, no argument): batch 512,
  T = 100, L = 24 (4 sleep windows + a 4-token wake window), width 256, 4 heads, layers
  attn,gdn,attn,gdn, MLP 4x, real task batches.
- ``large``: a larger GDN hybrid: width 1024, 8 heads (head dim 128), 8 layers
  (attn,gdn x 4), MLP 4x, L = 2048, T = 4 windows (3 sleep + 1 wake window whose every
  position has a loss), batch 4, vocabulary 256, random tokens. Sizes: --large_* flags.

dtype: bfloat16 compute on an accelerator, float32 on CPU (--dtype); parameters and fast
weights are float32 either way. On CPU without --quick, a configuration whose compiled
program would need more than --max_gib of memory is skipped (the full Rule 110 batch needs
10-52 GiB without remat on CPU).

Timing: each configuration is compiled once (compile time reported), run ``--warmup`` steps,
then timed over ``--repeats`` steps (one ``block_until_ready`` per step); the table shows the
median step time and tokens/s = batch * T / step time. Memory: XLA's buffer assignment of the
compiled step (arguments + outputs - donated aliases + temporaries), on every backend, and
the device's ``peak_bytes_in_use`` where the backend reports it (a process high-water mark:
it only grows from one configuration to the next).

--quick (CPU smoke run): rule110 at batch 8, N in 1, 2, remat "pass", 2 timed steps.

--profile: the first configuration run is traced for 3 more steps (``machine.profile``)
once every configuration has been timed: ops (kernels) per step, busy time per step and the
top ops, per device, printed and in its JSON row. --hlo_out FILE.gz: that configuration's
compiled program, as text.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gzip
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import machine
import numpy as np

from sleep_lm import sleep
from sleep_lm.config import load_config
from sleep_lm.model import build_model
from sleep_lm.tasks import get_task
from sleep_lm.train import loop, optim
from sleep_lm.train.state import TrainState

ROOT = Path(__file__).resolve().parents[1]


def rule110_config():
    """experiments/rule110.py's get_config() (the paper's setting)."""
    return load_config(ROOT / "experiments/rule110.py")


@dataclasses.dataclass
class Setting:
    """A model, a batch maker and the config the trainer needs, for one benchmark setting."""

    name: str
    config: object  # ConfigDict: model.*, sleep.*, train.*
    batch_size: int
    seq_len: int
    vocab_size: int
    make_batch: object  # (batch_size) -> dict of NumPy arrays
    describe: str


def rule110_setting(batch_size: int, dtype: str) -> Setting:
    config = rule110_config()
    config.model.dtype = dtype
    task = get_task(config.task)
    rng = np.random.default_rng(0)
    return Setting(
        name="rule110",
        config=config,
        batch_size=batch_size,
        seq_len=task.seq_len,
        vocab_size=task.vocab_size,
        make_batch=lambda b: task.sample(rng, b),
        describe=(
            f"Rule 110: batch {batch_size}, T = {task.seq_len}, L = {config.sleep.window}, "
            f"width {config.model.width}, {config.model.heads} heads, {config.model.layers}"
        ),
    )


def large_setting(args, dtype: str) -> Setting:
    config = rule110_config()  # optimiser and everything else as in the paper's run
    config.model.width = args.large_width
    config.model.heads = args.large_heads
    config.model.layers = ",".join(["attn", "gdn"] * (args.large_layers // 2))
    config.model.dtype = dtype
    config.sleep.window = args.large_window
    seq_len = args.large_window * args.large_windows
    vocab = args.large_vocab
    rng = np.random.default_rng(0)

    def make_batch(b):
        tokens = rng.integers(0, vocab, (b, seq_len + 1)).astype(np.int32)
        mask = np.zeros((b, seq_len), bool)
        mask[:, -args.large_window :] = True  # the last window wakes; the others sleep
        return dict(inputs=tokens[:, :-1], targets=tokens[:, 1:], loss_mask=mask)

    return Setting(
        name="large",
        config=config,
        batch_size=args.large_batch,
        seq_len=seq_len,
        vocab_size=vocab,
        make_batch=make_batch,
        describe=(
            f"large GDN hybrid: batch {args.large_batch}, T = {seq_len}, L = "
            f"{args.large_window}, width {args.large_width}, {args.large_heads} heads, "
            f"{config.model.layers}, vocab {vocab}"
        ),
    )


def _is_oom(err: BaseException) -> bool:
    text = str(err).lower()
    return "resource_exhausted" in text or "out of memory" in text


def bench(setting: Setting, passes: int, remat: str, args, params, inspect=False):
    """(row, profile) for one configuration. With `inspect` (the first configuration run),
    --hlo_out writes the compiled program's text, gzipped, and with --profile `profile` is
    a function that traces 3 more steps (machine.profile), called after every configuration
    has been timed: a profiler that fails or hangs then costs only the profile. Else None."""
    config = setting.config
    config.sleep.passes = passes
    config.sleep.remat = remat
    model = build_model(
        config.model,
        vocab_size=setting.vocab_size,
        max_len=setting.seq_len,
        window=config.sleep.window,
    )
    batch = setting.make_batch(setting.batch_size)
    schedule = sleep.window_schedule(batch["loss_mask"], config.sleep.window)
    spec = sleep.SleepSpec.from_config(config.sleep, schedule)
    optimizer = optim.make_optimizer(config.train)

    def loss_fn(params, batch):
        return sleep.sequence_loss(model, params, batch, spec)

    step = jax.jit(loop.make_train_step(loss_fn, optimizer), donate_argnums=0)
    row = dict(setting=setting.name, passes=passes, remat=remat, batch=setting.batch_size)
    # A fresh copy: the step donates its state, parameters included.
    state = TrainState.create(jax.tree.map(jnp.copy, params), optimizer)
    t0 = time.perf_counter()
    try:
        compiled = step.lower(state, batch).compile()
    except Exception as err:  # noqa: BLE001 -- only out-of-memory is tolerated
        if not _is_oom(err):
            raise
        return dict(row, error="OOM at compile"), None
    row["compile_s"] = time.perf_counter() - t0
    row["compiled_bytes"] = machine.compiled_bytes(compiled)
    if inspect and args.hlo_out:
        with gzip.open(args.hlo_out, "wt") as f:
            f.write(compiled.as_text())
    limit = args.max_gib * 2**30 if args.max_gib else None
    if limit and row["compiled_bytes"] and row["compiled_bytes"] > limit:
        return dict(row, error=f"skipped: needs {row['compiled_bytes'] / 2**30:.1f} GiB"), None
    times = []
    try:
        batches = [setting.make_batch(setting.batch_size) for _ in range(2)]
        for i in range(args.warmup + args.repeats):
            t0 = time.perf_counter()
            state, metrics = compiled(state, batches[i % 2])
            jax.block_until_ready(metrics)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
    except Exception as err:  # noqa: BLE001
        if not _is_oom(err):
            raise
        return dict(row, error="OOM at run"), None
    step_s = statistics.median(times)
    profile = None
    if inspect and args.profile:
        holder = [state]

        def run():
            holder[0], out = compiled(holder[0], batches[0])
            jax.block_until_ready(out)

        profile = functools.partial(machine.profile, run, steps=3)

    row.update(
        step_ms=step_s * 1e3,
        step_min_ms=min(times) * 1e3,
        tokens_per_s=setting.batch_size * setting.seq_len / step_s,
        loss=float(metrics["loss"]),
        finite=bool(metrics["finite"]),
        device_peak_bytes=machine.device_peak(),
    )
    return row, profile


def parse_list(kind):
    def parse(text: str):
        values = [kind(x.strip()) for x in text.split(",") if x.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        return values

    return parse


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU smoke run (< 1 minute)")
    parser.add_argument("--out", help="write the results as JSON to this file")
    parser.add_argument("--settings", type=parse_list(str), help="rule110,large")
    parser.add_argument("--passes", type=parse_list(int), help="N values, e.g. 1,2,4")
    parser.add_argument("--remats", type=parse_list(str), help="none,pass,window")
    parser.add_argument("--batch", type=int, help="Rule 110 batch size (paper: 512)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"])
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument("--repeats", type=int, help="timed steps (median reported)")
    parser.add_argument("--max_gib", type=float, help="skip configs whose program needs more")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile 3 steps of the first configuration (jax.profiler): ops per step, busy "
        "time and the top ops per device, printed and in its JSON row",
    )
    parser.add_argument(
        "--hlo_out", help="write the first configuration's compiled program (text) here, gzipped"
    )
    parser.add_argument("--large_width", type=int, default=1024)
    parser.add_argument("--large_heads", type=int, default=8)
    parser.add_argument("--large_layers", type=int, default=8, help="even: attn,gdn pairs")
    parser.add_argument("--large_window", type=int, default=2048, help="L")
    parser.add_argument("--large_windows", type=int, default=4, help="T = L x this")
    parser.add_argument("--large_batch", type=int, default=4)
    parser.add_argument("--large_vocab", type=int, default=256)
    args = parser.parse_args(argv)

    backend = jax.default_backend()
    accel = backend != "cpu"
    dtype = args.dtype or ("bfloat16" if accel else "float32")
    settings = args.settings or (["rule110"] if args.quick else ["rule110", "large"])
    passes = args.passes or ([1, 2] if args.quick else [1, 2, 4])
    remats = args.remats or (["pass"] if args.quick else ["none", "pass", "window"])
    batch = args.batch or (8 if args.quick else 512)
    args.repeats = args.repeats or (2 if args.quick else (10 if accel else 3))
    if args.quick:
        args.warmup = min(args.warmup, 1)
    if args.max_gib is None and not accel:
        args.max_gib = 0.6 * machine.host_gib()
    for remat in remats:
        if remat not in sleep.REMATS:
            parser.error(f"--remats: allowed {sleep.REMATS}, got {remat!r}")
    for name in settings:
        if name not in ("rule110", "large"):
            parser.error(f"--settings: allowed rule110, large; got {name!r}")

    meta = dict(
        **machine.facts(),
        dtype=dtype,
        warmup=args.warmup,
        repeats=args.repeats,
        quick=args.quick,
    )
    print(
        f"jax {meta['jax']}, backend {backend} ({meta['device_kind']}), {meta['cpus']} host "
        f"CPUs, load {meta['load_average']}, compute dtype {dtype}, median of "
        f"{args.repeats} steps after {args.warmup} warm-up, {meta['date']}",
        flush=True,
    )
    rows = []
    for name in settings:
        setting = rule110_setting(batch, dtype) if name == "rule110" else large_setting(args, dtype)
        print(f"\n{setting.describe}", flush=True)
        model = build_model(
            setting.config.model,
            vocab_size=setting.vocab_size,
            max_len=setting.seq_len,
            window=setting.config.sleep.window,
        )
        params = model.init_params(jax.random.key(0))
        print(
            f"{'N':>3} {'remat':>6} {'step ms':>9} {'tokens/s':>11} {'program GiB':>12} "
            f"{'dev peak GiB':>13} {'compile s':>10}  note",
            flush=True,
        )
        # Every N at the first remat mode before any at the second: a run stopped at a time
        # limit (gpu.sh) then has the whole N sweep for at least one mode.
        gib = lambda x: "-" if x is None else f"{x / 2**30:.2f}"
        profiled = None
        for remat in remats:
            for n in passes:
                row, profile = bench(setting, n, remat, args, params, inspect=not rows)
                rows.append(row)
                if profile is not None:
                    profiled = (row, profile)
                if args.out:
                    machine.write_json(args.out, dict(meta=meta, rows=rows, complete=False))
                if "error" in row:
                    print(
                        f"{n:>3} {remat:>6} {'-':>9} {'-':>11} "
                        f"{gib(row.get('compiled_bytes')):>12} {'-':>13} "
                        f"{row.get('compile_s', 0):>10.1f}  {row['error']}",
                        flush=True,
                    )
                    continue
                print(
                    f"{n:>3} {remat:>6} {row['step_ms']:>9.1f} {row['tokens_per_s']:>11,.0f} "
                    f"{gib(row['compiled_bytes']):>12} {gib(row['device_peak_bytes']):>13} "
                    f"{row['compile_s']:>10.1f}  {'' if row['finite'] else 'non-finite loss'}",
                    flush=True,
                )
        if profiled is not None:
            row, profile = profiled
            row["profile"] = profile()
            print(
                f"\nprofile of N = {row['passes']}, remat {row['remat']} (3 steps; the step took "
                f"{row['step_ms']:.1f} ms):"
            )
            machine.print_profile(row["profile"])
            if args.out:
                machine.write_json(args.out, dict(meta=meta, rows=rows, complete=False))
    print(
        "\nprogram GiB: XLA buffer assignment of the jitted step (arguments + outputs - "
        "donated + temporaries). dev peak: the device allocator's high-water mark so far."
    )
    if args.out:
        machine.write_json(args.out, dict(meta=meta, rows=rows, complete=True))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
