"""The recurrent form of both rules: a ``lax.scan`` over time, one token a step. The oracle
the other forms are tested against, and the decode path (one token).

  q, k [batch, time, heads, key], v [batch, time, heads, value], g, beta [batch, time, heads]
  and state [batch, heads, key, value], all float32 -> (o [batch, time, heads, value], state)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _recurrent(q, k, v, g, beta, state, scale, *, delta: bool):
    """Token-by-token ``lax.scan``; inputs float32, time-major inside the scan."""

    def step(s, xs):
        q_t, k_t, v_t, g_t, b_t = xs  # [batch, heads, key|value], gates [batch, heads]
        s = s * jnp.exp(g_t)[..., None, None]
        if delta:
            v_t = v_t - jnp.einsum("bhkv,bhk->bhv", s, k_t)
        s = s + jnp.einsum("bhk,bhv->bhkv", k_t, b_t[..., None] * v_t)
        o_t = scale * jnp.einsum("bhkv,bhk->bhv", s, q_t)
        return s, o_t

    xs = tuple(jnp.swapaxes(x, 0, 1) for x in (q, k, v, g, beta))
    state, o = jax.lax.scan(step, state, xs)
    return jnp.swapaxes(o, 0, 1), state
