"""Matmul precision of the fast-weight ops: the names ``precision=`` takes (PRECISIONS),
their check, and the scope that traces every dot inside at that precision (gated_delta.py's
docstring says why the default is "highest")."""

from __future__ import annotations

import contextlib

import jax

# Names `precision=` takes besides None (``jax.default_matmul_precision``'s; "float32" is
# "highest", "tensorfloat32" is "high", "bfloat16" is "default"). "BF16_BF16_F32" is a dot
# algorithm: operands rounded to bfloat16, float32 accumulation, on GPU and TPU (XLA:CPU
# computes it in float32).
PRECISIONS = (
    "highest",
    "float32",
    "high",
    "tensorfloat32",
    "default",
    "bfloat16",
    "BF16_BF16_F32",
)


def check_precision(precision) -> None:
    """ValueError unless `precision` is None or one of PRECISIONS."""
    if precision is not None and precision not in PRECISIONS:
        names = ", ".join(repr(p) for p in PRECISIONS)
        raise ValueError(f"precision must be None or one of {names}; got {precision!r}")


def _precision_scope(precision):
    """The matmul precision of every dot traced inside (None: JAX's global default).

    Entered inside each traced function body, the custom VJP's forward and backward
    included, so the backward pass gets it too (it is traced later, during the transpose).
    """
    if precision is None:
        return contextlib.nullcontext()
    return jax.default_matmul_precision(precision)
