"""Config validation: every mistake we can see without compiling, as one line naming the field.

    validate(config)   # raises ConfigError("config.sleep.passes must be >= 1 (got 0)")

`sleep_lm.main` prints the message as `error: ...` and exits with status 2. Checks cover the
fields of experiments/*.py (see README "Config reference"); the task's own constructor checks
its fields (`get_task` raises ValueError naming `task.<field>`), and the model's builder
checks anything model-specific this module does not know about.

The mesh (`config.mesh`, see sleep_lm/parallel.py) is checked in two steps: `validate`
checks what needs no device (sizes, rules); `validate_mesh(config, num_devices)` checks the
sizes against the devices, the batch against the batch axes and the heads against the
tensor axis. `main` calls it after `jax.distributed.initialize` (which must come before
anything touches a device) and before compiling.
"""

import dataclasses
import difflib
import importlib.util
import json
import math
import os
import re
from pathlib import Path

import numpy as np
from absl import logging
from ml_collections import config_dict

from sleep_lm import compile_targets, parallel, sleep
from sleep_lm.dotted import flatten
from sleep_lm.model.config import (
    ATTENTION_IMPLS,
    COMPUTE_OPTIONS,
    DELTA_IMPLS,
    DTYPES,
    GDN_IMPLS,
    LAYER_KINDS,
    POSITIONS,
    REMAT_POLICIES,
    RULES,
    ModelConfig,
)
from sleep_lm.ops import PRECISIONS
from sleep_lm.train.init import init_checkpoint  # noqa: F401  (config.init's parser)
from sleep_lm.train.optim import OPTIMIZERS, SCHEDULES, split_patterns

_MISSING = object()


class ConfigError(ValueError):
    """An invalid config; the message is one line that starts with the field's name."""


def _get(config, field: str):
    node = config
    for part in field.split("."):
        node = node.get(part, _MISSING) if hasattr(node, "get") else _MISSING
        if node is _MISSING:
            raise ConfigError(f"config.{field} is missing")
    return node


def _int(config, field: str, minimum: int | None = None, maximum: int | None = None) -> int:
    value = _get(config, field)
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(f"config.{field} must be an integer (got {value!r})")
    if minimum is not None and value < minimum:
        raise ConfigError(f"config.{field} must be >= {minimum} (got {value})")
    if maximum is not None and value > maximum:
        raise ConfigError(f"config.{field} must be <= {maximum} (got {value})")
    return int(value)


def _float(config, field: str, minimum: float = 0.0, strict: bool = False) -> float:
    value = _get(config, field)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"config.{field} must be a number (got {value!r})")
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise ConfigError(f"config.{field} must be {relation} {minimum} (got {value})")
    return float(value)


def _choice(config, field: str, allowed: tuple[str, ...]) -> str:
    value = _get(config, field)
    if value not in allowed:
        names = ", ".join(repr(a) for a in allowed)
        raise ConfigError(f"config.{field} must be one of {names} (got {value!r})")
    return value


def layer_types(layers: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in layers.split(","))


def _validate_compute(config) -> None:
    """A pretrained family's `model.*`: only the compute settings load_hf passes on (the
    architecture is the checkpoint's config.json), each optional."""
    for field, check in (
        ("dtype", lambda f: _choice(config, f, DTYPES)),
        ("gdn_impl", lambda f: _choice(config, f, DELTA_IMPLS)),
        ("chunk_size", lambda f: _int(config, f, 1)),
        ("gdn_precision", lambda f: _choice(config, f, PRECISIONS)),
        ("remat_policy", lambda f: _choice(config, f, REMAT_POLICIES)),
        ("attention_impl", lambda f: _choice(config, f, ATTENTION_IMPLS)),
        ("attention_chunk", lambda f: _int(config, f, 1)),
    ):
        if config.model.get(field, None) is not None:
            check(f"model.{field}")


