"""Qwen2-style decoder family (Qwen2 / Qwen2.5, and Jet-Nemotron with ``jet`` layers).

Per layer (pre-norm, shapes [batch, time, width]):

    h = h + mixer(input_layernorm(h))          # attn | swa | jet
    h = h + mlp(post_attention_layernorm(h))   # SwiGLU: down(SiLU(gate(x)) * up(x))

and ``logits = lm_head(norm(h))`` (or the embedding table transposed when tied).

Mixer kinds (``Qwen2Config.layers``):
  "attn": grouped-query softmax attention, q/k/v with bias, o without, RoPE (rotate-half
    pairs (i, i + head_dim / 2), theta from the checkpoint) on q and k over GLOBAL
    positions. Its mask window is the model's ``window`` (the sleep window L): a query sees
    itself and L - 1 earlier tokens, so within a hard-evicted window it is plain causal
    attention, the reference model's computation.
  "swa": the same attention with its own mask window ``sliding_window`` (a query sees
    itself and sliding_window - 1 earlier keys, as Jet-Nemotron's sliding layers do). Its
    KV cache has the same length as every other (the sleep window), so streaming and
    training treat all attention layers alike.
  "jet": Jet-Nemotron's JetBlock (sleep_lm/model/jet.py), a fast-weight layer whose state
    is a FastWeightState: what sleep consolidates into.

State: a KVCache [batch, cache_len, kv_heads, head_dim] per attention layer (ring buffer by
global position, sleep_lm/model/attention.py's ``write_cache`` / ``attention_mask``), a
FastWeightState per Jet layer. Parameters (float32) mirror the Hugging Face names, see
sleep_lm/pretrained/hf.py: {"model": {"embed_tokens", "layers_{i}": {"input_layernorm",
"self_attn", "post_attention_layernorm", "mlp": {gate_proj, up_proj, down_proj}}, "norm"},
"lm_head"} (no "lm_head" when tied). Compute uses ``config.dtype``; attention scores,
softmax, norms and RoPE run in float32.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from sleep_lm.model.attention import attention_mask, key_positions, write_cache
from sleep_lm.model.config import DTYPES, GDN_IMPLS
from sleep_lm.model.positions import rotary
from sleep_lm.model.state import KVCache, ModelState, constrain, empty_cache
from sleep_lm.ops import PRECISIONS

QWEN2_LAYER_KINDS = ("attn", "swa", "jet")
_MASKED = -1e30  # finite: see sleep_lm/model/attention.py
_EMBED_INIT = nn.initializers.normal(stddev=0.02)


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
    """Static hyper-parameters of a Qwen2-style decoder (hashable: a jit static argument).

    Attributes:
      vocab_size, width (hidden_size), intermediate (SwiGLU hidden size), heads (query
        heads), kv_heads (key/value heads; heads a multiple), head_dim: as in HF config.json.
      layers: one kind per layer, "attn" | "swa" | "jet".
      sliding_window: mask window of "swa" layers (keys including the query); 0 if none.
      rope_theta: RoPE base; norm_eps: RMSNorm epsilon; tie_embeddings: head = embedding^T.
      jet_heads, jet_key_head_dim, jet_value_head_dim, jet_conv_size, jet_generator_reduction
        (generator hidden = jet_heads * jet_value_head_dim // this), jet_norm_eps: the Jet
        blocks' shape (used only by "jet" layers; sleep_lm/model/jet.py's JetConfig).
      gdn_impl, chunk_size, gdn_precision: ops settings of the fast-weight (jet) layers;
        inference.py swaps gdn_impl to "recurrent" for one-token decoding.
      dtype: compute dtype name; parameters are float32.
      hf_extra: the checkpoint's config.json as sorted JSON text: fields this family does
        not model (token ids, max_position_embeddings, ...) are written back
        from it by ``save_hf``. Empty for configs built in code.
    """

    vocab_size: int = 96
    width: int = 32
    intermediate: int = 64
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 8
    layers: tuple[str, ...] = ("attn", "attn")
    sliding_window: int = 0
    rope_theta: float = 1_000_000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    jet_heads: int = 2
    jet_key_head_dim: int = 8
    jet_value_head_dim: int = 16
    jet_conv_size: int = 4
    jet_generator_reduction: int = 8
    jet_norm_eps: float = 1e-5
    gdn_impl: str = "chunked"
    chunk_size: int = 64
    gdn_precision: str = "highest"
    dtype: str = "float32"
    hf_extra: str = ""

    def __post_init__(self):
        def bad(field, allowed, got):
            return ValueError(f"model.{field}: allowed {allowed}, got {got!r}")

        for field in (
            "vocab_size",
            "width",
            "intermediate",
            "heads",
            "kv_heads",
            "head_dim",
            "jet_heads",
            "jet_key_head_dim",
            "jet_value_head_dim",
            "jet_conv_size",
            "jet_generator_reduction",
            "chunk_size",
        ):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(field, "a positive int", value)
        if self.heads % self.kv_heads:
            raise bad("kv_heads", f"a divisor of heads={self.heads}", self.kv_heads)
        if self.head_dim % 2:
            raise bad("head_dim", "an even int (RoPE rotates pairs)", self.head_dim)
        if not self.layers:
            raise bad("layers", f"a list of {QWEN2_LAYER_KINDS}", "")
        for kind in self.layers:
            if kind not in QWEN2_LAYER_KINDS:
                raise bad("layers", f"layer types {QWEN2_LAYER_KINDS}", kind)
        if "swa" in self.layers and self.sliding_window < 1:
            raise bad("sliding_window", "a positive int with swa layers", self.sliding_window)
        for field, allowed in (
            ("gdn_impl", GDN_IMPLS[:2]),
            ("gdn_precision", PRECISIONS),
            ("dtype", DTYPES),
        ):
            if getattr(self, field) not in allowed:
                raise bad(field, allowed, getattr(self, field))

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    def jet_config(self):
        """The JetConfig of this model's "jet" layers (sleep_lm/model/jet.py)."""
        return jet_config_of(self)


