"""The ``ouro`` family: Hugging Face Ouro config.json <-> OuroConfig, registered for load_hf.

Reads the hub's Ouro checkpoints (``model_type`` "ouro", e.g. ByteDance/Ouro-1.4B:
Apache-2.0) with the generic flax <-> HF name rule of sleep_lm/pretrained/hf.py; the
parameter tree of sleep_lm/model/ouro.py mirrors the checkpoint names, early-exit gate
included (``model.early_exit_gate.{weight,bias}``).

Options of ``load_hf(path, **options)`` for this family (besides ``window`` and ``mesh``):
the compute settings of model/config.py's ``COMPUTE_OPTIONS`` (``dtype``, ``gdn_impl``, ...,
``remat_policy``, ``attention_impl``), ``sleep_loops`` ("all" | "last", see
sleep_lm/model/ouro.py), ``total_ut_steps`` (run fewer or more loops than the checkpoint's:
exiting at loop k is total_ut_steps=k + 1) and ``jet_identity_init``.

Inserting Jet layers: after loading, ``insert_jet_layers(model, params, rng)`` (below); or
at load with the options ``jet_positions`` (a list of insertion points, or a
count for ``even_jet_positions``) and ``jet_*`` shape options: the model then has
parameters the checkpoint lacks, ``inserted_paths(model)``, which load_hf takes from
``init_inserted(model, rng)`` with ``rng = key(seed)`` (identity at init by default).
Inserted Jet layers are exported as tensors
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

import dataclasses
import json

import jax
import jax.numpy as jnp

from sleep_lm.model.config import COMPUTE_OPTIONS
from sleep_lm.model.jet import jet_state
from sleep_lm.model.ouro import OuroConfig, OuroLM, even_jet_positions, jet_layer
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
    *COMPUTE_OPTIONS,
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


# ------------------------------------------------------------------ inserted Jet layers


def inserted_paths(model: OuroLM) -> tuple[tuple[str, ...], ...]:
    """Flax paths of the inserted (Jet) layers: the subtrees a loader initialises with
    ``init_inserted`` when a checkpoint of the original model lacks them."""
    return tuple(("model", f"jet_layers_{j}") for j in range(len(model.config.jet_positions)))


def init_inserted(model: OuroLM, rng: jax.Array) -> dict:
    """Fresh parameters of the inserted layers only, {"model": {"jet_layers_j": ...}}
    (o_proj zero if jet_identity_init), without initialising the whole model: what
    ``insert_jet_layers`` and load_hf use on a 1.4B checkpoint."""
    cfg = model.config
    if not cfg.jet_positions:
        return {"model": {}}
    h = jnp.zeros((1, 1, cfg.width), cfg.compute_dtype)
    positions = jnp.zeros((1,), jnp.int32)
    layer = jet_layer(cfg, model.window)
    state = jet_state(cfg.jet_config(), 1, cfg.compute_dtype)

    def init(r):
        keys = jax.random.split(r, len(cfg.jet_positions))
        layers = {
            f"jet_layers_{j}": layer.init(k, h, state, positions)["params"]
            for j, k in enumerate(keys)
        }
        return identity_jet_params(cfg, {"model": layers})

    return jax.jit(init)(rng)


def identity_jet_params(cfg: OuroConfig, params: dict) -> dict:
    """``params`` with every inserted Jet layer's o_proj kernel zeroed when
    ``cfg.jet_identity_init`` (the layer then adds nothing: an identity residual layer)."""
    if not cfg.jet_identity_init or not cfg.jet_positions:
        return params
    layers = dict(params["model"])
    for j in range(len(cfg.jet_positions)):
        layer = dict(layers[f"jet_layers_{j}"])
        attn = dict(layer["self_attn"])
        attn["o_proj"] = jax.tree.map(jnp.zeros_like, attn["o_proj"])
        layer["self_attn"] = attn
        layers[f"jet_layers_{j}"] = layer
    return {**params, "model": layers}


def insert_jet_layers(
    model: OuroLM,
    params: dict,
    rng: jax.Array,
    *,
    positions: tuple[int, ...] | None = None,
    count: int = 6,
    identity: bool = True,
    **jet_fields,
) -> tuple[OuroLM, dict]:
    """Inserts freshly initialised Jet layers into a (loaded) Ouro model.

    positions: insertion points (before original layer p), default ``even_jet_positions(
    num_layers, count)``; identity: zero o_proj (logits unchanged at step 0); jet_fields:
    OuroConfig ``jet_*`` overrides of the new layers' shape. The model must have no Jet
    layers yet. Returns (new model, params): the loaded tensors unchanged, the new layers'
    from a fresh init.
    """
    cfg = model.config
    if cfg.jet_positions:
        raise ValueError(
            f"model.jet_positions: the model already has Jet layers {cfg.jet_positions}"
        )
    for name in jet_fields:
        if not name.startswith("jet_") or not hasattr(cfg, name):
            raise ValueError(f"model.{name}: not a Jet-layer field of OuroConfig")
    if positions is None:
        positions = even_jet_positions(cfg.num_layers, count)
    new_cfg = dataclasses.replace(
        cfg, jet_positions=tuple(positions), jet_identity_init=bool(identity), **jet_fields
    )
    new_model = model.clone(config=new_cfg)
    fresh = init_inserted(new_model, rng)
    return new_model, {**params, "model": {**params["model"], **fresh["model"]}}


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
        inserted_paths=inserted_paths,
        init_inserted=init_inserted,
    )
)

__all__ = [
    "FAMILY",
    "OPTIONS",
    "build",
    "config_from_hf",
    "config_to_hf",
    "identity_jet_params",
    "init_inserted",
    "insert_jet_layers",
    "inserted_paths",
]
