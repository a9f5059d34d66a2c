"""The hybrid language model: Embed -> B_0 -> ... -> B_{D-1} -> OutProj (paper eq. 5).

The stages are separate Linen methods so that sleep/ can embed a window once, loop a
contiguous slice of blocks N times (eq. 6), and read out only wake windows:

    h = model.apply({"params": p}, tokens, positions, method=model.embed)
    h, state = model.apply({"params": p}, h, state, positions, start, stop, method=model.blocks)
    logits = model.apply({"params": p}, h, method=model.head)

Parameter names (for optimiser routing): ``token_embed``, ``position_embed`` (learned
positions only), ``block_{i}/{mixer_norm,mixer,mlp_norm,mlp}``, ``final_norm``,
``lm_head``. Attention mixers have ``{q,k,v,o}_proj``; GDN mixers ``{q,k,v}_proj``,
``conv_weight``, ``a_proj``, ``b_proj``, ``A_log``, ``dt_bias``, ``head_norm``,
``o_gate_proj``, ``o_proj``; Jet mixers the Jet-Nemotron names (model/jet.py); MLPs
``up_proj``, ``down_proj``. Parameters are float32; compute uses ``config.dtype``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sleep_lm.model import state as state_lib
from sleep_lm.model.block import block
from sleep_lm.model.config import ModelConfig
from sleep_lm.model.stages import EMBED_INIT, StagedLM, run_blocks, token_embedding
from sleep_lm.model.state import ModelState


class HybridLM(StagedLM):
    """Attention / Gated DeltaNet / Jet hybrid with explicit per-layer state.

    Attributes:
      config: ModelConfig.
      vocab_size: number of token ids.
      max_len: size of the learned position table (global positions 0..max_len-1).
      window: attention window L: a query sees at most L keys (itself and L - 1 earlier),
        and the default KV cache holds L tokens.
    """

    config: ModelConfig
    vocab_size: int
    max_len: int
    window: int

    def setup(self):
        cfg = self.config
        self.token_embed = token_embedding(cfg, self.vocab_size)
        if cfg.positions == "learned":
            self.position_embed = self.param(
                "position_embed", EMBED_INIT, (self.max_len, cfg.width)
            )
        self.block = [block(cfg, kind, self.window) for kind in cfg.layers]
        self.final_norm = nn.RMSNorm(epsilon=cfg.norm_eps, dtype=cfg.compute_dtype)
        self.lm_head = nn.Dense(
            self.vocab_size, use_bias=False, dtype=cfg.compute_dtype, param_dtype=jnp.float32
        )

    def embed(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
        """tokens [batch, time] int, positions [time] (or [batch, time] for padded batches)
        -> h [batch, time, width]."""
        h = self.token_embed(tokens)
        if self.config.positions == "learned":
            # Clamp (rather than NaN-fill) positions past the table, e.g. long generation.
            pos = jnp.take(self.position_embed, positions, axis=0, mode="clip")
            h = h + (pos.astype(h.dtype)[None] if positions.ndim == 1 else pos.astype(h.dtype))
        return h

    def blocks(
        self,
        h: jax.Array,
        state: ModelState,
        positions: jax.Array,
        start: int,
        stop: int,
        valid: jax.Array | None = None,
    ) -> tuple[jax.Array, ModelState]:
        """h [batch, time, width] through blocks start..stop-1 once; positions [time];
        valid [batch, time] bool (False at padded tokens, which are inert; None: all real)."""
        return run_blocks(self.block, h, state, positions, start, stop, valid)

    def head(self, h: jax.Array) -> jax.Array:
        """h [batch, time, width] -> logits [batch, time, vocab] float32."""
        return self.lm_head(self.final_norm(h)).astype(jnp.float32)

    @nn.nowrap
    def init_state(self, batch: int, cache_len: int | None = None) -> ModelState:
        """Zero state for ``batch`` sequences; KV caches hold ``cache_len`` (default window)."""
        cfg = self.config
        return state_lib.init_state(
            cfg.layers,
            batch,
            heads=cfg.heads,
            head_dim=cfg.head_dim,
            conv_size=cfg.conv_size,
            cache_len=self.window if cache_len is None else cache_len,
            dtype=cfg.compute_dtype,
            jet_value_head_dim=cfg.jet_value_head_dim,
        )


def build_model(model_cfg, *, vocab_size: int, max_len: int, window: int) -> HybridLM:
    """Builds a HybridLM from ``config.model`` (ConfigDict, dict or ModelConfig).

    Raises ValueError naming the offending ``model.*`` field.
    """
    cfg = model_cfg if isinstance(model_cfg, ModelConfig) else ModelConfig.from_config(model_cfg)
    for name, value in (("vocab_size", vocab_size), ("max_len", max_len), ("window", window)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: allowed a positive int, got {value!r}")
    return HybridLM(config=cfg, vocab_size=vocab_size, max_len=max_len, window=window)
