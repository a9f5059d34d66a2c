"""README.md stays true: the config reference table matches experiments/rule110.py (the paper
default and the smoke preset), and every config field has a row."""

import dataclasses
import math
import re
from pathlib import Path

import pytest
from train.train_fakes import experiment_config

from sleep_lm.model.config import ModelConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def _flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if hasattr(value, "items"):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_table() -> dict[str, tuple[str, str]]:
    """{field: (paper default cell, smoke cell)} of README's config reference table."""
    text = README.read_text()
    section = text[text.index("## Config reference") :]
    rows = {}
    for line in section.splitlines()[1:]:
        if line.startswith("## "):
            break
        match = re.match(r"^\|\s*`([\w.*]+)`\s*\|([^|]*)\|([^|]*)\|", line)
        if match:
            rows[match.group(1)] = (match.group(2).strip(), match.group(3).strip())
    return rows


def matches(cell: str, value) -> bool:
    """Whether a table cell states `value` (numbers by value, `""`, (), true/false, and a
    list cut short with "...")."""
    if isinstance(value, bool):
        return cell == str(value).lower()
    if isinstance(value, int | float):
        try:
            return math.isclose(float(cell), value)
        except ValueError:
            return False
    if isinstance(value, tuple | list):
        return cell == "()" if not value else cell == ",".join(map(str, value))
    if value == "":
        return cell == '""'
    if cell.endswith("..."):
        return str(value).startswith(cell[:-3])
    return cell == str(value)


ROWS = config_table()
# Optional model fields (not set by the experiment files): their defaults in ModelConfig.
OPTIONAL = {
    f"model.{f.name}": f.default
    for f in dataclasses.fields(ModelConfig)
    if f.default is not dataclasses.MISSING
}


def test_every_config_field_has_a_row():
    fields = {f for f in _flatten(experiment_config()) if not f.startswith("mesh.rules.")}
    assert ROWS, "no config table found in README.md"
    missing = sorted(fields - set(ROWS))
    assert not missing, f"README's config table lacks {missing}"
    stale = sorted(set(ROWS) - fields - set(OPTIONAL) - {"mesh.rules.*"})
    assert not stale, f"README's config table lists fields that do not exist: {stale}"


@pytest.mark.parametrize("field", sorted(f for f in ROWS if f != "mesh.rules.*"))
def test_preset_columns_state_the_presets(field):
    paper, smoke = _flatten(experiment_config()), _flatten(experiment_config("smoke"))
    if field not in paper:  # an optional model field: the default of ModelConfig
        paper[field] = smoke[field] = OPTIONAL[field]
    paper_cell, smoke_cell = ROWS[field]
    assert matches(paper_cell, paper[field]), f"{field}: paper {paper_cell!r} vs {paper[field]!r}"
    if smoke_cell:
        message = f"{field}: smoke {smoke_cell!r} vs {smoke[field]!r}"
        assert matches(smoke_cell, smoke[field]), message
    else:  # blank: smoke keeps the paper's value
        assert smoke[field] == paper[field], f"{field}: smoke sets {smoke[field]!r}, column blank"
