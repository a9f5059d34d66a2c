"""Resuming or evaluating a workdir: the fields that may differ from the config its
checkpoints were trained with (RESUMABLE_FIELDS, `--eval_overrides`), and the one line that
names the first other field that does."""

import dataclasses
import difflib
import json

from absl import logging
from ml_collections import config_dict

from sleep_lm.config.defaults import default_compile_config
from sleep_lm.config.family import MODEL_FAMILY_DEFAULT, model_family
from sleep_lm.config.fields import ConfigError
from sleep_lm.dotted import flatten
from sleep_lm.model.config import COMPUTE_OPTIONS, ComputeConfig, ModelConfig
from sleep_lm.train import optim
from sleep_lm.train.loop import EVAL_SEED_OWN

# Fields added after runs were made, with the value that a config.json written before them
# means (the code reads an absent field as this value): a report or a comparison fills them
# in, so an old run and a new one with the same behaviour compare equal.
ABSENT_MEANS = {
    "train.eval_seed": EVAL_SEED_OWN,
    "train.momentum_dtype": optim.MOMENTUM_DTYPES[0],
    "train.weight_grads": optim.WEIGHT_GRADS[0],
    "train.xla_options": "",
    "compile.target": default_compile_config().target,  # training does not read it
    # The from-scratch experiments' configs name these since the splash kernel (issue 16);
    # absent, the model reads ComputeConfig's defaults.
    **{
        f"model.{f.name}": f.default
        for f in dataclasses.fields(ComputeConfig)
        if f.name in ("remat_policy", "attention_impl")
    },
    # 512 until the causal key ranges (2026-12-07) made 256 the faster and smaller default.
    "model.attention_chunk": 512,
}


def with_absent(flat: dict) -> dict:
    """A flattened config (``dotted.flatten``) with the fields it predates filled in as
    ``ABSENT_MEANS`` says, so runs made before and after a field compare equal."""
    return {**ABSENT_MEANS, **flat}


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
