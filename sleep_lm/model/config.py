"""Model configuration: one validated base, and the from-scratch hybrid's ``ModelConfig``.

Every config of ``sleep_lm/model`` (``ModelConfig``, ``JetConfig``, the families'
``Qwen2Config`` and ``OuroConfig``) is a frozen (hashable) dataclass derived from
``Config``: its fields say what they accept (``positive``, ``number``, ``one_of``,
``json_object``) and ``Config.__post_init__`` checks them all, raising one-line
ValueErrors ``"<prefix>.<field>: allowed ..., got ..."``; a config adds its cross-field
checks in ``check``.

The attributes a shared layer reads from any family config (``attention.Attention``,
``block.Block``, ``block.MLP``): width, heads, kv_heads, head_dim, rope_theta (None: no
rotary), qkv_bias, norm_eps, mlp_hidden, mlp_gated, block_names, compute_dtype, dense.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import ClassVar, NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from sleep_lm.model.positions import ROPE_BASE
from sleep_lm.ops import PRECISIONS

LAYER_KINDS = ("attn", "gdn", "jet")
RULES = ("delta", "linear")
POSITIONS = ("learned", "none", "rope")
GDN_IMPLS = ("chunked", "recurrent", "associative")
DELTA_IMPLS = GDN_IMPLS[:2]  # the delta rule has no associative scan
DTYPES = ("float32", "bfloat16")
# Per-layer rematerialisation (block.REMAT_POLICIES) and the attention kernel
# (attention.dot_product_attention); their meaning is documented there.
REMAT_POLICIES = ("none", "full", "save_dots")
ATTENTION_IMPLS = ("auto", "xla", "chunked", "cudnn", "splash")
# The compute settings of ``config.model`` every family takes (a pretrained family's
# architecture comes from its config.json; these are passed to its load as options).
COMPUTE_OPTIONS = (
    "dtype",
    "gdn_impl",
    "chunk_size",
    "gdn_precision",
    "remat_policy",
    "attention_impl",
    "attention_chunk",
)

_POSITIVE = "a positive int"
_NUMBER = "a positive number"
_JSON = "a JSON object string"


def positive(default=dataclasses.MISSING):
    """A dataclass field that must be an int >= 1."""
    return dataclasses.field(default=default, metadata={"allowed": _POSITIVE})


def number(default=dataclasses.MISSING):
    """A dataclass field that must be a finite number > 0."""
    return dataclasses.field(default=default, metadata={"allowed": _NUMBER})


def one_of(default, allowed: tuple):
    """A dataclass field whose value must be one of ``allowed``."""
    return dataclasses.field(default=default, metadata={"allowed": tuple(allowed)})


def json_object(default: str = ""):
    """A dataclass field holding JSON object text ("" = none)."""
    return dataclasses.field(default=default, metadata={"allowed": _JSON})


def _valid(value, allowed) -> bool:
    if allowed == _POSITIVE:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if allowed == _NUMBER:
        real = isinstance(value, int | float) and not isinstance(value, bool)
        return real and math.isfinite(value) and value > 0
    if allowed == _JSON:
        try:
            return isinstance(json.loads(value) if value else {}, dict)
        except (TypeError, ValueError):
            return False
    return value in allowed


class BlockNames(NamedTuple):
    """Parameter names inside one decoder block (``block.Block``)."""

    mixer: str
    mixer_norm: str
    mlp: str
    mlp_norm: str
    post_mixer_norm: str = ""
    post_mlp_norm: str = ""


# Hugging Face decoder names (Qwen2, Jet-Nemotron, Ouro's sandwich norms).
HF_BLOCK_NAMES = BlockNames(
    mixer="self_attn",
    mixer_norm="input_layernorm",
    mlp="mlp",
    mlp_norm="post_attention_layernorm",
    post_mixer_norm="input_layernorm_2",
    post_mlp_norm="post_attention_layernorm_2",
)


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of every model config: field validation written once (module docstring)."""

    prefix: ClassVar[str] = "model"  # error messages name "<prefix>.<field>"

    def __post_init__(self):
        for field in dataclasses.fields(self):
            allowed = field.metadata.get("allowed")
            value = getattr(self, field.name)
            if allowed is not None and not _valid(value, allowed):
                raise self.bad(field.name, allowed, value)
        self.check()

    def bad(self, field: str, allowed, got) -> ValueError:
        return ValueError(f"{self.prefix}.{field}: allowed {allowed}, got {got!r}")

    def check(self) -> None:
        """Cross-field checks of a config (after every field's own)."""

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def dense(self):
        """``nn.Dense`` as every projection uses it: no bias (unless ``use_bias=True``),
        computing in the compute dtype, float32 parameters: ``cfg.dense(features, name=...)``."""
        return functools.partial(
            nn.Dense, use_bias=False, dtype=self.compute_dtype, param_dtype=jnp.float32
        )


