"""Jet block (sleep_lm/model/jet.py): core against transformers' gated delta rule (golden
values), dynamic convolution and whole block against direct NumPy loops, streaming state
(decode == prefill, split == whole, hard eviction), and a jet layer in the HybridLM through
sleep.sequence_loss and the streaming inference path.

Float32 throughout; tolerances are float32 rounding (1e-5 relative to the output's scale).
"""

from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sleep_lm import inference, sleep
from sleep_lm.model import ModelConfig, build_model
from sleep_lm.model import state as state_lib
from sleep_lm.model.jet import (
    DynamicCausalConv,
    JetBlock,
    JetConfig,
    dynamic_causal_conv,
    jet_core,
    jet_state,
)
from tests.tolerance import assert_relative

GOLDEN = Path(__file__).parents[1] / "fixtures" / "jet" / "gated_delta_golden.npz"
RTOL = 1e-5  # relative to the largest reference value


def assert_close(got, want, rtol=RTOL):
    assert_relative(got, want, rtol)


def random_params(shapes, seed):
    """Random parameters larger than init (w2's kernel is zero at init), so every path of
    the block visibly matters; norm scales around 1."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        noise = rng.standard_normal(leaf.shape)
        scale = "scale" in jax.tree_util.keystr(path)
        return jnp.asarray(1 + 0.1 * noise if scale else 0.3 * noise, jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def silu(x):
    return x / (1 + np.exp(-x))


# ------------------------------------------------------------------ (a) golden core


@pytest.mark.parametrize("impl", ["chunked", "recurrent"])
def test_core_matches_transformers_gated_delta_rule(impl, jit):
    """jet_core (L2 norm of q, k + ops.gated_delta_rule, scale key ** -0.5) against
    transformers' torch_chunk_ / torch_recurrent_gated_delta_rule with
    use_qk_l2norm_in_kernel=True: key 8 != value 16, random initial state, 11 tokens
    (chunk 4: three chunks, the last partial)."""
    data = np.load(GOLDEN)
    args = [jnp.asarray(data[n]) for n in ("q", "k", "v", "g", "beta", "initial_state")]
    assert data["q"].shape[-1] != data["v"].shape[-1]
    o, s = jit(jet_core, static_argnames=("impl", "chunk_size"))(*args, impl=impl, chunk_size=4)
    for ref in ("chunk", "recurrent"):
        assert_close(o, data[f"{ref}_o"])
        assert_close(s, data[f"{ref}_state"])
    assert np.abs(data["chunk_state"] - data["initial_state"]).max() > 0.1  # not vacuous


# ----------------------------------------------------------- (b) dynamic convolution


def conv_loop(x, tail, kernels):
    """out[t, c] = sum_w x[t + w - (W - 1), c] * kernels[t, c, w]; x before 0 is the tail."""
    batch, time, channels = x.shape
    size = kernels.shape[-1]
    out = np.zeros((batch, time, channels))
    for b in range(batch):
        for t in range(time):
            for c in range(channels):
                for w in range(size):
                    s = t + w - (size - 1)
                    xs = x[b, s, c] if s >= 0 else tail[b, size - 1 + s, c]
                    out[b, t, c] += xs * kernels[b, t, c, w]
    return out


@pytest.mark.parametrize("time", [1, 7])
def test_dynamic_conv_matches_loop(time):
    rng = np.random.default_rng(time)
    x = rng.standard_normal((2, time, 5)).astype(np.float32)
    tail = rng.standard_normal((2, 2, 5)).astype(np.float32)
    kernels = rng.standard_normal((2, time, 5, 3)).astype(np.float32)
    out, new_tail = dynamic_causal_conv(jnp.asarray(x), jnp.asarray(tail), jnp.asarray(kernels))
    assert_close(out, conv_loop(x, tail, kernels))
    # The new tail: the last W - 1 raw inputs of tail + x (time 1 keeps one from the tail).
    np.testing.assert_array_equal(new_tail, np.concatenate([tail, x], 1)[:, -2:])


def test_dynamic_conv_module_reads_kernels_channel_major():
    """The generator's flat output [channels * W] is read (channel, width), as the HF module
    lays it out, and SiLU follows the convolution."""
    cfg = JetConfig(width=6, heads=2, key_head_dim=2, value_head_dim=3, conv_size=3,
                    generator_reduction=2)  # fmt: skip
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 6)).astype(np.float32)  # values to convolve (6 channels)
    gen_in = rng.standard_normal((2, 4, 6)).astype(np.float32)
    tail = rng.standard_normal((2, 2, 6)).astype(np.float32)
    module = DynamicCausalConv(cfg)
    shapes = jax.eval_shape(module.init, jax.random.key(0), x, gen_in, tail)["params"]
    params = random_params(shapes, 4)
    out, _ = module.apply({"params": params}, x, gen_in, tail)
    gen = params["kernel_generator"]
    assert gen["w1"]["kernel"].shape == (6, 3) and "bias" not in gen["w1"]
    flat = silu(gen_in @ np.asarray(gen["w1"]["kernel"])) @ np.asarray(gen["w2"]["kernel"])
    flat = flat + np.asarray(gen["w2"]["bias"])
    kernels = np.zeros((2, 4, 6, 3))
    for c in range(6):
        for w in range(3):
            kernels[..., c, w] = flat[..., c * 3 + w]
    assert_close(out, silu(conv_loop(x, tail, kernels)))


# ---------------------------------------------------------------- (c) the whole block

CFG = JetConfig(width=8, heads=2, key_head_dim=4, value_head_dim=6, conv_size=3,
                generator_reduction=3, gdn_impl="chunked", chunk_size=4)  # fmt: skip
T, SPLIT = 11, 5


def numpy_block(p, x, s0, tail0):
    """The published equations, transcribed in float64 with a token loop."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), p)
    batch, time, _ = x.shape
    heads, dk, dv, size = CFG.heads, CFG.key_head_dim, CFG.value_head_dim, CFG.conv_size

    def proj(name):
        return x @ p[name]["kernel"]

    q = silu(proj("q_proj")).reshape(batch, time, heads, dk)
    k = silu(proj("k_proj")).reshape(batch, time, heads, dk)
    gen = p["dynamic_conv1d"]["kernel_generator"]
    flat = silu(x @ gen["w1"]["kernel"]) @ gen["w2"]["kernel"] + gen["w2"]["bias"]
    v_raw = proj("v_proj")
    conv = conv_loop(v_raw, tail0, flat.reshape(batch, time, heads * dv, size))
    v = silu(conv).reshape(batch, time, heads, dv)
    beta = 1 / (1 + np.exp(-proj("b_proj")))
    g = -np.exp(p["A_log"]) * np.log1p(np.exp(proj("a_proj") + p["dt_bias"]))
    q = q / np.sqrt((q * q).sum(-1, keepdims=True) + 1e-6)
    k = k / np.sqrt((k * k).sum(-1, keepdims=True) + 1e-6)
    s = np.array(s0, np.float64)  # [batch, heads, key, value]
    o = np.zeros((batch, time, heads, dv))
    for t in range(time):
        s = s * np.exp(g[:, t])[..., None, None]
        kt = k[:, t]
        delta = beta[:, t][..., None] * (v[:, t] - np.einsum("bhkv,bhk->bhv", s, kt))
        s = s + np.einsum("bhk,bhv->bhkv", kt, delta)
        o[:, t] = np.einsum("bhkv,bhk->bhv", s, q[:, t]) * dk**-0.5
    o = o / np.sqrt((o * o).mean(-1, keepdims=True) + CFG.norm_eps) * p["o_norm"]["scale"]
    o = o * silu(proj("g_proj")).reshape(batch, time, heads, dv)
    y = o.reshape(batch, time, heads * dv) @ p["o_proj"]["kernel"]
    return y, s, v_raw[:, -(size - 1) :]


