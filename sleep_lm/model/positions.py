"""Positional information over GLOBAL positions (token index in the whole sequence).

Why global: GDN keys carry no position of their own, and after hard eviction the only
trace of a window is what it wrote into the fast weights. A label must be matched to the
window its state came from, so the features written in window w must differ from those
written in window w' for the same tokens. Positions restart at no window boundary.

Modes (``model.positions``):
  "learned" (default): a learned table [max_len, width] added to the token embeddings. The
    position reaches every layer through the residual stream, including the GDN keys and
    values. Positions beyond max_len are clamped by the table lookup.
  "rope": rotary embeddings over global positions on the attention queries/keys and on
    the GDN queries/keys (after their L2 norm; a rotation keeps the norm). A fast-weight
    read then depends on the distance between the reading and the writing position.
  "none": no positional information beyond causal order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ROPE_BASE = 10_000.0


def rotary(x: jax.Array, positions: jax.Array, base: float = ROPE_BASE) -> jax.Array:
    """Rotates pairs of features of x [batch, time, heads, dim] by angle pos * freq.

    positions: [time] int global positions. dim must be even. Math in float32.
    """
    dim = x.shape[-1]
    if dim % 2:
        raise ValueError(f"rope needs an even head dimension, got {dim}")
    freq = base ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)  # [dim / 2]
    angle = positions.astype(jnp.float32)[:, None] * freq  # [time, dim / 2]
    cos, sin = jnp.cos(angle)[None, :, None], jnp.sin(angle)[None, :, None]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return out.astype(x.dtype)
