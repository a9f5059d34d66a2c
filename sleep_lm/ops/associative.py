"""The gated linear rule by ``lax.associative_scan`` over time. It materialises the state at
every step ([batch, time, heads, key, value]): an equivalence check, and for short sequences.
Shapes as in recurrent.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _associative(q, k, v, g, beta, state, scale):
    """Gated linear rule by ``lax.associative_scan`` on pairs (decay, update).

    Element t is (a_t, X_t) with X_t = beta_t k_t v_t^T; composing (a1, X1) then (a2, X2)
    gives (a1 a2, a2 X1 + X2). The prefix at t is (A_t, X'_t) and S_t = A_t S_0 + X'_t.
    """
    log_a = jnp.cumsum(g, axis=1)  # [batch, time, heads]: sum of log gates is exact
    x = jnp.einsum("bthk,bthv->bthkv", k, beta[..., None] * v)

    def combine(left, right):
        (a1, x1), (a2, x2) = left, right
        return a1 + a2, jnp.exp(a2)[..., None, None] * x1 + x2

    _, xs = jax.lax.associative_scan(combine, (g, x), axis=1)
    s_all = jnp.exp(log_a)[..., None, None] * state[:, None] + xs  # [batch, time, heads, K, V]
    o = scale * jnp.einsum("bthkv,bthk->bthv", s_all, q)
    return o, s_all[:, -1]
