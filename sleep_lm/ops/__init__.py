"""Math on arrays: the fast-weight recurrences (pure jax.numpy, no Flax, no config)."""

from sleep_lm.ops.gated_delta import (
    DELTA_IMPLS,
    LINEAR_IMPLS,
    PRECISIONS,
    check_precision,
    gated_delta_rule,
    gated_linear_rule,
)

__all__ = [
    "DELTA_IMPLS",
    "LINEAR_IMPLS",
    "PRECISIONS",
    "check_precision",
    "gated_delta_rule",
    "gated_linear_rule",
]
