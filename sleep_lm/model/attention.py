"""Causal softmax attention over the current tokens plus a ring-buffer KV cache.

Each query at global position p sees the keys at positions p - window < p' <= p that are
either among the current tokens or held in the cache: a sliding window of ``window`` keys
(itself and window - 1 earlier tokens). Within one window of a hard-evicted sequence the
cache is empty and this is plain causal attention over the window (the paper's eq. 1-2).
With sliding eviction the cache still holds the previous window, and the mask keeps
exactly its last window - 1 tokens visible.

Padding (``valid`` [batch, time] bool, False = a padded token): a padded token's key gets
the position ``EMPTY_POSITION``, both among the current keys and in the slot it is written
to in the cache, so no query ever attends to it, in this call or any later one (the cache
needs no validity bit of its own: an empty slot already is "never attend").
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sleep_lm.model.config import ModelConfig
from sleep_lm.model.positions import rotary
from sleep_lm.model.state import EMPTY_POSITION, KVCache, constrain

# Finite mask value: a row with no visible key (only a padded query, whose output nothing
# reads: an unpadded query always sees itself) gives a uniform softmax instead of NaN.
_MASKED = -1e30


def key_positions(positions: jax.Array, batch: int, valid: jax.Array | None = None) -> jax.Array:
    """[batch, time] int32 position of each key: ``positions`` [time], or ``EMPTY_POSITION``
    where ``valid`` [batch, time] is False (a padded token: masked like an empty slot)."""
    pos = jnp.broadcast_to(positions.astype(jnp.int32), (batch, positions.shape[0]))
    if valid is None:
        return pos
    return jnp.where(valid, pos, EMPTY_POSITION)


def write_cache(
    cache: KVCache,
    k: jax.Array,
    v: jax.Array,
    positions: jax.Array,
    valid: jax.Array | None = None,
) -> KVCache:
    """Writes the tokens at ``positions`` [time] (consecutive) into their ring slots.

    k, v: [batch, time, heads, head_dim]. Only the last cache_len tokens are kept when time
    exceeds the cache; a zero-length cache stays empty. valid: [batch, time] bool or None;
    a padded token's slot is marked empty (``EMPTY_POSITION``), so it is never attended to.
    """
    n = cache.keys.shape[1]
    if n == 0:
        return cache
    if k.shape[1] > n:
        k, v, positions = k[:, -n:], v[:, -n:], positions[-n:]
        valid = None if valid is None else valid[:, -n:]
    slots = positions % n  # distinct, since at most n consecutive positions
    batch = k.shape[0]
    pos = key_positions(positions, batch, valid)
    return KVCache(
        keys=cache.keys.at[:, slots].set(k.astype(cache.keys.dtype)),
        values=cache.values.at[:, slots].set(v.astype(cache.values.dtype)),
        positions=cache.positions.at[:, slots].set(pos),
    )


def attention_mask(q_pos: jax.Array, k_pos: jax.Array, window: int) -> jax.Array:
    """[batch, 1, query, key] bool: key filled, causal, and within the last ``window``.

    q_pos: [query] global positions; k_pos: [batch, key] (-1 marks an empty slot).
    """
    q = q_pos[None, :, None]
    k = k_pos[:, None, :]
    visible = (k != EMPTY_POSITION) & (k <= q) & (q - k < window)
    return visible[:, None]


class Attention(nn.Module):
    """Multi-head causal softmax attention with an explicit KV cache."""

    config: ModelConfig
    window: int

    @nn.compact
    def __call__(
        self, x: jax.Array, cache: KVCache, positions: jax.Array, valid: jax.Array | None = None
    ) -> tuple[jax.Array, KVCache]:
        """x: [batch, time, width]; positions: [time] global; valid: [batch, time] bool or
        None (all valid): padded tokens are never attended to. Returns (y, new cache)."""
        cfg = self.config
        batch, time, _ = x.shape
        heads, dim = cfg.heads, cfg.head_dim
        dense = cfg.dense
        split = lambda y: y.reshape(batch, time, heads, dim)
        q = split(dense(heads * dim, name="q_proj")(x))
        k = split(dense(heads * dim, name="k_proj")(x))
        v = split(dense(heads * dim, name="v_proj")(x))
        if cfg.positions == "rope":
            q, k = rotary(q, positions), rotary(k, positions)

        if cache.keys.shape[1]:
            keys = jnp.concatenate([cache.keys, k.astype(cache.keys.dtype)], axis=1)
            values = jnp.concatenate([cache.values, v.astype(cache.values.dtype)], axis=1)
            cur = key_positions(positions, batch, valid)
            k_pos = jnp.concatenate([cache.positions, cur], axis=1)
        else:  # no cache (hard eviction): skip the empty concatenation
            keys, values = k, v
            k_pos = key_positions(positions, batch, valid)

        # Scores and softmax in float32 whatever the compute dtype.
        scores = jnp.einsum(
            "bqhd,bkhd->bhqk", q, keys.astype(q.dtype), preferred_element_type=jnp.float32
        )
        scores = scores * dim**-0.5
        scores = jnp.where(attention_mask(positions, k_pos, self.window), scores, _MASKED)
        probs = jax.nn.softmax(scores, axis=-1).astype(cfg.compute_dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, values.astype(cfg.compute_dtype))
        y = dense(cfg.width, name="o_proj")(out.reshape(batch, time, heads * dim))
        return y, constrain(write_cache(cache, k, v, positions, valid))
