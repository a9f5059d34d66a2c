r"""Rule 110, Depo and GSM-Infinite as TensorFlow Datasets builders: fixed splits on disk.

Training samples its batches on the fly by default (no download, nothing on disk). These
builders are for runs that want a fixed data set: materialise the splits once, to a local
directory or a bucket, and read them back on every host as NumPy batches in the tasks' dict
layout.

No TensorFlow is needed: the builders write array_record files and the reader uses
`tfds.data_source` (random access, NumPy records). The module needs tensorflow-datasets
(`pip install 'sleep_lm[tfds]'`), which brings array_record but not tensorflow; a gs://
data_dir without tensorflow also needs `gcsfs` (etils.epath's backend for buckets).

  python -m sleep_lm.tasks.tfds_builders --data_dir=/data/tfds rule110/t8 depo/hops1-16

  from sleep_lm.tasks import tfds_builders as tb
  tb.build("rule110/t8", data_dir="/data/tfds")          # what the command above does
  for batch in tb.batches("rule110/t8", "train", data_dir="/data/tfds", batch_size=512,
                          process_index=jax.process_index(), process_count=jax.process_count()):
      ...   # inputs, targets int32 [512 / process_count, 100]; loss_mask bool [same]
  held_out = tb.read_split("rule110/t8", "test", data_dir="/data/tfds")

(The `tfds build` CLI itself imports tensorflow, hence the module's own command.)

Data sets (`name/config`):
- `rule110/t{T}` for T in RULE110_STEPS: Rule110(steps=T). Splits `train` (train_size
  examples) and `test` (`task.eval_batch(test_size, seed)`: the trainer's own held-out set).
- `depo/hops{a}-{b}` for (a, b) in DEPO_HOP_RANGES: Depo(hops=a..b). Splits `train` (k ~
  U[a, b]), `test` (same k distribution) and `test_k{k}` for every k in `test_hops` (every
  query asks k hops; the cycles and query sources are the same for every k, so the per-k
  sets are paired).
- `gsm_infinite/{name}` for the GSM_INFINITE_CONFIGS: GsmInfinite (byte-level tokens), e.g.
  `gsm_infinite/ops2-4_t512` (the `scratch` preset's task) and `gsm_infinite/ops2-8_t4096`.
  Splits `train`, `test` (the training op mix) and `test_op{k}` for every k in `test_ops`
  (`task.eval_batch(test_size, seed, op=k)`: the trainer's `eval/accuracy@op=k` set; the
  JSONL export `python -m sleep_lm.tasks.gsm_infinite.export` writes the same problems).
Other settings: pass a config, e.g. `build(Rule110Builder, data_dir=...,
config=Rule110Config(name="t32_big", steps=32, train_size=50_000_000))`.

How train splits are ordered and what each example stores: datasets.py's docstring.

Modules: ``datasets`` (configs and builders), ``splits`` (build, read, batch); ``__main__``
is the command.
"""

from __future__ import annotations

from sleep_lm.tasks.tfds_builders.datasets import (
    DEPO_HOP_RANGES,
    GSM_INFINITE_CONFIGS,
    RULE110_STEPS,
    TRAIN_STREAM,
    DepoBuilder,
    DepoConfig,
    GsmInfiniteBuilder,
    GsmInfiniteConfig,
    Rule110Builder,
    Rule110Config,
)
from sleep_lm.tasks.tfds_builders.splits import batches, build, data_source, read_split, to_batch


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m sleep_lm.tasks.tfds_builders",
        description="Materialise Rule 110 / Depo / GSM-Infinite splits as array_record files "
        "(no TensorFlow).",
    )
    names = [f"rule110/{c.name}" for c in Rule110Builder.BUILDER_CONFIGS]
    names += [f"depo/{c.name}" for c in DepoBuilder.BUILDER_CONFIGS]
    names += [f"gsm_infinite/{c.name}" for c in GsmInfiniteBuilder.BUILDER_CONFIGS]
    parser.add_argument("datasets", nargs="+", metavar="NAME", help=f"one of {', '.join(names)}")
    parser.add_argument("--data_dir", required=True, help="Root directory (or bucket).")
    args = parser.parse_args(argv)
    for name in args.datasets:
        if name not in names:
            parser.error(f"unknown data set {name!r}; choose from {', '.join(names)}")
    for name in args.datasets:
        builder = build(name, args.data_dir)
        sizes = ", ".join(f"{k} {v.num_examples}" for k, v in sorted(builder.info.splits.items()))
        print(f"{name}: {builder.data_dir} ({sizes})", flush=True)
    return 0


__all__ = [
    "DEPO_HOP_RANGES",
    "RULE110_STEPS",
    "TRAIN_STREAM",  # the seed stream of train splits (the trainer's; tests compare)
    "DepoBuilder",
    "DepoConfig",
    "GSM_INFINITE_CONFIGS",
    "GsmInfiniteBuilder",
    "GsmInfiniteConfig",
    "Rule110Builder",
    "Rule110Config",
    "batches",
    "build",
    "data_source",
    "read_split",
    "to_batch",
]