@dataclasses.dataclass(frozen=True)
class ComputeConfig(Config):
    """The compute settings every model config has (``COMPUTE_OPTIONS``): how the model is
    computed, not what it computes (the values agree to float rounding under each).

    Attributes:
      gdn_impl: ops implementation of the fast-weight rule ("chunked" | "recurrent";
        ModelConfig also "associative": linear rule only).
      chunk_size: chunk length for gdn_impl="chunked".
      gdn_precision: matmul precision inside the GDN op (a name of ops.PRECISIONS).
      dtype: compute dtype name; parameters and fast weights are always float32.
      remat_policy: per-layer rematerialisation in the backward (model/block.py).
      attention_impl: attention kernel (model/attention.py's dot_product_attention).
      attention_chunk: queries per chunk of attention_impl="chunked".
    """

    gdn_impl: str = one_of("chunked", DELTA_IMPLS)
    chunk_size: int = positive(64)
    gdn_precision: str = one_of("highest", PRECISIONS)
    dtype: str = one_of("float32", DTYPES)
    remat_policy: str = one_of("none", REMAT_POLICIES)
    attention_impl: str = one_of("auto", ATTENTION_IMPLS)
    attention_chunk: int = positive(256)

    def __post_init__(self):
        super().__post_init__()
        if self.attention_impl == "cudnn" and self.dtype != "bfloat16":
            # cuDNN's fused attention takes bfloat16 / float16 only.
            raise self.bad("attention_impl", '"cudnn" only with dtype="bfloat16"', "cudnn")


@dataclasses.dataclass(frozen=True)
class ModelConfig(ComputeConfig):
    """The from-scratch hybrid's hyper-parameters (``config.model``).

    Attributes:
      width: residual stream width D.
      heads: heads per mixer; head_dim = width // heads is the attention head size, the
        GDN key and value size and the Jet key size.
      layers: layer kinds in order, e.g. ("attn", "gdn", "attn", "gdn"); "jet" is a Jet
        block (model/jet.py).
      mlp_ratio: MLP hidden width = mlp_ratio * width (GELU MLP).
      rule: "delta" (ops.gated_delta_rule) or "linear" (the paper's eq. 3) for GDN layers.
      conv_size: taps of GDN's short convolution on q, k, v and of Jet's dynamic one on v.
      positions: "learned" (absolute table added to the embeddings), "none", or "rope"
        (rotary over global positions on attention and GDN q, k; model/positions.py).
      jet_expand_v: Jet value head size = head_dim * jet_expand_v (an integer).
      jet_generator_reduction: Jet kernel generator hidden = heads * value size // this.
      ComputeConfig's compute settings; gdn_impl here also "associative" (linear rule only).
    """

    width: int = positive(64)
    heads: int = positive(2)
    layers: tuple[str, ...] = ("attn", "gdn", "attn", "gdn")
    mlp_ratio: int = positive(4)
    rule: str = one_of("delta", RULES)
    conv_size: int = positive(4)
    positions: str = one_of("learned", POSITIONS)
    gdn_impl: str = one_of("chunked", GDN_IMPLS)
    jet_expand_v: float = 2.0
    jet_generator_reduction: int = positive(8)

    qkv_bias: ClassVar[bool] = False
    norm_eps: ClassVar[float] = 1e-6
    mlp_gated: ClassVar[bool] = False  # GELU MLP: up_proj, down_proj
    block_names: ClassVar[BlockNames] = BlockNames("mixer", "mixer_norm", "mlp", "mlp_norm")

    def check(self):
        if self.width % self.heads:
            raise self.bad("heads", f"a divisor of model.width={self.width}", self.heads)
        if not self.layers:
            raise self.bad("layers", f"a comma-separated list of {'/'.join(LAYER_KINDS)}", "")
        for kind in self.layers:
            if kind not in LAYER_KINDS:
                raise self.bad("layers", f"layer types {LAYER_KINDS}", kind)
        if self.rule == "delta" and self.gdn_impl == "associative":
            raise self.bad("gdn_impl", "chunked or recurrent with rule=delta", self.gdn_impl)
        if "jet" in self.layers:
            if self.gdn_impl == "associative":
                raise self.bad("gdn_impl", "chunked or recurrent with jet layers", self.gdn_impl)
            expand = self.jet_expand_v
            real = isinstance(expand, int | float) and not isinstance(expand, bool)
            value = self.head_dim * expand if real and math.isfinite(expand) else 0
            if not (value >= 1 and math.isclose(value, round(value), rel_tol=1e-5)):
                allowed = f"a number with head_dim={self.head_dim} * it a positive integer"
                raise self.bad("jet_expand_v", allowed, expand)
            channels = self.heads * self.jet_value_head_dim
            if self.jet_generator_reduction > channels:
                allowed = f"at most heads * Jet value head size = {channels}"
                raise self.bad("jet_generator_reduction", allowed, self.jet_generator_reduction)

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def kv_heads(self) -> int:
        return self.heads

    @property
    def rope_theta(self) -> float | None:
        """Rotary base of the attention layers; None without rotary positions."""
        return ROPE_BASE if self.positions == "rope" else None

    @property
    def mlp_hidden(self) -> int:
        return self.mlp_ratio * self.width

    @property
    def jet_value_head_dim(self) -> int:
        """Value size per head of the Jet layers (their key size is head_dim)."""
        return round(self.head_dim * self.jet_expand_v)

    # The Jet mixer's shape in jet_config_of's terms: key head size head_dim, the model's
    # heads and conv width, JetConfig's default output norm epsilon.
    jet_heads = property(lambda self: self.heads)
    jet_key_head_dim = property(lambda self: self.head_dim)
    jet_conv_size = property(lambda self: self.conv_size)
    jet_norm_eps: ClassVar[float] = 1e-5

    def jet_config(self):
        """The JetConfig of the "jet" layers (model/jet.py)."""
        return jet_config_of(self)

    @classmethod
    def from_config(cls, model_cfg) -> ModelConfig:
        """Builds from ``config.model``; missing fields take the defaults above."""
        get = model_cfg.get
        layers = get("layers", ",".join(cls.__dataclass_fields__["layers"].default))
        if isinstance(layers, str):
            layers = tuple(s.strip() for s in layers.split(",") if s.strip())
        kwargs = {}
        for field in dataclasses.fields(cls):
            if field.name != "layers" and get(field.name, None) is not None:
                kwargs[field.name] = get(field.name)
        return cls(layers=tuple(layers), **kwargs)


