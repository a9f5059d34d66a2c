"""Jet block (Jet-Nemotron's JetBlock): a Gated DeltaNet mixer with a dynamic convolution.

Written from the published description of NVlabs/Jet-Nemotron (``jetai/modeling/hf/
jet_block.py``, ``dynamic_conv.py``; Apache-2.0 code, read for the math and names, none
copied). Per token, shapes [batch, time, heads, key] (key = key_head_dim, value =
value_head_dim, which may differ)::

  q, k    = SiLU(x W_q), SiLU(x W_k)                      no convolution on q, k
  K_t     = SiLU(x_t W_1) W_2 + b_2                       [channels, conv_size] per token
  v       = SiLU(dynamic_causal_conv(x W_v, K))           channels = heads * value
  beta    = sigmoid(x W_b);  g = -exp(A_log) * softplus(x W_a + dt_bias)     float32
  o, S    = ops.gated_delta_rule(l2(q), l2(k), v, g, beta, initial_state=S, scale=key**-0.5)
  y       = (RMSNorm_head(o) * SiLU(x W_g)) W_o

x is the (already normed) layer input; the kernel generator reads x, not the values it
convolves; tap conv_size - 1 multiplies the current token. No positional encoding (as the
reference): ``positions`` is accepted for the mixer interface and unused.

State: ``FastWeightState`` with S [batch, heads, key, value] float32 and ``conv_tail``
[batch, conv_size - 1, heads * value], the RAW v projections of the last tokens, so a
sequence split anywhere (or decoded token by token) equals the whole. Padding (``valid``
[batch, time], False = padded) is inert as in GDN: zero v input, g = beta = 0.

Parameters mirror the Hugging Face names inside ``self_attn`` (Dense ``kernel`` = HF
``weight`` transposed): ``{q,k,v,a,b,g,o}_proj``, ``A_log`` [heads], ``dt_bias`` [heads],
``dynamic_conv1d/kernel_generator/{w1, w2}`` (w2 with bias), ``o_norm`` (scale [value]).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from sleep_lm import ops
from sleep_lm.model.config import JetConfig
from sleep_lm.model.fast_weight import gates, l2_normalize, mask_inputs
from sleep_lm.model.state import FastWeightState, constrain


def jet_state(cfg: JetConfig, batch: int, dtype=None) -> FastWeightState:
    """Zero state of one Jet block: empty fast weights, zero conv tail (``dtype``, default the
    compute dtype; fast weights are always float32)."""
    dtype = cfg.compute_dtype if dtype is None else dtype
    shape = (batch, cfg.heads, cfg.key_head_dim, cfg.value_head_dim)
    return FastWeightState(
        fast_weights=jnp.zeros(shape, jnp.float32),
        conv_tail=jnp.zeros((batch, cfg.conv_size - 1, cfg.value_dim), dtype),
    )


def dynamic_causal_conv(
    x: jax.Array, tail: jax.Array, kernels: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Causal convolution with a separate kernel per token and channel, continuing ``tail``.

    x: [batch, time, channels]; tail: [batch, W - 1, channels] (the raw inputs of the W - 1
    preceding tokens; zeros at a sequence start); kernels: [batch, time, channels, W].
    out[t, c] = sum_w x[t + w - (W - 1), c] * kernels[t, c, w], so tap W - 1 is the current
    token. Returns (out [batch, time, channels] in x's dtype, new tail [batch, W - 1,
    channels]: the last W - 1 raw inputs of tail + x).
    """
    size, time = kernels.shape[-1], x.shape[1]
    xp = jnp.concatenate([tail.astype(x.dtype), x], axis=1)  # [batch, W - 1 + time, channels]
    # Taps summed in float32: this feeds the values written into the fast weights.
    xp32, k32 = xp.astype(jnp.float32), kernels.astype(jnp.float32)
    out = sum(xp32[:, w : w + time] * k32[..., w] for w in range(size))
    new_tail = xp[:, xp.shape[1] - (size - 1) :]
    return out.astype(x.dtype), new_tail.astype(tail.dtype)


