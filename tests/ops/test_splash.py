"""ops/splash.py: Pallas splash attention (run by the Pallas interpreter on CPU) against a
float64 NumPy causal softmax with padded keys masked; the block choice. The TPU compile of
the same kernel is in tests/test_compile.py, the model-level equality with the dense path in
tests/model/test_memory_options.py."""

import jax
import numpy as np
import pytest

from sleep_lm.ops import splash
from tests.tolerance import assert_relative


def reference(q, k, v, valid):
    """float64 causal attention; query head h reads kv head h // (heads / kv_heads)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    batch, time, heads, dim = q.shape
    k = np.repeat(k, heads // k.shape[2], axis=2)
    v = np.repeat(v, heads // v.shape[2], axis=2)
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(dim)
    causal = np.tril(np.ones((time, time), bool))
    mask = causal[None, None] & np.asarray(valid)[:, None, None, :]
    scores = np.where(mask, scores, -1e30)  # a padded query (no visible key): unused
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", probs, v)


def test_block_size():
    assert splash.block_size(24) == 128 and splash.block_size(511) == 128
    assert splash.block_size(512) == 512 and splash.block_size(2000) == 512


@pytest.mark.parametrize("time", [128, 100])  # one whole block; a block with padding
def test_causal_attention_matches_float64(time):
    batch, heads, kv_heads, dim = 2, 4, 2, 16
    ks = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(ks[0], (batch, time, heads, dim))
    k = jax.random.normal(ks[1], (batch, time, kv_heads, dim))
    v = jax.random.normal(ks[2], (batch, time, kv_heads, dim))
    valid = np.ones((batch, time), bool)
    valid[1, :9] = False  # example 1 left-padded by 9 tokens
    with jax.default_matmul_precision("highest"):
        out = splash.causal_attention(q, k, v, valid, interpret=True)
    want = reference(q, k, v, valid)
    assert out.shape == q.shape and out.dtype == q.dtype
    # Measured (2-core CPU, jax 0.10.2): ~2e-7 relative on the real queries.
    assert_relative(np.asarray(out)[valid], want[valid], 1e-5, "splash vs float64")