def jet_config_of(cfg):
    """The JetConfig (sleep_lm/model/jet.py) of a family config's flat ``jet_*`` fields
    (Qwen2Config's jet layers, OuroConfig's inserted ones) and its ops settings."""
    from sleep_lm.model.jet import JetConfig

    return JetConfig(
        width=cfg.width,
        heads=cfg.jet_heads,
        key_head_dim=cfg.jet_key_head_dim,
        value_head_dim=cfg.jet_value_head_dim,
        conv_size=cfg.jet_conv_size,
        generator_reduction=cfg.jet_generator_reduction,
        norm_eps=cfg.jet_norm_eps,
        gdn_impl=cfg.gdn_impl,
        chunk_size=cfg.chunk_size,
        precision=cfg.gdn_precision,
        dtype=cfg.dtype,
    )


def dense(cfg: Qwen2Config, features: int, name: str, use_bias: bool = False) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=cfg.compute_dtype,
        param_dtype=jnp.float32,
        name=name,
    )


class Qwen2Attention(nn.Module):
    """Grouped-query causal attention with q/k/v bias, RoPE and a ring-buffer KV cache.

    ``window``: mask window (keys including the query) of this layer. ``qkv_bias=False`` is
    Ouro's attention (sleep_lm/model/ouro.py), otherwise the same. ``config`` needs width,
    heads, kv_heads, head_dim, rope_theta and compute_dtype.
    """

    config: Qwen2Config
    window: int
    qkv_bias: bool = True

    @nn.compact
    def __call__(
        self, x: jax.Array, cache: KVCache, positions: jax.Array, valid: jax.Array | None = None
    ) -> tuple[jax.Array, KVCache]:
        """x: [batch, time, width]; positions: [time] global; valid: [batch, time] bool or
        None (padded keys are never attended to, as in attention.py). Returns (y, new cache)."""
        cfg = self.config
        batch, time, _ = x.shape
        heads, kv_heads, dim = cfg.heads, cfg.kv_heads, cfg.head_dim
        q = dense(cfg, heads * dim, "q_proj", self.qkv_bias)(x).reshape(batch, time, heads, dim)
        k = dense(cfg, kv_heads * dim, "k_proj", self.qkv_bias)(x).reshape(
            batch, time, kv_heads, dim
        )
        v = dense(cfg, kv_heads * dim, "v_proj", self.qkv_bias)(x).reshape(
            batch, time, kv_heads, dim
        )
        q = rotary(q, positions, base=cfg.rope_theta)
        k = rotary(k, positions, base=cfg.rope_theta)

        cur = key_positions(positions, batch, valid)
        if cache.keys.shape[1]:
            keys = jnp.concatenate([cache.keys, k.astype(cache.keys.dtype)], axis=1)
            values = jnp.concatenate([cache.values, v.astype(cache.values.dtype)], axis=1)
            k_pos = jnp.concatenate([cache.positions, cur], axis=1)
        else:  # no cache (hard eviction)
            keys, values, k_pos = k, v, cur

        # Query head h reads key/value head h // (heads / kv_heads) (HF's repeat_kv order):
        # group the query heads under their kv head instead of repeating keys.
        groups = heads // kv_heads
        qg = q.reshape(batch, time, kv_heads, groups, dim)
        scores = jnp.einsum(
            "bqkgd,bskd->bkgqs", qg, keys.astype(q.dtype), preferred_element_type=jnp.float32
        )
        scores = scores * dim**-0.5
        mask = attention_mask(positions, k_pos, self.window)[:, :, None]  # [b, 1, 1, q, s]
        scores = jnp.where(mask, scores, _MASKED)
        probs = jax.nn.softmax(scores, axis=-1).astype(cfg.compute_dtype)
        out = jnp.einsum("bkgqs,bskd->bqkgd", probs, values.astype(cfg.compute_dtype))
        y = dense(cfg, cfg.width, "o_proj")(out.reshape(batch, time, heads * dim))
        return y, constrain(write_cache(cache, k, v, positions, valid))