def _validate_model(config) -> None:
    if model_family(config) != MODEL_FAMILY_DEFAULT:
        _validate_compute(config)
        return
    width = _int(config, "model.width", 1)
    heads = _int(config, "model.heads", 1)
    if width % heads:
        raise ConfigError(f"config.model.heads must divide model.width={width} (got {heads})")
    layers = _get(config, "model.layers")
    if not isinstance(layers, str) or not layers.strip():
        raise ConfigError(f"config.model.layers must be a comma-separated list (got {layers!r})")
    for name in layer_types(layers):
        if name not in LAYER_KINDS:
            names = ", ".join(repr(a) for a in LAYER_KINDS)
            raise ConfigError(
                f"config.model.layers: unknown layer type {name!r} in {layers!r}; allowed: {names}"
            )
    _int(config, "model.mlp_ratio", 1)
    _choice(config, "model.rule", RULES)
    _int(config, "model.conv_size", 1)
    _choice(config, "model.gdn_impl", GDN_IMPLS)
    _int(config, "model.chunk_size", 1)
    _choice(config, "model.gdn_precision", PRECISIONS)
    _choice(config, "model.dtype", DTYPES)
    _choice(config, "model.positions", POSITIONS)
    # Jet-layer fields are optional: configs without jet layers need not set them.
    if config.model.get("jet_expand_v", None) is not None:
        _float(config, "model.jet_expand_v", 0.0, strict=True)
    if config.model.get("jet_generator_reduction", None) is not None:
        _int(config, "model.jet_generator_reduction", 1)
    try:
        # The model's own checks (combinations such as rule x gdn_impl).
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
    options = {
        name: config.model[name]
        for name in COMPUTE_OPTIONS
        if config.model.get(name, None) is not None
    }
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


def _validate_sleep(config, seq_len: int, loss_mask: np.ndarray) -> None:
    passes = _int(config, "sleep.passes", 1)
    window = _int(config, "sleep.window", 1)
    if window > seq_len:
        raise ConfigError(
            f"config.sleep.window must be <= the task's sequence length {seq_len} (got {window})"
        )
    if passes > 1 and all(sleep.window_schedule(loss_mask, window)):
        # Sleep only happens in windows without labels; with none, N would be silently ignored.
        raise ConfigError(
            f"config.sleep.window={window} leaves no window without labels in the task's "
            f"layout, so sleep.passes={passes} would never run; use a smaller window"
        )
    _choice(config, "sleep.eviction", sleep.EVICTIONS)
    _choice(config, "sleep.remat", sleep.REMATS)
    for field in ("grad_passes", "grad_windows"):
        # Truncated gradients, 0 = all; absent (configs older than the fields) = 0.
        if field in _get(config, "sleep"):
            _int(config, f"sleep.{field}", 0)
    spec = _get(config, "sleep.loop_blocks")
    num_layers = _num_layers(config)
    try:
        sleep.resolve_loop_blocks(spec, num_layers)
    except ValueError as e:
        raise ConfigError(f"config.{e}") from None


def _validate_train(config) -> None:
    _int(config, "train.steps", 1)
    _int(config, "train.batch_size", 1)
    optimizer = _choice(config, "train.optimizer", OPTIMIZERS)
    _float(config, "train.lr", 0.0, strict=True)
    _float(config, "train.adam_lr", 0.0)
    if optimizer == "muon":
        patterns = _get(config, "train.adam_patterns")
        for pattern in split_patterns(patterns):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(
                    f"config.train.adam_patterns: bad regex {pattern!r} ({e})"
                ) from None
    _choice(config, "train.schedule", SCHEDULES)
    _int(config, "train.warmup_steps", 0)
    min_ratio = _float(config, "train.min_lr_ratio", 0.0)
    if min_ratio > 1:
        raise ConfigError(f"config.train.min_lr_ratio must be <= 1 (got {min_ratio})")
    _float(config, "train.grad_clip", 0.0)
    _float(config, "train.weight_decay", 0.0)
    for field in ("log_every", "eval_every", "eval_size", "checkpoint_every", "keep_checkpoints"):
        _int(config, f"train.{field}", 1)
    # Optional (default 1): gradient accumulation over equal slices of the batch.
    if "microbatches" in config.train:
        micro = _int(config, "train.microbatches", 1)
        batch = config.train.batch_size
        if batch % micro:
            raise ConfigError(
                f"config.train.microbatches={micro} must divide train.batch_size={batch}"
            )
    # Optional: the held-out sets' seed (0 and up: fixed across `seed`; -1: `seed`'s own;
    # absent, as in config.json files older than the field: -1).
    if "eval_seed" in config.train:
        _int(config, "train.eval_seed", -1)
    # Optional (default on): TensorBoard event files in the workdir.
    tensorboard = config.train.get("tensorboard", True)
    if not isinstance(tensorboard, bool):
        raise ConfigError(f"config.train.tensorboard must be true or false (got {tensorboard!r})")


