"""The chunked (WY / UT-transform) form of both rules, with its hand-written backward.

Inside a chunk of C tokens everything is matmuls; a ``lax.scan`` carries the state across
chunks. ``_chunked`` takes gated_delta.py's layout (q, k [batch, time, heads, key], v
[batch, time, heads, value], g, beta [batch, time, heads], state [batch, heads, key, value];
float32) and pads time to whole chunks; inside, the custom VJP works on chunk-major arrays
[chunks, batch, heads, chunk, key | value].
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from sleep_lm.ops.precision import _precision_scope
from sleep_lm.ops.triangular import _invert_unit_lower


def _to_chunks(x: jax.Array, n: int, c: int) -> jax.Array:
    """[batch, n*c, heads, ...] -> [n, batch, heads, c, ...] (chunk axis leading, for scan)."""
    b, _, h = x.shape[:3]
    x = x.reshape(b, n, c, h, *x.shape[3:])
    return jnp.moveaxis(jnp.moveaxis(x, 1, 0), 3, 2)


def _t(x: jax.Array) -> jax.Array:
    """Transpose of the last two axes."""
    return jnp.swapaxes(x, -1, -2)


class _Intra(NamedTuple):
    """Per-chunk quantities that need no state (stage 1). Shapes [..., chunk, .]."""

    gc: jax.Array  # [..., c] cumulative log decay inside the chunk (<= 0, decreasing)
    decay: jax.Array  # [..., c, c] exp(gc_i - gc_j) for j <= i, else 0
    k_beta: jax.Array  # [..., c, key]
    a: jax.Array | None  # [..., c, c] strictly lower WY matrix (delta rule only)
    t_inv: jax.Array | None  # [..., c, c] (I + a)^-1 (delta rule only)
    u: jax.Array  # [..., c, value] pseudo-values
    w: jax.Array | None  # [..., c, key] state read-out keys (delta rule only)


def _intra_chunk(k, v, g, beta, *, delta: bool) -> _Intra:
    c = k.shape[-2]
    gc = jnp.cumsum(g, axis=-1)
    # Mask *before* exp: for j > i the difference is positive and overflows under strong
    # decay (cumulative sums of hundreds).
    causal = jnp.tril(jnp.ones((c, c), dtype=bool))
    decay = jnp.exp(jnp.where(causal, gc[..., :, None] - gc[..., None, :], -jnp.inf))
    k_beta = k * beta[..., None]
    if not delta:
        return _Intra(gc, decay, k_beta, None, None, v * beta[..., None], None)
    # WY form: inside a chunk the delta corrections couple the tokens through the unit
    # lower-triangular system (I + A), A_ij = beta_i (k_i . k_j) decay_ij for i > j.
    strict = jnp.tril(jnp.ones((c, c), dtype=bool), -1)
    a = jnp.where(strict, (k_beta @ _t(k)) * decay, 0.0)
    rhs = jnp.concatenate([v * beta[..., None], k_beta * jnp.exp(gc)[..., None]], axis=-1)
    t_inv = _invert_unit_lower(a)
    sol = t_inv @ rhs
    dv = v.shape[-1]
    return _Intra(gc, decay, k_beta, a, t_inv, sol[..., :dv], sol[..., dv:])


def _chunked_forward(q, k, v, g, beta, state, delta):
    """Chunked forward on chunk-major inputs [n, batch, heads, c, .]; q already scaled.

    Returns (o [n, batch, heads, c, value], final state, residuals for the backward).
    """
    it = _intra_chunk(k, v, g, beta, delta=delta)
    g_last = it.gc[..., -1]  # [n, batch, heads]
    k_to_end = k * jnp.exp(g_last[..., None] - it.gc)[..., None]  # keys decayed to chunk end

    # Stage 2: the only sequential part, one step per chunk: carry S across chunks.
    def step(s, xs):
        u_c, w_c, kd_c, gl_c = xs
        v_new = u_c - w_c @ s if delta else u_c  # [batch, heads, c, value]
        s_next = s * jnp.exp(gl_c)[..., None, None] + _t(kd_c) @ v_new
        return s_next, (s, v_new)

    w = it.w if delta else jnp.zeros(k.shape[:-1] + (0,), k.dtype)
    state, (s_start, v_new) = jax.lax.scan(step, state, (it.u, w, k_to_end, g_last))

    # Stage 3: outputs, all chunks in parallel: inter-chunk (state) + intra-chunk parts.
    qk = (q @ _t(k)) * it.decay
    o = (q * jnp.exp(it.gc)[..., None]) @ s_start + qk @ v_new
    return o, state, (s_start, v_new, it)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _chunked_core(q, k, v, g, beta, state, delta, precision):
    with _precision_scope(precision):
        o, state, _ = _chunked_forward(q, k, v, g, beta, state, delta)
    return o, state


def _chunked_core_fwd(q, k, v, g, beta, state, delta, precision):
    with _precision_scope(precision):
        o, final, (s_start, v_new, it) = _chunked_forward(q, k, v, g, beta, state, delta)
    # Residuals: the inputs, the state at each chunk start ([n, batch, heads, key, value],
    # 1/c of what a per-token scan stores) and the per-chunk WY quantities (each the size
    # of an input, or [c, c] per chunk). Recomputing the latter instead took 129-140 ms
    # vs 78-80 ms forward+backward at chunk 32 on a loaded 2-core CPU ((2, 2048, 4, 64)
    # fp32; no clear difference at chunk 64), for no memory that matters next to the inputs.
    return (o, final), (q, k, v, g, beta, s_start, v_new, it)


def _chunked_core_bwd(delta, precision, res, cts):
    with _precision_scope(precision):
        return _chunked_backward(delta, res, cts)


def _chunked_backward(delta, res, cts):
    """Hand-written backward of _chunked_forward (the analogue of fla's chunk backward)."""
    q, k, v, g, beta, s_start, v_new, it = res
    do, ds_final = cts
    gc, decay = it.gc, it.decay
    eg = jnp.exp(gc)
    g_last = gc[..., -1]
    to_end = jnp.exp(g_last[..., None] - gc)  # [..., c]
    k_to_end = k * to_end[..., None]
    q_g = q * eg[..., None]
    qk = (q @ _t(k)) * decay

    # Reverse scan over chunks: ds is dL/d(state at the chunk's end).
    def step(ds, xs):
        dv_intra, ds_out, kd_c, w_c, gl_c = xs
        dv_new = dv_intra + kd_c @ ds
        ds_prev = ds_out + jnp.exp(gl_c)[..., None, None] * ds
        if delta:
            ds_prev = ds_prev - _t(w_c) @ dv_new
        return ds_prev, (ds, dv_new)

    w = it.w if delta else jnp.zeros(k.shape[:-1] + (0,), k.dtype)
    xs = (_t(qk) @ do, _t(q_g) @ do, k_to_end, w, g_last)
    ds0, (ds_end, dv_new) = jax.lax.scan(step, ds_final, xs, reverse=True)

    # o = q_g @ s_start + qk @ v_new
    dq_g = do @ _t(s_start)
    dq = dq_g * eg[..., None]
    dgc = jnp.sum(dq_g * q_g, axis=-1)
    dqk = do @ _t(v_new)  # upper half is harmless: decay and qk are 0 there
    dp = dqk * decay
    dq = dq + dp @ k
    dk = _t(dp) @ q
    m = dqk * qk  # d/d(log decay_ij): +row i, -column j
    dgc = dgc + jnp.sum(m, axis=-1) - jnp.sum(m, axis=-2)
    # s_next = exp(g_last) s_start + k_to_end^T v_new
    dg_last = jnp.sum(ds_end * s_start, axis=(-2, -1)) * jnp.exp(g_last)
    dkd = v_new @ _t(ds_end)
    dk = dk + dkd * to_end[..., None]
    r = jnp.sum(dkd * k_to_end, axis=-1)
    dg_last = dg_last + jnp.sum(r, axis=-1)
    dgc = dgc - r
    if delta:
        # v_new = u - w s_start;  [u | w] = (I + A)^-1 [v beta | k_beta exp(gc)]
        dv_dim = v.shape[-1]
        dsol = jnp.concatenate([dv_new, -(dv_new @ _t(s_start))], axis=-1)
        drhs = _t(it.t_inv) @ dsol  # (I + A)^-T dsol
        sol = jnp.concatenate([it.u, it.w], axis=-1)
        strict = jnp.tril(jnp.ones(it.a.shape[-2:], dtype=bool), -1)
        da = jnp.where(strict, -(drhs @ _t(sol)), 0.0)
        drhs_u, drhs_w = drhs[..., :dv_dim], drhs[..., dv_dim:]
        dv = drhs_u * beta[..., None]
        dbeta = jnp.sum(drhs_u * v, axis=-1)
        dkb = drhs_w * eg[..., None]
        dgc = dgc + jnp.sum(drhs_w * it.k_beta * eg[..., None], axis=-1)
        dpa = da * decay
        dkb = dkb + dpa @ k
        dk = dk + _t(dpa) @ it.k_beta
        m2 = da * it.a
        dgc = dgc + jnp.sum(m2, axis=-1) - jnp.sum(m2, axis=-2)
        dk = dk + dkb * beta[..., None]
        dbeta = dbeta + jnp.sum(dkb * k, axis=-1)
    else:
        dv = dv_new * beta[..., None]
        dbeta = jnp.sum(dv_new * v, axis=-1)
    dgc = dgc.at[..., -1].add(dg_last)
    dg = jnp.flip(jnp.cumsum(jnp.flip(dgc, -1), axis=-1), -1)  # gc = cumsum(g)
    return dq, dk, dv, dg, dbeta, ds0


_chunked_core.defvjp(_chunked_core_fwd, _chunked_core_bwd)


def _chunked(q, k, v, g, beta, state, scale, *, chunk_size: int, delta: bool, precision):
    b, t, h, _ = q.shape
    dv = v.shape[-1]
    c = min(chunk_size, t)
    n = -(-t // c)
    pad = n * c - t
    if pad:
        # Padded steps have k = 0, beta = 0, g = 0: they leave S untouched exactly.
        zpad = lambda x: jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        q, k, v, g, beta = map(zpad, (q, k, v, g, beta))
    q, k, v, g, beta = (_to_chunks(x, n, c) for x in (q * scale, k, v, g, beta))
    o, state = _chunked_core(q, k, v, g, beta, state, delta, precision)
    o = jnp.moveaxis(o, 0, 1)  # [batch, n, heads, c, value]
    o = jnp.swapaxes(o, 2, 3).reshape(b, n * c, h, dv)
    return o[:, :t], state
