"""Hashable model configuration, parsed once from ``config.model`` (a ConfigDict or dict)."""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax.numpy as jnp

from sleep_lm.ops import PRECISIONS

LAYER_KINDS = ("attn", "gdn", "jet")
RULES = ("delta", "linear")
POSITIONS = ("learned", "none", "rope")
GDN_IMPLS = ("chunked", "recurrent", "associative")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Static model hyper-parameters (hashable, so a model can be a jit static argument).

    Attributes:
      width: residual stream width D.
      heads: heads per mixer; head_dim = width // heads is the attention head size, the
        GDN key and value size and the Jet key size.
      layers: layer kinds in order, e.g. ("attn", "gdn", "attn", "gdn"); "jet" is a Jet block
        (sleep_lm/model/jet.py: GDN with a dynamic convolution on v, no q/k convolution).
      mlp_ratio: MLP hidden width = mlp_ratio * width.
      rule: "delta" (Gated DeltaNet, ops.gated_delta_rule) or "linear" (the paper's eq. 3,
        ops.gated_linear_rule) for the GDN layers; Jet layers always use the delta rule.
      conv_size: kernel size of the short causal convolution (>= 1): GDN's static depthwise
        one on q, k, v and Jet's dynamic one on v.
      positions: "learned" (absolute embeddings over global positions, added to the token
        embeddings: the default), "none", or "rope" (rotary over global positions on the
        attention and GDN queries and keys).
      gdn_impl: ops implementation ("chunked" | "recurrent"; "associative" for linear only).
      chunk_size: chunk length for gdn_impl="chunked".
      gdn_precision: matmul precision inside the GDN op (ops' ``precision=``): "highest"
        (full float32 on every backend: the fast weights accumulate over every window and
        sleep pass) or a faster name of ops.PRECISIONS such as "default" (TF32 on recent
        NVIDIA GPUs, one bfloat16 pass on TPU) or "BF16_BF16_F32"; no difference on CPU.
      dtype: compute dtype name; parameters and fast weights are always float32.
      jet_expand_v: Jet value head size = head_dim * jet_expand_v (an integer within 1e-5
        relative; Jet-Nemotron's ``expand_v``, 8/3 in Jet-Nemotron-2B).
      jet_generator_reduction: Jet kernel generator hidden size = heads * value head size //
        this (Jet-Nemotron's ``dconv_generator_reduction``, 8).
    """

    width: int = 64
    heads: int = 2
    layers: tuple[str, ...] = ("attn", "gdn", "attn", "gdn")
    mlp_ratio: int = 4
    rule: str = "delta"
    conv_size: int = 4
    positions: str = "learned"
    gdn_impl: str = "chunked"
    chunk_size: int = 64
    gdn_precision: str = "highest"
    dtype: str = "float32"
    jet_expand_v: float = 2.0
    jet_generator_reduction: int = 8

    def __post_init__(self):
        def bad(field, allowed, got):
            return ValueError(f"model.{field}: allowed {allowed}, got {got!r}")

        for field in (
            "width",
            "heads",
            "mlp_ratio",
            "conv_size",
            "chunk_size",
            "jet_generator_reduction",
        ):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(field, "a positive int", value)
        if self.width % self.heads:
            raise bad("heads", f"a divisor of model.width={self.width}", self.heads)
        if not self.layers:
            raise bad("layers", f"a comma-separated list of {'/'.join(LAYER_KINDS)}", "")
        for kind in self.layers:
            if kind not in LAYER_KINDS:
                raise bad("layers", f"layer types {LAYER_KINDS}", kind)
        for field, allowed in (
            ("rule", RULES),
            ("positions", POSITIONS),
            ("gdn_impl", GDN_IMPLS),
            ("gdn_precision", PRECISIONS),
            ("dtype", DTYPES),
        ):
            if getattr(self, field) not in allowed:
                raise bad(field, allowed, getattr(self, field))
        if self.rule == "delta" and self.gdn_impl == "associative":
            raise bad("gdn_impl", "chunked or recurrent with rule=delta", self.gdn_impl)
        if "jet" in self.layers:
            if self.gdn_impl == "associative":
                raise bad("gdn_impl", "chunked or recurrent with jet layers", self.gdn_impl)
            expand = self.jet_expand_v
            number = isinstance(expand, (int, float)) and not isinstance(expand, bool)
            value = self.head_dim * expand if number and math.isfinite(expand) else 0
            if not (value >= 1 and math.isclose(value, round(value), rel_tol=1e-5)):
                allowed = f"a number with head_dim={self.head_dim} * it a positive integer"
                raise bad("jet_expand_v", allowed, expand)
            channels = self.heads * self.jet_value_head_dim
            if self.jet_generator_reduction > channels:
                allowed = f"at most heads * Jet value head size = {channels}"
                raise bad("jet_generator_reduction", allowed, self.jet_generator_reduction)

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def jet_value_head_dim(self) -> int:
        """Value size per head of the Jet layers (their key size is head_dim)."""
        return round(self.head_dim * self.jet_expand_v)

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def dense(self):
        """``nn.Dense`` as every projection of the model uses it: no bias, computing in the
        compute dtype, float32 parameters. Call as ``cfg.dense(features, name=...)``."""
        return functools.partial(
            nn.Dense, use_bias=False, dtype=self.compute_dtype, param_dtype=jnp.float32
        )

    @classmethod
    def from_config(cls, model_cfg) -> ModelConfig:
        """Builds from ``config.model``; missing fields take the defaults above."""
        get = model_cfg.get
        layers = get("layers", ",".join(cls.layers))
        if isinstance(layers, str):
            layers = tuple(s.strip() for s in layers.split(",") if s.strip())
        kwargs = {}
        for field in dataclasses.fields(cls):
            if field.name != "layers" and get(field.name, None) is not None:
                kwargs[field.name] = get(field.name)
        return cls(layers=tuple(layers), **kwargs)
