"""Qwen2-style decoder family (Qwen2 / Qwen2.5, and Jet-Nemotron with ``jet`` layers).

Per layer (model/block.py, pre-norm, h [batch, time, width]):

    h = h + self_attn(input_layernorm(h))          # attn | swa | jet
    h = h + mlp(post_attention_layernorm(h))       # SwiGLU

and ``logits = lm_head(norm(h))`` (the embedding table transposed when tied).

Layer kinds (``Qwen2Config.layers``): "attn" grouped-query attention with q/k/v bias and
RoPE (the checkpoint's theta) over global positions, masked to the sleep window L; "swa"
the same with mask window ``sliding_window`` (its KV cache is as long as every other);
"jet" Jet-Nemotron's JetBlock (model/jet.py), whose FastWeightState sleep consolidates
into. Parameters mirror the Hugging Face names (pretrained/hf.py): ``model/{embed_tokens,
layers_{i}/{input_layernorm, self_attn, post_attention_layernorm, mlp}, norm}``,
``lm_head`` (absent when tied).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from sleep_lm.model.block import block
from sleep_lm.model.config import DecoderConfig, positive
from sleep_lm.model.stages import StagedLM, run_blocks, token_embedding
from sleep_lm.model.state import ModelState

QWEN2_LAYER_KINDS = ("attn", "swa", "jet")


@dataclasses.dataclass(frozen=True)
class Qwen2Config(DecoderConfig):
    """A Qwen2-style decoder (hashable: a jit static argument); the shared fields are
    DecoderConfig's (model/config.py).

    Attributes:
      intermediate: SwiGLU hidden size (intermediate_size).
      layers: one kind per layer, "attn" | "swa" | "jet".
      sliding_window: mask window of "swa" layers (keys including the query); 0 if none.
      tie_embeddings: head = embedding^T.
    """

    intermediate: int = positive(64)
    layers: tuple[str, ...] = ("attn", "attn")
    sliding_window: int = 0
    tie_embeddings: bool = False

    qkv_bias: ClassVar[bool] = True

    def check(self):
        super().check()
        if not self.layers:
            raise self.bad("layers", f"a list of {QWEN2_LAYER_KINDS}", "")
        for kind in self.layers:
            if kind not in QWEN2_LAYER_KINDS:
                raise self.bad("layers", f"layer types {QWEN2_LAYER_KINDS}", kind)
        if "swa" in self.layers and self.sliding_window < 1:
            raise self.bad("sliding_window", "a positive int with swa layers", self.sliding_window)

    @property
    def mlp_hidden(self) -> int:
        return self.intermediate


class Qwen2Model(nn.Module):
    """HF's ``model``: embed_tokens, layers_{i}, norm."""

    config: Qwen2Config
    window: int

    def setup(self):
        cfg = self.config
        self.embed_tokens = token_embedding(cfg, cfg.vocab_size)
        self.layers = [block(cfg, kind, self.window) for kind in cfg.layers]
        self.norm = nn.RMSNorm(epsilon=cfg.norm_eps, dtype=cfg.compute_dtype)

    def embed(self, tokens: jax.Array) -> jax.Array:
        return self.embed_tokens(tokens)

    def run(self, h, state: ModelState, positions, start: int, stop: int, valid=None):
        return run_blocks(self.layers, h, state, positions, start, stop, valid)

    def final(self, h: jax.Array) -> jax.Array:
        return self.norm(h)

    def attend(self, h: jax.Array) -> jax.Array:
        return self.embed_tokens.attend(h)


class Qwen2LM(StagedLM):
    """Qwen2-style causal LM with the stage interface (model/stages.py).

    Attributes:
      config: Qwen2Config.
      window: the sleep window L: full-attention mask window and default KV cache length.
    """

    config: Qwen2Config
    window: int = 2048

    def setup(self):
        self.model = Qwen2Model(self.config, self.window)
        if not self.config.tie_embeddings:
            self.lm_head = self.config.dense(self.config.vocab_size)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def embed(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
        """tokens [batch, time] int -> h [batch, time, width] (positions enter via RoPE)."""
        del positions
        return self.model.embed(tokens)

    def blocks(
        self,
        h: jax.Array,
        state: ModelState,
        positions: jax.Array,
        start: int,
        stop: int,
        valid: jax.Array | None = None,
    ) -> tuple[jax.Array, ModelState]:
        """h [batch, time, width] through layers start..stop-1 once; valid [batch, time]
        bool (False at padded tokens, which are inert; None: all real)."""
        return self.model.run(h, state, positions, start, stop, valid)

    def head(self, h: jax.Array) -> jax.Array:
        """h [batch, time, width] -> logits [batch, time, vocab] float32."""
        h = self.model.final(h)
        if self.config.tie_embeddings:
            return self.model.attend(h).astype(jnp.float32)
        return self.lm_head(h).astype(jnp.float32)


def build_qwen2(config: Qwen2Config, *, window: int) -> Qwen2LM:
    """Qwen2LM with sleep window ``window`` (ValueError if not a positive int)."""
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window: allowed a positive int, got {window!r}")
    return Qwen2LM(config=config, window=window)
