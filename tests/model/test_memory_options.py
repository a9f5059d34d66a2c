"""model.remat_policy and model.attention_impl change memory and time, never the values:
the chunked attention equals the dense one (outputs and gradients, with a cache, GQA,
padding and a chunk that does not divide the queries), so does Pallas splash attention (run
by the Pallas interpreter; tests/test_compile.py compiles it for a TPU), the fused path gets
the same mask,
and every family's sleep loss and gradients are the same under each option (float32)."""

from __future__ import annotations

import dataclasses
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sleep_lm import sleep
from sleep_lm.model import ModelConfig
from sleep_lm.model.attention import (
    _attend,
    _chunked,
    attention_mask,
    dot_product_attention,
    fused_attention,
    resolve_impl,
)
from sleep_lm.model.hybrid import HybridLM
from sleep_lm.model.state import EMPTY_POSITION
from sleep_lm.pretrained import hf
from sleep_lm.pretrained.ouro import insert_jet_layers
from tests.tolerance import assert_relative

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"


def _attention_case(heads: int, kv_heads: int, cached: int, seed: int = 0):
    """Queries at positions cached..cached+7 over a ring cache of ``cached`` slots (in ring
    order, one slot empty) plus the current keys, two of them padding in example 0."""
    time, dim, batch = 8, 4, 2
    ks = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(ks[0], (batch, time, heads, dim))
    keys = jax.random.normal(ks[1], (batch, cached + time, kv_heads, dim))
    values = jax.random.normal(ks[2], (batch, cached + time, kv_heads, dim))
    q_pos = jnp.arange(cached, cached + time)
    ring = np.roll(np.arange(cached), 2)  # slot order is not position order
    if cached:
        ring[0] = EMPTY_POSITION
    cur = np.tile(np.asarray(q_pos), (batch, 1))
    cur[0, :2] = EMPTY_POSITION  # left padding in example 0
    k_pos = jnp.asarray(np.concatenate([np.tile(ring, (batch, 1)), cur], axis=1), jnp.int32)
    return q, keys, values, q_pos, k_pos


@pytest.mark.parametrize(
    "heads,kv_heads,cached,same_tokens", [(2, 2, 0, False), (4, 2, 5, False), (4, 2, 0, True)]
)
def test_chunked_equals_dense_values_and_gradients(heads, kv_heads, cached, same_tokens):
    """``same_tokens`` (a hard-evicted window): each chunk reads only its causal key range
    [start - window + 1, end) (window 6 < 8 queries, so the last chunk also skips key 0).
    A padded query sees no key at all, and its output (a uniform average over whichever
    keys the path holds) is not defined by the model; so there the comparison is over the
    real queries and the padded ones get no cotangent, as in a loss."""
    q, keys, values, q_pos, k_pos = _attention_case(heads, kv_heads, cached)
    window = 6
    cotangent = jax.random.normal(jax.random.key(9), q.shape)
    seen = np.asarray(attention_mask(q_pos, k_pos, window)[:, 0].any(-1))  # [batch, query]
    if same_tokens:
        cotangent = cotangent * seen[:, :, None, None]

    def run(impl):
        # Positions are traced jit arguments, as in the model's window and loop scans.
        def f(q, keys, values, q_pos, k_pos):
            out = dot_product_attention(
                q,
                keys,
                values,
                q_pos,
                k_pos,
                window,
                jnp.float32,
                impl=impl,
                chunk=3,
                same_tokens=same_tokens,
            )
            return jnp.sum(out * cotangent), out

        grad = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))
        (_, out), grads = grad(q, keys, values, q_pos, k_pos)
        return out, grads

    dense_out, dense_grads = run("xla")
    chunked_out, chunked_grads = run("chunked")
    if same_tokens:
        chunked_out, dense_out = np.asarray(chunked_out)[seen], np.asarray(dense_out)[seen]
    # Same per-row arithmetic: measured 0 (output) and <= 1e-7 (gradients) relative here.
    assert_relative(chunked_out, dense_out, 1e-5, "attention output")
    for got, want, name in zip(chunked_grads, dense_grads, ("dq", "dk", "dv"), strict=True):
        assert_relative(got, want, 1e-5, name)


