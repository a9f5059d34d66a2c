"""Reading one config field: its value, or a ConfigError whose one line names the field.

    _int(config, "sleep.passes", 1)   # ConfigError("config.sleep.passes must be >= 1 (got 0)")

The other modules of `sleep_lm.config` read every field through these.
"""

import math

import numpy as np

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
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise ConfigError(f"config.{field} must be {relation} {minimum} (got {value})")
    return float(value)


def _choice(config, field: str, allowed: tuple[str, ...]) -> str:
    value = _get(config, field)
    if value not in allowed:
        names = ", ".join(repr(a) for a in allowed)
        raise ConfigError(f"config.{field} must be one of {names} (got {value!r})")
    return value
