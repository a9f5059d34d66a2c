"""Helpers shared by the synthetic tasks (pure NumPy).

Every task builds a *full* token sequence of length ``seq_len + 1`` per example and turns it
into a next-token-prediction batch with :func:`shift`: ``inputs = full[:, :-1]`` and
``targets = full[:, 1:]``, so ``targets[:, i] == inputs[:, i + 1]``.
"""

from __future__ import annotations

import numpy as np

# Second word of the evaluation seed sequence. Training code draws from generators built from
# the bare seed (or other words), so held-out sets come from a different SeedSequence stream.
EVAL_STREAM = 1


def eval_rng(seed: int) -> np.random.Generator:
    """Generator for a fixed held-out set, on a stream disjoint from ``default_rng(seed)``."""
    return np.random.default_rng([int(seed), EVAL_STREAM])


def shift(full: np.ndarray, answer: np.ndarray) -> dict[str, np.ndarray]:
    """Next-token batch from full sequences.

    Args:
      full: int tokens [batch, seq_len + 1].
      answer: bool [batch, seq_len + 1], true where the token of ``full`` is scored.

    Returns:
      ``inputs``, ``targets`` int32 [batch, seq_len] and ``loss_mask`` bool [batch, seq_len],
      true where the target is a scored token.
    """
    full = np.asarray(full, dtype=np.int32)
    return {
        "inputs": np.ascontiguousarray(full[:, :-1]),
        "targets": np.ascontiguousarray(full[:, 1:]),
        "loss_mask": np.ascontiguousarray(np.asarray(answer, dtype=bool)[:, 1:]),
    }


def check_int(name: str, value, minimum: int, bound: str | None = None) -> int:
    """``value`` as an int >= ``minimum``, else ValueError naming ``name`` and what is allowed.

    ``bound`` describes the minimum in the message when it comes from another field.
    """
    allowed = f"an integer >= {bound or minimum}"
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return int(value)


def check_batch_size(batch_size) -> int:
    return check_int("batch_size", batch_size, 1)
