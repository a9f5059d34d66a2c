"""Algorithm 1 streamed: whole sequences through feed / decode_step / sleep.

``streaming_logits`` / ``streaming_loss`` / ``evaluate`` are the streaming counterparts of
``sleep.sequence_logits`` / ``sleep.sequence_loss`` (the tests check them equal).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from sleep_lm import sleep as sleep_lib
from sleep_lm.inference.state import SessionState, init_state
from sleep_lm.inference.stream import _STATIC, decode_step, feed, prefill_fresh, sleep


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
                # The window has just started (a sleep or eviction closed the last one):
                # under hard eviction its caches are empty, and the prompt attends to itself.
                prefill = prefill_fresh if spec.eviction == "hard" else feed
                state = prefill(
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
