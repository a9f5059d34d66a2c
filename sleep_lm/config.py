"""Config validation: every mistake we can see without compiling, as one line naming the field.

    validate(config)   # raises ConfigError("config.sleep.passes must be >= 1 (got 0)")

`sleep_lm.main` prints the message as `error: ...` and exits with status 2. Checks cover the
fields of experiments/*.py (see README "Config reference"); the task's own constructor checks
its fields (`get_task` raises ValueError naming `task.<field>`), and the model's builder
checks anything model-specific this module does not know about.
"""

import re

import numpy as np
from ml_collections import config_dict

from sleep_lm import sleep
from sleep_lm.model.config import DTYPES, GDN_IMPLS, LAYER_KINDS, POSITIONS, RULES, ModelConfig
from sleep_lm.train.optim import OPTIMIZERS, SCHEDULES

_MISSING = object()


class ConfigError(ValueError):
    """An invalid config; the message is one line that starts with the field's name."""


def _get(config, field: str):
    node = config
    for part in field.split("."):
        node = node.get(part, _MISSING) if hasattr(node, "get") else _MISSING
        if node is _MISSING:
            raise ConfigError(f"config.{field} is missing")
    return node


def _int(config, field: str, minimum: int | None = None, maximum: int | None = None) -> int:
    value = _get(config, field)
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(f"config.{field} must be an integer (got {value!r})")
    if minimum is not None and value < minimum:
        raise ConfigError(f"config.{field} must be >= {minimum} (got {value})")
    if maximum is not None and value > maximum:
        raise ConfigError(f"config.{field} must be <= {maximum} (got {value})")
    return int(value)


def _float(config, field: str, minimum: float = 0.0, strict: bool = False) -> float:
    value = _get(config, field)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"config.{field} must be a number (got {value!r})")
    if value < minimum or (strict and value == minimum) or value != value:
        relation = ">" if strict else ">="
        raise ConfigError(f"config.{field} must be {relation} {minimum} (got {value})")
    return float(value)


def _choice(config, field: str, allowed: tuple[str, ...]) -> str:
    value = _get(config, field)
    if value not in allowed:
        names = ", ".join(repr(a) for a in allowed)
        raise ConfigError(f"config.{field} must be one of {names} (got {value!r})")
    return value


def layer_types(layers: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in layers.split(","))


def _validate_model(config) -> None:
    width = _int(config, "model.width", 1)
    heads = _int(config, "model.heads", 1)
    if width % heads:
        raise ConfigError(f"config.model.heads must divide model.width={width} (got {heads})")
    layers = _get(config, "model.layers")
    if not isinstance(layers, str) or not layers.strip():
        raise ConfigError(f"config.model.layers must be a comma-separated list (got {layers!r})")
    for name in layer_types(layers):
        if name not in LAYER_KINDS:
            names = ", ".join(repr(a) for a in LAYER_KINDS)
            raise ConfigError(
                f"config.model.layers: unknown layer type {name!r} in {layers!r}; allowed: {names}"
            )
    _int(config, "model.mlp_ratio", 1)
    _choice(config, "model.rule", RULES)
    _int(config, "model.conv_size", 1)
    _choice(config, "model.gdn_impl", GDN_IMPLS)
    _int(config, "model.chunk_size", 1)
    _choice(config, "model.dtype", DTYPES)
    _choice(config, "model.positions", POSITIONS)
    try:
        # The model's own checks (combinations such as rule x gdn_impl).
        ModelConfig.from_config(config.model)
    except ValueError as e:
        raise ConfigError(f"config.{e}") from None


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
    spec = _get(config, "sleep.loop_blocks")
    num_layers = len(layer_types(_get(config, "model.layers")))
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
        for pattern in str(patterns).split(","):
            try:
                re.compile(pattern.strip())
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


def validate(config: config_dict.ConfigDict):
    """Raises ConfigError for the first invalid field; returns the task (built on the way,
    cheap: pure NumPy) for callers that want it."""
    from sleep_lm.tasks import get_task

    _int(config, "seed", 0)
    _get(config, "task.name")
    steps = _get(config, "task").get("steps", None)
    if steps is not None:
        _int(config, "task.steps", 0)
    try:
        task = get_task(config.task)
    except ValueError as e:
        message = str(e)
        raise ConfigError(
            message if message.startswith("config.") else f"config.{message}"
        ) from None
    _validate_model(config)
    mask = task.eval_batch(1, config.seed)["loss_mask"][0]
    _validate_sleep(config, task.seq_len, mask)
    _validate_train(config)
    return task
