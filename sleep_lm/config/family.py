"""`config.model` and where the model comes from: the hybrid's fields, a pretrained
family's compute settings, `model.family` against `init.from_hf`'s checkpoint, and
`config.init`'s sources."""

import os

from ml_collections import config_dict

from sleep_lm.config.fields import ConfigError, _float, _get
from sleep_lm.model.config import (
    COMPUTE_OPTIONS,
    ComputeConfig,
    ModelConfig,
)


def layer_types(layers: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in layers.split(","))


def _compute_settings(config) -> dict:
    """The compute settings (COMPUTE_OPTIONS) that `config.model` sets, by name."""
    return {
        name: config.model[name]
        for name in COMPUTE_OPTIONS
        if config.model.get(name, None) is not None
    }


def _validate_compute(config) -> None:
    """A pretrained family's `model.*`: only the compute settings load_hf passes on (the
    architecture is the checkpoint's config.json), each optional. ComputeConfig, which every
    family's config derives from, holds their allowed values and checks them."""
    try:
        ComputeConfig(**_compute_settings(config))
    except ValueError as e:
        raise ConfigError(f"config.{e}") from None


def _validate_model(config) -> None:
    if model_family(config) != MODEL_FAMILY_DEFAULT:
        _validate_compute(config)
        return
    # ModelConfig checks every field (and combinations such as rule x gdn_impl) once;
    # only what it leaves open is checked here.
    if config.model.get("jet_expand_v", None) is not None:
        _float(config, "model.jet_expand_v", 0.0, strict=True)
    try:
        ModelConfig.from_config(config.model)
    except ValueError as e:
        raise ConfigError(f"config.{e}") from None


MODEL_FAMILY_DEFAULT = "hybrid"  # config.model.family: "hybrid" (HybridLM) or a pretrained family


def model_family(config) -> str:
    """`config.model.family` ("hybrid" when absent: configs written before it existed)."""
    return config.model.get("family", MODEL_FAMILY_DEFAULT)


def pretrained_options(config) -> dict:
    """load_hf options from `config`: the compute settings of `config.model` every family
    takes, `model.hf_options` (a dict of family-specific options, e.g. Ouro's sleep_loops)
    and `seed` (of the layers a family inserts, e.g. Ouro's Jet layers)."""
    options = _compute_settings(config)
    options.update(dict(config.model.get("hf_options", None) or {}))
    options["seed"] = config.get("seed", 0)
    return options


def _pretrained_model(config):
    """(family name, model) of `config.init.from_hf` without weights; ConfigError if the
    directory, its config.json or the options are bad."""
    from sleep_lm.pretrained import hf

    path = (config.get("init", None) or {}).get("from_hf", "")
    try:
        family, _, model, _ = hf.build(
            path, window=config.sleep.window, **pretrained_options(config)
        )
    except ValueError as e:
        raise ConfigError(f"config.init.from_hf={path!r}: {e}") from None
    return family.name, model


def _pretrained_config(config):
    """The family config of `config.init.from_hf` (its config.json read; no model built);
    ConfigError if the directory, its config.json or the options are bad."""
    from sleep_lm.pretrained import hf

    path = config.init.from_hf
    try:
        return hf.family_config(path, **pretrained_options(config))[1]
    except ValueError as e:
        raise ConfigError(f"config.init.from_hf={path!r}: {e}") from None


def _validate_checkpoint_dir(config) -> None:
    """A pretrained family's `init.from_hf` is set and is a directory. Checked before the task
    is built, since a task may read the checkpoint's tokenizer.json (experiments/gsm_infinite.py
    points task.tokenizer at it): a missing checkpoint is the error to report, not what the
    task makes of its absence."""
    from sleep_lm.pretrained import FAMILIES

    from_hf = (config.get("init", None) or {}).get("from_hf", "")
    if model_family(config) not in FAMILIES or not isinstance(from_hf, str):
        return  # _validate_family / _validate_init report these
    if not from_hf:
        raise ConfigError(
            f"config.model.family={model_family(config)!r} takes its architecture from a "
            "Hugging Face checkpoint: set config.init.from_hf=DIR"
        )
    if not os.path.isdir(os.path.expanduser(from_hf)):
        raise ConfigError(
            f"config.init.from_hf={from_hf!r}: checkpoint directory {from_hf!r} does not exist"
        )


def _validate_family(config, task) -> None:
    """`model.family` and `init.from_hf` together: a pretrained family's architecture comes
    from the checkpoint's config.json, so it needs `init.from_hf` (also when resuming), of
    that family, with a vocabulary that holds the task's token ids."""
    from sleep_lm.pretrained import FAMILIES

    family = model_family(config)
    allowed = (MODEL_FAMILY_DEFAULT, *sorted(FAMILIES))
    if family not in allowed:
        names = ", ".join(repr(a) for a in allowed)
        raise ConfigError(f"config.model.family must be one of {names} (got {family!r})")
    from_hf = (config.get("init", None) or {}).get("from_hf", "")
    if family == MODEL_FAMILY_DEFAULT:
        if from_hf:
            raise ConfigError(
                "config.init.from_hf needs config.model.family set to the checkpoint's family "
                f"({', '.join(sorted(FAMILIES))}), not 'hybrid'"
            )
        return
    if not from_hf:
        raise ConfigError(
            f"config.model.family={family!r} takes its architecture from a Hugging Face "
            "checkpoint: set config.init.from_hf=DIR"
        )
    hf_options = config.model.get("hf_options", None)
    if hf_options is not None and not isinstance(hf_options, dict | config_dict.ConfigDict):
        raise ConfigError(f"config.model.hf_options must be a dict (got {hf_options!r})")
    found, model = _pretrained_model(config)
    if found != family:
        raise ConfigError(
            f"config.init.from_hf={from_hf!r} holds a {found!r} model, but "
            f"config.model.family={family!r}"
        )
    if model.vocab_size < task.vocab_size:
        raise ConfigError(
            f"config.init.from_hf={from_hf!r}: vocabulary {model.vocab_size} is smaller than "
            f"the task's {task.vocab_size} token ids"
        )


def _num_layers(config) -> int:
    """Blocks `sleep.loop_blocks` indexes: model.layers, or the pretrained model's."""
    if model_family(config) != MODEL_FAMILY_DEFAULT:
        return len(_pretrained_config(config).layers)
    return len(layer_types(_get(config, "model.layers")))


def _validate_init(config) -> None:
    """`config.init` (optional: configs written before it existed have none)."""
    init = config.get("init", None)
    if init is None:
        return
    sources = []
    for name in ("from_checkpoint", "from_hf"):
        value = init.get(name, "")
        if not isinstance(value, str):
            raise ConfigError(f"config.init.{name} must be a string (got {value!r})")
        if value:
            sources.append(name)
    # A pretrained family takes its architecture (and tokenizer) from init.from_hf; with
    # init.from_checkpoint too, its parameters come from that run (a warm start, e.g. the
    # paper's sliding run from a hard-eviction run). The hybrid takes one source.
    if len(sources) > 1 and model_family(config) == MODEL_FAMILY_DEFAULT:
        raise ConfigError(
            "config.init.from_checkpoint and config.init.from_hf are both set; a hybrid run "
            "starts from one of them (both: a pretrained family warm-started from a run)"
        )
