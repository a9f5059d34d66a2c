"""Held-out eval time at the paper's length (issue 17): one chunk of GSM-Infinite problems
through three eval paths, on the `tiny` preset (random tiny Ouro checkpoint) at seq 3,300
with the full-size presets' window (L = 2,000: one sleep window, then the answer's wake
window of 1,300 tokens).

    python benchmarks/gsm_eval.py                    # CPU, batch 4, N = 2
    python benchmarks/gsm_eval.py --batch 8 --passes 4 --out /tmp/gsm_eval.json

Paths (same parameters, same problems; each compiled once, then timed `--repeats` times):
- ``stream, token by token``: ``inference.streaming_loss`` with ``scored_from=0``: every
  token of the wake window is decoded one at a time (the streaming eval before issue 17);
- ``stream, prefix fed``: ``--mode=eval``'s path (``scored_from`` = the answer span's start:
  the wake window's prompt part is fed at once, attending to itself alone after the hard
  eviction, ``inference.stream.prefill_fresh``; only the answer is decoded);
- ``parallel``: the trainer's held-out eval (``sleep.sequence_loss``, no streaming).
Prints one table (median seconds per chunk, speed-up over token by token, the metrics,
which must be equal across the paths up to float rounding).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments import gsm_infinite  # noqa: E402
from sleep_lm import inference, run  # noqa: E402
from sleep_lm.config import pretrained_options  # noqa: E402
from sleep_lm.pretrained import load_hf, tiny  # noqa: E402
from sleep_lm.train.loop import eval_seed, eval_sets  # noqa: E402


def _config(checkpoint: str, args):
    config = gsm_infinite.get_config("tiny")
    config.init.from_hf = checkpoint
    config.task.seq_len = args.seq_len
    config.task.length_range = ""
    config.sleep.window = args.window
    config.sleep.passes = args.passes
    config.model.gdn_impl = args.gdn_impl
    return config


def _time(fn, repeats: int) -> tuple[float, float, dict]:
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times)), {k: float(v) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=3300)
    parser.add_argument("--window", type=int, default=2000)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--gdn_impl", default="chunked")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paths", default="token,prefix,parallel")
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tiny.write_tiny(tmp, family="ouro", seed=0)
        config = _config(tmp, args)
        components = run.build_components(config)
        _, params = load_hf(tmp, window=config.sleep.window, **pretrained_options(config))
    task, model, spec = components.task, components.model, components.spec
    sets = eval_sets(task, args.batch, eval_seed(config))
    batch = next(iter(sets.values()))
    batch = {k: np.asarray(v)[: args.batch] for k, v in batch.items()}

    def stream(scored_from):
        return lambda: inference.evaluate(model, params, spec, batch, scored_from=scored_from)

    parallel = jax.jit(lambda p, b: components.loss_fn(p, b)[1])
    paths = {
        "token": ("stream, token by token", stream(0)),
        "prefix": ("stream, prefix fed", stream(task.scored_from)),
        "parallel": ("parallel (trainer eval)", lambda: parallel(params, batch)),
    }
    rows = []
    for key in args.paths.split(","):
        name, fn = paths[key]
        first, median, metrics = _time(fn, args.repeats)
        rows.append(dict(path=name, first_s=first, median_s=median, **metrics))
        print(f"  {name}: {median:.2f} s (first call {first:.1f} s)", flush=True)

    base = next((r["median_s"] for r in rows if r["path"].endswith("token by token")), None)
    print(
        f"\nGSM eval, one chunk of {args.batch} at seq {args.seq_len}, window {args.window}, "
        f"N = {args.passes}, gdn {args.gdn_impl}; {jax.devices()[0].platform}, jax "
        f"{jax.__version__}\n"
    )
    print("| path | s per chunk | speed-up | first call s | loss | token acc | accuracy |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        speed = f"{base / r['median_s']:.1f}x" if base else "-"
        print(
            f"| {r['path']} | {r['median_s']:.2f} | {speed} | {r['first_s']:.1f} | "
            f"{r['loss']:.6f} | {r['token_accuracy']:.4f} | {r['accuracy']:.4f} |"
        )
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(dict(args=vars(args), rows=rows), indent=1))


if __name__ == "__main__":
    main()