class Qwen2MLP(nn.Module):
    """SwiGLU MLP (gate_proj, up_proj, down_proj); ``config`` needs width, intermediate and
    compute_dtype (Qwen2 and Ouro)."""

    config: Qwen2Config

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        gate = dense(cfg, cfg.intermediate, "gate_proj")(x)
        up = dense(cfg, cfg.intermediate, "up_proj")(x)
        return dense(cfg, cfg.width, "down_proj")(nn.silu(gate) * up)


def rms_norm(cfg: Qwen2Config, name: str) -> nn.RMSNorm:
    # Statistics in float32 whatever the compute dtype (flax RMSNorm promotes), scale float32.
    return nn.RMSNorm(
        epsilon=cfg.norm_eps, dtype=cfg.compute_dtype, param_dtype=jnp.float32, name=name
    )


class Qwen2DecoderLayer(nn.Module):
    """``__call__(h, layer_state, positions, valid=None) -> (h, new_state)``; see the module
    docstring (``valid``: [batch, time] bool, False at padded tokens, which are inert)."""

    config: Qwen2Config
    kind: str
    window: int

    @nn.compact
    def __call__(self, h: jax.Array, layer_state, positions: jax.Array, valid=None):
        cfg = self.config
        if self.kind == "attn":
            mixer = Qwen2Attention(cfg, self.window, name="self_attn")
        elif self.kind == "swa":
            mixer = Qwen2Attention(cfg, cfg.sliding_window, name="self_attn")
        else:
            from sleep_lm.model.jet import JetBlock

            mixer = JetBlock(cfg.jet_config(), name="self_attn")
        y, layer_state = mixer(rms_norm(cfg, "input_layernorm")(h), layer_state, positions, valid)
        h = h + y
        h = h + Qwen2MLP(cfg, name="mlp")(rms_norm(cfg, "post_attention_layernorm")(h))
        h = nn.with_logical_constraint(h, ("batch", None, None))
        return h, layer_state


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
        self.layers = [Qwen2DecoderLayer(cfg, kind, self.window) for kind in cfg.layers]
        self.norm = nn.RMSNorm(
            epsilon=cfg.norm_eps, dtype=cfg.compute_dtype, param_dtype=jnp.float32
        )

    def embed(self, tokens: jax.Array) -> jax.Array:
        return self.embed_tokens(tokens)

    def run(self, h, state: ModelState, positions, start: int, stop: int, valid=None):
        layers = list(state.layers)
        for i in range(start, stop):
            h, layers[i] = self.layers[i](h, layers[i], positions, valid)
        return h, ModelState(layers=tuple(layers))

    def final(self, h: jax.Array) -> jax.Array:
        return self.norm(h)

    def attend(self, h: jax.Array) -> jax.Array:
        return self.embed_tokens.attend(h)


