"""One window: ``consolidate`` (sleep) and ``wake``, the model stages they call, and the
state helpers at a window's edges (``evict``, ``embed_positions``).

Sleep embeds the window once and runs the looped blocks N times over it, each pass writing
the increasingly refined features into the fast weights; the features are then discarded.
Wake is one ordinary forward pass to logits. After every window the state is evicted:
``hard`` drops all local context (KV caches and GDN conv tails), so only the fast weights
cross the boundary; ``sliding`` keeps it, and the attention mask then lets each query see
L keys (itself and the previous L - 1 tokens).

Shapes: tokens, valid [batch, time]; h [batch, window, width]; logits [batch, window,
vocab]. Local context across passes, ``loop_blocks``, inert padding (``batch["valid"]``:
padded tokens are inert), ``remat`` and ``grad_passes`` are described in README.md, "How
sleep runs".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sleep_lm.model import state as state_lib
from sleep_lm.model.state import ModelState
from sleep_lm.sleep.spec import EVICTIONS, resolve_loop_blocks

# --------------------------------------------------------------------------- state


def embed_positions(valid: jax.Array) -> jax.Array:
    """[batch, time] int32 position-table index of each token of a padded batch: the number
    of real tokens before it in its example (0, 1, 2, ... on the real tokens, whatever the
    padding in front; a padded token's index is never read by a real token)."""
    valid = valid.astype(jnp.int32)
    return jnp.cumsum(valid, axis=1) - valid


def evict(state: ModelState, eviction: str) -> ModelState:
    """End of a window: "hard" clears KV caches and conv tails, "sliding" keeps them.

    Fast weights are kept either way. Under "sliding" the ring buffer still holds the last
    L tokens, and the attention mask (L keys per query) leaves the last L - 1 visible.
    """
    if eviction == "hard":
        return state_lib.clear_local(state)
    if eviction == "sliding":
        return state
    raise ValueError(f"sleep.eviction: allowed {EVICTIONS}, got {eviction!r}")


# ------------------------------------------------------------------- model stages


def _scan(f, init, xs, length: int, *, remat: bool = False):
    """``lax.scan``, or one direct call when length == 1: a one-step scan would still nest
    a loop level in the program, and nested loops multiply compile time under autodiff.

    remat checkpoints each step. Inside a scan, CSE of the recomputation with the forward is
    impossible anyway, so prevent_cse (which costs optimisation barriers) is only needed
    for the direct call.
    """
    if remat:
        f = jax.checkpoint(f, prevent_cse=length == 1)
    if length != 1:
        return jax.lax.scan(f, init, xs, length=length)
    carry, y = f(init, jax.tree.map(lambda x: x[0], xs))
    return carry, jax.tree.map(lambda x: x[None], y)


def _embed(model, params, tokens, positions):
    return model.apply({"params": params}, tokens, positions, method="embed")


def _blocks(model, params, h, state, positions, start, stop, valid=None):
    if start == stop:
        return h, state
    if valid is None:  # no padding: the model's call (and program) as without padding support
        return model.apply({"params": params}, h, state, positions, start, stop, method="blocks")
    return model.apply(
        {"params": params}, h, state, positions, start, stop, valid=valid, method="blocks"
    )


def _head(model, params, h):
    return model.apply({"params": params}, h, method="head")


def _frozen_layers(state: ModelState, frozen: ModelState, start: int, stop: int) -> ModelState:
    """``state`` with layers ``start:stop`` taken from ``frozen`` (the looped layers)."""
    layers = (
        f if start <= i < stop else x
        for i, (x, f) in enumerate(zip(state.layers, frozen.layers, strict=True))
    )
    return ModelState(layers=tuple(layers))


def consolidate(
    model,
    params,
    window_tokens: jax.Array,
    positions: jax.Array,
    state: ModelState,
    passes: int,
    *,
    loop_blocks=(None, None),
    remat: str = "none",
    grad_passes: int = 0,
    valid: jax.Array | None = None,
    embed_pos: jax.Array | None = None,
) -> ModelState:
    """Sleep on one window: N passes of the looped blocks; returns the new state.

    window_tokens: [batch, time] int; positions: [time] global positions; state: the state
    at the window start (not evicted: the caller evicts afterwards). The window is embedded
    once; blocks before the loop run once, then a ``lax.scan`` runs ``passes`` passes of
    blocks ``loop_blocks`` carrying features and state (each pass restarting the looped
    layers' local context from the window start, keeping the fast weights), then blocks
    after the loop run once. The features are discarded. ``remat="pass"`` checkpoints
    each pass.

    ``grad_passes`` = M with 0 < M < N: the features and the looped layers' fast weights
    after the first N - M passes are constants to autodiff (``stop_gradient``); the values
    are unchanged. 0 or M >= N: gradients through every pass.

    ``valid`` [batch, time] bool marks real tokens (None: all; padded ones are inert, see the
    module docstring) and ``embed_pos`` [batch, time] their position-table indices
    (``embed_positions`` of the whole sequence, sliced; None: ``positions``).
    """
    num_layers = len(model.config.layers)
    start, stop = resolve_loop_blocks(loop_blocks, num_layers)
    h = _embed(model, params, window_tokens, positions if embed_pos is None else embed_pos)
    h, state = _blocks(model, params, h, state, positions, 0, start, valid)
    at_window_start = state

    def run_passes(params, h, state, at_window_start, count, remat):
        def one_pass(carry, _):
            h, st = carry
            st = state_lib.restart_local(st, at_window_start, start, stop)
            return _blocks(model, params, h, st, positions, start, stop, valid), None

        return _scan(one_pass, (h, state), None, count, remat=remat)[0]

    frozen = passes - grad_passes if 0 < grad_passes < passes else 0
    if frozen:
        # stop_gradient on every input rather than on the outputs: the same values and zero
        # gradient, but autodiff then sees a constant computation up front and neither traces
        # tangents nor keeps residuals for these passes (that is the memory saved).
        const = jax.lax.stop_gradient
        h, done = run_passes(
            const(params), const(h), const(state), const(at_window_start), frozen, False
        )
        # Only the looped layers' fast weights are the passes' product; the layers before and
        # after the loop keep their (differentiable) state.
        state = _frozen_layers(state, done, start, stop)
    h, state = run_passes(params, h, state, at_window_start, passes - frozen, remat == "pass")
    _, state = _blocks(model, params, h, state, positions, stop, num_layers, valid)
    return state


def wake(
    model,
    params,
    tokens: jax.Array,
    positions: jax.Array,
    state: ModelState,
    *,
    remat="none",
    valid: jax.Array | None = None,
    embed_pos: jax.Array | None = None,
    head_from: int = 0,
) -> tuple[jax.Array, ModelState]:
    """One ordinary forward pass: (logits [batch, time - head_from, vocab] float32, new
    state): the LM head runs on the window's positions from ``head_from`` on (the heads are
    position-wise; earlier positions carry no loss).

    ``remat="pass"`` checkpoints the pass. The caller evicts at the window end. ``valid``
    and ``embed_pos`` as for ``consolidate`` (logits at padded tokens are meaningless).
    """
    if valid is None and embed_pos is None:

        def run(params, tokens, positions, state):
            h = _embed(model, params, tokens, positions)
            h, state = _blocks(model, params, h, state, positions, 0, len(model.config.layers))
            return _head(model, params, h[:, head_from:]), state

        if remat == "pass":
            run = jax.checkpoint(run)
        return run(params, tokens, positions, state)

    def run_padded(params, tokens, positions, state, valid, embed_pos):
        h = _embed(model, params, tokens, positions if embed_pos is None else embed_pos)
        layers = len(model.config.layers)
        h, state = _blocks(model, params, h, state, positions, 0, layers, valid)
        return _head(model, params, h[:, head_from:]), state

    if remat == "pass":
        run_padded = jax.checkpoint(run_padded)
    return run_padded(params, tokens, positions, state, valid, embed_pos)