@pytest.mark.parametrize("same_tokens", [False, True])
def test_chunked_keeps_no_score_tensor_for_the_backward(same_tokens):
    """The compiled gradient's temporaries: the dense path holds [heads, query, key] float32
    scores (and probabilities); the chunked one (looped, or unrolled over causal key ranges)
    less than one such tensor."""
    time, heads, dim = 1024, 4, 8
    q = jnp.ones((1, time, heads, dim))
    kv = jnp.ones((1, time, heads, dim))
    pos = jnp.arange(time)

    def temp_bytes(impl):
        def f(q, k, v):
            return dot_product_attention(
                q,
                k,
                v,
                pos,
                pos[None],
                time,
                jnp.float32,
                impl=impl,
                chunk=128,
                same_tokens=same_tokens,
            ).sum()

        compiled = jax.jit(jax.grad(f, argnums=(0, 1, 2))).lower(q, kv, kv).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    scores = time * time * heads * 4
    dense = temp_bytes("xla")
    assert dense >= scores  # at least one [heads, query, key] float32 tensor
    if same_tokens:
        # XLA:CPU drops the optimization barriers that order the unrolled chunks, so its
        # schedule may hold several chunks' scores at once: measured 1.77 score tensors
        # here (dense: 3.0). On the GPU compiler the barriers hold and the chunks stay under
        # one tensor (tests/test_compile.py, test_gpu_causal_chunks_keep_no_score_tensor).
        assert temp_bytes("chunked") < dense
    else:
        # Measured 0.40 of one score tensor at chunk 128 (xla: 3.0 of them).
        assert temp_bytes("chunked") < scores


@pytest.mark.parametrize("heads,kv_heads,cached", [(2, 2, 0), (4, 2, 5)])
def test_fused_path_gets_the_same_mask_and_layout(heads, kv_heads, cached):
    """fused_attention hands jax.nn.dot_product_attention our mask and [batch, time, heads,
    head_dim] layout; its "xla" implementation (what runs on CPU) must equal ours on every
    query with a visible key. The cuDNN kernel itself needs a GPU (benchmarks/gpu.sh)."""
    q, keys, values, q_pos, k_pos = _attention_case(heads, kv_heads, cached, seed=1)
    ours = _attend(q, keys, values, q_pos, k_pos, 6, jnp.float32)
    theirs = fused_attention(q, keys, values, q_pos, k_pos, 6, jnp.float32, "xla")
    seen = np.asarray(attention_mask(q_pos, k_pos, 6)[:, 0].any(-1))  # [batch, query]
    assert_relative(np.asarray(theirs)[seen], np.asarray(ours)[seen], 1e-5, "fused")


def test_auto_chunks_only_more_than_one_chunk():
    assert resolve_impl("auto", 512, 512) == "xla"
    assert resolve_impl("auto", 513, 512) == "chunked"
    assert resolve_impl("xla", 4096, 512) == "xla"
    q, keys, values, q_pos, k_pos = _attention_case(2, 2, 0)
    padded = _chunked(q, keys, values, q_pos, k_pos, 6, jnp.float32, 5)  # 8 queries, 2 chunks
    assert padded.shape == q.shape


