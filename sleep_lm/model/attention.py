"""Causal softmax attention over the current tokens plus a ring-buffer KV cache.

One module for every family, switched by its config: multi-head or grouped-query
(``kv_heads``), q/k/v bias (``qkv_bias``), rotary positions (``rope_theta``; None = none,
e.g. learned positions added to the embeddings), and the mask window (``window``: the sleep
window L for full attention, a shorter one for sliding-window layers). The scores and the
softmax are ``dot_product_attention``, which also holds the memory-efficient implementations
(``model.attention_impl``: chunked and rematerialised, cuDNN's fused kernel, or Pallas splash
attention on TPUs).

Each query at global position p sees the keys at positions p - window < p' <= p that are
either among the current tokens or held in the cache: a sliding window of ``window`` keys
(itself and window - 1 earlier tokens). Within one window of a hard-evicted sequence the
cache is empty and this is plain causal attention over the window (the paper's eq. 1-2).
With sliding eviction the cache still holds the previous window, and the mask keeps
exactly its last window - 1 tokens visible.

Padding (``valid`` [batch, time] bool, False = a padded token): a padded token's key gets
the position ``EMPTY_POSITION``, both among the current keys and in the slot it is written
to in the cache, so no query ever attends to it, in this call or any later one (the cache
needs no validity bit of its own: an empty slot already is "never attend").
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sleep_lm.model.positions import rotary
from sleep_lm.model.state import EMPTY_POSITION, FreshCache, KVCache, constrain
from sleep_lm.ops import splash

# Finite mask value: a row with no visible key (only a padded query, whose output nothing
# reads: an unpadded query always sees itself) gives a uniform softmax instead of NaN.
_MASKED = -1e30


def key_positions(positions: jax.Array, batch: int, valid: jax.Array | None = None) -> jax.Array:
    """[batch, time] int32 position of each key: ``positions`` [time], or ``EMPTY_POSITION``
    where ``valid`` [batch, time] is False (a padded token: masked like an empty slot)."""
    pos = jnp.broadcast_to(positions.astype(jnp.int32), (batch, positions.shape[0]))
    if valid is None:
        return pos
    return jnp.where(valid, pos, EMPTY_POSITION)


def write_cache(
    cache: KVCache,
    k: jax.Array,
    v: jax.Array,
    positions: jax.Array,
    valid: jax.Array | None = None,
) -> KVCache:
    """Writes the tokens at ``positions`` [time] (consecutive) into their ring slots.

    k, v: [batch, time, heads, head_dim]. Only the last cache_len tokens are kept when time
    exceeds the cache; a zero-length cache stays empty. valid: [batch, time] bool or None;
    a padded token's slot is marked empty (``EMPTY_POSITION``), so it is never attended to.
    """
    n = cache.keys.shape[1]
    if n == 0:
        return cache
    if k.shape[1] > n:
        k, v, positions = k[:, -n:], v[:, -n:], positions[-n:]
        valid = None if valid is None else valid[:, -n:]
    slots = positions % n  # distinct, since at most n consecutive positions
    batch = k.shape[0]
    pos = key_positions(positions, batch, valid)
    return KVCache(
        keys=cache.keys.at[:, slots].set(k.astype(cache.keys.dtype)),
        values=cache.values.at[:, slots].set(v.astype(cache.values.dtype)),
        positions=cache.positions.at[:, slots].set(pos),
    )


def attention_mask(q_pos: jax.Array, k_pos: jax.Array, window: int) -> jax.Array:
    """[batch, 1, query, key] bool: key filled, causal, and within the last ``window``.

    q_pos: [query] global positions; k_pos: [batch, key] (-1 marks an empty slot).
    """
    q = q_pos[None, :, None]
    k = k_pos[:, None, :]
    visible = (k != EMPTY_POSITION) & (k <= q) & (q - k < window)
    return visible[:, None]


def _attend(q, keys, values, q_pos, k_pos, window: int, dtype) -> jax.Array:
    """The masked softmax (the ``xla`` implementation): float32 scores [.., query, key].

    Queries are grouped under their kv head (grouped-query attention without repeating the
    keys) and both products run head-major, [batch, kv_heads, group * query, key]: the
    operands are transposed, not the [query, key] scores (XLA:CPU otherwise writes the
    scores in key-major order and transposes them, ~1.5x slower at 2,000 keys).
    """
    batch, time, heads, dim = q.shape
    kv_heads, key_len = keys.shape[2], keys.shape[1]
    group = heads // kv_heads
    # [batch, query, kv, group, dim] -> [batch, kv, group * query, dim]
    qg = q.reshape(batch, time, kv_heads, group, dim).transpose(0, 2, 3, 1, 4)
    qg = qg.reshape(batch, kv_heads, group * time, dim)
    keys_t = keys.astype(q.dtype).transpose(0, 2, 1, 3)  # [batch, kv, key, dim]
    values_t = values.astype(dtype).transpose(0, 2, 1, 3)
    scores = jnp.einsum("bhqd,bhkd->bhqk", qg, keys_t, preferred_element_type=jnp.float32)
    scores = scores.reshape(batch, kv_heads, group, time, key_len) * dim**-0.5
    mask = attention_mask(q_pos, k_pos, window)[:, :, None]  # [batch, 1, 1, query, key]
    scores = jnp.where(mask, scores, _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    probs = probs.reshape(batch, kv_heads, group * time, key_len)
    out = jnp.einsum("bhqk,bhkd->bhqd", probs, values_t)  # [batch, kv, group * query, dim]
    out = out.reshape(batch, kv_heads, group, time, dim).transpose(0, 3, 1, 2, 4)
    return out.reshape(batch, time, heads, dim)


# Above this many query chunks, ``_chunked`` loops with ``lax.map`` (one compiled body)
# instead of unrolling its causal key ranges (one body per chunk).
_MAX_UNROLLED_CHUNKS = 16


def _causal_chunks(q, keys, values, q_pos, k_pos, window: int, dtype, chunk: int) -> jax.Array:
    """``_chunked`` for a hard-evicted window (keys = the queries' own tokens, in order):
    chunk [s, e) attends to the static key range [max(0, s - window + 1), e), unrolled.

    A custom VJP keeps only the inputs for the backward, which recomputes one chunk's
    scores at a time in reverse order; ``optimization_barrier`` ties each chunk's inputs
    to the previous chunk's result (forward) or gradients (backward), so the compiler
    cannot run the chunks side by side and hold several score tensors at once.
    """
    time = q.shape[1]
    ranges = [(s, min(s + chunk, time), max(0, s - window + 1)) for s in range(0, time, chunk)]

    def inputs(i, q, keys, values):  # chunk i's queries and the keys it can see
        s, e, lo = ranges[i]
        return q[:, s:e], keys[:, lo:e], values[:, lo:e]

    def attend(i, q_chunk, keys_range, values_range, q_pos, k_pos):
        s, e, lo = ranges[i]
        return _attend(q_chunk, keys_range, values_range, q_pos[s:e], k_pos[:, lo:e], window, dtype)

    def forward(q, keys, values, q_pos, k_pos):
        outs = []
        for i in range(len(ranges)):
            args = inputs(i, q, keys, values)
            if outs:
                args, _ = jax.lax.optimization_barrier((args, outs[-1]))
            outs.append(attend(i, *args, q_pos, k_pos))
        return jnp.concatenate(outs, axis=1)

    # The positions are arguments (integer: no cotangent), not closed over: a custom VJP
    # may not close over traced values.
    @jax.custom_vjp
    def attention(q, keys, values, q_pos, k_pos):
        return forward(q, keys, values, q_pos, k_pos)

    def attention_fwd(q, keys, values, q_pos, k_pos):
        return forward(q, keys, values, q_pos, k_pos), (q, keys, values, q_pos, k_pos)

    def attention_bwd(residuals, cotangent):
        q, keys, values, q_pos, k_pos = residuals
        dq, dk, dv = jnp.zeros_like(q), jnp.zeros_like(keys), jnp.zeros_like(values)
        for i in reversed(range(len(ranges))):
            s, e, lo = ranges[i]
            args = inputs(i, q, keys, values)
            args, (dq, dk, dv) = jax.lax.optimization_barrier((args, (dq, dk, dv)))
            chunk_fn = functools.partial(attend, i, q_pos=q_pos, k_pos=k_pos)
            _, vjp = jax.vjp(chunk_fn, *args)
            dq_i, dk_i, dv_i = vjp(cotangent[:, s:e])  # each in its input's dtype
            dq = dq.at[:, s:e].add(dq_i)
            dk = dk.at[:, lo:e].add(dk_i)
            dv = dv.at[:, lo:e].add(dv_i)
        return dq, dk, dv, None, None

    attention.defvjp(attention_fwd, attention_bwd)
    return attention(q, keys, values, q_pos, k_pos)


def _chunked(
    q, keys, values, q_pos, k_pos, window: int, dtype, chunk: int, same_tokens: bool = False
) -> jax.Array:
    """``_attend`` over ``chunk`` queries at a time, each chunk rematerialised.

    Every query row is computed exactly as in ``_attend`` (its softmax sees all its visible
    keys at once), so the result equals it up to float rounding, and the backward recomputes
    one chunk's [chunk, key] scores at a time: no [query, key] tensor outlives one chunk.

    ``same_tokens`` (the keys are the queries' own tokens in order, no cache: a hard-evicted
    window): chunk [s, e) can see only keys [s - window + 1, e), so each chunk reads just
    that static slice (``_causal_chunks``: at 8 chunks, 9/16 of the keys), unrolled up to
    ``_MAX_UNROLLED_CHUNKS``. The skipped keys would be masked in ``_attend`` anyway:
    their softmax weight is exactly 0. Otherwise the chunks run in a ``lax.map`` whose body
    is ``jax.checkpoint``-ed, over all keys (loop constants, kept once), the queries padded
    to a multiple of ``chunk``.
    """
    batch, time, heads, dim = q.shape
    count = -(-time // chunk)
    if same_tokens and keys.shape[1] == time and count <= _MAX_UNROLLED_CHUNKS:
        return _causal_chunks(q, keys, values, q_pos, k_pos, window, dtype, chunk)

    pad = count * chunk - time
    if pad:
        q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
        q_pos = jnp.pad(q_pos, (0, pad), mode="edge")
    q_chunks = q.reshape(batch, count, chunk, heads, dim).swapaxes(0, 1)
    pos_chunks = q_pos.reshape(count, chunk)

    @functools.partial(jax.checkpoint, prevent_cse=False)  # inside a loop: no CSE to fear
    def one_chunk(args):
        q_chunk, pos = args
        return _attend(q_chunk, keys, values, pos, k_pos, window, dtype)

    out = jax.lax.map(one_chunk, (q_chunks, pos_chunks))  # [count, batch, chunk, heads, dim]
    return out.swapaxes(0, 1).reshape(batch, count * chunk, heads, dim)[:, :time]


def fused_attention(
    q, keys, values, q_pos, k_pos, window: int, dtype, implementation: str = "cudnn"
) -> jax.Array:
    """``jax.nn.dot_product_attention`` with this module's mask as its boolean ``mask``
    (any cache layout and padding), inputs in ``dtype``. ``implementation="cudnn"`` is
    cuDNN's fused kernel (NVIDIA GPUs, bfloat16 / float16: it keeps no score tensor for the
    backward); "xla" is JAX's reference path, which tests use to check the arguments."""
    mask = attention_mask(q_pos, k_pos, window)  # [batch, 1, query, key]
    out = jax.nn.dot_product_attention(
        q.astype(dtype),
        keys.astype(dtype),
        values.astype(dtype),
        mask=mask,
        implementation=implementation,
    )
    return out.astype(dtype)