def _validate_eval_generate(config, task) -> None:
    """`task.eval_generate` (optional, default off): a bool, for a task whose answers can be
    generated and parsed (one with `generation_batch` and `parse_answer`: gsm_infinite)."""
    value = config.task.get("eval_generate", False)
    if not isinstance(value, bool):
        raise ConfigError(f"config.task.eval_generate must be true or false (got {value!r})")
    if value and not hasattr(task, "generation_batch"):
        raise ConfigError(
            f"config.task.eval_generate: task {task.name!r} has no answer to generate and "
            "parse (gsm_infinite has)"
        )


def load_config_module(path: str | Path):
    """The experiment config file at `path` as a module, loaded by path as `config_flags`
    does (experiments/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"_sleep_lm_config_{Path(path).stem}", path)
    if spec is None or not Path(path).is_file():
        raise FileNotFoundError(f"no config file {str(path)!r}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(config_arg: str | Path) -> config_dict.ConfigDict:
    """`get_config(arg)` of 'path' or 'path:arg', the form `--config` takes.

    For notebooks, benchmarks and tests: `load_config("experiments/rule110.py:smoke")`.
    """
    path, _, arg = str(config_arg).partition(":")
    return load_config_module(path).get_config(arg or None)


# Fields that may change when a run resumes from its checkpoints: budget, cadence, eval
# sets and device layout. Anything else (model, task, sleep, optimiser) would silently
# continue a run under a config that did not produce its checkpoints.
RESUMABLE_FIELDS = (
    "train.steps",
    "train.log_every",
    "train.eval_every",
    "train.eval_size",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.tensorboard",
    "train.microbatches",  # gradient accumulation: the same update, another memory layout
    "train.eval_seed",  # which held-out set; training does not read it
    "task.eval_steps",
    "task.eval_hops",
    "task.eval_generate",  # --mode=eval also scores generations; training does not read it
    "mesh.",
    # How the same model is computed (loss and gradients equal to rounding): the per-layer
    # rematerialisation and the attention kernel. Configs written before them have none.
    "model.remat_policy",
    "model.attention_impl",
    "model.attention_chunk",
    # Where a fresh run's parameters come from: once the workdir has a checkpoint, resuming
    # from it takes precedence and `init` is not read again.
    "init.",
    # --mode=compile's target: which chip a compile-only run is for, not how this run trains.
    "compile.",
)


def retired_fields(old: dict, new: dict, config) -> list[str]:
    """Fields of a workdir's flattened config.json (`old`) that this version no longer has:
    `model.*` names absent from `config` (flattened: `new`) that its family does not read,
    e.g. the hybrid's model.width, heads, layers ... that older pretrained presets wrote."""
    if model_family(config) == MODEL_FAMILY_DEFAULT:
        known = {field.name for field in dataclasses.fields(ModelConfig)}
    else:
        known = {*COMPUTE_OPTIONS, "hf_options"}  # its architecture is the checkpoint's
    known.add("family")
    return sorted(
        field
        for field in old
        if field.startswith("model.") and field not in new and field.split(".")[1] not in known
    )


def resume_conflict(
    previous: dict,
    config: config_dict.ConfigDict,
    allowed: tuple[str, ...] = (),
    hint: str = "use a new --workdir, or set it back",
) -> str | None:
    """One line naming the first field where `config` differs from the config a workdir's
    checkpoints were trained with (`previous`, its config.json), ignoring RESUMABLE_FIELDS
    and `allowed` (field names; a name ending in "." covers a section); None when resuming
    (or evaluating) is safe. `hint` ends the line: what to do about it."""
    old = flatten(previous)
    new = flatten(json.loads(config.to_json_best_effort()))
    retired = retired_fields(old, new, config)
    if retired:
        logging.warning(
            "ignored: %s of the workdir's config.json (an older version wrote them; "
            "config.model.family=%r does not read them)",
            ", ".join(retired),
            model_family(config),
        )
    ignored = RESUMABLE_FIELDS + tuple(allowed) + tuple(retired)
    for field in sorted(set(old) | set(new)):
        if any(field == f or (f.endswith(".") and field.startswith(f)) for f in ignored):
            continue
        if old.get(field, "<unset>") != new.get(field, "<unset>"):
            return (
                f"config.{field}={new.get(field, '<unset>')!r} differs from the value the "
                f"checkpoints in this workdir were trained with ({old.get(field, '<unset>')!r}); "
                f"{hint}"
            )
    return None


