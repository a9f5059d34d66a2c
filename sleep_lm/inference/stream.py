"""Feed, decode one token, sleep: the transitions of a ``SessionState`` (pure, jitted).

``feed`` and ``sleep`` consolidate with ``sleep.consolidate``, the function training uses.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sleep_lm import sleep as sleep_lib
from sleep_lm.inference.state import (
    SessionState,
    check_window,
    new_window,
    select_tree,
    valid_mask,
)
from sleep_lm.model import state as state_lib
from sleep_lm.model.state import KVCache, ModelState

# ------------------------------------------------------------------- model stages


def _one_token_model(model):
    """The same model with the recurrent GDN op: for one token it is the cheapest form of
    the same recurrence (a chunked op would still build its [chunk x chunk] machinery)."""
    if model.config.gdn_impl == "recurrent":
        return model
    return model.clone(config=dataclasses.replace(model.config, gdn_impl="recurrent"))


def _advance(
    model, params, tokens, positions, state: ModelState, valid=None, embed_pos=None
) -> ModelState:
    """Wake pass that only updates the state (the features and logits are not needed).
    valid, embed_pos: [batch, time] padding mask and position-table indices, or None."""
    if tokens.shape[1] == 1:
        model = _one_token_model(model)
    epos = positions if embed_pos is None else embed_pos
    h = model.apply({"params": params}, tokens, epos, method="embed")
    layers = len(model.config.layers)
    if valid is None:
        _, state = model.apply({"params": params}, h, state, positions, 0, layers, method="blocks")
        return state
    _, state = model.apply(
        {"params": params}, h, state, positions, 0, layers, valid=valid, method="blocks"
    )
    return state


def _resize_caches(state: ModelState, cache_len: int) -> ModelState:
    """Every KV cache replaced by an empty one of ``cache_len`` slots (only for caches that
    are empty anyway: a window start under hard eviction)."""

    def resize(layer):
        if not isinstance(layer, KVCache):
            return layer
        batch, _, heads, dim = layer.keys.shape
        return state_lib.empty_cache(batch, cache_len, heads, dim, layer.keys.dtype)

    return ModelState(layers=tuple(resize(layer) for layer in state.layers))


def _cache_len(state: ModelState) -> int:
    return next((x.keys.shape[1] for x in state.layers if isinstance(x, KVCache)), 0)


def _sleep_on(
    model, params, spec, start: ModelState, tokens, positions, valid=None, embed_pos=None
) -> ModelState:
    """Sleep on one window: N consolidation passes from the window-start state, then evict.

    tokens [batch, time] (time <= L), positions [time] global; valid, embed_pos: [batch,
    time] padding mask and position-table indices, or None. Under hard eviction the cache
    at a window start is empty, so consolidation runs without one, as in training.
    """
    passes, loop_blocks = spec.passes, spec.loop_blocks
    pad = {} if valid is None else dict(valid=valid, embed_pos=embed_pos)
    if spec.eviction == "hard":
        cache_len = _cache_len(start)
        start = _resize_caches(start, 0)
        state = sleep_lib.consolidate(
            model, params, tokens, positions, start, passes, loop_blocks=loop_blocks, **pad
        )
        return _resize_caches(sleep_lib.evict(state, "hard"), cache_len)
    state = sleep_lib.consolidate(
        model, params, tokens, positions, start, passes, loop_blocks=loop_blocks, **pad
    )
    return sleep_lib.evict(state, spec.eviction)


def _from_window_start(state: SessionState, valid) -> dict:
    """The padding kwargs of tokens that start at the current window's first position:
    their ``valid`` [batch, n] mask and position-table indices ({} without padding)."""
    if valid is None:
        return {}
    return dict(valid=valid, embed_pos=state.valid_base[:, None] + sleep_lib.embed_positions(valid))


# ------------------------------------------------------------------------ feeding


def _feed(model, params, spec, state: SessionState, tokens: jax.Array, valid=None):
    check_window(model, spec)
    batch, n = tokens.shape
    valid = valid_mask(state, valid, tokens.shape)
    if n == 0:
        return state
    length = spec.window
    tokens = tokens.astype(jnp.int32)
    count, position = state.count, state.position
    window_pos = position - count  # global position of the current window's first token

    # The stream from the current window's start: the window so far, then the new tokens.
    # frame[:, i] is the token at global position window_pos + i; zeros past the end.
    frame = jnp.zeros((batch, 2 * length + n), jnp.int32)
    frame = frame.at[:, :length].set(state.window_tokens)
    frame = jax.lax.dynamic_update_slice_in_dim(frame, tokens, count, axis=1)
    total = count + n
    filled = total // length  # windows that fill now (count <= L, so at most (L + n) // L)
    padded = valid is not None
    if padded:  # the same frame of validity bits, and each token's position-table index
        vframe = jnp.zeros((batch, 2 * length + n), bool).at[:, :length].set(state.window_valid)
        vframe = jax.lax.dynamic_update_slice_in_dim(vframe, valid, count, axis=1)
        eframe = state.valid_base[:, None] + sleep_lib.embed_positions(vframe)

    def padding(offset, size):
        # offset: a thunk, so that without padding no op is traced for it
        if not padded:
            return {}
        offset = offset()
        return dict(
            valid=jax.lax.dynamic_slice_in_dim(vframe, offset, size, axis=1),
            embed_pos=jax.lax.dynamic_slice_in_dim(eframe, offset, size, axis=1),
        )

    def sleep_window(start, i):
        toks = jax.lax.dynamic_slice_in_dim(frame, i * length, length, axis=1)
        pos = window_pos + i * length + jnp.arange(length, dtype=jnp.int32)
        pad = padding(lambda: i * length, length)
        slept = jax.lax.cond(
            i < filled,
            lambda s: _sleep_on(model, params, spec, s, toks, pos, **pad),
            lambda s: s,
            start,
        )
        return slept, None

    most = (length + n) // length
    if most == 1:
        window_start, _ = sleep_window(state.window_start, jnp.int32(0))
    else:
        window_start, _ = jax.lax.scan(sleep_window, state.window_start, jnp.arange(most))

    # Wake passes for the tokens of the (new) current window not yet in the live state: the
    # new tokens if no window filled, else the remainder after the last full window. Fewer
    # than L of them, run as power-of-two chunks (the bits of their count).
    first = jnp.where(filled == 0, count, filled * length)
    todo = total - first
    live = select_tree(filled == 0, state.live, window_start)
    offset = first
    for bit in reversed(range(min(n, length - 1).bit_length())):
        size = 1 << bit

        def chunk(live, offset=offset, size=size):
            toks = jax.lax.dynamic_slice_in_dim(frame, offset, size, axis=1)
            pos = window_pos + offset + jnp.arange(size, dtype=jnp.int32)
            return _advance(model, params, toks, pos, live, **padding(lambda: offset, size))

        take = (todo & size) != 0
        live = jax.lax.cond(take, chunk, lambda s: s, live)
        offset = offset + jnp.where(take, size, 0)

    window_valid = valid_base = None
    if padded:  # the open window's validity bits; real tokens before it
        window_valid = jax.lax.dynamic_slice_in_dim(vframe, filled * length, length, axis=1)
        valid_base = jax.lax.dynamic_slice_in_dim(eframe, filled * length, 1, axis=1)[:, 0]
    return SessionState(
        live=live,
        window_start=window_start,
        window_tokens=jax.lax.dynamic_slice_in_dim(frame, filled * length, length, axis=1),
        count=(total - filled * length).astype(jnp.int32),
        position=(position + n).astype(jnp.int32),
        window_valid=window_valid,
        valid_base=valid_base,
    )


def _prefill_fresh(model, params, spec, state: SessionState, tokens: jax.Array, valid=None):
    """``feed`` of fewer than L tokens into a session at a window start under hard eviction
    (count 0: its KV caches are empty), which the caller vouches for: ``streaming_logits``
    after a sleep. The tokens get one wake pass whose attention reads them alone
    (``FreshCache``: the causal key ranges of a training wake window) instead of the L
    empty slots of the cache as well; the state is the one ``feed`` returns."""
    check_window(model, spec)
    batch, n = tokens.shape
    if spec.eviction != "hard" or not 0 < n < spec.window:
        raise ValueError(
            "a fresh prefill needs hard eviction and 0 < n < L = "
            f"{spec.window}; got eviction {spec.eviction!r}, n = {n}"
        )
    valid = valid_mask(state, valid, tokens.shape)
    tokens = tokens.astype(jnp.int32)
    positions = state.position + jnp.arange(n, dtype=jnp.int32)
    window_valid = None
    if valid is not None:
        window_valid = jnp.zeros_like(state.window_valid).at[:, :n].set(valid)
    pad = _from_window_start(state, valid)
    live = _advance(model, params, tokens, positions, state_lib.fresh_caches(state.live), **pad)
    return state._replace(
        live=live,
        window_tokens=jnp.zeros_like(state.window_tokens).at[:, :n].set(tokens),
        count=jnp.asarray(n, jnp.int32),
        position=(state.position + n).astype(jnp.int32),
        window_valid=window_valid,
    )


def _decode_step(model, params, spec, state: SessionState, token: jax.Array, valid=None):
    check_window(model, spec)
    token = token.astype(jnp.int32)
    valid = valid_mask(state, valid, token.shape)
    pos = state.position[None]
    pad = {}
    if valid is not None:
        epos = state.valid_base + jnp.sum(state.window_valid, axis=1, dtype=jnp.int32)
        pad = dict(valid=valid[:, None], embed_pos=epos[:, None])
    logits, live = sleep_lib.wake(
        _one_token_model(model), params, token[:, None], pos, state.live, **pad
    )
    full = state.count >= spec.window
    logits = jnp.where(full, jnp.nan, logits[:, 0])
    window_tokens = state.window_tokens.at[:, state.count].set(token, mode="drop")
    window_valid = state.window_valid
    if valid is not None:
        window_valid = window_valid.at[:, state.count].set(valid, mode="drop")
    new = SessionState(
        live=live,
        window_start=state.window_start,
        window_tokens=window_tokens,
        count=jnp.minimum(state.count + 1, spec.window).astype(jnp.int32),
        position=state.position + 1,
        window_valid=window_valid,
        valid_base=state.valid_base,
    )
    # On a full window the token is refused: the state stays exactly as it was, so a
    # following sleep consolidates the window at its true positions.
    return logits, select_tree(full, state, new)


def _sleep_now(model, params, spec, state: SessionState, length: int, consolidate: bool):
    if length == 0:
        return state
    tokens = state.window_tokens[:, :length]
    # The window's first token sits at position - count: each token keeps its own position
    # (``sleep`` refuses a length other than count; under jit that is the caller's promise).
    positions = state.position - state.count + jnp.arange(length, dtype=jnp.int32)
    valid = None if state.window_valid is None else state.window_valid[:, :length]
    pad = _from_window_start(state, valid)
    if consolidate:
        model_state = _sleep_on(model, params, spec, state.window_start, tokens, positions, **pad)
    else:
        model_state = sleep_lib.evict(state.live, spec.eviction)
    return new_window(state, model_state)


_STATIC = ("model", "spec")

feed = jax.jit(_feed, static_argnames=_STATIC)
feed.__doc__ = """feed(model, params, spec, state, tokens [batch, n] int, valid=None)
-> SessionState.

