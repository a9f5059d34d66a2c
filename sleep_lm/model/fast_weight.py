"""Gated DeltaNet mixer: the fast-weight layer whose state S is what sleep consolidates.

Per token (shapes [batch, time, heads, key]; key = value = head_dim):

  q, k, v = x W_q, x W_k, x W_v
  q, k, v = SiLU(causal depthwise conv(q, k, v))       # conv_size taps; tail is state
  q, k    = L2-normalised per head                      (then rotated when positions="rope")
  beta    = sigmoid(x W_b)                              write strength in (0, 1)
  g       = -exp(A_log) * softplus(x W_a + dt_bias)     log forget gate, <= 0
  o, S    = ops.gated_delta_rule(q, k, v, g, beta, initial_state=S)
            (ops.gated_linear_rule when rule="linear", the paper's eq. 3)
  y       = (RMSNorm_head(o) * SiLU(x W_gate)) W_out    per-head RMSNorm, output gate

The SiLU after the convolution is applied to q, k and v, as in the reference GDN layer
(flash-linear-attention's ShortConvolution with activation="silu").

The convolution tail (pre-conv projections of the last conv_size - 1 tokens) is part of
the state, so splitting a sequence at any point (a window boundary, or one decoded token
at a time) gives exactly the same outputs as running it whole.

Padding (``valid`` [batch, time] bool, False = a padded token) is inert: at a padded token
beta = 0 and g = 0 (no write, no decay: S passes through unchanged) and the conv input is
zero. With LEFT padding every padded token precedes every real one, so the real tokens'
convolution sees zeros where an unpadded sequence sees its fresh (zero) tail: the same
numbers. (A padded token between real ones would enter their convolution as a zero input,
not be skipped.)
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from sleep_lm import ops
from sleep_lm.model.config import ModelConfig
from sleep_lm.model.positions import rotary
from sleep_lm.model.state import FastWeightState, constrain

_L2_EPS = 1e-6


def causal_conv(x: jax.Array, tail: jax.Array, weight: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Depthwise causal convolution continuing from ``tail``.

    x: [batch, time, channels]; tail: [batch, conv_size - 1, channels] (the inputs of the
    preceding tokens); weight: [conv_size, channels], tap conv_size - 1 on the current token.
    Returns (y [batch, time, channels], new tail [batch, conv_size - 1, channels]).
    """
    size, time = weight.shape[0], x.shape[1]
    xp = jnp.concatenate([tail.astype(x.dtype), x], axis=1)  # [batch, size - 1 + time, channels]
    # Taps summed in float32 (this feeds the keys and values written into the fast weights).
    xp32, w = xp.astype(jnp.float32), weight.astype(jnp.float32)
    y = sum(xp32[:, j : j + time] * w[j] for j in range(size))
    new_tail = xp[:, xp.shape[1] - (size - 1) :]
    return y.astype(x.dtype), new_tail.astype(tail.dtype)


def l2_normalize(x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True) + _L2_EPS)).astype(
        x.dtype
    )


def _a_log_init(key, shape, dtype=jnp.float32):
    # A ~ U[1, 16] (the GDN reference draws U[0, 16]; 1 avoids log of ~0).
    return jnp.log(jax.random.uniform(key, shape, dtype, 1.0, 16.0))


def _dt_bias_init(key, shape, dtype=jnp.float32, dt_min=1e-3, dt_max=0.1):
    # softplus(dt_bias) = dt ~ log-uniform[dt_min, dt_max] (the Mamba / GDN recipe).
    u = jax.random.uniform(key, shape, dtype)
    dt = jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = jnp.maximum(dt, 1e-4)
    return dt + jnp.log(-jnp.expm1(-dt))  # inverse softplus