@pytest.fixture(scope="module")
def block_runs(jit):
    """One compile: the block over T tokens whole (chunked), split at SPLIT, and decoded one
    token at a time (recurrent op, as inference decodes), from a non-zero state."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((2, T, CFG.width)), jnp.float32)
    init = jet_state(CFG, 2)
    init = init._replace(
        fast_weights=jnp.asarray(0.5 * rng.standard_normal(init.fast_weights.shape), jnp.float32),
        conv_tail=jnp.asarray(rng.standard_normal(init.conv_tail.shape), jnp.float32),
    )
    block = JetBlock(CFG)
    decoder = JetBlock(CFG.__class__(**{**CFG.__dict__, "gdn_impl": "recurrent"}))
    shapes = jax.eval_shape(block.init, jax.random.key(0), x, init, jnp.arange(T))["params"]
    params = random_params(shapes, 6)

    @jit
    def run(params, x, init):
        def apply(module, xs, state, start):
            positions = start + jnp.arange(xs.shape[1])
            return module.apply({"params": params}, xs, state, positions)

        whole = apply(block, x, init, 0)
        first, mid = apply(block, x[:, :SPLIT], init, 0)
        second, split_state = apply(block, x[:, SPLIT:], mid, SPLIT)

        def step(state, inputs):
            xt, t = inputs
            y, state = apply(decoder, xt[:, None], state, t)
            return state, y[:, 0]

        xs = (jnp.swapaxes(x, 0, 1), jnp.arange(T))
        decode_state, ys = jax.lax.scan(step, init, xs)

        def loss(params):
            y, state = block.apply({"params": params}, x, init, jnp.arange(T))
            return jnp.sum(y**2) + jnp.sum(state.fast_weights**2)

        return (
            whole,
            (jnp.concatenate([first, second], 1), split_state),
            (jnp.swapaxes(ys, 0, 1), decode_state),
            jax.grad(loss)(params),
        )

    return params, x, init, run(params, x, init)


def test_block_param_paths_mirror_jet_nemotron(block_runs):
    params = block_runs[0]
    paths = {jax.tree_util.keystr(p, simple=True, separator="."): x.shape
             for p, x in jax.tree_util.tree_leaves_with_path(params)}  # fmt: skip
    c, hidden = CFG.value_dim, CFG.generator_hidden
    assert paths == {
        "q_proj.kernel": (8, 8),
        "k_proj.kernel": (8, 8),
        "v_proj.kernel": (8, c),
        "a_proj.kernel": (8, 2),
        "b_proj.kernel": (8, 2),
        "g_proj.kernel": (8, c),
        "o_proj.kernel": (c, 8),
        "A_log": (2,),
        "dt_bias": (2,),
        "dynamic_conv1d.kernel_generator.w1.kernel": (8, hidden),
        "dynamic_conv1d.kernel_generator.w2.kernel": (hidden, c * 3),
        "dynamic_conv1d.kernel_generator.w2.bias": (c * 3,),
        "o_norm.scale": (6,),
    }
    # Jet-Nemotron-2B's rule: value_dim 3072 // reduction 8 = 384.
    full = JetConfig(width=1536, heads=12, key_head_dim=96, value_head_dim=256)
    assert full.generator_hidden == 384


def test_block_matches_numpy_equations(block_runs):
    params, x, init, (whole, *_) = block_runs
    y, s, tail = numpy_block(params, np.asarray(x, np.float64), init.fast_weights, init.conv_tail)
    assert_close(whole[0], y)
    assert_close(whole[1].fast_weights, s)
    assert_close(whole[1].conv_tail, tail)  # the raw v projections of the last W - 1 tokens


def test_decode_equals_prefill_and_split_equals_whole(block_runs):
    _, _, _, (whole, split, decoded, _) = block_runs
    for y, state in (split, decoded):
        assert_close(y, whole[0])
        assert_close(state.fast_weights, whole[1].fast_weights)
        assert_close(state.conv_tail, whole[1].conv_tail)


def test_gradients_reach_every_parameter(block_runs):
    """Through the chunked op's hand-written backward (key != value), the kernel generator
    included."""
    for path, g in jax.tree_util.tree_leaves_with_path(block_runs[3][3]):
        assert np.isfinite(g).all() and np.abs(g).max() > 1e-4, jax.tree_util.keystr(path)


def test_hard_eviction_zeroes_the_tail_and_keeps_fast_weights(block_runs):
    state = block_runs[3][0][1]
    assert np.abs(state.conv_tail).max() > 0.1
    cleared = state_lib.clear_local(state_lib.ModelState(layers=(state,))).layers[0]
    np.testing.assert_array_equal(cleared.conv_tail, np.zeros_like(state.conv_tail))
    np.testing.assert_array_equal(cleared.fast_weights, state.fast_weights)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"^jet\.value_head_dim: "):
        JetConfig(width=8, heads=2, key_head_dim=4, value_head_dim=0)
    with pytest.raises(ValueError, match=r"^jet\.gdn_impl: "):
        JetConfig(width=8, heads=2, key_head_dim=4, value_head_dim=4, gdn_impl="associative")
    with pytest.raises(ValueError, match=r"^model\.jet_expand_v: "):
        ModelConfig(width=16, heads=2, layers=("jet",), jet_expand_v=1.3)
    with pytest.raises(ValueError, match=r"^model\.jet_generator_reduction: "):
        ModelConfig(width=16, heads=2, layers=("jet",), jet_generator_reduction=1000)
    with pytest.raises(ValueError, match=r"^model\.layers: "):
        ModelConfig(layers=("attn", "jt"))


# ------------------------------------------------------------ (d) jet in the HybridLM

MODEL = dict(width=16, heads=2, layers="attn,jet", mlp_ratio=2, conv_size=3, gdn_impl="chunked",
             chunk_size=2, jet_expand_v=1.5, jet_generator_reduction=4)  # fmt: skip
VOCAB, SEQ, L = 5, 18, 4
MASK_AT = (9, 17)  # windows: sleep, sleep, wake, sleep, wake (short), as tests/test_inference


def test_hybrid_with_jet_sleeps_and_streams_like_training(jit):
    """sleep.sequence_loss with N = 2 through a jet layer, and the
    streaming inference path (feed, one-token decode with the recurrent op) equal to the
    training path's logits, metrics and final state (sliding eviction: the conv tails and
    KV caches survive windows, so they must match too)."""
    model = build_model(MODEL, vocab_size=VOCAB, max_len=SEQ + 4, window=L)
    state = model.init_state(2)
    assert state.layers[1].fast_weights.shape == (2, 2, 8, 12)  # key 8, value 8 * 1.5
    assert state.layers[1].conv_tail.shape == (2, 2, 24)
    params = random_params(jax.eval_shape(model.init_params, jax.random.key(0)), 7)
    rng = np.random.default_rng(8)
    mask = np.zeros((2, SEQ), bool)
    mask[:, list(MASK_AT)] = True
    batch = dict(
        inputs=rng.integers(0, VOCAB, (2, SEQ)).astype(np.int32),
        targets=rng.integers(0, VOCAB, (2, SEQ)).astype(np.int32),
        loss_mask=mask,
    )
    cfg = {"passes": 2, "window": L, "eviction": "sliding"}
    spec = sleep.SleepSpec.from_config(cfg, sleep.window_schedule(mask, L))

    @jit
    def both(params, batch):
        _, ref_metrics = sleep.sequence_loss(model, params, batch, spec)
        ref, ref_state = sleep.sequence_logits(model, params, batch["inputs"], spec)
        got, got_state = inference.streaming_logits(model, params, batch["inputs"], spec)
        metrics = inference.evaluate(model, params, spec, batch)
        return ref_metrics, ref, ref_state, got, got_state, metrics

    ref_metrics, ref, ref_state, got, got_state, metrics = both(params, batch)
    wake = np.repeat(np.array(spec.schedule), L)[:SEQ]
    assert wake.sum() == 6
    assert_close(got[:, wake], ref[:, wake])
    assert (np.asarray(got)[:, ~wake] == 0).all()
    chex.assert_trees_all_close(metrics, ref_metrics, atol=1e-5)
    for a, b in zip(jax.tree.leaves(got_state.live), jax.tree.leaves(ref_state), strict=True):
        assert_close(a, b)
    assert np.abs(np.asarray(ref)[:, wake]).std() > 0.1  # logits that differ by token
    assert np.abs(ref_state.layers[1].fast_weights).max() > 1e-2
