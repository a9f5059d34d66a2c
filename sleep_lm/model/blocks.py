"""Pre-norm residual block: h + mixer(norm(h)), then h + MLP(norm(h))."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax

from sleep_lm.model.attention import Attention
from sleep_lm.model.config import ModelConfig
from sleep_lm.model.fast_weight import GatedDeltaNet


class MLP(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        dense = cfg.dense
        x = dense(cfg.mlp_ratio * cfg.width, name="up_proj")(x)
        return dense(cfg.width, name="down_proj")(nn.gelu(x))


class Block(nn.Module):
    """One layer of the hybrid: ``__call__(h, layer_state, positions) -> (h, new_state)``.

    kind "attn" uses an Attention mixer with a KVCache state; "gdn" a GatedDeltaNet mixer
    with a FastWeightState.
    """

    config: ModelConfig
    kind: str
    window: int

    @nn.compact
    def __call__(self, h: jax.Array, layer_state, positions: jax.Array):
        cfg = self.config
        norm = functools.partial(nn.RMSNorm, epsilon=1e-6, dtype=cfg.compute_dtype)
        if self.kind == "attn":
            mixer = Attention(cfg, self.window, name="mixer")
        else:
            mixer = GatedDeltaNet(cfg, name="mixer")
        y, layer_state = mixer(norm(name="mixer_norm")(h), layer_state, positions)
        h = h + y
        h = h + MLP(cfg, name="mlp")(norm(name="mlp_norm")(h))
        # The residual stream [batch, time, width] is split on the batch only (weights split
        # by fsdp are gathered per use); a no-op outside a sharding context.
        h = nn.with_logical_constraint(h, ("batch", None, None))
        return h, layer_state