class Qwen2LM(nn.Module):
    """Qwen2-style causal LM with the HybridLM stage interface (embed / blocks / head).

    Attributes:
      config: Qwen2Config.
      window: the sleep window L: full-attention mask window and default KV cache length.
    """

    config: Qwen2Config
    window: int = 2048

    def setup(self):
        self.model = Qwen2Model(self.config, self.window)
        if not self.config.tie_embeddings:
            self.lm_head = nn.Dense(
                self.config.vocab_size,
                use_bias=False,
                dtype=self.config.compute_dtype,
                param_dtype=jnp.float32,
            )

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def embed(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
        """tokens [batch, time] int, positions [time] -> h [batch, time, width] (RoPE
        carries the positions inside attention, so they are unused here)."""
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
        """Runs layers start..stop-1 once; other layers' states pass through. ``valid``
        [batch, time] bool: False at padded tokens, which are inert (None: all real)."""
        return self.model.run(h, state, positions, start, stop, valid)

    def head(self, h: jax.Array) -> jax.Array:
        """h [batch, time, width] -> logits [batch, time, vocab] float32."""
        h = self.model.final(h)
        if self.config.tie_embeddings:
            return self.model.attend(h).astype(jnp.float32)
        return self.lm_head(h).astype(jnp.float32)

    def __call__(
        self, tokens: jax.Array, positions: jax.Array, state: ModelState
    ) -> tuple[jax.Array, ModelState]:
        """One ordinary forward pass over all layers: (logits, new state)."""
        h = self.embed(tokens, positions)
        h, state = self.blocks(h, state, positions, 0, len(self.config.layers))
        return self.head(h), state

    @nn.nowrap
    def init_params(self, rng: jax.Array) -> dict:
        """Initial parameter pytree (float32)."""
        tokens = jnp.zeros((1, 1), jnp.int32)
        positions = jnp.zeros((1,), jnp.int32)
        state = self.init_state(1)
        return jax.jit(lambda r: self.init(r, tokens, positions, state)["params"])(rng)

    @nn.nowrap
    def init_state(self, batch: int, cache_len: int | None = None) -> ModelState:
        """Zero state for ``batch`` sequences; KV caches hold ``cache_len`` (default window)."""
        cfg = self.config
        cache_len = self.window if cache_len is None else cache_len
        layers = []
        for kind in cfg.layers:
            if kind == "jet":
                from sleep_lm.model.jet import jet_state

                layers.append(jet_state(cfg.jet_config(), batch, cfg.compute_dtype))
            else:
                layers.append(
                    empty_cache(batch, cache_len, cfg.kv_heads, cfg.head_dim, cfg.compute_dtype)
                )
        return ModelState(layers=tuple(layers))


def build_qwen2(config: Qwen2Config, *, window: int) -> Qwen2LM:
    """Qwen2LM with sleep window ``window`` (ValueError if not a positive int)."""
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window: allowed a positive int, got {window!r}")
    return Qwen2LM(config=config, window=window)
