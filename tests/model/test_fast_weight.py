import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sleep_lm import ops
from sleep_lm.model import FastWeightState, ModelConfig
from sleep_lm.model.fast_weight import GatedDeltaNet, causal_conv

CFG = ModelConfig(width=8, heads=2, layers=("gdn",), conv_size=3, gdn_impl="recurrent")


def _zero_state(cfg, batch=2):
    d = cfg.head_dim
    return FastWeightState(
        jnp.zeros((batch, cfg.heads, d, d)),
        jnp.zeros((batch, cfg.conv_size - 1, 3 * cfg.heads * d)),
    )


@pytest.mark.parametrize("size", [1, 3])
def test_causal_conv_continues_exactly_from_its_tail(size):
    x = jax.random.normal(jax.random.key(0), (2, 7, 5))
    w = jax.random.normal(jax.random.key(1), (size, 5))
    tail0 = jnp.zeros((2, size - 1, 5))
    whole, tail = causal_conv(x, tail0, w)
    # reference: zero-padded causal convolution, tap size-1 on the current token
    xp = jnp.pad(x, ((0, 0), (size - 1, 0), (0, 0)))
    ref = sum(xp[:, j : j + 7] * w[j] for j in range(size))
    chex.assert_trees_all_close(whole, ref, atol=1e-6)
    chex.assert_trees_all_close(tail, x[:, 7 - (size - 1) :])
    pieces, t = [], tail0
    for a, b in ((0, 1), (1, 2), (2, 7)):  # pieces shorter than the tail too
        y, t = causal_conv(x[:, a:b], t, w)
        pieces.append(y)
    chex.assert_trees_all_close(jnp.concatenate(pieces, 1), whole, atol=1e-6)
    chex.assert_trees_all_close(t, tail)


@pytest.fixture(scope="module")
def layer(jit):
    gdn = GatedDeltaNet(CFG)
    x = jax.random.normal(jax.random.key(2), (2, 6, CFG.width))
    params = jit(gdn.init)(jax.random.key(0), x[:, :1], _zero_state(CFG), jnp.arange(1))
    return jit(gdn.apply), params, x


def test_split_sequence_equals_whole(layer):
    apply, params, x = layer
    whole, s_whole = apply(params, x, _zero_state(CFG), jnp.arange(6))
    chex.assert_shape(whole, x.shape)
    chex.assert_type(s_whole.fast_weights, jnp.float32)
    assert float(jnp.abs(s_whole.fast_weights).max()) > 0
    outs, s = [], _zero_state(CFG)
    for a, b in ((0, 4), (4, 5), (5, 6)):
        y, s = apply(params, x[:, a:b], s, jnp.arange(a, b))
        outs.append(y)
    chex.assert_trees_all_close(jnp.concatenate(outs, 1), whole, atol=1e-5)
    chex.assert_trees_all_close(s, s_whole, atol=1e-5)


def test_linear_rule_switch_calls_gated_linear_rule(layer, monkeypatch, jit):
    _, params, x = layer
    calls = []
    real = ops.gated_linear_rule

    def spy(*args, **kwargs):
        calls.append(kwargs["impl"])
        return real(*args, **kwargs)

    monkeypatch.setattr(ops, "gated_linear_rule", spy)
    linear = GatedDeltaNet(ModelConfig(**{**CFG.__dict__, "rule": "linear"}))
    y_lin, s_lin = jit(linear.apply)(params, x, _zero_state(CFG), jnp.arange(6))
    assert calls == ["recurrent"]
    y_delta, s_delta = jit(GatedDeltaNet(CFG).apply)(params, x, _zero_state(CFG), jnp.arange(6))
    assert calls == ["recurrent"]  # the delta layer does not use the linear rule
    assert not np.allclose(s_lin.fast_weights, s_delta.fast_weights, atol=1e-4)


@pytest.mark.parametrize("precision, highest_dots", [("highest", True), ("default", False)])
def test_gdn_precision_reaches_the_op(layer, precision, highest_dots):
    """model.gdn_precision is the op's precision=: HIGHEST dots appear only with "highest"
    (the layer's projections keep JAX's default, so nothing else is traced at HIGHEST)."""
    _, params, x = layer
    cfg = ModelConfig(**{**CFG.__dict__, "gdn_precision": precision})
    apply = GatedDeltaNet(cfg).apply
    jaxpr = jax.make_jaxpr(apply)(params, x, _zero_state(CFG), jnp.arange(6))
    assert ("Precision.HIGHEST" in str(jaxpr)) is highest_dots
