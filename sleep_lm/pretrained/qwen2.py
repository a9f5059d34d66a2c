"""The `qwen2` family: HF config.json <-> Qwen2Config, registered for model_types
"qwen2" (Qwen2 / Qwen2.5, transformers' Qwen2ForCausalLM) and "jet_nemotron"
(NVlabs/Jet-Nemotron's JetNemotronForCausalLM, remote code).

config.json fields read (both types): vocab_size, hidden_size, intermediate_size,
num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim (default
hidden_size / num_attention_heads), rms_norm_eps, rope_theta (or transformers 5's
rope_parameters.rope_theta; only the default RoPE, no rope_scaling), tie_word_embeddings,
hidden_act (must be silu).

Layer kinds:
  qwen2: `layer_types` "full_attention" -> attn, "sliding_attention" -> swa (window
    `sliding_window`); without layer_types, transformers' rule: with use_sliding_window,
    layers i >= max_window_layers slide.
  jet_nemotron (jetai/modeling/hf/configuration_jet_nemotron.py and
    jetai/modeling/configs/jetlm_2B.json): `layer_types` "attn" | "swa" | "jet";
    `efficient_attention_config.swa.window_size`; `efficient_attention_config.jet`:
    num_heads, head_dim (key head dim), expand_v (value head dim = int(head_dim * expand_v)),
    conv_size, dconv_generator_reduction, norm_eps.
Everything else in config.json is kept verbatim (Qwen2Config.hf_extra) and written back by
`config_to_hf`, so an exported directory keeps its token ids and metadata.
"""

from __future__ import annotations

import json
import math

from sleep_lm.model.qwen2 import Qwen2Config, Qwen2LM
from sleep_lm.pretrained import registry

_QWEN2_KINDS = {"full_attention": "attn", "sliding_attention": "swa"}
_JET_KINDS = ("attn", "swa", "jet")
# Options of load_hf that go to the config (everything else is an error).
_OPTIONS = ("dtype", "gdn_impl", "chunk_size", "gdn_precision")


def _need(hf: dict, field: str):
    if field not in hf or hf[field] is None:
        raise ValueError(f"config.json: missing field {field!r}")
    return hf[field]


def _rope_theta(hf: dict) -> float:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind != "default":
        raise ValueError(f"config.json: rope type {kind!r} is not supported (only default)")
    theta = hf.get("rope_theta", params.get("rope_theta", 10_000.0))
    return float(theta)


def _qwen2_layers(hf: dict, num_layers: int) -> tuple[tuple[str, ...], int]:
    window = hf.get("sliding_window") or 0
    types = hf.get("layer_types")
    if types is None:
        sliding = bool(hf.get("use_sliding_window")) and window
        first = hf.get("max_window_layers", num_layers)
        types = [
            "sliding_attention" if sliding and i >= first else "full_attention"
            for i in range(num_layers)
        ]
    layers = []
    for t in types:
        if t not in _QWEN2_KINDS:
            raise ValueError(
                f"config.json: layer_types entry {t!r} not supported; allowed: "
                f"{', '.join(_QWEN2_KINDS)}"
            )
        layers.append(_QWEN2_KINDS[t])
    return tuple(layers), int(window)


def _jet_layers(hf: dict) -> tuple[tuple[str, ...], int, dict]:
    types = hf.get("layer_types")
    if isinstance(types, str):  # the reference config class also accepts a Python literal
        types = json.loads(types.replace("'", '"'))
    if types is None:
        types = ["attn"] * _need(hf, "num_hidden_layers")
    for t in types:
        if t not in _JET_KINDS:
            raise ValueError(
                f"config.json: layer_types entry {t!r} not supported; allowed: "
                f"{', '.join(_JET_KINDS)}"
            )
    eff = hf.get("efficient_attention_config") or {}
    window = int((eff.get("swa") or {}).get("window_size") or 0)
    if "swa" in types and window < 1:
        raise ValueError("config.json: swa layers need efficient_attention_config.swa.window_size")
    jet = {}
    if "jet" in types:
        j = eff.get("jet")
        if not j:
            raise ValueError("config.json: jet layers need efficient_attention_config.jet")
        head_dim = int(j.get("head_dim", 96))
        expand_v = float(j.get("expand_v", 2.0))
        jet = dict(
            jet_heads=int(j.get("num_heads", 12)),
            jet_key_head_dim=head_dim,
            # The reference truncates: int(96 * 2.6666666667) = 256.
            jet_value_head_dim=int(head_dim * expand_v),
            jet_conv_size=int(j.get("conv_size", 4)),
            jet_generator_reduction=int(j.get("dconv_generator_reduction", 8)),
            jet_norm_eps=float(j.get("norm_eps", 1e-5)),
        )
    return tuple(types), window, jet


