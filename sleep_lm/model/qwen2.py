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

from sleep_lm.model.block import Block
from sleep_lm.model.config import (
    DELTA_IMPLS,
    DTYPES,
    HF_BLOCK_NAMES,
    BlockNames,
    Config,
    jet_config_of,
    json_object,
    number,
    one_of,
    positive,
)
from sleep_lm.model.stages import StagedLM, run_blocks
from sleep_lm.model.state import ModelState
from sleep_lm.ops import PRECISIONS

QWEN2_LAYER_KINDS = ("attn", "swa", "jet")
_EMBED_INIT = nn.initializers.normal(stddev=0.02)


@dataclasses.dataclass(frozen=True)
class Qwen2Config(Config):
    """Static hyper-parameters of a Qwen2-style decoder (hashable: a jit static argument).

    Attributes:
      vocab_size, width (hidden_size), intermediate (SwiGLU hidden size), heads (query
        heads), kv_heads (key/value heads; heads a multiple), head_dim: as in config.json.
      layers: one kind per layer, "attn" | "swa" | "jet".
      sliding_window: mask window of "swa" layers (keys including the query); 0 if none.
      rope_theta: RoPE base; norm_eps: RMSNorm epsilon; tie_embeddings: head = embedding^T.
      jet_heads, jet_key_head_dim, jet_value_head_dim, jet_conv_size,
        jet_generator_reduction, jet_norm_eps: the "jet" layers' JetConfig (model/jet.py).
      gdn_impl, chunk_size, gdn_precision: ops settings of the jet layers.
      dtype: compute dtype name; parameters are float32.
      hf_extra: the checkpoint's config.json as JSON text, written back by ``save_hf``.
    """

    vocab_size: int = positive(96)
    width: int = positive(32)
    intermediate: int = positive(64)
    heads: int = positive(4)
    kv_heads: int = positive(2)
    head_dim: int = positive(8)
    layers: tuple[str, ...] = ("attn", "attn")
    sliding_window: int = 0
    rope_theta: float = number(1_000_000.0)
    norm_eps: float = number(1e-6)
    tie_embeddings: bool = False
    jet_heads: int = positive(2)
    jet_key_head_dim: int = positive(8)
    jet_value_head_dim: int = positive(16)
    jet_conv_size: int = positive(4)
    jet_generator_reduction: int = positive(8)
    jet_norm_eps: float = number(1e-5)
    gdn_impl: str = one_of("chunked", DELTA_IMPLS)
    chunk_size: int = positive(64)
    gdn_precision: str = one_of("highest", PRECISIONS)
    dtype: str = one_of("float32", DTYPES)
    hf_extra: str = json_object()

    qkv_bias: ClassVar[bool] = True
    mlp_gated: ClassVar[bool] = True
    block_names: ClassVar[BlockNames] = HF_BLOCK_NAMES

    def check(self):
        if self.heads % self.kv_heads:
            raise self.bad("kv_heads", f"a divisor of heads={self.heads}", self.kv_heads)
        if self.head_dim % 2:
            raise self.bad("head_dim", "an even int (RoPE rotates pairs)", self.head_dim)
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

    def jet_config(self):
        """The JetConfig of this model's "jet" layers (model/jet.py)."""
        return jet_config_of(self)


class Qwen2Model(nn.Module):
    """HF's ``model``: embed_tokens, layers_{i}, norm."""

    config: Qwen2Config
    window: int

    def setup(self):
        cfg = self.config
        self.embed_tokens = nn.Embed(
            cfg.vocab_size,
            cfg.width,
            embedding_init=_EMBED_INIT,
            dtype=cfg.compute_dtype,
            param_dtype=jnp.float32,
        )
        self.layers = [Block(cfg, kind, self.window) for kind in cfg.layers]
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
