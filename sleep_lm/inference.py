"""Wake/sleep streaming inference: feed tokens, decode one at a time, sleep when the window fills.

The session state (``SessionState``) is explicit and every function is pure (state in, state
out), so the same code serves a notebook (``SleepSession``), a server and the eval loop:

    state = init_state(model, spec, batch)
    state = feed(model, params, spec, state, prompt[:, :-1])      # prefill; sleeps on full windows
    logits, state = decode_step(model, params, spec, state, prompt[:, -1])   # one wake pass
    tokens, logits, state = generate(model, params, spec, state, logits, rng, steps=32)
    state = sleep(model, params, spec, state)                     # e.g. while idle

``spec`` is a ``sleep.SleepSpec`` (passes N, window L, eviction, loop_blocks; its schedule is
only used by ``streaming_logits`` / ``streaming_loss``).

Streaming semantics. The token stream is cut into windows of at most L tokens. Within a
window every token gets one *wake* pass (``decode_step``, or a chunked wake inside ``feed``)
that reads the state at the window start plus the window's earlier tokens (attention over
the KV ring buffer, GDN conv tails and fast weights) and writes the token into that "live"
state. When the window holds L tokens (or when ``sleep`` is called on a partial window), the
model sleeps: ``sleep.consolidate`` -- the very function training uses -- embeds the whole
window once and runs the looped blocks N times over it, starting from the state at the
window start, and the result is evicted (hard: only fast weights survive; sliding: the ring
buffer of the last pass survives too). That state starts the next window. So the live state's
own writes of the window are discarded at sleep: they only serve predictions inside the
window, exactly as a training wake pass does.

Equivalence with Algorithm 1 (``sleep.run_sequence``), which the tests check numerically.
Take a sequence, its window schedule (``spec.schedule``) and the state S_w at the start of
window w. Then:

* Logits. Training's wake pass over window w reads S_w and the window causally, so its output
  at position p depends only on S_w and tokens up to p of window w. Streaming decodes token
  p from the live state = S_w plus the same earlier tokens of the window: the same function,
  evaluated token by token instead of in parallel. The attention mask is by global positions
  stored in the ring buffer, so "plus the window's tokens" means the same keys in both.
* Transitions. A training *sleep* window maps S_w to evict(consolidate(window, S_w, N)):
  that is what streaming ``sleep`` computes. A training *wake* window maps S_w to
  evict(wake-pass state), with no consolidation: streaming's ``sleep(..., consolidate=False)``
  (evict the live state). With N = 1 the two coincide (consolidate with one pass *is* the
  wake pass's state update), so a plain stream that sleeps on every full window is
  Algorithm 1 for any schedule; with N > 1 they differ only after a wake window that is
  followed by more windows (never the case in Rule 110 or Depo, whose wake window is last).
* Hard eviction trains with no KV cache (``cache_len=0``); streaming needs L slots to decode
  a window token by token. At a window start the cache is empty, and an empty slot is a
  masked key (weight exp(-1e30 - max) = 0 exactly), so both give the same numbers; sleep
  under hard eviction runs ``consolidate`` on cache-free state, like training.
* Numerics: decoding uses the recurrent GDN op for one token and the chunked op (when
  configured) for chunks, so float32 results agree to rounding (~1e-6), not bit for bit.

``streaming_logits`` / ``streaming_loss`` drive exactly this over a batch with a schedule
(sleep windows fed, wake windows decoded token by token and closed without consolidation)
and are the streaming counterparts of ``sleep.sequence_logits`` / ``sleep.sequence_loss``.

Padding (a batch of left-padded variable-length examples, ``batch["valid"]``): a session made
with ``init_state(..., padded=True)`` also records which of the window's tokens are real
(``window_valid``) and how many real tokens came before the window (``valid_base``, for the
learned position-table index, ``sleep.embed_positions``); ``feed`` and ``decode_step`` take a
``valid`` mask (default: all real), and padded tokens are inert exactly as in training
(sleep.py, "Variable-length examples"). Without ``padded`` both fields are None and the
programs are the ones without padding support.

Costs. ``decode_step`` is one wake pass for one token: its program does not contain
``consolidate`` and does not depend on N (a test compares its lowered HLO across N). All
N-dependent work is in ``sleep``, which ``feed`` and ``generate`` call when a window fills.
``decode_step`` never sleeps: called on a full window it returns NaN logits (a usage error:
sleep first; ``window_full`` tells) rather than hiding a sleep inside the latency path.
The state holds two model states (the live one and the one at the window start, which the
sleep consolidates from): under sliding eviction that is two KV ring buffers of L slots.

Windows inside ``feed``: the number of tokens already in the window is data (a traced
int), not a compile-time constant, so one program per fed length serves every alignment.
Windows that fill inside ``feed`` are slept on without a wake pass (nothing reads their
wake state); the remainder (< L tokens) gets its wake pass in power-of-two chunks, each
behind a ``lax.cond``, so a prefill is never token by token. ``sleep`` on a *partial*
window needs its length as a Python int (a static shape for ``consolidate``): it reads it
from the state (one scalar transfer) unless ``length=`` is given.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sleep_lm import sleep as sleep_lib
from sleep_lm.model import state as state_lib
from sleep_lm.model.state import KVCache, ModelState

# ---------------------------------------------------------------------------- state


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


def _check(model, spec) -> None:
    if model.window != spec.window:
        raise ValueError(
            f"model window {model.window} != sleep.window {spec.window}: the attention window "
            "and the sleep window must be the same L"
        )


def init_state(model, spec, batch: int, *, padded: bool = False) -> SessionState:
    """Empty session (zero fast weights, empty KV caches of L slots) at position 0.

    padded: the stream may hold padded tokens (``feed`` / ``decode_step`` with ``valid``).
    """
    _check(model, spec)
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


def _valid(state: SessionState, valid, shape) -> jax.Array | None:
    """The validity mask of new tokens: None without padding, all real by default."""
    if state.window_valid is None:
        if valid is not None:
            raise ValueError("valid= needs a session made with init_state(..., padded=True)")
        return None
    return jnp.ones(shape, bool) if valid is None else jnp.asarray(valid).astype(bool)


def window_full(spec, state: SessionState) -> jax.Array:
    """True when the window holds L tokens: sleep before the next ``decode_step``."""
    return state.count >= spec.window


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


def _new_window(state: SessionState, model_state: ModelState, count=0) -> SessionState:
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


def _select(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


# ------------------------------------------------------------------------ feeding


def _feed(model, params, spec, state: SessionState, tokens: jax.Array, valid=None):
    _check(model, spec)
    batch, n = tokens.shape
    valid = _valid(state, valid, tokens.shape)
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
    live = _select(filled == 0, state.live, window_start)
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


def _decode_step(model, params, spec, state: SessionState, token: jax.Array, valid=None):
    _check(model, spec)
    token = token.astype(jnp.int32)
    valid = _valid(state, valid, token.shape)
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
    return logits, _select(full, state, new)


def _sleep_now(model, params, spec, state: SessionState, length: int, consolidate: bool):
    if length == 0:
        return state
    tokens = state.window_tokens[:, :length]
    # The window's first token sits at position - count: each token keeps its own position
    # (``sleep`` refuses a length other than count; under jit that is the caller's promise).
    positions = state.position - state.count + jnp.arange(length, dtype=jnp.int32)
    pad = {}
    if state.window_valid is not None:
        valid = state.window_valid[:, :length]
        epos = state.valid_base[:, None] + sleep_lib.embed_positions(valid)
        pad = dict(valid=valid, embed_pos=epos)
    if consolidate:
        model_state = _sleep_on(model, params, spec, state.window_start, tokens, positions, **pad)
    else:
        model_state = sleep_lib.evict(state.live, spec.eviction)
    return _new_window(state, model_state)


def _sample(logits, key, temperature: float):
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32)


def _generate(model, params, spec, state, logits, rng, steps: int, temperature: float):
    length = spec.window

    def step(carry, key):
        state, logits = carry
        token = _sample(logits, key, temperature)
        state = jax.lax.cond(
            state.count >= length,
            lambda s: _sleep_now(model, params, spec, s, length, True),
            lambda s: s,
            state,
        )
        logits, state = _decode_step(model, params, spec, state, token)
        return (state, logits), token

    (state, logits), tokens = jax.lax.scan(step, (state, logits), jax.random.split(rng, steps))
    return jnp.swapaxes(tokens, 0, 1), logits, state


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


@functools.partial(jax.jit, static_argnames=(*_STATIC, "steps", "temperature"))
def generate(model, params, spec, state, logits, rng, *, steps: int, temperature: float = 0.0):
    """Samples ``steps`` tokens, each fed back with a wake pass; sleeps when a window fills.

    logits: [batch, vocab], the prediction for the next token (from the last ``decode_step``).
    temperature 0 is greedy (argmax); otherwise softmax(logits / temperature) sampling with
    ``rng``. Returns (tokens [batch, steps] int32, logits after the last token, state): every
    generated token is in the state, so generation can continue from the returned logits.
    A full window is slept on before the next token, so the returned state may be full.
    """
    return _generate(model, params, spec, state, logits, rng, steps, float(temperature))


# ------------------------------------------------------------- Algorithm 1, streamed


def _decode_tokens(model, params, spec, state, tokens, valid=None):
    """decode_step over tokens [batch, time] (and their valid mask) in order:
    ([batch, time, vocab], state)."""
    if valid is None:

        def step(state, token):
            logits, state = decode_step(model, params, spec, state, token)
            return state, logits

        state, logits = jax.lax.scan(step, state, jnp.swapaxes(tokens, 0, 1))
        return jnp.swapaxes(logits, 0, 1), state

    def padded_step(state, xs):
        logits, state = decode_step(model, params, spec, state, *xs)
        return state, logits

    xs = (jnp.swapaxes(tokens, 0, 1), jnp.swapaxes(valid, 0, 1))
    state, logits = jax.lax.scan(padded_step, state, xs)
    return jnp.swapaxes(logits, 0, 1), state


def streaming_logits(
    model, params, tokens: jax.Array, spec, valid=None, *, scored_from: int = 0
) -> tuple[jax.Array, SessionState]:
    """Algorithm 1 through the streaming path: ([batch, time, vocab] float32, final state).

    Sleep windows of ``spec.schedule`` are fed (they fill and sleep; a short last one is
    slept on explicitly); wake windows are decoded token by token and then closed without
    consolidation, as Algorithm 1 does. Sleep windows get zero logits, like
    ``sleep.sequence_logits``, which this equals at every wake position. ``valid`` [batch,
    time] bool: real tokens of a padded batch (None: all).

    scored_from: the first position whose logits are wanted (a Python int). A wake window's
    tokens before it are fed as a prompt is (``feed``: chunked wake passes, zero logits
    there) and only the rest is decoded token by token: a GSM answer window of 1,300 tokens
    decodes ~6. The window's last token is always decoded, so the window never fills inside
    ``feed`` (which would consolidate it).
    """
    batch, seq_len = tokens.shape
    bounds = sleep_lib.window_bounds(seq_len, spec.window)
    if len(spec.schedule) != len(bounds):
        raise ValueError(
            f"SleepSpec.schedule has {len(spec.schedule)} windows; a sequence of {seq_len} "
            f"tokens with window {spec.window} has {len(bounds)}"
        )
    tokens = jnp.asarray(tokens, jnp.int32)
    padded = valid is not None
    state = init_state(model, spec, batch, padded=padded)
    if padded:
        valid = jnp.asarray(valid).astype(bool)

    def part(begin, end):  # the valid mask of tokens [begin, end), if any
        return (valid[:, begin:end],) if padded else ()

    pieces = []
    sleep_from = None  # first position of a run of sleep windows not yet fed
    for (begin, length), is_wake in zip(bounds, spec.schedule, strict=True):
        if not is_wake:
            sleep_from = begin if sleep_from is None else sleep_from
            if begin + length < seq_len:
                continue
            end = begin + length
        else:
            end = begin
        if sleep_from is not None:  # feed the run of sleep windows [sleep_from, end)
            state = feed(
                model, params, spec, state, tokens[:, sleep_from:end], *part(sleep_from, end)
            )
            pieces.append(jnp.zeros((batch, end - sleep_from, model.vocab_size), jnp.float32))
            partial = (end - sleep_from) % spec.window
            if partial:  # a short last window never fills: sleep on it explicitly
                state = sleep(model, params, spec, state, length=partial)
            sleep_from = None
        if is_wake:
            fed = min(max(scored_from - begin, 0), length - 1)  # the prompt part, fed
            if fed:
                state = feed(
                    model, params, spec, state, tokens[:, begin : begin + fed],
                    *part(begin, begin + fed),
                )  # fmt: skip
                pieces.append(jnp.zeros((batch, fed, model.vocab_size), jnp.float32))
            logits, state = _decode_tokens(
                model,
                params,
                spec,
                state,
                tokens[:, begin + fed : begin + length],
                *part(begin + fed, begin + length),
            )
            pieces.append(logits)
            state = sleep(model, params, spec, state, length=length, consolidate=False)
    return jnp.concatenate(pieces, axis=1), state


def streaming_loss(
    model, params, batch: dict, spec, *, scored_from: int = 0
) -> tuple[jax.Array, dict]:
    """``sleep.sequence_loss`` through the streaming path (no gradients intended).

    Same batch format (``valid`` included) and the same metrics ("loss", "token_accuracy",
    "accuracy"), computed from ``streaming_logits`` (``scored_from``: see there). A loss
    position before ``scored_from`` would be scored on zero logits: the metrics are NaN.
    """
    targets = jnp.asarray(batch["targets"], jnp.int32)
    mask = jnp.asarray(batch["loss_mask"]).astype(bool)
    inputs = jnp.asarray(batch["inputs"])
    logits, _ = streaming_logits(
        model, params, inputs, spec, valid=batch.get("valid"), scored_from=scored_from
    )
    logp = jax.nn.log_softmax(logits, axis=-1)
    ce = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    right = jnp.argmax(logits, axis=-1) == targets
    m = mask.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(m), 1.0)
    has_loss = jnp.any(mask, axis=1)
    all_right = has_loss & ~jnp.any(mask & ~right, axis=1)
    loss = jnp.sum(ce * m) / count
    metrics = {
        "loss": loss,
        "token_accuracy": jnp.sum(right * m) / count,
        "accuracy": (jnp.sum(all_right) / jnp.maximum(jnp.sum(has_loss), 1)).astype(jnp.float32),
    }
    if scored_from:  # a loss position the streaming pass did not decode: refuse loudly
        early = jnp.any(mask[:, :scored_from])
        metrics = {k: jnp.where(early, jnp.nan, v) for k, v in metrics.items()}
    return metrics["loss"], metrics


@functools.partial(jax.jit, static_argnames=(*_STATIC, "scored_from"))
def evaluate(model, params, spec, batch: dict, scored_from: int = 0) -> dict:
    """Metrics of ``sleep.sequence_loss`` ("loss", "token_accuracy", "accuracy") computed
    through the streaming path (``streaming_loss``; ``scored_from``: see
    ``streaming_logits``)."""
    return streaming_loss(model, params, batch, spec, scored_from=scored_from)[1]


# ---------------------------------------------------------------------- notebooks


class SleepSession:
    """A stateful wrapper for notebooks and simple servers.

        session = SleepSession(model, params, spec)        # batch 1
        session.feed(prompt_tokens)                         # -> logits for the next token
        tokens = session.generate(20, temperature=0.8)      # continues from those logits
        session.sleep()                                     # consolidate the partial window

    The session mirrors the window fill level on the host (no device round trips) and
    sleeps as soon as a window fills (``auto_sleep=True``). With ``auto_sleep=False`` it
    does not sleep after a decode: a ``decode`` on a full window raises, and the caller decides
    when to ``sleep`` (e.g. while idle); ``feed`` and ``generate`` always sleep on the windows
    that fill inside them. The state is donated to each call, so the previous
    ``session.state`` must not be reused.
    """

    def __init__(
        self,
        model,
        params,
        spec,
        batch_size: int = 1,
        *,
        auto_sleep: bool = True,
        padded: bool = False,
    ):
        _check(model, spec)
        self.model, self.params, self.spec = model, params, spec
        self.batch_size = batch_size
        self.auto_sleep = auto_sleep
        self.padded = padded  # feed/decode take valid= (left-padded prompts of a batch)
        donate = dict(static_argnames=_STATIC, donate_argnames=("state",))
        self._feed = jax.jit(_feed, **donate)
        self._decode = jax.jit(_decode_step, **donate)
        self._sleep = jax.jit(
            _sleep_now,
            static_argnames=(*_STATIC, "length", "consolidate"),
            donate_argnames=("state",),
        )
        self._generate = jax.jit(
            _generate,
            static_argnames=(*_STATIC, "steps", "temperature"),
            donate_argnames=("state",),
        )
        self.reset()

    def reset(self) -> None:
        """Back to an empty context at position 0."""
        self.state = init_state(self.model, self.spec, self.batch_size, padded=self.padded)
        self.count = 0  # host mirror of state.count
        self.position = 0
        self.logits = None  # prediction for the next token, after the last token seen

    def _tokens(self, tokens) -> jax.Array:
        tokens = np.asarray(tokens, np.int32)
        if tokens.ndim == 1 and self.batch_size == 1:
            tokens = tokens[None]
        if tokens.ndim != 2 or tokens.shape[0] != self.batch_size:
            raise ValueError(f"tokens must be [{self.batch_size}, n], got {tokens.shape}")
        return jnp.asarray(tokens)

    def feed(self, tokens, valid=None) -> jax.Array:
        """Appends tokens ([batch, n], or [n] for batch 1); returns the logits
        [batch, vocab] predicting the token after the last one. valid: the same shape,
        False at padding (a session made with ``padded=True``; default all real)."""
        tokens = self._tokens(tokens)
        if valid is not None:
            valid = jnp.asarray(np.reshape(np.asarray(valid, bool), tokens.shape))
        n = tokens.shape[1]
        if n == 0:
            return self.logits
        if n > 1:
            part = () if valid is None else (valid[:, :-1],)
            self.state = self._feed(
                self.model, self.params, self.spec, self.state, tokens[:, :-1], *part
            )
            total = self.count + n - 1
            self.count = total % self.spec.window
            self.position += n - 1
        return self.decode(tokens[:, -1], None if valid is None else valid[:, -1])

    def decode(self, token, valid=None) -> jax.Array:
        """One wake pass for token [batch] (or a scalar for batch 1): logits [batch, vocab].
        valid: [batch] bool, as for ``feed``."""
        token = self._tokens(np.reshape(np.asarray(token), (self.batch_size, 1)))[:, 0]
        if self.count == self.spec.window:
            if not self.auto_sleep:
                raise RuntimeError("the window is full: call sleep() before decoding")
            self.sleep()
        part = () if valid is None else (jnp.asarray(valid, bool).reshape(self.batch_size),)
        logits, self.state = self._decode(
            self.model, self.params, self.spec, self.state, token, *part
        )
        self.count += 1
        self.position += 1
        self.logits = logits
        if self.auto_sleep and self.count == self.spec.window:
            self.sleep()
        return logits

    def sleep(self, *, consolidate: bool = True) -> None:
        """Sleeps on the current window now (see ``sleep``)."""
        if self.count:
            self.state = self._sleep(
                self.model, self.params, self.spec, self.state, self.count, consolidate
            )
            self.count = 0

    def generate(self, steps: int, *, prompt=None, temperature: float = 0.0, seed: int = 0):
        """Feeds ``prompt`` (if given), then samples ``steps`` tokens: [batch, steps] NumPy."""
        if prompt is not None:
            self.feed(prompt)
        if self.logits is None:
            raise ValueError("nothing to continue from: feed a prompt first")
        tokens, self.logits, self.state = self._generate(
            self.model,
            self.params,
            self.spec,
            self.state,
            self.logits,
            jax.random.key(seed),
            steps,
            float(temperature),
        )
        for _ in range(steps):  # the same window accounting as _generate
            self.count = 1 if self.count == self.spec.window else self.count + 1
        self.position += steps
        if self.auto_sleep and self.count == self.spec.window:
            self.sleep()
        return np.asarray(tokens)
