"""Causal attention through Pallas splash attention (TPU), with padding as segment ids.

``jax.experimental.pallas.ops.tpu.splash_attention`` is JAX's block-sparse flash attention
for TPUs: it never materialises a [query, key] score tensor, in the forward or the backward
(its residuals are the output and the per-row log-sum-exp), and skips the blocks a causal
mask leaves empty. Here it computes the attention of a hard-evicted window: every query sees
the keys at or before it among the same ``time`` tokens, except padded ones.

Shapes: q [batch, time, heads, head_dim]; k, v [batch, time, kv_heads, head_dim] (heads a
multiple of kv_heads: query head h reads kv head h // (heads / kv_heads)); valid [batch,
time] bool (False: a padded token, never attended to). The kernel is called per batch
element and per kv head (``make_splash_mqa``: the group of query heads sharing one kv head),
the sequence padded to a multiple of the kernel's block. Padding is a segment id: real tokens
are segment 1, padded tokens and the block padding segment 0, so a real query sees only real
keys, and a padded query (whose output nothing reads) sees itself.

``interpret=True`` runs the same kernel through the Pallas interpreter on any backend
(tests, on CPU); otherwise it needs a TPU. Under a mesh, ``batch_axes`` (the mesh axes of
the batch dimension) wrap the call in ``jax.shard_map``, so each device runs the kernel on
its own examples (a Pallas call is opaque to XLA's partitioner, which would otherwise gather
the whole batch onto every device). Heads are not split inside: on a mesh whose `tensor`
axis splits them, they are gathered for the call (correct, not the fastest layout).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

# Query and key blocks of the kernel (its default 512 where the sequence allows; TPU tiles
# want multiples of 128).
_BLOCK = 512
_MIN_BLOCK = 128


def block_size(time: int) -> int:
    """The kernel's block for a sequence of ``time`` tokens (time is padded to a multiple)."""
    return _BLOCK if time >= _BLOCK else _MIN_BLOCK


def _splash():
    # Imported on first use: a JAX whose Pallas lacks the TPU kernels still imports sleep_lm.
    from jax.experimental.pallas.ops.tpu import splash_attention

    return splash_attention


@functools.lru_cache(maxsize=32)
def _kernel(length: int, group: int, block: int, interpret: bool):
    splash = _splash()
    mask = splash.MultiHeadMask([splash.CausalMask((length, length))] * group)
    sizes = splash.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    return splash.make_splash_mqa_single_device(mask, block_sizes=sizes, interpret=interpret)


def _local(q, k, v, valid, *, interpret: bool):
    """Unsharded: see ``causal_attention``."""
    batch, time, heads, dim = q.shape
    kv_heads = k.shape[2]
    group = heads // kv_heads
    block = block_size(time)
    length = -(-time // block) * block
    pad = ((0, 0), (0, length - time), (0, 0), (0, 0))
    # The kernel takes unscaled logits q . k: scale the queries, as _attend scales scores.
    q = jnp.pad(q * jnp.asarray(dim**-0.5, q.dtype), pad)
    k, v = jnp.pad(k, pad), jnp.pad(v, pad)
    segments = jnp.pad(valid.astype(jnp.int32), ((0, 0), (0, length - time)))
    kernel = _kernel(length, group, block, interpret)
    segment_ids = _splash().SegmentIds

    def one(q1, k1, v1, seg):  # q1 [group, length, dim]; k1, v1 [length, dim]; seg [length]
        return kernel(q1, k1, v1, segment_ids=segment_ids(q=seg, kv=seg))

    per_kv_head = jax.vmap(one, in_axes=(0, 0, 0, None))
    qg = q.reshape(batch, length, kv_heads, group, dim).transpose(0, 2, 3, 1, 4)
    out = jax.vmap(per_kv_head)(qg, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), segments)
    # out [batch, kv_heads, group, length, dim] -> [batch, time, heads, dim]
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, length, heads, dim)[:, :time]


def causal_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    valid: jax.Array,
    *,
    interpret: bool = False,
    batch_axes=None,
) -> jax.Array:
    """Causal softmax attention of ``q`` over ``k``, ``v`` (the same ``time`` tokens), padded
    keys masked; returns [batch, time, heads, head_dim] in q's dtype (scores accumulate in
    float32 inside the kernel). ``batch_axes``: mesh axes of the batch dimension (None or
    () outside a mesh, or when the batch is not split)."""
    fn = functools.partial(_local, interpret=interpret)
    if not batch_axes:
        return fn(q, k, v, valid)
    spec = PartitionSpec(batch_axes)
    return jax.shard_map(fn, in_specs=(spec, spec, spec, spec), out_specs=spec, check_vma=False)(
        q, k, v, valid
    )
