"""Optimiser: Muon for weight matrices, AdamW for the rest (the paper's split).

Every parameter gets a label, "muon" or "adam", from its path and rank:
- "adam": any parameter whose "/"-joined path (lower case) matches one of the regexes in
  `train.adam_patterns` (embeddings, output head, norms, gates, biases, convolutions, the
  GDN decay parameters, position tables), and every parameter that is not 2-D.
- "muon": the remaining 2-D weight matrices, stored [in, out] as Flax Dense kernels are.

`optax.contrib.muon` applies the split itself (an `optax.partition`, i.e. `multi_transform`)
from a tree of `MuonDimensionNumbers` where `None` marks an AdamW leaf; we build that tree from
the labels. Both groups follow the same schedule shape (linear warm-up, then cosine or
constant) at their own peak learning rate, after global-norm clipping of the raw gradients.
Decoupled weight decay applies to the Muon group only; norms, biases and embeddings are
conventionally not decayed.
"""

import re
from collections.abc import Sequence

import jax
import optax
from ml_collections import config_dict

MUON = "muon"
ADAM = "adam"
SCHEDULES = ("cosine", "constant")
OPTIMIZERS = ("muon", "adamw")


def path_name(path) -> str:
    """'/'-joined lower-case name of a pytree key path, e.g. 'params/block_0/mlp/kernel'."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts).lower()


def split_patterns(patterns: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(patterns, str):
        patterns = patterns.split(",")
    return tuple(p.strip() for p in patterns if p.strip())


def param_labels(params, adam_patterns: str | Sequence[str]):
    """Tree like `params` with "muon" for 2-D weight matrices and "adam" for everything else."""
    regexes = [re.compile(p) for p in split_patterns(adam_patterns)]

    def label(path, x):
        name = path_name(path)
        if x.ndim != 2 or any(r.search(name) for r in regexes):
            return ADAM
        return MUON

    return jax.tree_util.tree_map_with_path(label, params)


def make_schedule(
    peak: float, *, total_steps: int, warmup_steps: int, kind: str, min_ratio: float
) -> optax.Schedule:
    """Linear warm-up from 0 to `peak`, then cosine decay to `min_ratio * peak` (or constant)."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; allowed: {SCHEDULES}")
    warmup_steps = min(warmup_steps, total_steps)
    if kind == "constant":
        if warmup_steps == 0:
            return optax.constant_schedule(peak)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup_steps), optax.constant_schedule(peak)],
            [warmup_steps],
        )
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1),
        end_value=peak * min_ratio,
    )


def schedules(train: config_dict.ConfigDict) -> dict[str, optax.Schedule]:
    """The learning-rate schedule of each group, keyed by label."""
    common = dict(
        total_steps=train.steps,
        warmup_steps=train.warmup_steps,
        kind=train.schedule,
        min_ratio=train.min_lr_ratio,
    )
    return {MUON: make_schedule(train.lr, **common), ADAM: make_schedule(train.adam_lr, **common)}


def make_optimizer(train: config_dict.ConfigDict) -> optax.GradientTransformation:
    """Clipping + (Muon | AdamW) from the `config.train` fields.

    `train.optimizer == "adamw"` uses AdamW at `train.lr` for every parameter (a baseline and
    a fallback; the paper uses "muon").
    """
    if train.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {train.optimizer!r}; allowed: {OPTIMIZERS}")
    lr = schedules(train)
    if train.optimizer == "adamw":
        inner = optax.adamw(lr[MUON], weight_decay=train.weight_decay)
    else:
        patterns = train.adam_patterns

        def dimension_numbers(params):
            # Muon orthogonalises [in, out] matrices; None hands the leaf to the AdamW group.
            return jax.tree.map(
                lambda label: optax.contrib.MuonDimensionNumbers(0, 1) if label == MUON else None,
                param_labels(params, patterns),
            )

        inner = optax.contrib.muon(
            learning_rate=lr[MUON],
            adam_learning_rate=lr[ADAM],
            weight_decay=train.weight_decay,
            adam_weight_decay=0.0,
            muon_weight_dimension_numbers=dimension_numbers,
        )
    if train.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(train.grad_clip), inner)
    return inner