def jet_core(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    g: jax.Array,
    beta: jax.Array,
    initial_state: jax.Array,
    *,
    impl: str = "chunked",
    chunk_size: int = 64,
    precision: str | None = "highest",
) -> tuple[jax.Array, jax.Array]:
    """The block's memory: q, k L2-normalised per head, then the gated delta rule with scale
    key ** -0.5 (fla's ``use_qk_l2norm_in_kernel=True``).

    q, k: [batch, time, heads, key]; v: [batch, time, heads, value]; g, beta: [batch, time,
    heads] float32; initial_state: [batch, heads, key, value] float32.
    Returns (o [batch, time, heads, value], final state [batch, heads, key, value]).
    """
    q, k = l2_normalize(q), l2_normalize(k)
    return ops.gated_delta_rule(
        q,
        k,
        v,
        g,
        beta,
        initial_state=initial_state,
        scale=q.shape[-1] ** -0.5,
        impl=impl,
        chunk_size=chunk_size,
        precision=precision,
    )


def _static_conv_bias_init(conv_size: int):
    """w2's bias, laid out (channel, width): the kernel every token gets while w2's kernel is
    zero. Drawn like a depthwise Conv1d's weight, U[-1/sqrt(W), 1/sqrt(W)], so a fresh block
    starts as GDN's static short convolution on v and learns the dynamic part from there."""

    def init(key, shape, dtype=jnp.float32):
        bound = 1.0 / math.sqrt(conv_size)
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class _KernelGenerator(nn.Module):
    """x [batch, time, width] -> per-token kernels [batch, time, channels, conv_size]."""

    config: JetConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        dense = functools.partial(nn.Dense, dtype=cfg.compute_dtype, param_dtype=jnp.float32)
        hidden = nn.silu(dense(cfg.generator_hidden, use_bias=False, name="w1")(x))
        # w2's kernel starts at zero (its bias alone is the kernel) while w1 is random, so
        # both get gradients from the first step (zero w1 and w2 together would give neither).
        flat = dense(
            cfg.value_dim * cfg.conv_size,
            use_bias=True,
            kernel_init=nn.initializers.zeros,
            bias_init=_static_conv_bias_init(cfg.conv_size),
            name="w2",
        )(hidden)
        return flat.reshape(*flat.shape[:-1], cfg.value_dim, cfg.conv_size)


class DynamicCausalConv(nn.Module):
    """``(x, generator_input, tail) -> (SiLU(conv) [batch, time, channels], new tail)``."""

    config: JetConfig

    @nn.compact
    def __call__(
        self, x: jax.Array, generator_input: jax.Array, tail: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        kernels = _KernelGenerator(self.config, name="kernel_generator")(generator_input)
        y, tail = dynamic_causal_conv(x, tail, kernels)
        return nn.silu(y), tail


class JetBlock(nn.Module):
    """The Jet mixer; ``__call__(x, state, positions, valid=None) -> (y, new_state)``."""

    config: JetConfig

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        state: FastWeightState,
        positions: jax.Array,
        valid: jax.Array | None = None,
    ) -> tuple[jax.Array, FastWeightState]:
        """x: [batch, time, width] (already normed); positions: [time], unused (see module
        docstring); valid: [batch, time] bool or None (all valid): padding is inert."""
        del positions
        cfg = self.config
        batch, time, _ = x.shape
        heads, dk, dv = cfg.heads, cfg.key_head_dim, cfg.value_head_dim
        dense = cfg.dense
        q = nn.silu(dense(cfg.key_dim, name="q_proj")(x)).reshape(batch, time, heads, dk)
        k = nn.silu(dense(cfg.key_dim, name="k_proj")(x)).reshape(batch, time, heads, dk)
        v, conv_tail = DynamicCausalConv(cfg, name="dynamic_conv1d")(
            mask_inputs(valid, dense(cfg.value_dim, name="v_proj")(x)), x, state.conv_tail
        )
        v = v.reshape(batch, time, heads, dv)

        g, beta = gates(self, dense, x, heads, valid)

        o, fast_weights = jet_core(
            q,
            k,
            v,
            g,
            beta,
            state.fast_weights,
            impl=cfg.gdn_impl,
            chunk_size=cfg.chunk_size,
            precision=cfg.precision,
        )

        o = nn.RMSNorm(epsilon=cfg.norm_eps, dtype=cfg.compute_dtype, name="o_norm")(o)
        gate = dense(cfg.value_dim, name="g_proj")(x).reshape(batch, time, heads, dv)
        o = o * nn.silu(gate)
        y = dense(cfg.width, name="o_proj")(o.reshape(batch, time, cfg.value_dim))
        return y, constrain(FastWeightState(fast_weights=fast_weights, conv_tail=conv_tail))
