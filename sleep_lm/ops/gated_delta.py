"""Gated delta rule and gated linear rule: the fast-weight recurrences of sleep_lm.

Notation used throughout this module:

  q, k   [batch, time, heads, key]       queries and keys
  v      [batch, time, heads, value]     values
  g      [batch, time, heads]            log forget gate, g <= 0 (a_t = exp(g_t))
  beta   [batch, time, heads]            write strength in (0, 1)
  S      [batch, heads, key, value]      fast weights, key-major, always float32
  o      [batch, time, heads, value]     outputs, in v's dtype

Gated delta rule (Gated DeltaNet; the convention of flash-linear-attention's
``chunk_gated_delta_rule``)::

  S_t = exp(g_t) S_{t-1} + k_t (beta_t (v_t - exp(g_t) S_{t-1}^T k_t))^T
  o_t = scale * S_t^T q_t

Gated linear rule (the paper's eq. 3, no delta correction)::

  S_t = exp(g_t) S_{t-1} + beta_t k_t v_t^T
  o_t = scale * S_t^T q_t

Implementations (``impl=``):

* ``"recurrent"``: a ``lax.scan`` over time. The oracle, and the decode path (one token).
* ``"chunked"``: the WY / UT-transform chunked algorithm. Inside a chunk of C tokens
  everything is matmuls; a ``lax.scan`` carries S across chunks. For the delta rule the
  intra-chunk triangular system is inverted with matmuls only, by forward substitution
  (see ``_invert_unit_lower``); ``jax.scipy.linalg.solve_triangular`` deadlocked intermittently
  inside large CPU programs with jaxlib 0.10.2 (see shared/ANCHORS.md). The backward
  pass is hand-written (``jax.custom_vjp``): it keeps the inputs, the state at each chunk
  start and the per-chunk WY quantities (see ``_chunked_core_fwd``).
* ``"associative"`` (linear rule only): ``lax.associative_scan`` over time. It
  materialises S at every step ([batch, time, heads, key, value]); kept as an
  equivalence check and for short sequences.

All arithmetic is float32 whatever the input dtype: the state accumulates over the whole
sequence (and over sleep passes), where bfloat16 rounding would compound. That includes the
matmuls: by default (``precision="highest"``) every dot is traced at
``jax.lax.Precision.HIGHEST``, because JAX's default precision for float32 dots is TF32 on
Ampere and later NVIDIA GPUs and one bfloat16 pass on TPU. ``precision=None`` follows JAX's
global setting (``jax_default_matmul_precision``); the other names in PRECISIONS trade
accuracy for speed explicitly: ``jax.lax.Precision`` names ("default", "high", ...) and the
dot algorithm "BF16_BF16_F32" (bfloat16 operands, float32 accumulation).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

DELTA_IMPLS = ("chunked", "recurrent")
LINEAR_IMPLS = ("chunked", "associative", "recurrent")

# Diagonal blocks of the intra-chunk triangular system are inverted by row-wise forward
# substitution within blocks of this size; larger chunks are joined block by block.
_SOLVE_BLOCK = 16

# Names `precision=` takes besides None (``jax.default_matmul_precision``'s; "float32" is
# "highest", "tensorfloat32" is "high", "bfloat16" is "default"). "BF16_BF16_F32" is a dot
# algorithm: operands rounded to bfloat16, float32 accumulation, on GPU and TPU (XLA:CPU
# computes it in float32).
PRECISIONS = (
    "highest",
    "float32",
    "high",
    "tensorfloat32",
    "default",
    "bfloat16",
    "BF16_BF16_F32",
)


# ----------------------------------------------------------------------------- checks


def _check_inputs(
    q, k, v, g, beta, initial_state, scale, impl, impls: Sequence[str], chunk_size, precision
) -> None:
    """Raises ValueError naming the offending argument (before anything is traced)."""
    check_precision(precision)
    if impl not in impls:
        raise ValueError(f"impl must be one of {tuple(impls)}, got {impl!r}")
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    shapes = dict(q=q.shape, k=k.shape, v=v.shape, g=g.shape, beta=beta.shape)
    if q.ndim != 4:
        raise ValueError(f"q must be [batch, time, heads, key]; got shapes {shapes}")
    if k.shape != q.shape:
        raise ValueError(f"k must have q's shape [batch, time, heads, key]; got shapes {shapes}")
    if v.ndim != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [batch, time, heads, value] like q; got shapes {shapes}")
    for name, x in (("g", g), ("beta", beta)):
        if x.shape != q.shape[:3]:
            raise ValueError(f"{name} must be [batch, time, heads] = {q.shape[:3]}; got {shapes}")
    dtypes = dict(q=q.dtype, k=k.dtype, v=v.dtype, g=g.dtype, beta=beta.dtype)
    for name, dt in dtypes.items():
        if not jnp.issubdtype(dt, jnp.floating):
            raise ValueError(f"{name} must be floating point; got dtypes {dtypes}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k and v must share one dtype; got dtypes {dtypes}")
    if initial_state is not None:
        b, _, h, dk = q.shape
        want = (b, h, dk, v.shape[-1])
        if initial_state.shape != want:
            raise ValueError(
                f"initial_state must be [batch, heads, key, value] = {want}; "
                f"got {initial_state.shape}"
            )
        if initial_state.dtype != jnp.float32:
            raise ValueError(f"initial_state must be float32; got {initial_state.dtype}")
    if scale is not None and not isinstance(scale, (int, float)):
        raise ValueError(f"scale must be a Python number or None, got {type(scale).__name__}")


def check_precision(precision) -> None:
    """ValueError unless `precision` is None or one of PRECISIONS."""
    if precision is not None and precision not in PRECISIONS:
        names = ", ".join(repr(p) for p in PRECISIONS)
        raise ValueError(f"precision must be None or one of {names}; got {precision!r}")


def _precision_scope(precision):
    """The matmul precision of every dot traced inside (None: JAX's global default).

    Entered inside each traced function body, the custom VJP's forward and backward
    included, so the backward pass gets it too (it is traced later, during the transpose).
    """
    if precision is None:
        return contextlib.nullcontext()
    return jax.default_matmul_precision(precision)


def _prepare(q, k, v, g, beta, initial_state, scale):
    b, _, h, dk = q.shape
    dv = v.shape[-1]
    f32 = jnp.float32
    scale = dk**-0.5 if scale is None else float(scale)
    if initial_state is None:
        initial_state = jnp.zeros((b, h, dk, dv), f32)
    cast = lambda x: x.astype(f32)
    return cast(q), cast(k), cast(v), cast(g), cast(beta), initial_state, scale


# -------------------------------------------------------------------------- recurrent


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


# ------------------------------------------------------------------------ associative


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


# ---------------------------------------------------------------------------- chunked


def _invert_unit_lower(a: jax.Array) -> jax.Array:
    """(I + a)^-1 for strictly lower-triangular a [..., C, C], with matmuls only.

    Diagonal blocks of size b <= 16 are inverted by forward substitution, one row at a
    time: row i of T = (I + a)^-1 is e_i - sum_{j<i} a_ij T_j (each step one batched
    [1, b] @ [b, b] product). The blocks are then joined by block forward substitution,
    T_ij = -T_ii sum_k a_ik T_kj, which costs far fewer flops than working on the whole
    C x C matrix. An explicit inverse (rather than substituting on the right-hand side) is
    reused by the backward pass as T^T, and measured 2x faster on CPU than blockwise
    substitution on a [C, key + value] right-hand side.

    Why substitution and not the nilpotent power series (I - a)(I + a^2)(I + a^4)...
    (exact in exact arithmetic, and what this function used before): when keys are nearly
    aligned (a window of similar tokens) and the write strengths near 1, the entries of a
    are near 1 and its powers grow binomially, so the series cancels catastrophically in
    float32: it was off from a float64 recurrence by up to 2.9e-4 relative, against ~1e-6
    for substitution (tests/ops/test_gated_delta.py, aligned keys), at the same speed on CPU
    (benchmarks/RESULTS.md).
    """
    c = a.shape[-1]
    b = min(c, _SOLVE_BLOCK)
    if c % b:
        # Pad to whole blocks: the inverse of diag(I + a, I) is diag((I + a)^-1, I).
        c_pad = -(-c // b) * b
        pad = [(0, 0)] * (a.ndim - 2) + [(0, c_pad - c), (0, c_pad - c)]
        return _invert_unit_lower(jnp.pad(a, pad))[..., :c, :c]

    def invert_block(blk):
        # Rows j >= i of t are still identity rows when row i is computed, and blk[i, j]
        # is 0 there, so the product only reads the finished rows j < i.
        t = jnp.broadcast_to(jnp.eye(blk.shape[-1], dtype=blk.dtype), blk.shape)
        for i in range(1, blk.shape[-1]):
            row = t[..., i : i + 1, :] - blk[..., i : i + 1, :i] @ t[..., :i, :]
            t = t.at[..., i : i + 1, :].set(row)
        return t

    # All diagonal blocks at once ([..., blocks, b, b]): one substitution of b - 1 steps
    # instead of one per block keeps the program (and its compile time) small.
    diags = invert_block(
        jnp.stack([a[..., i * b : (i + 1) * b, i * b : (i + 1) * b] for i in range(c // b)], -3)
    )
    inv = None
    for i in range(c // b):
        rows = slice(i * b, (i + 1) * b)
        diag = diags[..., i, :, :]
        if inv is None:
            inv = diag
            continue
        left = -diag @ (a[..., rows, : i * b] @ inv)  # [..., b, i*b]
        widths = [(0, 0)] * (a.ndim - 2)
        inv = jnp.concatenate(
            [jnp.pad(inv, widths + [(0, 0), (0, b)]), jnp.concatenate([left, diag], -1)],
            axis=-2,
        )
    return inv


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


# ------------------------------------------------------------------------------ API


@functools.partial(jax.jit, static_argnames=("scale", "impl", "chunk_size", "delta", "precision"))
def _run(q, k, v, g, beta, initial_state, *, scale, impl, chunk_size, delta, precision):
    out_dtype = v.dtype
    q, k, v, g, beta, state, scale = _prepare(q, k, v, g, beta, initial_state, scale)
    if impl == "chunked":
        o, state = _chunked(
            q, k, v, g, beta, state, scale, chunk_size=chunk_size, delta=delta, precision=precision
        )
    else:
        # JAX differentiates these itself; a dot's transpose keeps the dot's precision.
        with _precision_scope(precision):
            if impl == "recurrent":
                o, state = _recurrent(q, k, v, g, beta, state, scale, delta=delta)
            else:
                o, state = _associative(q, k, v, g, beta, state, scale)
    return o.astype(out_dtype), state


def _checked_run(q, k, v, g, beta, initial_state, scale, impl, chunk_size, precision, *, delta):
    """Both public rules: validate (before tracing), then the jitted `_run`."""
    impls = DELTA_IMPLS if delta else LINEAR_IMPLS
    _check_inputs(q, k, v, g, beta, initial_state, scale, impl, impls, chunk_size, precision)
    return _run(
        q,
        k,
        v,
        g,
        beta,
        initial_state,
        scale=scale,
        impl=impl,
        chunk_size=chunk_size,
        delta=delta,
        precision=precision,
    )


def gated_delta_rule(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    g: jax.Array,
    beta: jax.Array,
    *,
    initial_state: jax.Array | None = None,
    scale: float | None = None,
    impl: str = "chunked",
    chunk_size: int = 64,
    precision: str | None = "highest",
) -> tuple[jax.Array, jax.Array]:
    """Gated delta rule over a sequence; returns ``(o, final_state)``.

    Args:
      q, k: [batch, time, heads, key]. Gated DeltaNet expects L2-normalised q and k.
      v: [batch, time, heads, value], same dtype as q and k.
      g: [batch, time, heads] log forget gate (<= 0).
      beta: [batch, time, heads] write strength in (0, 1).
      initial_state: [batch, heads, key, value] float32 fast weights; None means zeros.
      scale: output scale; defaults to key ** -0.5.
      impl: "chunked" (default, WY chunked form) or "recurrent" (token scan, the oracle).
      chunk_size: tokens per chunk for impl="chunked"; any sequence length works.
      precision: matmul precision of every dot inside: "highest" (default; full float32
        on every backend), None (JAX's global default: TF32 on recent NVIDIA GPUs), or
        another name in PRECISIONS ("default", "tensorfloat32", "BF16_BF16_F32", ...).

    Returns:
      o: [batch, time, heads, value] in v's dtype, and the final state
      [batch, heads, key, value] float32. Differentiable in every input.
    """
    args = (q, k, v, g, beta, initial_state, scale, impl, chunk_size, precision)
    return _checked_run(*args, delta=True)


def gated_linear_rule(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    g: jax.Array,
    beta: jax.Array,
    *,
    initial_state: jax.Array | None = None,
    scale: float | None = None,
    impl: str = "associative",
    chunk_size: int = 64,
    precision: str | None = "highest",
) -> tuple[jax.Array, jax.Array]:
    """Gated linear (Hebbian) rule, the paper's eq. 3; returns ``(o, final_state)``.

    ``S_t = exp(g_t) S_{t-1} + beta_t k_t v_t^T``, ``o_t = scale * S_t^T q_t``. Same
    shapes and conventions as :func:`gated_delta_rule`. ``impl`` is "associative"
    (``lax.associative_scan``; memory grows as time x key x value), "recurrent", or
    "chunked" (the delta rule's chunked form without the triangular solve). ``precision``
    as for :func:`gated_delta_rule`.
    """
    args = (q, k, v, g, beta, initial_state, scale, impl, chunk_size, precision)
    return _checked_run(*args, delta=False)