Appends n tokens (any n >= 0) to the stream. Every window that fills is slept on at once
(N passes of ``sleep.consolidate`` from its start state, then eviction); the tokens of the
window left open get their wake pass, so the next ``decode_step`` sees them. A state that
arrives with a full window is slept on first. Feeding a sequence in pieces of any sizes gives
the same state as feeding it whole (to float rounding). Compiled once per n.
valid: [batch, n] bool, False at padded tokens (a session from ``init_state(...,
padded=True)``; default all real).
"""

prefill_fresh = jax.jit(_prefill_fresh, static_argnames=_STATIC)

decode_step = jax.jit(_decode_step, static_argnames=_STATIC)
decode_step.__doc__ = """decode_step(model, params, spec, state, token [batch] int,
valid=None) -> (logits [batch, vocab] float32, SessionState).

One wake pass for one token at ``state.position``: the logits predict the next token. Never
sleeps, so its cost does not depend on N. The window must not be full (``window_full``):
then the logits are NaN and the state is returned unchanged; sleep first. valid: [batch]
bool, as for ``feed``.
"""


def sleep(model, params, spec, state: SessionState, *, length=None, consolidate=True):
    """Sleep now on the current (possibly partial) window, evict, and start a new window.

    consolidate=True: N passes of ``sleep.consolidate`` over the window from its start state
    (the streaming form of a training sleep window). consolidate=False: no consolidation;
    evict the live state as it is (the transition after a training *wake* window).
    length: the number of tokens in the window (``state.count``) as a Python int; by
    default read from ``state.count`` (one scalar transfer; pass it when calling under
    ``jax.jit``). A length other than the window's token count raises ValueError (a sleep
    always takes the whole window); under tracing, where the count cannot be read, it must
    equal it. A window of zero tokens is left as it is. Compiled once per (length,
    consolidate).
    """
    try:
        count = int(state.count)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError) as err:
        if length is None:
            raise ValueError("sleep under tracing needs length= (a Python int)") from err
        count = None
    if length is None:
        length = count
    elif count is not None and length != count:
        raise ValueError(
            f"length={length} but the window holds {count} tokens: a sleep consolidates the "
            "whole window (omit length=)"
        )
    if not 0 <= length <= spec.window:
        raise ValueError(f"length must be in [0, {spec.window}], got {length}")
    return _sleep_jit(model, params, spec, state, length, bool(consolidate))


_sleep_jit = jax.jit(_sleep_now, static_argnames=(*_STATIC, "length", "consolidate"))
