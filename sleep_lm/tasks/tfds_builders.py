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

Train split order: rows [c * B, (c + 1) * B) with B = config.batch_size are
`task.sample(np.random.default_rng([seed, 2, c]), B)`, the batch the trainer draws on the fly
at step c (sleep_lm.train.loop.batch_for_step) when train.batch_size = B and config.seed =
seed; so reading the split in order with that batch size reproduces on-the-fly training.

Storage per example: the full token sequence `tokens` ([seq_len + 1], uint8 when the
vocabulary fits, else int32), `loss_mask` (bool [seq_len]) and, for Depo, `hops` (int32
[num_queries]), for GSM-Infinite `op` (int32 scalar) and `valid` (bool [seq_len], the
inert-padding mask: False on the padded inputs); the reader rebuilds
`inputs = tokens[:-1]`, `targets = tokens[1:]` (int32).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

try:
    # tensorflow-datasets 4.9.x imports importlib_resources when it builds a data set but
    # declares it only for Python < 3.9 (tensorflow/datasets#11212); the extra installs it.
    import importlib_resources  # noqa: F401
    import tensorflow_datasets as tfds
except ImportError as e:  # An optional extra: keep the message actionable.
    raise ImportError(
        f"sleep_lm.tasks.tfds_builders needs tensorflow-datasets and importlib_resources "
        f"({e}): pip install 'sleep_lm[tfds]'"
    ) from e

from sleep_lm.tasks.depo import PAPER_EVAL_HOPS, Depo
from sleep_lm.tasks.gsm_infinite import GsmInfinite
from sleep_lm.tasks.rule110 import Rule110

# Seed stream of training batches: sleep_lm.train.loop.TRAIN_STREAM (tasks/ imports nothing
# from train/; tests/tasks/test_tfds_builders.py checks that the two agree).
TRAIN_STREAM = 2

RULE110_STEPS = (0, 1, 2, 4, 8, 10, 12, 14, 16, 32)  # Fig. 2a's t, plus 0..2 and Fig. 2b's 32.
DEPO_HOP_RANGES = ((1, 16), (1, 8), (1, 4))  # (1, 16): the paper's training distribution.
# (max_op, seq_len): the scratch preset's byte-level task, and the paper's 1-8 ops at about the
# paper's length in bytes (its 2,000-3,300 tokens are BPE tokens, several bytes each).
GSM_INFINITE_CONFIGS = ((4, 512), (8, 4096))

_BYTES = tfds.features.Encoding.BYTES  # Fixed-size arrays as raw bytes: compact and fast.


def _tokens_dtype(vocab_size: int):
    return np.uint8 if vocab_size <= 256 else np.int32


@dataclasses.dataclass(eq=False)
class Rule110Config(tfds.core.BuilderConfig):
    """Rule 110 with rollout depth `steps` (t). Default sizes: the Fig. 2a budget of ~40M
    training tokens (800 steps of 512 examples of 100 tokens) and a 2048-example test set."""

    steps: int = 0
    state_bits: int = 24
    num_states: int = 4
    train_size: int = 800 * 512
    test_size: int = 2048
    batch_size: int = 512  # generation chunk; see the module docstring ("Train split order")
    seed: int = 0

    def task(self) -> Rule110:
        return Rule110(self.steps, state_bits=self.state_bits, num_states=self.num_states)


@dataclasses.dataclass(eq=False)
class DepoConfig(tfds.core.BuilderConfig):
    """Depo with training hop counts k in min_hops..max_train_hops; `test_hops` get their own
    test split each. Default sizes: 1000 steps of 128 examples (~46M tokens), 1024 per test
    split."""

    min_hops: int = 1
    max_train_hops: int = 16
    test_hops: tuple[int, ...] = PAPER_EVAL_HOPS
    max_nodes: int = 75
    min_nodes: int = 3
    num_queries: int = 10
    max_hops: int = 16  # hop counts with a token in the vocabulary
    num_names: int = 100
    train_size: int = 1000 * 128
    test_size: int = 1024
    batch_size: int = 128  # generation chunk; see the module docstring ("Train split order")
    seed: int = 0

    def task(self) -> Depo:
        return Depo(
            max_nodes=self.max_nodes,
            min_nodes=self.min_nodes,
            num_queries=self.num_queries,
            hops=range(self.min_hops, self.max_train_hops + 1),
            max_hops=self.max_hops,
            num_names=self.num_names,
            eval_hops=self.test_hops,
        )


def _rows(task, batch: dict, start: int) -> Iterator[tuple[int, dict]]:
    """(key, record) per example of a task batch; keys are global row indices (the order the
    split keeps, as shuffling is disabled)."""
    full = np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)
    full = full.astype(_tokens_dtype(task.vocab_size))
    for i in range(len(full)):
        record = {"tokens": full[i], "loss_mask": batch["loss_mask"][i]}
        for key in ("hops", "op", "valid"):
            if key in batch:
                record[key] = batch[key][i]
        yield start + i, record


