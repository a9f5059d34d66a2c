"""The `qwen2` family: HF config.json <-> Qwen2Config, registered for model_types
"qwen2" (Qwen2 / Qwen2.5, transformers' Qwen2ForCausalLM) and "jet_nemotron"
(NVlabs/Jet-Nemotron's JetNemotronForCausalLM, remote code).

config.json fields read (both types; a missing one takes the reference config class's
default, sleep_lm/pretrained/reference.py): vocab_size, hidden_size, intermediate_size,
num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim (default
hidden_size / num_attention_heads), rms_norm_eps, rope_theta (or transformers 5's
rope_parameters.rope_theta), tie_word_embeddings. Refused: RoPE scaling, a partial rotary
factor, an activation other than silu, attention dropout.

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

from sleep_lm.model.config import COMPUTE_OPTIONS
from sleep_lm.model.qwen2 import Qwen2Config, Qwen2LM
from sleep_lm.pretrained import reference, registry

_QWEN2_KINDS = {"full_attention": "attn", "sliding_attention": "swa"}
_JET_KINDS = ("attn", "swa", "jet")
# Options of load_hf that go to the config (everything else is an error).
_OPTIONS = COMPUTE_OPTIONS


def _qwen2_layers(hf: dict, num_layers: int) -> tuple[tuple[str, ...], int]:
    """Layer kinds and sliding window as transformers' Qwen2Config: the window exists only
    with use_sliding_window; without layer_types, layers i >= max_window_layers slide."""
    use = reference.get(hf, reference.QWEN2, "use_sliding_window")
    window = reference.get(hf, reference.QWEN2, "sliding_window") if use else None
    types = hf.get("layer_types")
    if types is None:
        first = reference.get(hf, reference.QWEN2, "max_window_layers")
        types = [
            "sliding_attention" if window is not None and i >= first else "full_attention"
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
    return tuple(layers), int(window or 0)


def _jet_layers(hf: dict, num_layers: int) -> tuple[tuple[str, ...], int, dict]:
    types = hf.get("layer_types")
    if isinstance(types, str):  # the reference config class also accepts a Python literal
        types = json.loads(types.replace("'", '"'))
    if types is None:
        types = ["attn"] * num_layers
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
        if eff.get("jet") is None:
            raise ValueError("config.json: jet layers need efficient_attention_config.jet")
        jet = reference.jet_block(eff["jet"])
    return tuple(types), window, jet


def config_from_hf(hf: dict, **options) -> Qwen2Config:
    """Qwen2Config from a parsed config.json, missing fields as the reference config class
    (sleep_lm/pretrained/reference.py); options: model/config.py's COMPUTE_OPTIONS
    (ValueError naming an unknown option or a bad field)."""
    for name in options:
        if name not in _OPTIONS:
            raise ValueError(f"load_hf option {name!r} not known; allowed: {', '.join(_OPTIONS)}")
    jet_type = hf["model_type"] == "jet_nemotron"
    defaults = reference.JET_NEMOTRON if jet_type else reference.QWEN2
    reference.refuse_unsupported(hf, defaults)
    num_layers = reference.positive(hf, defaults, "num_hidden_layers")
    if jet_type:
        layers, window, jet = _jet_layers(hf, num_layers)
    else:
        (layers, window), jet = _qwen2_layers(hf, num_layers), {}
    if len(layers) != num_layers:
        raise ValueError(
            f"config.json: layer_types has {len(layers)} entries, num_hidden_layers is {num_layers}"
        )
    return Qwen2Config(
        vocab_size=reference.positive(hf, defaults, "vocab_size"),
        intermediate=reference.positive(hf, defaults, "intermediate_size"),
        **reference.attention_shape(hf, defaults),
        layers=layers,
        sliding_window=window,
        rope_theta=reference.rope_theta(hf, defaults),
        norm_eps=float(reference.get(hf, defaults, "rms_norm_eps")),
        tie_embeddings=bool(reference.get(hf, defaults, "tie_word_embeddings")),
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
