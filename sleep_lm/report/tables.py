"""Markdown tables of the final eval metrics: per run, over seeds, and the chance levels."""

import math

from sleep_lm.report.chance import chance_level
from sleep_lm.report.runs import (
    METRIC_ORDER,
    Run,
    difficulties,
    group_by_seed,
    metric_names,
    point_fields,
    runs_at,
    sort_key,
    spread,
    varying_fields,
)


def format_value(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def format_tokens(tokens: int | None) -> str:
    if tokens is None:
        return "-"
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if tokens >= size:
            return f"{tokens / size:.3g}{suffix}"
    return str(tokens)


def format_spread(values: list[float], *, count: bool = False) -> str:
    """`mean [min, max]` of several values (and `(n)` with `count`), the value alone for one,
    "-" for none."""
    if not values:
        return "-"
    mean, low, high = spread(values)
    if len(values) == 1:
        return format_value(mean)
    text = f"{format_value(mean)} [{format_value(low)}, {format_value(high)}]"
    return f"{text} ({len(values)})" if count else text


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, one line per row, ending in a newline."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def table(runs: list[Run]) -> str:
    """Markdown table of the final eval metrics, one row per run."""
    fields = varying_fields(runs)
    metrics = metric_names(runs)
    header = ["run", "N", *fields, "step", "tokens", *(m.removeprefix("eval/") for m in metrics)]
    rows = []
    for run in sorted(runs, key=lambda r: sort_key(r, fields)):
        final = run.final
        step = final.get("step")
        tokens = None if step is None or run.tokens_per_step is None else step * run.tokens_per_step
        row = [
            run.name,
            format_value(run.passes),
            *(format_value(run.config.get(f)) for f in fields),
            format_value(step),
            format_tokens(tokens),
            *(format_value(final.get(m)) for m in metrics),
        ]
        rows.append(row)
    return markdown_table(header, rows)


def seed_table(runs: list[Run]) -> str:
    """Markdown table over seeds: one row per group of runs equal but for `seed`, each final
    metric as `mean [min, max]`, with the number of seeds."""
    fields = point_fields(runs)
    metrics = metric_names(runs)
    header = ["N", *fields, "seeds", "step", *(m.removeprefix("eval/") for m in metrics)]
    rows = []
    groups = group_by_seed(runs)
    groups.sort(key=lambda g: sort_key(g[0], fields))
    for group in groups:
        cells = [format_spread([run.final[m] for run in group if m in run.final]) for m in metrics]
        steps = sorted({run.final.get("step") for run in group})
        row = [
            format_value(group[0].passes),
            *(format_value(group[0].config.get(f)) for f in fields),
            str(len(group)),
            "/".join(map(format_value, steps)),
            *cells,
        ]
        rows.append(row)
    return markdown_table(header, rows)


def _own_difficulty(config: dict) -> str:
    # Rule 110's depth when every run has the same one; Depo's training mix of hop counts.
    if config.get("task.name") == "rule110" and "task.steps" in config:
        return f"t={config['task.steps']}"
    return "all"


def chance_table(runs: list[Run]) -> str:
    """Markdown table of the chance level per difficulty (empty when no task is known)."""
    rows = []
    for difficulty in difficulties(runs, "accuracy"):
        chosen = runs_at(runs, difficulty)
        levels = [chance_level(chosen[0].config, m, difficulty) for m in METRIC_ORDER]
        if chosen and any(v is not None for v in levels):
            label = difficulty.label or _own_difficulty(chosen[0].config)
            rows.append([label, *map(format_value, levels)])
    if not rows:
        return ""
    return markdown_table(["difficulty", *METRIC_ORDER], rows)
