"""Nested config dicts as flat ``{"a.b.c": value}`` dicts (config.json <-> ``--config.a.b.c``
names); no imports, so both the trainer's config checks and ``sleep_lm.report`` use it."""

from __future__ import annotations


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (dicts are descended, anything else is a leaf)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
