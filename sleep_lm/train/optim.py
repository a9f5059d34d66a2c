"""Optimiser: Muon for weight matrices, AdamW for the rest (the paper's split).

Every parameter gets a label, "muon" or "adam", from its path and rank:
- "adam": any parameter whose "/"-joined path (lower case) matches one of the regexes in
  `train.adam_patterns` (embeddings, output head, norms, gates, biases, convolutions, the
  GDN decay parameters, position tables), and every parameter that is not 2-D.
- "muon": the remaining 2-D weight matrices, stored [in, out] as Flax Dense kernels are.

The split is an `optax.multi_transform` (a.k.a. `partition`) over these labels:
- "muon": `optax.contrib.scale_by_muon` (Nesterov momentum 0.95, 5 Newton-Schulz steps), the
  width scaling sqrt(max(1, fan_out / fan_in)) of Keller Jordan's Muon (what
  `optax.contrib.muon` applies by default), decoupled weight decay, learning rate;
- "adam": plain `optax.adamw`. (`optax.contrib.muon` would also do the split, but its AdamW
  group inherits Muon's Nesterov flag, i.e. becomes NAdam; the paper says AdamW.)
Both groups follow the same schedule shape (linear warm-up, then cosine or constant) at their
own peak learning rate, after global-norm clipping of the raw gradients. Weight decay applies
to the Muon group only; norms, biases and embeddings are conventionally not decayed.

What `train.lr` means under this scaling: a Muon update of an [in, out] matrix is lr x
sqrt(max(1, out / in)) x (a near-orthogonal matrix, singular values ~0.7-1.2), so its
entries have RMS ~ lr / sqrt(in) (lr 2e-3 at width 256: ~1.2e-4 for [256, 256] and [256,
1024], ~6e-5 for [1024, 256]; measured 0.90-0.96 of lr / sqrt(in)). That is not the lr of
the "consistent RMS" scaling (`optax.contrib.muon(consistent_rms=0.2)`, Moonshot), whose
updates have RMS 0.2 x lr: the same step there is lr x 5 / sqrt(in).

Memory options (optional fields, float32 when absent; README, "Will it fit?"):
- `train.momentum_dtype` "bfloat16": Muon's momentum and AdamW's first moment stored in
  bfloat16 (AdamW's second moment stays float32), half their bytes.
- `train.weight_grads` "compute": the Muon group's weight matrices are cast to the compute
  dtype once at the top of the loss (``cast_weights``), so their gradients flow and add up
  in that dtype through the step's loops (sleep passes, Ouro's loops, windows) and become
  float32 once per microbatch. With a float32 model it changes nothing.

`train.adam_lr = 0` is allowed: the AdamW group (embeddings, head, norms, gates, biases,
convolutions) then stays exactly at its initial (or warm-start) values while Muon trains the
matrices.
"""

import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax
from ml_collections import config_dict

from sleep_lm import parallel

MUON = "muon"
ADAM = "adam"
SCHEDULES = ("cosine", "constant")
OPTIMIZERS = ("muon", "adamw")
# The memory options' values; the first is what a config without the field means.
MOMENTUM_DTYPES = ("float32", "bfloat16")
WEIGHT_GRADS = ("float32", "compute")


def momentum_dtype(train: config_dict.ConfigDict) -> str:
    """`train.momentum_dtype` (float32 for a config written before the field)."""
    return train.get("momentum_dtype", MOMENTUM_DTYPES[0])


def weight_grads(train: config_dict.ConfigDict) -> str:
    """`train.weight_grads` (float32 for a config written before the field)."""
    return train.get("weight_grads", WEIGHT_GRADS[0])


def split_patterns(patterns: str | Sequence[str]) -> tuple[str, ...]:
    """The regexes of `train.adam_patterns`: a sequence, or one comma-separated string.

    A string is split only at commas outside brackets and not escaped, so a regex may hold
    a comma where it means one: "embed,x{1,3},[,;],(a|b,c),\\," is five patterns.
    """
    if isinstance(patterns, str):
        parts, depth, current, escaped, in_class = [], 0, [], False, False
        for char in patterns:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif in_class:  # Inside [...] only "]" is special.
                in_class = char != "]"
            elif char == "[":
                in_class = True
            elif char in "({":
                depth += 1
            elif char in ")}":
                depth = max(depth - 1, 0)
            elif char == "," and depth == 0:
                parts.append("".join(current))
                current = []
                continue
            current.append(char)
        patterns = [*parts, "".join(current)]
    return tuple(p.strip() for p in patterns if p.strip())


def param_labels(params, adam_patterns: str | Sequence[str]):
    """Tree like `params` with "muon" for 2-D weight matrices and "adam" for everything else."""
    regexes = [re.compile(p) for p in split_patterns(adam_patterns)]

    def label(path, x):
        name = parallel.path_name(path)
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


def scale_by_width() -> optax.GradientTransformation:
    """Scales each [in, out] update by sqrt(max(1, out / in)) (Muon's width transfer)."""

    def update(updates, state, params=None):
        del params
        scaled = jax.tree.map(lambda u: u * max(1.0, u.shape[1] / u.shape[0]) ** 0.5, updates)
        return scaled, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def muon(learning_rate: optax.ScalarOrSchedule, weight_decay: float = 0.0, mu_dtype=None):
    """Muon for a group of [in, out] matrices (leaves of other groups arrive as MaskedNode,
    an empty pytree, so tree maps skip them); mu_dtype: the momentum's (None: float32)."""

    def dimension_numbers(updates):
        return jax.tree.map(lambda _: optax.contrib.MuonDimensionNumbers(0, 1), updates)

    return optax.chain(
        optax.contrib.scale_by_muon(weight_dimension_numbers=dimension_numbers, mu_dtype=mu_dtype),
        scale_by_width(),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )


def make_optimizer(train: config_dict.ConfigDict) -> optax.GradientTransformation:
    """Clipping + (Muon | AdamW) from the `config.train` fields.

    `train.optimizer == "adamw"` uses AdamW at `train.lr` for every parameter (a baseline and
    a fallback; the paper uses "muon").
    """
    if train.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {train.optimizer!r}; allowed: {OPTIMIZERS}")
    lr = schedules(train)
    mu_dtype = None if momentum_dtype(train) == "float32" else jnp.bfloat16
    if train.optimizer == "adamw":
        inner = optax.adamw(lr[MUON], weight_decay=train.weight_decay, mu_dtype=mu_dtype)
    else:
        patterns = train.adam_patterns
        inner = optax.multi_transform(
            {
                MUON: muon(lr[MUON], weight_decay=train.weight_decay, mu_dtype=mu_dtype),
                ADAM: optax.adamw(lr[ADAM], weight_decay=0.0, mu_dtype=mu_dtype),
            },
            lambda params: param_labels(params, patterns),
        )
    if train.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(train.grad_clip), inner)
    return inner


def cast_weights(params, dtype, patterns):
    """`params` with the Muon group's weight matrices (``param_labels(params, patterns)``:
    the 2-D projection kernels, which every layer casts to the compute dtype anyway) cast to
    `dtype`; every other leaf unchanged (embeddings, norms, gates and convolution weights
    may be used in float32). Used inside the differentiated loss (`train.weight_grads=
    "compute"`): the forward sees the same values, and the matrices' gradients stay in
    `dtype` until the cast's own transpose."""
    dtype = jnp.dtype(dtype)

    def cast(x, label):
        return x.astype(dtype) if label == MUON else x

    return jax.tree.map(cast, params, param_labels(params, patterns))
