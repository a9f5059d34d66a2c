import chex
import jax
import jax.numpy as jnp
import pytest

from sleep_lm.model import HybridLM, ModelState
from tests.tolerance import assert_norm_relative

VOCAB = 5  # conftest.VOCAB


def _forward(jit, model):
    """Jitted (params, tokens, positions, state) -> (logits, state): one full pass."""
    return jit(lambda p, t, pos, s: model.apply({"params": p}, t, pos, s))


def test_params_are_float32_and_named_for_the_optimiser(params):
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    assert {"token_embed", "position_embed", "final_norm", "lm_head"} <= set(params)
    assert set(params["block_0"]["mixer"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert {"A_log", "dt_bias", "conv_weight", "a_proj", "b_proj"} <= set(
        params["block_1"]["mixer"]
    )


def test_stage_shapes_and_block_slices_compose(model, params, tokens, jit):
    assert isinstance(model, HybridLM)
    pos = jnp.arange(tokens.shape[1])
    state = model.init_state(2)

    @jit
    def stages(p, t, s):
        apply = lambda *a, **k: model.apply({"params": p}, *a, **k)
        h = apply(t, pos, method="embed")
        whole, s_whole = apply(h, s, pos, 0, 4, method="blocks")
        half, s_half = apply(h, s, pos, 0, 2, method="blocks")
        half, s_half = apply(half, s_half, pos, 2, 4, method="blocks")
        return h, whole, s_whole, half, s_half, apply(whole, method="head")

    h, whole, s_whole, half, s_half, logits = stages(params, tokens, state)
    chex.assert_shape([h, whole], (2, 6, 16))
    chex.assert_shape(logits, (2, 6, VOCAB))
    chex.assert_type(logits, jnp.float32)
    assert isinstance(s_whole, ModelState)
    chex.assert_trees_all_equal_shapes_and_dtypes(s_whole, state)
    chex.assert_trees_all_close((half, s_half), (whole, s_whole), atol=1e-6)


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_streaming_in_pieces_equals_one_pass(positions, make_model, params, tokens, jit):
    """KV cache and conv tails make any split (down to one token) exact."""
    model = make_model(window=8, positions=positions)  # rope adds no parameter: reuse them
    forward = _forward(jit, model)
    whole, s_whole = forward(params, tokens, jnp.arange(6), model.init_state(2))
    outs, state = [], model.init_state(2)
    for a, b in ((0, 4), (4, 5), (5, 6)):
        y, state = forward(params, tokens[:, a:b], jnp.arange(a, b), state)
        outs.append(y)
    # float32 rounding (measured <= 1.4e-6 absolute; different sum orders).
    chex.assert_trees_all_close(jnp.concatenate(outs, 1), whole, atol=1e-4)
    chex.assert_trees_all_close(state, s_whole, atol=1e-4)


def test_bfloat16_compute_keeps_f32_params_and_fast_weights(make_model, params, tokens, jit):
    model = make_model(dtype="bfloat16")  # same parameters, bfloat16 compute
    logits, state = _forward(jit, model)(params, tokens, jnp.arange(6), model.init_state(2))
    chex.assert_type(logits, jnp.float32)
    chex.assert_type(state.layers[0].keys, jnp.bfloat16)
    chex.assert_type(state.layers[1].fast_weights, jnp.float32)
    chex.assert_tree_all_finite(logits)
    # Values, not only dtypes: near the float32 model's. Measured (norm-wise relative):
    # logits 2.1e-2, fast weights 1.5e-2 (bfloat16 rounding through two layers); another
    # model (other parameters) is off by 1.3-1.4. Tolerance 0.25: over 10x the rounding.
    f32 = make_model(dtype="float32")
    want, want_state = _forward(jit, f32)(params, tokens, jnp.arange(6), f32.init_state(2))
    assert_norm_relative(logits, want, 0.25, "bfloat16 logits")
    fw, want_fw = state.layers[1].fast_weights, want_state.layers[1].fast_weights
    assert_norm_relative(fw, want_fw, 0.25, "bfloat16 fast weights")
