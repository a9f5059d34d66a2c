"""Sampling: tokens generated one wake pass at a time, sleeping when a window fills."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from sleep_lm.inference.stream import _STATIC, _decode_step, _sleep_now


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