@dataclasses.dataclass(frozen=True)
class DecoderConfig(ComputeConfig):
    """Fields every pretrained decoder family shares (Qwen2Config, OuroConfig), with
    Hugging Face names' meaning: vocab_size, width (hidden_size), heads, kv_heads (heads a
    multiple), head_dim (even: RoPE rotates pairs), rope_theta, norm_eps (rms_norm_eps);
    the Jet layers' shape ``jet_*`` (model/jet.py's JetConfig); ComputeConfig's settings;
    hf_extra (config.json keys the family does not model, as JSON text, written back on
    export). A family redeclares a field to change its default."""

    vocab_size: int = positive(96)
    width: int = positive(32)
    heads: int = positive(4)
    kv_heads: int = positive(2)
    head_dim: int = positive(8)
    rope_theta: float = number(1_000_000.0)
    norm_eps: float = number(1e-6)
    jet_heads: int = positive(2)
    jet_key_head_dim: int = positive(8)
    jet_value_head_dim: int = positive(16)
    jet_conv_size: int = positive(4)
    jet_generator_reduction: int = positive(8)
    jet_norm_eps: float = number(1e-5)
    hf_extra: str = json_object()

    mlp_gated: ClassVar[bool] = True  # SwiGLU: gate_proj, up_proj, down_proj
    block_names: ClassVar[BlockNames] = HF_BLOCK_NAMES

    def check(self):
        if self.heads % self.kv_heads:
            raise self.bad("kv_heads", f"a divisor of heads={self.heads}", self.kv_heads)
        if self.head_dim % 2:
            raise self.bad("head_dim", "an even int (RoPE rotates pairs)", self.head_dim)

    def jet_config(self):
        """The JetConfig of this model's Jet layers (model/jet.py)."""
        return jet_config_of(self)


@dataclasses.dataclass(frozen=True)
class JetConfig(Config):
    """Static hyper-parameters of one Jet block (hashable).

    Attributes:
      width: input / output width (the residual stream).
      heads: heads of the fast-weight memory.
      key_head_dim: q / k size per head.
      value_head_dim: v size per head.
      conv_size: width W of the dynamic causal convolution on v.
      generator_reduction: the kernel generator's hidden size is value_dim // this.
      norm_eps: epsilon of the per-head output RMSNorm.
      gdn_impl: ops implementation of the gated delta rule ("chunked" | "recurrent").
      chunk_size: chunk length for gdn_impl="chunked".
      precision: matmul precision inside the op (a name of PRECISIONS).
      dtype: compute dtype name; parameters and fast weights are always float32.
    """

    prefix: ClassVar[str] = "jet"

    width: int = positive()
    heads: int = positive()
    key_head_dim: int = positive()
    value_head_dim: int = positive()
    conv_size: int = positive(4)
    generator_reduction: int = positive(8)
    norm_eps: float = number(1e-5)
    gdn_impl: str = one_of("chunked", DELTA_IMPLS)
    chunk_size: int = positive(64)
    precision: str = one_of("highest", PRECISIONS)
    dtype: str = one_of("float32", DTYPES)

    def check(self):
        if self.generator_reduction > self.value_dim:
            allowed = f"at most value_dim={self.value_dim}"
            raise self.bad("generator_reduction", allowed, self.generator_reduction)

    @property
    def key_dim(self) -> int:
        return self.heads * self.key_head_dim

    @property
    def value_dim(self) -> int:
        """Channels of v (and of the convolution and its tail): heads * value_head_dim."""
        return self.heads * self.value_head_dim

    @property
    def generator_hidden(self) -> int:
        return self.value_dim // self.generator_reduction


def jet_config_of(cfg):
    """The JetConfig (model/jet.py) of a family config's flat ``jet_*`` fields (Qwen2Config's
    jet layers, OuroConfig's inserted ones) and its ops settings."""
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
