"""The session state of streaming inference (``SessionState``) and its window bookkeeping."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from sleep_lm.model.state import ModelState


class SessionState(NamedTuple):
    """Streaming state of a batch of sequences advancing in lockstep.

    live: ModelState after the wake passes over the current window's tokens (what the next
      decode reads). KV caches hold L slots (ring buffer by global position).
    window_start: ModelState at the start of the current window, i.e. after the last sleep
      (what the next sleep consolidates from).
    window_tokens: [batch, L] int32; the first ``count`` are the current window's tokens,
      the rest zeros.
    count: [] int32, tokens in the current window, 0..L (L only between a decode that fills
      the window and the sleep that must follow).
    position: [] int32, global position of the next token.
    window_valid: [batch, L] bool, which of the window's tokens are real (False: padding;
      zeros past ``count``); None for a session without padding.
    valid_base: [batch] int32, real tokens before the current window (the position-table
      index of the window's first real token); None without padding.
    """

    live: ModelState
    window_start: ModelState
    window_tokens: jax.Array
    count: jax.Array
    position: jax.Array
    window_valid: jax.Array | None = None
    valid_base: jax.Array | None = None


def check_window(model, spec) -> None:
    """Refuses a model whose attention window is not the sleep window L."""
    if model.window != spec.window:
        raise ValueError(
            f"model window {model.window} != sleep.window {spec.window}: the attention window "
            "and the sleep window must be the same L"
        )


def init_state(model, spec, batch: int, *, padded: bool = False) -> SessionState:
    """Empty session (zero fast weights, empty KV caches of L slots) at position 0.

    padded: the stream may hold padded tokens (``feed`` / ``decode_step`` with ``valid``).
    """
    check_window(model, spec)
    # Two separate sets of buffers: the session donates its state to each call.
    return SessionState(
        live=model.init_state(batch, cache_len=spec.window),
        window_start=model.init_state(batch, cache_len=spec.window),
        window_tokens=jnp.zeros((batch, spec.window), jnp.int32),
        count=jnp.zeros((), jnp.int32),
        position=jnp.zeros((), jnp.int32),
        window_valid=jnp.zeros((batch, spec.window), bool) if padded else None,
        valid_base=jnp.zeros((batch,), jnp.int32) if padded else None,
    )


def valid_mask(state: SessionState, valid, shape) -> jax.Array | None:
    """The validity mask of new tokens: None without padding, all real by default."""
    if state.window_valid is None:
        if valid is not None:
            raise ValueError("valid= needs a session made with init_state(..., padded=True)")
        return None
    return jnp.ones(shape, bool) if valid is None else jnp.asarray(valid).astype(bool)


def window_full(spec, state: SessionState) -> jax.Array:
    """True when the window holds L tokens: sleep before the next ``decode_step``."""
    return state.count >= spec.window


def new_window(state: SessionState, model_state: ModelState, count=0) -> SessionState:
    """A new window from ``model_state`` (the state after a sleep) at the same position:
    live = window start = ``model_state``; the closed window's real tokens join valid_base."""
    padded = state.window_valid is not None
    return SessionState(
        live=model_state,
        window_start=model_state,
        window_tokens=jnp.zeros_like(state.window_tokens),
        count=jnp.asarray(count, jnp.int32),
        position=state.position,
        window_valid=jnp.zeros_like(state.window_valid) if padded else None,
        valid_base=(
            state.valid_base + jnp.sum(state.window_valid, axis=1, dtype=jnp.int32)
            if padded
            else None
        ),
    )


def select_tree(pred, a, b):
    """``a`` where the scalar ``pred`` holds, else ``b``, leaf by leaf (same structure)."""
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)