@pytest.mark.parametrize("heads,kv_heads", [(2, 2), (4, 2)])
def test_splash_equals_dense_values_and_gradients(heads, kv_heads):
    """A hard-evicted window (no cache) of 130 tokens, padded inside to two 128-token blocks,
    left padding in example 1: the splash kernel (Pallas interpreter) against _attend, in
    float32, on every real query; the gradient through the padded queries is zero in both."""
    time, dim, batch = 130, 16, 2
    ks = jax.random.split(jax.random.key(3), 4)
    q = jax.random.normal(ks[0], (batch, time, heads, dim))
    keys = jax.random.normal(ks[1], (batch, time, kv_heads, dim))
    values = jax.random.normal(ks[2], (batch, time, kv_heads, dim))
    q_pos = jnp.arange(time)
    k_pos = np.tile(np.arange(time), (batch, 1))
    k_pos[1, :37] = EMPTY_POSITION
    k_pos = jnp.asarray(k_pos, jnp.int32)
    real = jnp.asarray(k_pos != EMPTY_POSITION)[..., None, None]
    cotangent = jax.random.normal(ks[3], q.shape) * real

    def run(impl):
        def f(q, keys, values):
            out = dot_product_attention(
                q, keys, values, q_pos, k_pos, time, jnp.float32, impl,
                same_tokens=True, interpret=True,
            )  # fmt: skip
            return jnp.sum(out * cotangent), out

        with jax.default_matmul_precision("highest"):
            (_, out), grads = jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(
                q, keys, values
            )
        # The kernel, not a fallback, ran (and only where asked).
        assert ("pallas_call" in str(jax.make_jaxpr(f)(q, keys, values))) == (impl == "splash")
        return out * real, grads

    (dense, dense_grads), (ours, our_grads) = run("xla"), run("splash")
    # Measured (2-core CPU, jax 0.10.2): 2e-7 outputs, 5e-7 gradients.
    assert_relative(ours, dense, 1e-5, "splash out")
    for name, got, want in zip("q k v".split(), our_grads, dense_grads, strict=True):
        assert_relative(got, want, 1e-5, f"splash d{name}")


def test_splash_where_it_fits_and_only_on_tpu():
    # "auto" picks splash on a TPU for a call it fits (a hard-evicted window) of more than one
    # chunk of queries, else as before.
    assert resolve_impl("auto", 2000, 512, platform="tpu", splash_fits=True) == "splash"
    assert resolve_impl("auto", 24, 512, platform="tpu", splash_fits=True) == "xla"
    assert resolve_impl("auto", 2000, 512, platform="tpu", splash_fits=False) == "chunked"
    assert resolve_impl("auto", 2000, 512, platform="gpu", splash_fits=True) == "chunked"
    # "splash" is splash wherever it can run, else what "auto" picks without it: a streaming
    # call (KV cache) on a TPU, any call elsewhere.
    assert resolve_impl("splash", 24, 512, platform="tpu", splash_fits=True) == "splash"
    assert resolve_impl("splash", 1, 512, platform="tpu", splash_fits=False) == "xla"
    assert resolve_impl("splash", 2000, 512, platform="cpu", splash_fits=True) == "chunked"
    q, keys, values, q_pos, k_pos = _attention_case(2, 2, 5)
    dense = _attend(q, keys, values, q_pos, k_pos, 6, jnp.float32)
    for interpret in (False, True):  # on this CPU; as on a TPU (a cache: it does not fit)
        out = dot_product_attention(
            q, keys, values, q_pos, k_pos, 6, jnp.float32, "splash", interpret=interpret
        )
        np.testing.assert_array_equal(out, dense)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="model.remat_policy"):
        ModelConfig(remat_policy="dots")
    with pytest.raises(ValueError, match="model.attention_impl"):
        ModelConfig(attention_impl="flash")
    with pytest.raises(ValueError, match=r"model.attention_impl.*bfloat16"):
        ModelConfig(attention_impl="cudnn")  # float32: cuDNN's kernel takes 16-bit inputs
    with pytest.raises(ValueError, match="model.attention_chunk"):
        ModelConfig(attention_chunk=0)


# --------------------------------------------------- every family: loss and gradients


OPTIONS = (
    dict(remat_policy="full", attention_impl="chunked", attention_chunk=3),
    dict(remat_policy="save_dots", attention_impl="auto", attention_chunk=3),
)
# Two windows of 8 with sliding eviction (the second sees a cached window), N = 2, padding.
SPEC = sleep.SleepSpec(passes=2, window=8, eviction="sliding", schedule=(False, True))