def _conv_init(key, shape, dtype=jnp.float32):
    # PyTorch Conv1d default for a depthwise kernel: U[-1/sqrt(k), 1/sqrt(k)].
    bound = 1.0 / math.sqrt(shape[0])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def mask_inputs(valid, x: jax.Array) -> jax.Array:
    """x [batch, time, channels] with padded tokens' rows zeroed (valid: [batch, time] bool;
    None: x unchanged). Applied to a convolution's input, so padding never enters a tail."""
    if valid is None:
        return x
    return jnp.where(valid[..., None], x, jnp.zeros((), x.dtype))


def mask_gates(valid, g: jax.Array, beta: jax.Array) -> tuple[jax.Array, jax.Array]:
    """g = 0 (no decay) and beta = 0 (no write) at padded tokens: the delta rule then leaves
    S exactly as it was. g, beta: [batch, time, heads]; valid: [batch, time] bool or None."""
    if valid is None:
        return g, beta
    keep = valid[..., None]
    return jnp.where(keep, g, 0.0), jnp.where(keep, beta, 0.0)


def gates(module: nn.Module, dense, x: jax.Array, heads: int, valid=None):
    """The fast-weight gates of a GDN or Jet mixer, in float32 (g accumulates over the whole
    sequence inside the op): beta = sigmoid(x W_b) and g = -exp(A_log) * softplus(x W_a +
    dt_bias), both [batch, time, heads], zero at padded tokens. Creates ``b_proj``,
    ``A_log``, ``dt_bias`` and ``a_proj`` in ``module`` (a compact module's scope)."""
    beta = jax.nn.sigmoid(dense(heads, name="b_proj")(x).astype(jnp.float32))
    a_log = module.param("A_log", _a_log_init, (heads,))
    dt_bias = module.param("dt_bias", _dt_bias_init, (heads,))
    a = dense(heads, name="a_proj")(x).astype(jnp.float32)
    g = -jnp.exp(a_log) * jax.nn.softplus(a + dt_bias)
    return mask_gates(valid, g, beta)


class GatedDeltaNet(nn.Module):
    """The GDN mixer; ``__call__(x, state, positions, valid=None) -> (y, new_state)``."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        state: FastWeightState,
        positions: jax.Array,
        valid: jax.Array | None = None,
    ) -> tuple[jax.Array, FastWeightState]:
        """x: [batch, time, width]; positions: [time] global positions; valid: [batch, time]
        bool or None (all valid): padded tokens neither decay nor write S nor enter the conv
        tail (see the module docstring)."""
        cfg = self.config
        batch, time, _ = x.shape
        heads, dim = cfg.heads, cfg.head_dim
        dense = cfg.dense
        qkv = jnp.concatenate(
            [dense(heads * dim, name=f"{n}_proj")(x) for n in ("q", "k", "v")], axis=-1
        )
        weight = self.param("conv_weight", _conv_init, (cfg.conv_size, 3 * heads * dim))
        qkv, conv_tail = causal_conv(mask_inputs(valid, qkv), state.conv_tail, weight)
        qkv = nn.silu(qkv)
        q, k, v = (y.reshape(batch, time, heads, dim) for y in jnp.split(qkv, 3, axis=-1))
        q, k = l2_normalize(q), l2_normalize(k)
        if cfg.positions == "rope":
            q, k = rotary(q, positions), rotary(k, positions)

        g, beta = gates(self, dense, x, heads, valid)

        rule = ops.gated_delta_rule if cfg.rule == "delta" else ops.gated_linear_rule
        o, fast_weights = rule(
            q,
            k,
            v,
            g,
            beta,
            initial_state=state.fast_weights,
            impl=cfg.gdn_impl,
            chunk_size=cfg.chunk_size,
            precision=cfg.gdn_precision,
        )

        o = nn.RMSNorm(epsilon=1e-6, dtype=cfg.compute_dtype, name="head_norm")(o)
        gate = dense(heads * dim, name="o_gate_proj")(x).reshape(batch, time, heads, dim)
        o = o * nn.silu(gate)
        y = dense(cfg.width, name="o_proj")(o.reshape(batch, time, heads * dim))
        return y, constrain(FastWeightState(fast_weights=fast_weights, conv_tail=conv_tail))