def config_from_hf(hf: dict, **options) -> Qwen2Config:
    """Qwen2Config from a parsed config.json; options: dtype, gdn_impl, chunk_size,
    gdn_precision (ValueError naming an unknown option or a bad field)."""
    for name in options:
        if name not in _OPTIONS:
            raise ValueError(f"load_hf option {name!r} not known; allowed: {', '.join(_OPTIONS)}")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"config.json: hidden_act {act!r} not supported (only silu)")
    width = int(_need(hf, "hidden_size"))
    heads = int(_need(hf, "num_attention_heads"))
    num_layers = int(_need(hf, "num_hidden_layers"))
    model_type = hf["model_type"]
    if model_type == "jet_nemotron":
        layers, window, jet = _jet_layers(hf)
        tie_default = True
    else:
        (layers, window), jet = _qwen2_layers(hf, num_layers), {}
        tie_default = False
    if len(layers) != num_layers:
        raise ValueError(
            f"config.json: layer_types has {len(layers)} entries, num_hidden_layers is {num_layers}"
        )
    return Qwen2Config(
        vocab_size=int(_need(hf, "vocab_size")),
        width=width,
        intermediate=int(_need(hf, "intermediate_size")),
        heads=heads,
        kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or width // heads),
        layers=layers,
        sliding_window=window,
        rope_theta=_rope_theta(hf),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", tie_default)),
        hf_extra=json.dumps(hf, sort_keys=True),
        **jet,
        **options,
    )


def config_to_hf(cfg: Qwen2Config) -> dict:
    """config.json dict for `cfg`: "jet_nemotron" when it has jet layers or came from one,
    else "qwen2"; fields not modelled come from cfg.hf_extra."""
    hf = json.loads(cfg.hf_extra) if cfg.hf_extra else {}
    jet_type = "jet" in cfg.layers or hf.get("model_type") == "jet_nemotron"
    hf.update(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.width,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=len(cfg.layers),
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings,
    )
    if "rope_parameters" in hf:
        hf["rope_parameters"] = {**hf["rope_parameters"], "rope_theta": cfg.rope_theta}
    else:
        hf["rope_theta"] = cfg.rope_theta
    if jet_type:
        hf["model_type"] = "jet_nemotron"
        hf.setdefault("architectures", ["JetNemotronForCausalLM"])
        hf["layer_types"] = list(cfg.layers)
        eff = dict(hf.get("efficient_attention_config") or {})
        if "swa" in cfg.layers:
            eff["swa"] = {**eff.get("swa", {}), "window_size": cfg.sliding_window}
        if "jet" in cfg.layers:
            expand_v = cfg.jet_value_head_dim / cfg.jet_key_head_dim
            if int(cfg.jet_key_head_dim * expand_v) != cfg.jet_value_head_dim:
                # Float rounding below the integer: nudge up so the reader's int() is exact.
                expand_v = math.nextafter(expand_v, math.inf)
            eff["jet"] = {
                **eff.get("jet", {}),
                "num_heads": cfg.jet_heads,
                "head_dim": cfg.jet_key_head_dim,
                "expand_v": expand_v,
                "conv_size": cfg.jet_conv_size,
                "dconv_generator_reduction": cfg.jet_generator_reduction,
                "norm_eps": cfg.jet_norm_eps,
            }
        hf["efficient_attention_config"] = eff
    else:
        hf["model_type"] = "qwen2"
        hf.setdefault("architectures", ["Qwen2ForCausalLM"])
        names = {v: k for k, v in _QWEN2_KINDS.items()}
        hf["layer_types"] = [names[k] for k in cfg.layers]
        hf["use_sliding_window"] = "swa" in cfg.layers
        hf["sliding_window"] = cfg.sliding_window or None
    return hf


def build(cfg: Qwen2Config) -> Qwen2LM:
    return Qwen2LM(config=cfg)


QWEN2 = registry.register(
    registry.Family(
        name="qwen2",
        model_types=("qwen2", "jet_nemotron"),
        config_from_hf=config_from_hf,
        config_to_hf=config_to_hf,
        build=build,
    )
)
