"""Wake latency per decoded token and sleep time per window, for N sleep passes.

    python benchmarks/wake_sleep.py                  # N in 1, 2, 4 at the Rule 110 model size
    python benchmarks/wake_sleep.py --quick          # < 1 minute on a 2-core CPU
    python benchmarks/wake_sleep.py --batch 512 --passes 1,2,4,8 --out wake_sleep.json

Model: the Rule 110 setting of experiments/rule110.py (width 256, 4 heads, layers
attn,gdn,attn,gdn, MLP 4x, L = 24, hard eviction), random initial parameters (speed does
not depend on their values). dtype: float32 on CPU, bfloat16 on an accelerator (--dtype).

What is timed, through the streaming API of sleep_lm.inference (jitted, state donated):
- wake: ``decode_step`` for one token of a batch of ``--batch`` sequences, one call per
  token with ``block_until_ready`` (latency, dispatch included): the paper's claim is that
  it does not depend on N (its program is the same for every N: see tests/test_inference.py).
- sleep: ``sleep`` on a full window of L tokens (N consolidation passes, then eviction).
The windows are decoded and slept on in turn; the N values are interleaved round by round so
that load drift on a shared machine hits them alike. Reported: median over all timed calls
(and the minimum). Peak memory: the device's ``peak_bytes_in_use`` where the backend reports
it (process high-water mark), and XLA's buffer assignment for each compiled program
(arguments + outputs - aliased + temporaries), on every backend.

JSON (--out): ``wake_ms_per_token`` and ``sleep_ms_per_window`` map "1", "2", "4" (each N)
to milliseconds (medians); ``wake_ratio`` is the wake time at the largest N over N = 1
(the goal is <= 1.15); ``peak_memory`` and ``rows`` hold the details.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import machine
import numpy as np

from sleep_lm import inference, sleep
from sleep_lm.config import load_config
from sleep_lm.model import build_model

ROOT = Path(__file__).resolve().parents[1]


def rule110_config():
    """experiments/rule110.py's get_config() (the paper's setting)."""
    return load_config(ROOT / "experiments/rule110.py")


def rule110_model(dtype: str, window: int):
    config = rule110_config()
    config.model.dtype = dtype
    return build_model(config.model, vocab_size=3, max_len=100, window=window)


class Bench:
    """Jitted decode and full-window sleep for one N, with their state."""

    def __init__(self, model, params, passes: int, window: int, batch: int, seed: int):
        self.model, self.params, self.window = model, params, window
        self.spec = sleep.SleepSpec(passes=passes, window=window, eviction="hard")
        spec = self.spec
        self.decode = jax.jit(
            lambda params, state, token: inference.decode_step(model, params, spec, state, token),
            donate_argnums=1,
        )
        self.sleep = jax.jit(
            lambda params, state: inference.sleep(model, params, spec, state, length=window),
            donate_argnums=1,
        )
        self.tokens = np.random.default_rng(seed).integers(0, 2, (64, batch)).astype(np.int32)
        self.state = inference.init_state(model, spec, batch)
        token = jnp.asarray(self.tokens[0])
        self.decode_c = self.decode.lower(params, self.state, token).compile()
        self.memory = {"decode_bytes": machine.compiled_bytes(self.decode_c)}
        self.wake_ms: list[float] = []
        self.sleep_ms: list[float] = []
        self.step = 0
        t0 = time.perf_counter()
        self.run_window(record=False)  # compiles and warms up both programs
        self.compile_s = time.perf_counter() - t0
        sleep_c = self.sleep.lower(params, self.state).compile()
        self.memory["sleep_bytes"] = machine.compiled_bytes(sleep_c)

    def run_window(self, record: bool = True) -> None:
        for _ in range(self.window):
            token = jnp.asarray(self.tokens[self.step % len(self.tokens)])
            self.step += 1
            t0 = time.perf_counter()
            logits, self.state = self.decode(self.params, self.state, token)
            logits.block_until_ready()
            if record:
                self.wake_ms.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        self.state = self.sleep(self.params, self.state)
        jax.block_until_ready(self.state)
        if record:
            self.sleep_ms.append((time.perf_counter() - t0) * 1e3)


def parse_ints(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive ints, got {text!r}")
    return values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few windows (< 1 min on CPU)")
    parser.add_argument("--out", help="write the results as JSON to this file")
    parser.add_argument("--passes", type=parse_ints, default=[1, 2, 4], help="N values")
    parser.add_argument("--batch", type=int, default=1, help="sequences decoded in lockstep")
    parser.add_argument("--window", type=int, default=24, help="L (Rule 110: 24)")
    parser.add_argument("--rounds", type=int, help="windows timed per N (interleaved)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)

    backend = jax.default_backend()
    dtype = args.dtype or ("float32" if backend == "cpu" else "bfloat16")
    rounds = args.rounds or (3 if args.quick else (10 if backend == "cpu" else 50))
    model = rule110_model(dtype, args.window)
    params = model.init_params(jax.random.key(0))
    meta = dict(
        **machine.facts(),
        dtype=dtype,
        batch=args.batch,
        window=args.window,
        model="rule110: width 256, 4 heads, attn,gdn,attn,gdn, MLP 4x, hard eviction",
        rounds=rounds,
        quick=args.quick,
    )
    print(
        f"jax {meta['jax']}, backend {backend} ({meta['device_kind']}), {meta['cpus']} host "
        f"CPUs, load {meta['load_average']}, dtype {dtype}, batch {args.batch}, L = "
        f"{args.window}, {rounds} windows timed per N, {meta['date']}",
        flush=True,
    )

    benches = {}
    for n in args.passes:
        benches[n] = Bench(model, params, n, args.window, args.batch, seed=n)
        print(f"N={n}: compiled and warmed up in {benches[n].compile_s:.1f} s", flush=True)
    for _ in range(rounds):
        for n in args.passes:
            benches[n].run_window()

    rows = []
    print(
        f"\n{'N':>3} {'wake ms/token':>14} {'(min)':>8} {'sleep ms/window':>16} {'(min)':>8} "
        f"{'sleep/N':>8} {'decode MiB':>11} {'sleep MiB':>10}"
    )
    for n, b in benches.items():
        row = dict(
            passes=n,
            wake_ms=statistics.median(b.wake_ms),
            wake_min_ms=min(b.wake_ms),
            sleep_ms=statistics.median(b.sleep_ms),
            sleep_min_ms=min(b.sleep_ms),
            wake_calls=len(b.wake_ms),
            sleep_calls=len(b.sleep_ms),
            compile_s=b.compile_s,
            **b.memory,
        )
        rows.append(row)
        mib = lambda x: "-" if x is None else f"{x / 2**20:.1f}"
        print(
            f"{n:>3} {row['wake_ms']:>14.3f} {row['wake_min_ms']:>8.3f} {row['sleep_ms']:>16.3f} "
            f"{row['sleep_min_ms']:>8.3f} {row['sleep_ms'] / n:>8.3f} "
            f"{mib(row['decode_bytes']):>11} {mib(row['sleep_bytes']):>10}"
        )
    base = rows[0]
    last = rows[-1]
    ratio = last["wake_ms"] / base["wake_ms"]
    sleep_ratio = last["sleep_ms"] / base["sleep_ms"]
    peak = machine.device_peak()
    print(
        f"\nwake N={last['passes']} / N={base['passes']}: {ratio:.3f} (goal <= 1.15: "
        f"{'met' if ratio <= 1.15 else 'NOT met'}); sleep N={last['passes']} / "
        f"N={base['passes']}: {sleep_ratio:.2f} (linear would be "
        f"{last['passes'] / base['passes']:.0f})"
    )
    print(
        "device peak memory (process high-water mark): "
        + ("not reported by this backend" if peak is None else f"{peak / 2**20:.1f} MiB")
    )
    result = dict(
        meta=meta,
        wake_ms_per_token={str(r["passes"]): r["wake_ms"] for r in rows},
        sleep_ms_per_window={str(r["passes"]): r["sleep_ms"] for r in rows},
        wake_ratio=ratio,
        sleep_ratio=sleep_ratio,
        peak_memory=dict(
            device_peak_bytes=peak,
            decode_bytes={str(r["passes"]): r["decode_bytes"] for r in rows},
            sleep_bytes={str(r["passes"]): r["sleep_bytes"] for r in rows},
        ),
        rows=rows,
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
