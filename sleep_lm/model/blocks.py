"""Pre-norm residual block: h + mixer(norm(h)), then h + MLP(norm(h))."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax

from sleep_lm.model.attention import Attention
from sleep_lm.model.config import ModelConfig
from sleep_lm.model.fast_weight import GatedDeltaNet
from sleep_lm.model.jet import JetBlock, JetConfig


class MLP(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        dense = cfg.dense
        x = dense(cfg.mlp_ratio * cfg.width, name="up_proj")(x)
        return dense(cfg.width, name="down_proj")(nn.gelu(x))


def jet_config(cfg: ModelConfig) -> JetConfig:
    """The Jet mixer of a from-scratch hybrid: key head size head_dim, value head size
    head_dim * jet_expand_v, the model's conv width, op and dtype."""
    return JetConfig(
        width=cfg.width,
        heads=cfg.heads,
        key_head_dim=cfg.head_dim,
        value_head_dim=cfg.jet_value_head_dim,
        conv_size=cfg.conv_size,
        generator_reduction=cfg.jet_generator_reduction,
        gdn_impl=cfg.gdn_impl,
        chunk_size=cfg.chunk_size,
        precision=cfg.gdn_precision,
        dtype=cfg.dtype,
    )


class Block(nn.Module):
    """One layer of the hybrid: ``__call__(h, layer_state, positions, valid=None) -> (h,
    new_state)``; ``valid`` [batch, time] bool marks real (not padded) tokens, None = all.

    kind "attn" uses an Attention mixer with a KVCache state; "gdn" a GatedDeltaNet mixer
    and "jet" a JetBlock mixer, both with a FastWeightState.
    """

    config: ModelConfig
    kind: str
    window: int

    @nn.compact
    def __call__(self, h: jax.Array, layer_state, positions: jax.Array, valid=None):
        cfg = self.config
        norm = functools.partial(nn.RMSNorm, epsilon=1e-6, dtype=cfg.compute_dtype)
        if self.kind == "attn":
            mixer = Attention(cfg, self.window, name="mixer")
        elif self.kind == "jet":
            mixer = JetBlock(jet_config(cfg), name="mixer")
        else:
            mixer = GatedDeltaNet(cfg, name="mixer")
        # The MLP and norms act per token: only the mixer needs to know about padding.
        y, layer_state = mixer(norm(name="mixer_norm")(h), layer_state, positions, valid)
        h = h + y
        h = h + MLP(cfg, name="mlp")(norm(name="mlp_norm")(h))
        # The residual stream [batch, time, width] is split on the batch only (weights split
        # by fsdp are gathered per use); a no-op outside a sharding context.
        h = nn.with_logical_constraint(h, ("batch", None, None))
        return h, layer_state
