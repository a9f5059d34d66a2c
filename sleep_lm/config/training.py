"""`config.sleep`, `config.train` and `config.task.eval_generate`: how a run sleeps, trains
and evaluates, checked against the task's layout (its sequence length and loss mask)."""

import re

import numpy as np

from sleep_lm import sleep
from sleep_lm.config.family import _num_layers
from sleep_lm.config.fields import ConfigError, _choice, _float, _get, _int
from sleep_lm.train.loop import parse_xla_options
from sleep_lm.train.optim import (
    MOMENTUM_DTYPES,
    OPTIMIZERS,
    SCHEDULES,
    WEIGHT_GRADS,
    split_patterns,
)


def _validate_sleep(config, seq_len: int, loss_mask: np.ndarray) -> None:
    passes = _int(config, "sleep.passes", 1)
    window = _int(config, "sleep.window", 1)
    if window > seq_len:
        raise ConfigError(
            f"config.sleep.window must be <= the task's sequence length {seq_len} (got {window})"
        )
    if passes > 1 and all(sleep.window_schedule(loss_mask, window)):
        # Sleep only happens in windows without labels; with none, N would be silently ignored.
        raise ConfigError(
            f"config.sleep.window={window} leaves no window without labels in the task's "
            f"layout, so sleep.passes={passes} would never run; use a smaller window"
        )
    _choice(config, "sleep.eviction", sleep.EVICTIONS)
    _choice(config, "sleep.remat", sleep.REMATS)
    for field in ("grad_passes", "grad_windows"):
        # Truncated gradients, 0 = all; absent (configs older than the fields) = 0.
        if field in _get(config, "sleep"):
            _int(config, f"sleep.{field}", 0)
    spec = _get(config, "sleep.loop_blocks")
    num_layers = _num_layers(config)
    try:
        sleep.resolve_loop_blocks(spec, num_layers)
    except ValueError as e:
        raise ConfigError(f"config.{e}") from None


def _validate_train(config) -> None:
    _int(config, "train.steps", 1)
    _int(config, "train.batch_size", 1)
    optimizer = _choice(config, "train.optimizer", OPTIMIZERS)
    _float(config, "train.lr", 0.0, strict=True)
    _float(config, "train.adam_lr", 0.0)
    if optimizer == "muon":
        patterns = _get(config, "train.adam_patterns")
        for pattern in split_patterns(patterns):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(
                    f"config.train.adam_patterns: bad regex {pattern!r} ({e})"
                ) from None
    _choice(config, "train.schedule", SCHEDULES)
    _int(config, "train.warmup_steps", 0)
    min_ratio = _float(config, "train.min_lr_ratio", 0.0)
    if min_ratio > 1:
        raise ConfigError(f"config.train.min_lr_ratio must be <= 1 (got {min_ratio})")
    _float(config, "train.grad_clip", 0.0)
    _float(config, "train.weight_decay", 0.0)
    for field in ("log_every", "eval_every", "eval_size", "checkpoint_every", "keep_checkpoints"):
        _int(config, f"train.{field}", 1)
    # Optional (default 1): gradient accumulation over equal slices of the batch.
    if "microbatches" in config.train:
        micro = _int(config, "train.microbatches", 1)
        batch = config.train.batch_size
        if batch % micro:
            raise ConfigError(
                f"config.train.microbatches={micro} must divide train.batch_size={batch}"
            )
    # Optional memory options (default float32; train/optim.py's docstring).
    if "momentum_dtype" in config.train:
        _choice(config, "train.momentum_dtype", MOMENTUM_DTYPES)
    if "weight_grads" in config.train:
        _choice(config, "train.weight_grads", WEIGHT_GRADS)
    # Optional: the held-out sets' seed (0 and up: fixed across `seed`; -1: `seed`'s own;
    # absent, as in config.json files older than the field: -1).
    if "eval_seed" in config.train:
        _int(config, "train.eval_seed", -1)
    # Optional (default none): XLA options for the train and eval steps' compiles.
    if "xla_options" in config.train:
        text = config.train.xla_options
        if not isinstance(text, str):
            raise ConfigError(f"config.train.xla_options must be a string (got {text!r})")
        try:
            parse_xla_options(text)
        except ValueError as e:
            raise ConfigError(f"config.train.xla_options: {e}") from None
    # Optional (default on): TensorBoard event files in the workdir.
    tensorboard = config.train.get("tensorboard", True)
    if not isinstance(tensorboard, bool):
        raise ConfigError(f"config.train.tensorboard must be true or false (got {tensorboard!r})")


def _validate_eval_generate(config, task) -> None:
    """`task.eval_generate` (optional, default off): a bool, for a task whose answers can be
    generated and parsed (one with `generation_batch` and `parse_answer`: gsm_infinite)."""
    value = config.task.get("eval_generate", False)
    if not isinstance(value, bool):
        raise ConfigError(f"config.task.eval_generate must be true or false (got {value!r})")
    if value and not hasattr(task, "generation_batch"):
        raise ConfigError(
            f"config.task.eval_generate: task {task.name!r} has no answer to generate and "
            "parse (gsm_infinite has)"
        )