def eval_overrides(text: str, config: config_dict.ConfigDict) -> tuple[str, ...]:
    """The fields `--eval_overrides` names ("sleep.passes,task.steps"): config fields that
    `--mode=eval` may set to other values than the run was trained with (e.g. to evaluate at
    another N or depth). Raises ConfigError (one line) for a name that is not a field."""
    fields = flatten(json.loads(config.to_json_best_effort()))
    names = tuple(name.strip().removeprefix("config.") for name in text.split(",") if name.strip())
    for name in names:
        if name not in fields:
            sections = sorted({f.rsplit(".", 1)[0] + "." for f in fields if f.startswith(name)})
            detail = f" (a section; name its fields, e.g. {sections[0]}...)" if sections else ""
            close = difflib.get_close_matches(name, list(fields), n=1, cutoff=0.8)
            if close and not detail:
                detail = f" (did you mean {close[0]}?)"
            raise ConfigError(f"--eval_overrides: config.{name} is not a config field{detail}")
    return names


def default_init_config() -> config_dict.ConfigDict:
    """`config.init` defaults: where a fresh run's parameters come from.

    from_checkpoint: "WORKDIR" or "WORKDIR:STEP", another run's parameters (matched by
    name; fresh optimiser state and schedule); from_hf: a Hugging Face checkpoint directory.
    Both "" (the default): random initialisation from `config.seed`. At most one is set. A
    workdir that already has a checkpoint resumes from it, whatever `init` says.
    """
    return config_dict.ConfigDict({"from_checkpoint": "", "from_hf": ""})


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