def _batch(vocab: int):
    tokens = jax.random.randint(jax.random.key(3), (2, 16), 0, vocab)
    valid = jnp.ones((2, 16), bool).at[0, :3].set(False)
    mask = jnp.zeros((2, 16), bool).at[:, 8:].set(True)
    return {"inputs": tokens, "targets": jnp.roll(tokens, -1, 1), "loss_mask": mask, "valid": valid}


def _loss_and_grads(model, params, batch):
    def loss(p):
        return sleep.sequence_loss(model, p, batch, SPEC)[0]

    return jax.jit(jax.value_and_grad(loss))(params)


def _same_under_every_option(make_model, params, vocab, options_list=OPTIONS[:1]):
    """Loss and gradients under each of ``options_list`` equal the default's. The families
    share block.block and the attention op, so the pretrained ones check one combination
    (each compile of this gradient costs ~20-60 s of CPU) and the hybrid both."""
    batch = _batch(vocab)
    base_loss, base_grads = _loss_and_grads(make_model({}), params, batch)
    assert np.isfinite(float(base_loss))
    for options in options_list:
        loss, grads = _loss_and_grads(make_model(options), params, batch)
        # Recomputation repeats the same float32 ops: measured <= 5e-7 (relative) here.
        assert_relative(loss, base_loss, 1e-5, f"loss {options}")
        flat = jax.tree_util.tree_flatten_with_path(grads)[0]
        for (path, got), want in zip(flat, jax.tree.leaves(base_grads), strict=True):
            assert_relative(got, want, 1e-4, f"{jax.tree_util.keystr(path)} {options}")


HYBRID = ModelConfig(width=16, heads=2, layers=("attn", "gdn", "attn"), positions="rope")


def test_options_reach_every_layer():
    """The forward's jaxpr: one rematerialised region per layer under a policy, and one per
    attention layer (the chunk loop) under the chunked attention; none by default."""
    params = HybridLM(HYBRID, vocab_size=11, max_len=32, window=8).init_params(jax.random.key(0))
    tokens, positions = jnp.zeros((2, 8), jnp.int32), jnp.arange(8)

    def regions(**options):
        model = HybridLM(
            dataclasses.replace(HYBRID, **options), vocab_size=11, max_len=32, window=8
        )
        state = model.init_state(2)
        jaxpr = jax.make_jaxpr(lambda p: model.apply({"params": p}, tokens, positions, state)[0])
        return len(re.findall(r"\b(?:checkpoint|remat\d*)\[", str(jaxpr(params))))

    assert regions() == 0
    assert regions(remat_policy="full") == 3
    assert regions(remat_policy="save_dots") == 3
    assert regions(attention_impl="chunked", attention_chunk=3) == 2  # two attention layers
    assert regions(attention_impl="auto", attention_chunk=8) == 0  # one chunk: dense


def test_hybrid_same_loss_and_gradients():
    cfg = HYBRID

    def make(options):
        return HybridLM(dataclasses.replace(cfg, **options), vocab_size=11, max_len=32, window=8)

    params = make({}).init_params(jax.random.key(0))
    _same_under_every_option(make, params, 11, OPTIONS)


def test_qwen2_sliding_same_loss_and_gradients():
    model, params = hf.load_hf(FIXTURES / "qwen2_swa_tiny", window=8)

    def make(options):
        return model.clone(config=dataclasses.replace(model.config, **options))

    _same_under_every_option(make, params, model.vocab_size)


def test_ouro_with_jet_layers_same_loss_and_gradients():
    model, params = hf.load_hf(FIXTURES / "ouro", window=8)
    jets = dict(jet_heads=2, jet_key_head_dim=8, jet_value_head_dim=16)
    model, params = insert_jet_layers(
        model, params, jax.random.key(1), count=1, identity=False, **jets
    )

    def make(options):
        return model.clone(config=dataclasses.replace(model.config, **options))

    _same_under_every_option(make, params, model.vocab_size)
