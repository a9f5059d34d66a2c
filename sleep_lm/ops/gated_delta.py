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
  (see ``triangular._invert_unit_lower``); ``jax.scipy.linalg.solve_triangular``
  deadlocked intermittently inside large CPU programs with jaxlib 0.10.2 (see
  shared/ANCHORS.md). The backward pass is hand-written (``jax.custom_vjp``): it keeps the
  inputs, the state at each chunk start and the per-chunk WY quantities (see
  ``chunked._chunked_core_fwd``).
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

Modules: this one checks the arguments and dispatches (``gated_delta_rule``,
``gated_linear_rule``); ``recurrent``, ``chunked`` (with ``triangular``) and ``associative``
hold the implementations, ``precision`` the matmul precision.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from sleep_lm.ops.associative import _associative
from sleep_lm.ops.chunked import _chunked
from sleep_lm.ops.precision import PRECISIONS, _precision_scope, check_precision
from sleep_lm.ops.recurrent import _recurrent

__all__ = [
    "DELTA_IMPLS",
    "LINEAR_IMPLS",
    "PRECISIONS",
    "check_precision",
    "gated_delta_rule",
    "gated_linear_rule",
]


DELTA_IMPLS = ("chunked", "recurrent")
LINEAR_IMPLS = ("chunked", "associative", "recurrent")


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


def _prepare(q, k, v, g, beta, initial_state, scale):
    b, _, h, dk = q.shape
    dv = v.shape[-1]
    f32 = jnp.float32
    scale = dk**-0.5 if scale is None else float(scale)
    if initial_state is None:
        initial_state = jnp.zeros((b, h, dk, dv), f32)
    cast = lambda x: x.astype(f32)
    return cast(q), cast(k), cast(v), cast(g), cast(beta), initial_state, scale


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