def parse_arg(arg: str | None, **defaults) -> config_dict.ConfigDict:
    """Parses 'smoke,steps=1' into a ConfigDict; bare names set booleans to True.

    Values take the type of their default; unknown names raise ValueError.
    """
    out = dict(defaults)
    for item in (arg or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        if name not in defaults:
            raise ValueError(f"unknown config argument {name!r}; allowed: {sorted(defaults)}")
        default = defaults[name]
        if not sep:
            if not isinstance(default, bool):
                raise ValueError(f"config argument {name!r} needs a value ({name}=...)")
            out[name] = True
        elif isinstance(default, bool):
            out[name] = value.lower() in ("1", "true", "yes")
        else:
            out[name] = type(default)(value)
    return config_dict.ConfigDict(out)


def default_mesh_config() -> config_dict.ConfigDict:
    """`config.mesh` defaults: every device on the data axis, maxtext-style rules.

    Sizes: data=-1 (all the devices the other axes leave), fsdp=1, tensor=1. Rules map each
    logical axis to a comma-separated list of mesh axes ("" = replicated).
    """
    mesh = config_dict.ConfigDict()
    for axis, size in parallel.DEFAULT_MESH.items():
        mesh[axis] = size
    mesh.rules = config_dict.ConfigDict(
        {name: ",".join(axes) for name, axes in parallel.DEFAULT_RULES.items()}
    )
    return mesh


def default_compile_config() -> config_dict.ConfigDict:
    """`config.compile` defaults: `target` of `--mode=compile` ("" = none; e.g. "v5e-32",
    "h100-8"; sleep_lm.compile_targets lists the names)."""
    return config_dict.ConfigDict({"target": ""})


def compile_target(config):
    """The `compile_targets.Target` of `config.compile.target`; None when it is "" (or the
    config has no `compile` section). Raises ConfigError naming the field for a bad name."""
    name = (config.get("compile", None) or {}).get("target", "")
    if not isinstance(name, str):
        raise ConfigError(f"config.compile.target must be a string (got {name!r})")
    if not name:
        return None
    try:
        return compile_targets.parse_target(name)
    except compile_targets.TargetError as e:
        raise ConfigError(str(e)) from None


def _validate_mesh_static(config) -> None:
    try:
        parallel.check_mesh_config(parallel.mesh_config(config))
    except parallel.MeshError as e:
        raise ConfigError(str(e)) from None


def validate_mesh(config: config_dict.ConfigDict, num_devices: int) -> dict[str, int]:
    """Checks `config.mesh` against `num_devices`; returns the resolved {axis: size}.

    Raises ConfigError (one line naming the field) when the sizes do not multiply to the
    device count, when train.batch_size or train.eval_size is not a multiple of the batch
    axes (data x fsdp by default), or a head count not a multiple of the heads axes (tensor):
    `model.heads` of the hybrid, the checkpoint's heads, KV heads and Jet heads of a
    pretrained family.
    """
    mesh_cfg = parallel.mesh_config(config)
    try:
        rules = dict(parallel.parse_rules(mesh_cfg.get("rules", None)))
        sizes = parallel.mesh_shape(mesh_cfg, num_devices)
    except parallel.MeshError as e:
        raise ConfigError(str(e)) from None

    def axes_text(logical):
        """'mesh.data=4 x mesh.fsdp=2 = 8', or 'mesh.tensor=8' for one axis."""
        axes = rules[logical]
        text = " x ".join(f"mesh.{a}={sizes[a]}" for a in axes)
        return text if len(axes) == 1 else f"{text} = {parallel.axes_size(sizes, axes)}"

    shards = parallel.axes_size(sizes, rules["batch"])
    for field in ("batch_size", "eval_size"):
        value = _int(config, f"train.{field}", 1)
        if value % shards:
            raise ConfigError(
                f"config.train.{field}={value} must be a multiple of the batch axes "
                f"{axes_text('batch')} (mesh.rules.batch)"
            )
    micro = config.train.get("microbatches", 1)
    if (config.train.batch_size // micro) % shards:
        raise ConfigError(
            f"config.train.microbatches={micro}: each microbatch of "
            f"{config.train.batch_size // micro} rows must be a multiple of the batch axes "
            f"{axes_text('batch')} (mesh.rules.batch)"
        )
    for field, heads in _head_counts(config).items():
        if heads % parallel.axes_size(sizes, rules["heads"]):
            raise ConfigError(
                f"{field}={heads} must be a multiple of the heads axes "
                f"{axes_text('heads')} (mesh.rules.heads)"
            )
    return sizes


def _head_counts(config) -> dict[str, int]:
    """{where it comes from: count} of every head axis the mesh's heads axes split: the
    hybrid's `model.heads`; a pretrained family's attention heads, KV heads and Jet heads,
    read from init.from_hf's config.json (no model built)."""
    if model_family(config) == MODEL_FAMILY_DEFAULT:
        return {"config.model.heads": _int(config, "model.heads", 1)}
    cfg = _pretrained_config(config)
    where = f"config.init.from_hf={config.init.from_hf!r}: config.json"
    counts = {
        f"{where} num_attention_heads": cfg.heads,
        f"{where} num_key_value_heads": cfg.kv_heads,
    }
    if "jet" in cfg.layers:
        counts[f"{where} Jet layers' num_heads"] = cfg.jet_heads
    return counts


def validate(config: config_dict.ConfigDict, num_devices: int | None = None):
    """Raises ConfigError for the first invalid field; returns the task (built on the way,
    cheap: pure NumPy) for callers that want it. With `num_devices`, also `validate_mesh`."""
    from sleep_lm.tasks import get_task

    _int(config, "seed", 0)
    _get(config, "task.name")
    steps = _get(config, "task").get("steps", None)
    if steps is not None:
        _int(config, "task.steps", 0)
    _validate_checkpoint_dir(config)
    try:
        task = get_task(config.task)
    except ValueError as e:
        message = str(e)
        raise ConfigError(
            message if message.startswith("config.") else f"config.{message}"
        ) from None
    _validate_model(config)
    _validate_init(config)
    _validate_family(config, task)
    mask = task.eval_batch(1, config.seed)["loss_mask"][0]
    _validate_sleep(config, task.seq_len, mask)
    if hasattr(task, "check_window"):  # variable loss positions (gsm_infinite): all must wake
        try:
            task.check_window(config.sleep.window)
        except ValueError as e:
            raise ConfigError(f"config.{e}") from None
    _validate_train(config)
    _validate_eval_generate(config, task)
    _validate_mesh_static(config)
    compile_target(config)
    if num_devices is not None:
        validate_mesh(config, num_devices)
    return task
