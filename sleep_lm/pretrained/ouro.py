"""The ``ouro`` family: Hugging Face Ouro config.json <-> OuroConfig, registered for load_hf.

Reads the hub's Ouro checkpoints (``model_type`` "ouro", e.g. ByteDance/Ouro-1.4B:
Apache-2.0) with the generic flax <-> HF name rule of sleep_lm/pretrained/hf.py; the
parameter tree of sleep_lm/model/ouro.py mirrors the checkpoint names, early-exit gate
included (``model.early_exit_gate.{weight,bias}``).

Options of ``load_hf(path, **options)`` for this family (besides ``window`` and ``mesh``):
``dtype``, ``gdn_impl``, ``chunk_size``, ``gdn_precision`` (the inserted Jet layers' delta
rule), ``sleep_loops`` ("all" | "last", see sleep_lm/model/ouro.py), ``total_ut_steps``
(run fewer or more loops than the checkpoint's: exiting at loop k is total_ut_steps=k + 1)
and ``jet_identity_init``.

Inserting Jet layers: after loading, ``sleep_lm.model.ouro.insert_jet_layers(model, params,
rng)``; or at load with the options ``jet_positions`` (a list of insertion points, or a
count for ``even_jet_positions``) and ``jet_*`` shape options: the model then has
parameters the checkpoint lacks, ``model.inserted_paths()``, which a loader takes from
``model.init_inserted(rng)`` (identity at init by default). Inserted Jet layers are
exported as tensors
``model.jet_layers.{j}.input_layernorm.weight`` and ``model.jet_layers.{j}.self_attn.*``
(the JetBlock's Jet-Nemotron names) with two config.json fields: ``jet_positions`` (the
original layer each is inserted before) and ``jet_config`` ({heads, key_head_dim,
value_head_dim, conv_size, generator_reduction, norm_eps}); load_hf reads them back, so
export -> load is exact. Such a directory is for sleep_lm: the hub's remote code does not
know the extra tensors.

Not supported (one-line ValueErrors naming the config.json field): sliding-window layers,
RoPE scaling, tied embeddings, an activation other than SiLU.
"""

from __future__ import annotations

import json

from sleep_lm.model.ouro import OuroConfig, OuroLM, even_jet_positions
from sleep_lm.pretrained import reference, registry

# config.json keys this family models (the rest is kept verbatim in OuroConfig.hf_extra).
_MODELLED = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rope_theta",
    "rms_norm_eps",
    "total_ut_steps",
    "early_exit_threshold",
    "early_exit_step",
    "tie_word_embeddings",
    "hidden_act",
    "jet_positions",
    "jet_config",
)
_JET_KEYS = (
    "heads",
    "key_head_dim",
    "value_head_dim",
    "conv_size",
    "generator_reduction",
    "norm_eps",
)
_JET_SHAPE = tuple(f"jet_{k}" for k in _JET_KEYS)
OPTIONS = (
    "dtype",
    "gdn_impl",
    "chunk_size",
    "gdn_precision",
    "sleep_loops",
    "total_ut_steps",
    "jet_identity_init",
    "jet_positions",
    *_JET_SHAPE,
)


_bad = reference.bad


