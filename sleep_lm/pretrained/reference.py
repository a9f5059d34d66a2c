"""config.json read as the reference config classes read it.

A field missing from config.json takes the default of the class the reference code builds
from it, and a field that is present but null takes what that class makes of null. Fields
that would change the computation and that sleep_lm does not implement are refused by
name (one-line ValueError) rather than ignored. Sources of the defaults:

* ``QWEN2``: transformers' ``Qwen2Config.__init__`` (models/qwen2/configuration_qwen2.py).
* ``JET_NEMOTRON``: ``JetNemotronConfig.__init__`` in NVlabs/Jet-Nemotron,
  jetai/modeling/hf/configuration_jet_nemotron.py.
* ``JET_BLOCK``: the ``JetBlockConfig`` dataclass in jetai/modeling/hf/jet_block.py, built
  as ``JetBlockConfig(**efficient_attention_config["jet"])`` (so an unknown key is a
  TypeError there, and ``{}`` is all defaults).
* ``OURO``: ``OuroConfig.__init__`` of ByteDance's Ouro remote code (configuration_ouro.py
  on the hub; ``early_exit_step`` is read by its modeling code with getattr, default None).
* RoPE (all): transformers' default rope init rotates ``head_dim * partial_rotary_factor``
  features (factor default 1.0); attention ``head_dim`` is ``config.head_dim`` when set,
  else hidden_size // num_attention_heads.
"""

from __future__ import annotations

QWEN2 = dict(
    vocab_size=151936,
    hidden_size=4096,
    intermediate_size=22016,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    hidden_act="silu",
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    rope_theta=10000.0,
    use_sliding_window=False,
    sliding_window=4096,
    max_window_layers=28,
    attention_dropout=0.0,
)
JET_NEMOTRON = dict(
    vocab_size=151936,
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    hidden_act="silu",
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    rope_theta=1000000.0,
    attention_dropout=0.0,
)
JET_BLOCK = dict(
    mode="chunk",
    expand_v=2.0,
    num_heads=6,
    head_dim=256,
    norm_eps=1e-5,
    conv_size=4,
    dconv_generator_reduction=8,
    dconv_implementation="triton",
)
JET_BLOCK_MODES = ("chunk", "fused_recurrent")  # kernels of one computation
# Ouro's OuroConfig is Qwen2Config's fields and defaults plus the loops.
OURO = dict(QWEN2, total_ut_steps=4, early_exit_threshold=1.0, early_exit_step=None)


def bad(field: str, allowed: str, got) -> ValueError:
    return ValueError(f"config.json {field}: allowed {allowed}, got {got!r}")


def get(hf: dict, defaults: dict, key: str):
    """``hf[key]``, or the reference default when the key is missing."""
    return hf[key] if key in hf else defaults[key]


def positive(hf: dict, defaults: dict, key: str) -> int:
    value = get(hf, defaults, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise bad(key, "a positive int", value)
    return value


def attention_shape(hf: dict, defaults: dict) -> dict:
    """width, heads, kv_heads (missing: the reference default; null: the query heads, as
    the references' "backward compatibility" branch) and head_dim."""
    width = positive(hf, defaults, "hidden_size")
    heads = positive(hf, defaults, "num_attention_heads")
    kv_heads = get(hf, defaults, "num_key_value_heads")
    kv_heads = heads if kv_heads is None else kv_heads
    if not isinstance(kv_heads, int) or isinstance(kv_heads, bool) or kv_heads < 1:
        raise bad("num_key_value_heads", "a positive int", kv_heads)
    head_dim = hf.get("head_dim") or width // heads
    return dict(width=width, heads=heads, kv_heads=kv_heads, head_dim=head_dim)


def rope_theta(hf: dict, defaults: dict) -> float:
    """The RoPE base (transformers >= 5 may write it under ``rope_parameters``); refuses
    scaled RoPE and partial rotary factors."""
    params = hf.get("rope_parameters") or {}
    for key in ("rope_scaling", "rope_parameters"):
        scaling = hf.get(key) or {}
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind != "default":
            raise ValueError(
                f"config.json {key}.rope_type: rope type {kind!r} is not supported (only default)"
            )
    factor = hf.get("partial_rotary_factor", params.get("partial_rotary_factor", 1.0))
    if factor != 1.0:
        raise bad("partial_rotary_factor", "1.0 (partial rotary is not supported)", factor)
    theta = hf.get("rope_theta", params.get("rope_theta", defaults["rope_theta"]))
    if theta is None:
        theta = defaults["rope_theta"]
    return float(theta)


def refuse_unsupported(hf: dict, defaults: dict) -> None:
    """Refuses fields that change the math and that no family implements."""
    act = get(hf, defaults, "hidden_act")
    if act != "silu":
        raise bad("hidden_act", '"silu"', act)
    dropout = get(hf, defaults, "attention_dropout")
    if dropout not in (0, 0.0, None):
        raise bad("attention_dropout", "0 (attention dropout is not supported)", dropout)


def jet_block(given) -> dict:
    """The Jet layers' shape (Qwen2Config / OuroConfig ``jet_*`` fields) from
    ``efficient_attention_config["jet"]``, read as ``JetBlockConfig(**given)``."""
    if not isinstance(given, dict):
        raise bad("efficient_attention_config.jet", "an object", given)
    unknown = sorted(set(given) - set(JET_BLOCK))
    if unknown:
        raise bad(
            "efficient_attention_config.jet",
            f"keys of JetBlockConfig {sorted(JET_BLOCK)}",
            unknown[0],
        )
    jet = {**JET_BLOCK, **given}
    if jet["mode"] not in JET_BLOCK_MODES:
        raise bad("efficient_attention_config.jet.mode", f"one of {JET_BLOCK_MODES}", jet["mode"])
    head_dim, expand_v = int(jet["head_dim"]), float(jet["expand_v"])
    value_head_dim = int(head_dim * expand_v)  # the reference truncates: int(96 * 2.6667) = 256
    if value_head_dim < 1 or abs(head_dim * expand_v - value_head_dim) > 1e-5 * value_head_dim:
        raise bad("efficient_attention_config.jet.expand_v", "head_dim * it an integer", expand_v)
    return dict(
        jet_heads=int(jet["num_heads"]),
        jet_key_head_dim=head_dim,
        jet_value_head_dim=value_head_dim,
        jet_conv_size=int(jet["conv_size"]),
        jet_generator_reduction=int(jet["dconv_generator_reduction"]),
        jet_norm_eps=float(jet["norm_eps"]),
    )
