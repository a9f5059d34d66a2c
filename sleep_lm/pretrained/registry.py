"""Registry of pretrained model families (issue 10).

A family ties Hugging Face `config.json` "model_type" values to a Flax module with the
HybridLM stage interface (embed / blocks / head, explicit ModelState). `load_hf` looks the
family up by the checkpoint's model_type; `config.model.family` looks it up by name.
Parameter names follow the generic flax <-> HF rule in `sleep_lm/pretrained/hf.py`, so a
family needs no name table unless it deviates.

`build(cfg)` returns a module with a default `window`; `load_hf(path, window=L)` sets the
sleep window with `module.clone(window=L)`, so a family's module must have a `window`
dataclass field (with a default) rather than taking it through `build`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn


@dataclasses.dataclass(frozen=True)
class Family:
    name: str  # config.model.family value: "qwen2" | "ouro"
    model_types: tuple[str, ...]  # HF config.json "model_type" values this family reads
    config_from_hf: Callable[..., Any]  # (hf_config: dict, **options) -> family config dataclass
    config_to_hf: Callable[[Any], dict]  # family config -> HF config.json dict (round trip)
    build: Callable[[Any], nn.Module]  # family config -> Flax module with the stage interface
    # Layers the family adds to a checkpoint that lacks them (Ouro's Jet layers): their flax
    # paths for a module, and (module, rng) -> {path prefix: fresh parameters}.
    inserted_paths: Callable[[Any], tuple] | None = None
    init_inserted: Callable[[Any, Any], dict] | None = None


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Adds `family` (by name); re-registering the same name replaces it (module reloads)."""
    FAMILIES[family.name] = family
    return family


def supported_model_types() -> tuple[str, ...]:
    return tuple(sorted(t for f in FAMILIES.values() for t in f.model_types))


def for_model_type(model_type: str) -> Family:
    """The family that reads HF model_type `model_type`; ValueError naming it otherwise."""
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    raise ValueError(
        f"config.json model_type {model_type!r} is not supported; supported: "
        f"{', '.join(supported_model_types()) or '(none registered)'}"
    )


def for_name(name: str) -> Family:
    """The family called `name` (config.model.family); ValueError listing the known ones."""
    if name not in FAMILIES:
        raise ValueError(
            f"model.family {name!r} is not a pretrained family; known: "
            f"{', '.join(sorted(FAMILIES)) or '(none registered)'}"
        )
    return FAMILIES[name]
