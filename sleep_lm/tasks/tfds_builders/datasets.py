"""The data sets as TFDS builders: per task a config (sizes, seed, the task's settings) and a
builder class with its splits (the package docstring lists them).

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