def trace_platform() -> str:
    """The platform the traced computation is for: the context mesh's (a compile for a TPU
    target from a CPU host traces under a mesh of TPU devices), else JAX's default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    return device.platform if device is not None else jax.default_backend()


def resolve_impl(
    impl: str, queries: int, chunk: int, *, platform: str = "cpu", splash_fits: bool = False
) -> str:
    """The implementation ``impl`` ("auto" | "xla" | "chunked" | "cudnn" | "splash") means
    for a call with ``queries`` queries on ``platform``: "auto" is "xla" for at most one
    chunk of queries (nothing to save, no loop overhead, and no padding to the splash
    kernel's 128-token blocks), else "splash" on a TPU when the call fits it
    (``splash_fits``: a hard-evicted window, see ``dot_product_attention``), else "chunked".
    "splash" is splash wherever it can run (a TPU, a call that fits, whatever its length),
    else what "auto" picks without splash: one config serves a TPU run, its streaming
    inference and an init traced on the host."""
    if impl == "splash":
        if platform == "tpu" and splash_fits:
            return "splash"
        impl = "auto"
    if impl == "auto":
        if queries <= chunk:
            return "xla"
        return "splash" if platform == "tpu" and splash_fits else "chunked"
    return impl


def _batch_axes():
    """Mesh axes of the batch dimension under the sharding context (None outside one)."""
    if jax.sharding.get_abstract_mesh().empty:
        return None
    return nn.logical_to_mesh_axes(("batch",))[0]


def dot_product_attention(
    q: jax.Array,
    keys: jax.Array,
    values: jax.Array,
    q_pos: jax.Array,
    k_pos: jax.Array,
    window: int,
    dtype,
    impl: str = "xla",
    chunk: int = 256,
    *,
    same_tokens: bool = False,
    interpret: bool = False,
) -> jax.Array:
    """Masked softmax attention; scores and softmax in float32 whatever the compute dtype.

    q: [batch, query, heads, head_dim]; keys, values: [batch, key, kv_heads, head_dim]
    (heads a multiple of kv_heads: query head h reads kv head h // (heads / kv_heads), as
    HF's repeat_kv); q_pos: [query] global positions; k_pos: [batch, key] (EMPTY_POSITION
    never attended to). Returns [batch, query, heads, head_dim] in ``dtype``.

    ``impl`` (``model.attention_impl``): "xla" materialises the float32 [query, key] scores
    and keeps them (and the probabilities) for the backward; "chunked" computes ``chunk``
    queries at a time and recomputes each chunk's scores in the backward (``_chunked``;
    every platform, equal to "xla" to float rounding); "cudnn" is cuDNN's fused attention
    (``fused_attention``; NVIDIA GPUs, bfloat16); "splash" is Pallas splash attention
    (``ops/splash.py``; TPUs) for the calls it fits: ``same_tokens`` (the keys are the
    queries' own tokens, no cache: a hard-evicted window) with at most ``window`` queries,
    so the mask is causal plus padding; other calls fall back. "auto" picks "xla" for at
    most one chunk of queries, else "splash" on a TPU where it fits, else "chunked"
    (``resolve_impl``; it does not pick "cudnn", which is opt-in until benchmarks/gpu.sh has
    checked it on a GPU). ``interpret``: run splash through the Pallas interpreter on any
    platform (tests).
    """
    fits = same_tokens and q.shape[1] <= window
    impl = resolve_impl(
        impl, q.shape[1], chunk, platform="tpu" if interpret else trace_platform(), splash_fits=fits
    )
    if impl == "splash":
        valid = k_pos != EMPTY_POSITION
        out = splash.causal_attention(
            q.astype(dtype),
            keys.astype(dtype),
            values.astype(dtype),
            valid,
            interpret=interpret,
            batch_axes=_batch_axes(),
        )
        return out.astype(dtype)
    if impl == "chunked":
        return _chunked(
            q, keys, values, q_pos, k_pos, window, dtype, chunk, same_tokens=same_tokens
        )
    if impl == "cudnn":
        return fused_attention(q, keys, values, q_pos, k_pos, window, dtype)
    return _attend(q, keys, values, q_pos, k_pos, window, dtype)


class Attention(nn.Module):
    """Causal softmax attention with an explicit KV cache.

    Attributes:
      config: a model config (model/config.py): width, heads, kv_heads, head_dim,
        rope_theta (None: no rotary), qkv_bias, compute_dtype, dense, attention_impl,
        attention_chunk.
      window: mask window: a query sees itself and window - 1 earlier keys.
    """

    config: Any
    window: int

    @nn.compact
    def __call__(
        self, x: jax.Array, cache: KVCache, positions: jax.Array, valid: jax.Array | None = None
    ) -> tuple[jax.Array, KVCache]:
        """x: [batch, time, width]; cache: KVCache [batch, cache_len, kv_heads, head_dim]
        (a ``FreshCache``: known to be empty, so only the current tokens are attended to);
        positions: [time] global; valid: [batch, time] bool or None (all valid): padded
        tokens are never attended to. Returns (y [batch, time, width], new KVCache)."""
        cfg = self.config
        batch, time, _ = x.shape
        heads, kv_heads, dim = cfg.heads, cfg.kv_heads, cfg.head_dim
        dense = functools.partial(cfg.dense, use_bias=cfg.qkv_bias)
        q = dense(heads * dim, name="q_proj")(x).reshape(batch, time, heads, dim)
        k = dense(kv_heads * dim, name="k_proj")(x).reshape(batch, time, kv_heads, dim)
        v = dense(kv_heads * dim, name="v_proj")(x).reshape(batch, time, kv_heads, dim)
        if cfg.rope_theta is not None:
            q = rotary(q, positions, base=cfg.rope_theta)
            k = rotary(k, positions, base=cfg.rope_theta)

        # A FreshCache is empty by the caller's word: attend to the current tokens alone.
        cached = bool(cache.keys.shape[1]) and not isinstance(cache, FreshCache)
        if cached:
            keys = jnp.concatenate([cache.keys, k.astype(cache.keys.dtype)], axis=1)
            values = jnp.concatenate([cache.values, v.astype(cache.values.dtype)], axis=1)
            cur = key_positions(positions, batch, valid)
            k_pos = jnp.concatenate([cache.positions, cur], axis=1)
        else:  # no cache, or an empty one (hard eviction): skip the concatenation
            keys, values = k, v
            k_pos = key_positions(positions, batch, valid)

        out = dot_product_attention(
            q,
            keys,
            values,
            positions,
            k_pos,
            self.window,
            cfg.compute_dtype,
            impl=cfg.attention_impl,
            chunk=cfg.attention_chunk,
            same_tokens=not cached,
        )
        y = cfg.dense(cfg.width, name="o_proj")(out.reshape(batch, time, heads * dim))
        return y, constrain(write_cache(KVCache(*cache), k, v, positions, valid))