def _train_examples(task, config) -> Iterator[tuple[int, dict]]:
    for start in range(0, config.train_size, config.batch_size):
        size = min(config.batch_size, config.train_size - start)
        rng = np.random.default_rng([config.seed, TRAIN_STREAM, start // config.batch_size])
        yield from _rows(task, task.sample(rng, size), start)


class _TaskBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}

    def _features(self, task) -> dict:
        dtype = _tokens_dtype(task.vocab_size)
        return {
            "tokens": tfds.features.Tensor(shape=(task.seq_len + 1,), dtype=dtype, encoding=_BYTES),
            "loss_mask": tfds.features.Tensor(
                shape=(task.seq_len,), dtype=np.bool_, encoding=_BYTES
            ),
        }

    def _make_info(self, description: str, features: dict) -> tfds.core.DatasetInfo:
        # DatasetInfo directly: `dataset_info_from_configs` would read metadata files from
        # this module's package directory.
        return tfds.core.DatasetInfo(
            builder=self,
            description=description,
            features=tfds.features.FeaturesDict(features),
            disable_shuffling=True,  # Keep generation order (see "Train split order").
        )

    def _generate_examples(self, examples):
        yield from examples

    def _split_generators(self, dl_manager):
        """train, test, and the per-difficulty test splits of ``_difficulty_batches``."""
        config = self.builder_config
        task = config.task()
        splits = {
            "train": _train_examples(task, config),
            "test": _rows(task, task.eval_batch(config.test_size, config.seed), 0),
        }
        for name, batch in self._difficulty_batches(task, config).items():
            splits[name] = _rows(task, batch, 0)
        return {name: self._generate_examples(rows) for name, rows in splits.items()}

    def _difficulty_batches(self, task, config) -> dict[str, dict]:
        """{split name: eval batch at one difficulty}; none by default."""
        return {}


class Rule110Builder(_TaskBuilder):
    """`rule110/t{T}`: train and test splits of the Rule 110 task at depth T."""

    name = "rule110"
    BUILDER_CONFIGS = [Rule110Config(name=f"t{t}", steps=t) for t in RULE110_STEPS]

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        return self._make_info(
            f"Rule 110 rollout, t = {config.steps} ({config.task()!r}); see "
            "sleep_lm.tasks.rule110.",
            self._features(config.task()),
        )


class DepoBuilder(_TaskBuilder):
    """`depo/hops{a}-{b}`: train, test and per-k test splits of Depo with k ~ U[a, b]."""

    name = "depo"
    BUILDER_CONFIGS = [
        DepoConfig(name=f"hops{a}-{b}", min_hops=a, max_train_hops=b) for a, b in DEPO_HOP_RANGES
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        task = config.task()
        features = self._features(task)
        features["hops"] = tfds.features.Tensor(
            shape=(task.num_queries,), dtype=np.int32, encoding=_BYTES
        )
        return self._make_info(
            f"Depo multi-hop retrieval, training k in {config.min_hops}.."
            f"{config.max_train_hops} ({task!r}); see sleep_lm.tasks.depo.",
            features,
        )

    def _difficulty_batches(self, task, config) -> dict[str, dict]:
        return {
            f"test_k{k}": task.eval_batch(config.test_size, config.seed, hops=k)
            for k in config.test_hops
        }


@dataclasses.dataclass(eq=False)
class GsmInfiniteConfig(tfds.core.BuilderConfig):
    """GSM-Infinite (byte-level) with training ops min_op..max_op; `test_ops` (default: the
    same range) get a test split each. Default sizes: 20000 training problems, 200 per test
    split (the paper's held-out size per op)."""

    seq_len: int = 512
    min_op: int = 2  # the benchmark generates ops >= 2
    max_op: int = 8
    test_ops: tuple[int, ...] | None = None
    modes: str = "forward,reverse"
    templates: str = "zoo,school,festival"
    levels: str = "medium,hard"
    train_size: int = 20_000
    test_size: int = 200
    batch_size: int = 16  # generation chunk; see the module docstring ("Train split order")
    seed: int = 0

    def task(self) -> GsmInfinite:
        return GsmInfinite(
            seq_len=self.seq_len,
            min_op=self.min_op,
            max_op=self.max_op,
            eval_ops=self.test_ops,
            modes=self.modes,
            templates=self.templates,
            levels=self.levels,
        )


class GsmInfiniteBuilder(_TaskBuilder):
    """`gsm_infinite/ops{a}-{b}_t{T}`: train, test and per-op test splits."""

    name = "gsm_infinite"
    BUILDER_CONFIGS = [
        GsmInfiniteConfig(name=f"ops2-{b}_t{t}", max_op=b, seq_len=t)
        for b, t in GSM_INFINITE_CONFIGS
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        task = config.task()
        features = self._features(task)
        features["op"] = tfds.features.Tensor(shape=(), dtype=np.int32)
        # The inert-padding mask (GsmInfinite's default padding): False on the padded inputs.
        features["valid"] = tfds.features.Tensor(
            shape=(task.seq_len,), dtype=np.bool_, encoding=_BYTES
        )
        return self._make_info(
            f"GSM-Infinite-style math, ops {config.min_op}..{config.max_op} ({task!r}); see "
            "sleep_lm.tasks.gsm_infinite.",
            features,
        )

    def _difficulty_batches(self, task, config) -> dict[str, dict]:
        return {
            f"test_op{k}": task.eval_batch(config.test_size, config.seed, op=k)
            for k in task.eval_ops
        }


# ----------------------------------------------------------------------------- reading


def _builder(name, data_dir, **kwargs) -> tfds.core.DatasetBuilder:
    if isinstance(name, tfds.core.DatasetBuilder):
        return name
    if isinstance(name, type):
        return name(data_dir=data_dir, file_format="array_record", **kwargs)
    return tfds.builder(name, data_dir=data_dir, file_format="array_record", **kwargs)


def build(name, data_dir, **kwargs) -> tfds.core.DatasetBuilder:
    """Materialises every split of `name` ('rule110/t8', a builder class or instance) under
    `data_dir` as array_record files (a no-op when already there); returns the builder.
    `kwargs` go to the builder, e.g. `config=Rule110Config(...)`."""
    builder = _builder(name, data_dir, **kwargs)
    builder.download_and_prepare()
    return builder


def data_source(name, split: str, data_dir, **kwargs):
    """The split as a random-access source (`len`, `[i]`, `__getitems__`) of records."""
    builder = _builder(name, data_dir, **kwargs)
    if not builder.is_prepared():
        full_name = f"{builder.name}/{builder.builder_config.name}"
        raise FileNotFoundError(
            f"{full_name} is not built under {data_dir}; run "
            f"sleep_lm.tasks.tfds_builders.build({full_name!r}, data_dir) first"
        )
    return builder.as_data_source(split=split)


def to_batch(records: list[dict]) -> dict[str, np.ndarray]:
    """Stored records -> the tasks' batch dict: inputs, targets int32 [batch, seq_len],
    loss_mask bool [batch, seq_len] (and hops int32 [batch, num_queries] for Depo; op int32
    [batch] and valid bool [batch, seq_len] for GSM-Infinite)."""
    tokens = np.stack([r["tokens"] for r in records]).astype(np.int32)
    batch = {
        "inputs": np.ascontiguousarray(tokens[:, :-1]),
        "targets": np.ascontiguousarray(tokens[:, 1:]),
        "loss_mask": np.stack([r["loss_mask"] for r in records]).astype(bool),
    }
    for key in ("hops", "op"):
        if key in records[0]:
            batch[key] = np.stack([r[key] for r in records]).astype(np.int32)
    if "valid" in records[0]:  # GSM-Infinite's inert padding
        batch["valid"] = np.stack([r["valid"] for r in records]).astype(bool)
    return batch


def _check_process(process_index: int, process_count: int) -> None:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in 0..{process_count - 1} (got {process_index})")


def read_split(
    name, split: str, data_dir, *, process_index: int = 0, process_count: int = 1, **kwargs
) -> dict[str, np.ndarray]:
    """This host's contiguous share of a whole split as one batch dict (for held-out sets):
    rows [i * n // P, (i + 1) * n // P) for process i of P."""
    _check_process(process_index, process_count)
    source = data_source(name, split, data_dir, **kwargs)
    n = len(source)
    rows = range(process_index * n // process_count, (process_index + 1) * n // process_count)
    if not rows:
        raise ValueError(f"split {split!r} has {n} examples: none for process {process_index}")
    return to_batch(source.__getitems__(list(rows)))


def batches(
    name,
    split: str,
    data_dir,
    *,
    batch_size: int,
    start_step: int = 0,
    num_steps: int | None = None,
    shuffle_seed: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    **kwargs,
) -> Iterator[dict[str, np.ndarray]]:
    """This host's part of the global batches of steps start_step, start_step + 1, ...

    The global batch of step s holds `batch_size` rows; process i of P gets its i-th
    contiguous block of batch_size / P rows, so the hosts' batches, concatenated in process
    order, are the global batch. Epochs wrap around (a last partial batch is dropped). Without
    `shuffle_seed` each epoch reads the split in order; with it, epoch e reads it in the order
    of `default_rng([shuffle_seed, e]).permutation`. A step's batch depends only on s, so
    `start_step` resumes exactly. Stops after `num_steps` batches (default: never).
    """
    _check_process(process_index, process_count)
    if batch_size < 1 or batch_size % process_count:
        raise ValueError(
            f"batch_size must be a positive multiple of process_count={process_count} "
            f"(got {batch_size})"
        )
    source = data_source(name, split, data_dir, **kwargs)
    steps_per_epoch = len(source) // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"split {split!r} has {len(source)} examples, fewer than one batch")
    local = batch_size // process_count
    order, order_epoch = None, None
    step = start_step
    while num_steps is None or step < start_step + num_steps:
        epoch, within = divmod(step, steps_per_epoch)
        start = within * batch_size + process_index * local
        if shuffle_seed is None:
            rows = list(range(start, start + local))
        else:
            if order_epoch != epoch:
                order = np.random.default_rng([shuffle_seed, epoch]).permutation(len(source))
                order_epoch = epoch
            rows = order[start : start + local].tolist()
        yield to_batch(source.__getitems__(rows))
        step += 1


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


if __name__ == "__main__":
    raise SystemExit(main())
