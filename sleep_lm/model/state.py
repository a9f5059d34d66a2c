"""The hybrid model's explicit recurrent state: typed NamedTuples, one entry per layer.

Notation: [batch, time, heads, key]; ``channels`` is the width of a fast-weight layer's
convolved projections: heads * (2 * key + value) for GDN (q, k and v), heads * value for a
Jet block (v only; its dynamic convolution's kernels come from the layer input).

Two kinds of per-layer state, with different lifetimes:

* **Fast weights** (``FastWeightState.fast_weights``): the only thing that crosses a window
  boundary under hard eviction, and the thing sleep writes into (carried across passes).
* **Local context** (``FastWeightState.conv_tail`` and the ``KVCache``): the last few
  tokens a layer can still see directly. Each sleep pass restarts it from its value at the
  window start; hard eviction clears it, sliding eviction keeps it.

The KV cache is a ring buffer: global position ``p`` lives in slot ``p % cache_len`` and
every slot records the position it holds (-1 for an empty slot). Attention masks keys by
these positions, so the slot order never matters and a streaming decoder can write one
token at a time into a fixed-size buffer (static shapes under jit).

Sharding: ``constrain`` pins each state array to its logical axes (``batch`` and ``heads``,
mapped to mesh axes by ``config.mesh.rules``; see sleep_lm/parallel/). Outside a
``parallel.sharding_context`` (one device, tests, inference) it returns its input.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

EMPTY_POSITION = -1  # KVCache.positions value of a slot that holds no token


class FastWeightState(NamedTuple):
    """State of one fast-weight layer (GDN or Jet)."""

    fast_weights: jax.Array  # [batch, heads, key, value] float32, the paper's S
    conv_tail: jax.Array  # [batch, conv_size - 1, channels]: pre-conv inputs of the last tokens


class KVCache(NamedTuple):
    """State of one attention layer: a ring buffer of keys and values."""

    keys: jax.Array  # [batch, cache_len, heads, head_dim]
    values: jax.Array  # [batch, cache_len, heads, head_dim]
    positions: jax.Array  # [batch, cache_len] int32 global position per slot; -1 = empty


class FreshCache(KVCache):
    """A KVCache that is known to be empty when the program is traced (a window start under
    hard eviction; made by ``fresh_caches``). Attention then reads only the current tokens,
    as a cache-free training window does (and with its causal key ranges), instead of also
    scanning cache_len empty slots, and returns a plain KVCache holding the tokens. Its
    arrays must really be empty: nothing checks it at run time."""

    __slots__ = ()


# Logical axes of each state array (names of sleep_lm/parallel's rules table). The
# conv tail's channels are q|k|v concatenated, not head-major, so they are not split.
FAST_WEIGHT_AXES = FastWeightState(
    fast_weights=("batch", "heads", "kv", None), conv_tail=("batch", None, None)
)
KV_CACHE_AXES = KVCache(
    keys=("batch", None, "heads", "kv"),
    values=("batch", None, "heads", "kv"),
    positions=("batch", None),
)


def constrain(layer_state):
    """Sharding constraint of one layer's state (FastWeightState or KVCache) on its logical
    axes; a no-op outside a sharding context."""
    axes = FAST_WEIGHT_AXES if isinstance(layer_state, FastWeightState) else KV_CACHE_AXES
    return type(layer_state)(
        *(nn.with_logical_constraint(x, a) for x, a in zip(layer_state, axes, strict=True))
    )


class ModelState(NamedTuple):
    """Per-layer states in layer order: FastWeightState for "gdn", KVCache for "attn"."""

    layers: tuple


def init_state(
    layer_kinds: tuple[str, ...],
    batch: int,
    *,
    heads: int,
    head_dim: int,
    conv_size: int,
    cache_len: int,
    dtype=jnp.float32,
    jet_value_head_dim: int | None = None,
) -> ModelState:
    """Zero state: empty fast weights, zero conv tails, empty KV caches.

    GDN layers use key = value = head_dim; Jet layers key = head_dim and value =
    ``jet_value_head_dim`` (default head_dim). ``dtype`` is the compute dtype (conv tails and
    cached keys/values); fast weights are always float32.
    """
    layers = []
    for kind in layer_kinds:
        if kind == "gdn":
            channels = heads * 3 * head_dim
            layers.append(
                FastWeightState(
                    fast_weights=jnp.zeros((batch, heads, head_dim, head_dim), jnp.float32),
                    conv_tail=jnp.zeros((batch, conv_size - 1, channels), dtype),
                )
            )
        elif kind == "jet":
            value = head_dim if jet_value_head_dim is None else jet_value_head_dim
            layers.append(
                FastWeightState(
                    fast_weights=jnp.zeros((batch, heads, head_dim, value), jnp.float32),
                    conv_tail=jnp.zeros((batch, conv_size - 1, heads * value), dtype),
                )
            )
        elif kind == "attn":
            layers.append(empty_cache(batch, cache_len, heads, head_dim, dtype))
        else:
            raise ValueError(f"unknown layer kind {kind!r}; allowed: attn, gdn, jet")
    return ModelState(layers=tuple(layers))


def empty_cache(batch: int, cache_len: int, heads: int, head_dim: int, dtype) -> KVCache:
    return KVCache(
        keys=jnp.zeros((batch, cache_len, heads, head_dim), dtype),
        values=jnp.zeros((batch, cache_len, heads, head_dim), dtype),
        positions=jnp.full((batch, cache_len), EMPTY_POSITION, jnp.int32),
    )


def clear_local(state: ModelState) -> ModelState:
    """Drops all local context (KV caches emptied, conv tails zeroed); keeps fast weights."""

    def clear(layer):
        if isinstance(layer, FastWeightState):
            return layer._replace(conv_tail=jnp.zeros_like(layer.conv_tail))
        return KVCache(
            keys=jnp.zeros_like(layer.keys),
            values=jnp.zeros_like(layer.values),
            positions=jnp.full_like(layer.positions, EMPTY_POSITION),
        )

    return ModelState(layers=tuple(clear(layer) for layer in state.layers))


def fresh_caches(state: ModelState) -> ModelState:
    """Every KVCache of ``state`` marked as known to be empty (``FreshCache``); the caller
    vouches that it is (a window start under hard eviction)."""
    layers = (FreshCache(*x) if isinstance(x, KVCache) else x for x in state.layers)
    return ModelState(layers=tuple(layers))


def restart_local(state: ModelState, start: ModelState, first: int, stop: int) -> ModelState:
    """Layers ``first:stop`` take their local context from ``start``, keep ``state``'s
    fast weights; other layers are ``state``'s unchanged. Used at the start of every sleep
    pass so that each pass sees the window with the context it had at the window start."""

    def restart(i, layer, begin):
        if not first <= i < stop:
            return layer
        if isinstance(layer, FastWeightState):
            return layer._replace(conv_tail=begin.conv_tail)
        return begin

    pairs = enumerate(zip(state.layers, start.layers, strict=True))
    layers = tuple(restart(i, a, b) for i, (a, b) in pairs)
    return ModelState(layers=layers)


def fast_weights(state: ModelState) -> tuple[jax.Array, ...]:
    """The fast weights of every fast-weight (GDN or Jet) layer, in layer order."""
    return tuple(x.fast_weights for x in state.layers if isinstance(x, FastWeightState))