def config_from_hf(hf: dict, **options) -> OuroConfig:
    """OuroConfig from an Ouro config.json dict and load options (ValueError naming the field)."""
    for name in options:
        if name not in OPTIONS:
            raise ValueError(f"load option {name!r} is not known to the ouro family: {OPTIONS}")
    if hf.get("model_type") != "ouro":
        raise _bad("model_type", '"ouro"', hf.get("model_type"))
    defaults = reference.OURO
    reference.refuse_unsupported(hf, defaults)
    if reference.get(hf, defaults, "tie_word_embeddings"):
        raise _bad("tie_word_embeddings", "false (Ouro's head is untied)", True)
    if reference.get(hf, defaults, "use_sliding_window"):
        raise _bad("use_sliding_window", "false (sliding-window layers are not supported)", True)
    layer_types = hf.get("layer_types") or ()
    if any(t != "full_attention" for t in layer_types):
        raise _bad("layer_types", '"full_attention" only', layer_types)
    loops = reference.positive(hf, defaults, "total_ut_steps")
    exit_step = reference.get(hf, defaults, "early_exit_step")
    if exit_step is not None and exit_step != loops - 1:
        # A fixed exit at loop k is this model with total_ut_steps = k + 1 (load option).
        allowed = f"null or {loops - 1} (the last loop; load with total_ut_steps=k + 1)"
        raise _bad("early_exit_step", allowed, exit_step)
    jet = {}
    if hf.get("jet_positions"):
        given = hf.get("jet_config")
        if not isinstance(given, dict) or any(k not in given for k in _JET_KEYS):
            raise _bad("jet_config", f"an object with {_JET_KEYS}", given)
        jet = {f"jet_{k}": given[k] for k in _JET_KEYS}
        jet["jet_positions"] = tuple(hf["jet_positions"])
    extra = {k: v for k, v in hf.items() if k not in _MODELLED}
    fields = dict(
        vocab_size=reference.positive(hf, defaults, "vocab_size"),
        intermediate_size=reference.positive(hf, defaults, "intermediate_size"),
        num_layers=reference.positive(hf, defaults, "num_hidden_layers"),
        **reference.attention_shape(hf, defaults),
        rope_theta=reference.rope_theta(hf, defaults),
        norm_eps=float(reference.get(hf, defaults, "rms_norm_eps")),
        total_ut_steps=loops,
        early_exit_threshold=float(reference.get(hf, defaults, "early_exit_threshold")),
        hf_extra=json.dumps(extra, sort_keys=True) if extra else "",
        **jet,
    )
    insert = options.pop("jet_positions", None)
    if insert is not None:
        if jet:
            raise ValueError(
                f"load option jet_positions: the checkpoint already has Jet layers at "
                f"{list(jet['jet_positions'])}"
            )
        if isinstance(insert, int) and not isinstance(insert, bool):
            insert = even_jet_positions(fields["num_layers"], insert)
        fields["jet_positions"] = tuple(insert)
    elif jet and any(k in options for k in _JET_SHAPE):
        raise ValueError("load options jet_*: the checkpoint's Jet layers have their shape")
    fields.update(options)
    return OuroConfig(**fields)


def config_to_hf(cfg: OuroConfig) -> dict:
    """config.json dict of ``cfg`` (the checkpoint's unmodelled keys written back)."""
    hf = json.loads(cfg.hf_extra) if cfg.hf_extra else {}
    hf.setdefault("architectures", ["OuroForCausalLM"])
    hf.update(
        model_type="ouro",
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.width,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.norm_eps,
        total_ut_steps=cfg.total_ut_steps,
        early_exit_threshold=cfg.early_exit_threshold,
        tie_word_embeddings=False,
        hidden_act="silu",
    )
    if cfg.jet_positions:
        hf["jet_positions"] = list(cfg.jet_positions)
        hf["jet_config"] = {k: getattr(cfg, f"jet_{k}") for k in _JET_KEYS}
    return hf


def build(cfg: OuroConfig) -> OuroLM:
    """OuroLM with the default window; load_hf sets the sleep window with clone(window=L)."""
    if not isinstance(cfg, OuroConfig):
        raise ValueError(f"ouro family: expected an OuroConfig, got {type(cfg).__name__}")
    return OuroLM(cfg)


FAMILY = registry.register(
    registry.Family(
        name="ouro",
        model_types=("ouro",),
        config_from_hf=config_from_hf,
        config_to_hf=config_to_hf,
        build=build,
    )
)

__all__ = ["FAMILY", "OPTIONS", "build", "config_from_hf", "config_to_hf"]
