"""One decoder block for every family: a mixer and an MLP, each in a residual branch.

    h = h + post_mixer_norm(mixer(mixer_norm(h)))     # post norm only with use_post_mixer_norm
    h = h + post_mlp_norm(mlp(mlp_norm(h)))           # branch only with use_mlp

Pre-norm (the hybrid, Qwen2, Jet-Nemotron) or sandwich norms (Ouro), as Gemma's ``Block``
with ``use_post_attn_norm`` / ``use_post_ffw_norm``. Mixers by ``kind``: "attn" and "swa"
(model/attention.py; "swa" with the config's ``sliding_window``), "gdn"
(model/fast_weight.py), "jet" (model/jet.py). Shapes: h [batch, time, width].

Families build their layers with ``block(cfg, kind, window, ...)``, which applies the
config's per-layer rematerialisation (``model.remat_policy``, ``REMAT_POLICIES``):
"none" keeps every residual of the layer for the backward; "full" keeps only the layer's
inputs and recomputes the layer in the backward (MaxText's "full"); "save_dots" also keeps
the outputs of the weight matmuls (dots without batch dimensions: the projections and the
MLP) and recomputes the rest (attention scores and softmax, norms, activations, the
fast-weight recurrence). Rematerialisation changes memory and time, never the values.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from sleep_lm.model.attention import Attention
from sleep_lm.model.fast_weight import GatedDeltaNet
from sleep_lm.model.jet import JetBlock


class MLP(nn.Module):
    """[batch, time, width] -> [batch, time, width]: GELU (up_proj, down_proj) or, with
    ``config.mlp_gated``, SwiGLU down(SiLU(gate(x)) * up(x)); hidden ``config.mlp_hidden``."""

    config: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        dense = cfg.dense
        if cfg.mlp_gated:
            gate = dense(cfg.mlp_hidden, name="gate_proj")(x)
            up = dense(cfg.mlp_hidden, name="up_proj")(x)
            return dense(cfg.width, name="down_proj")(nn.silu(gate) * up)
        x = dense(cfg.mlp_hidden, name="up_proj")(x)
        return dense(cfg.width, name="down_proj")(nn.gelu(x))


def rms_norm(cfg, name: str) -> nn.RMSNorm:
    """RMSNorm with ``cfg.norm_eps``: statistics in float32 (flax promotes), float32 scale."""
    return nn.RMSNorm(epsilon=cfg.norm_eps, dtype=cfg.compute_dtype, name=name)


def mixer(cfg, kind: str, window: int, name: str) -> nn.Module:
    """The mixer module of layer kind ``kind`` (module docstring)."""
    if kind == "attn":
        return Attention(cfg, window, name=name)
    if kind == "swa":
        return Attention(cfg, cfg.sliding_window, name=name)
    if kind == "jet":
        return JetBlock(cfg.jet_config(), name=name)
    if kind == "gdn":
        return GatedDeltaNet(cfg, name=name)
    raise ValueError(f"unknown layer kind {kind!r}; allowed: attn, swa, gdn, jet")


class Block(nn.Module):
    """``__call__(h, layer_state, positions, valid=None) -> (h, new_state)``.

    Attributes:
      config: a model config (model/config.py); its ``block_names`` name the parameters.
      kind: mixer kind, "attn" | "swa" | "gdn" | "jet" (KVCache state for attention,
        FastWeightState for gdn and jet).
      window: mask window of "attn" (the sleep window L).
      use_post_mixer_norm, use_post_mlp_norm: sandwich norms on the branch outputs.
      use_mlp: False for a mixer-only layer (Ouro's inserted Jet layers).

    ``valid`` [batch, time] bool marks real (not padded) tokens, None = all; norms and MLP
    act per token, so only the mixer needs it.
    """

    config: Any
    kind: str
    window: int
    use_post_mixer_norm: bool = False
    use_post_mlp_norm: bool = False
    use_mlp: bool = True

    @nn.compact
    def __call__(self, h: jax.Array, layer_state, positions: jax.Array, valid=None):
        cfg = self.config
        names = cfg.block_names
        layer = mixer(cfg, self.kind, self.window, names.mixer)
        y, layer_state = layer(rms_norm(cfg, names.mixer_norm)(h), layer_state, positions, valid)
        if self.use_post_mixer_norm:
            y = rms_norm(cfg, names.post_mixer_norm)(y)
        h = h + y
        if self.use_mlp:
            y = MLP(cfg, name=names.mlp)(rms_norm(cfg, names.mlp_norm)(h))
            if self.use_post_mlp_norm:
                y = rms_norm(cfg, names.post_mlp_norm)(y)
            h = h + y
        # The residual stream is split on the batch only (weights split by fsdp are gathered
        # per use); a no-op outside a sharding context.
        h = nn.with_logical_constraint(h, ("batch", None, None))
        return h, layer_state


# model.remat_policy -> jax.checkpoint policy (None: no rematerialisation).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
_REMAT_BLOCKS = {
    name: nn.remat(Block, policy=policy) for name, policy in REMAT_POLICIES.items() if policy
}


def block(cfg, kind: str, window: int, **flags) -> Block:
    """A ``Block(cfg, kind, window, **flags)`` rematerialised by ``cfg.remat_policy``
    (module docstring); the parameters are the same under every policy."""
    return _REMAT_BLOCKS.get(cfg.remat_policy, Block)(cfg, kind, window, **flags)
