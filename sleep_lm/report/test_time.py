"""Sleeping longer at test time: the --mode=eval records of checkpoints evaluated at other N,
as a trained-N x test-N table and a plot."""

import math
from pathlib import Path

from sleep_lm.report import plots
from sleep_lm.report.runs import PASSES, Difficulty, Run, plain, point_fields, short_name, spread
from sleep_lm.report.tables import format_spread, format_value, markdown_table


def _test_passes(record: dict):
    """The N a --mode=eval record was evaluated at (None if it overrides anything else)."""
    if set(record.get("eval_overrides", {})) - {PASSES}:
        return None
    return record.get("config", {}).get("sleep", {}).get("passes")


def test_time_points(runs: list[Run], metric: str) -> dict:
    """{(trained N, other varying fields...): {test N: [metric of each seed's latest
    checkpoint record]}} from the runs' --mode=eval records that override at most
    sleep.passes; {} when no run was evaluated at an N other than its own."""
    fields = point_fields(runs)
    points: dict[tuple, dict] = {}
    other_n = False
    for run in runs:
        latest: dict = {}  # test N -> the record of the newest checkpoint
        for record in run.checkpoint_evals:
            n = _test_passes(record)
            if n is None or metric not in record:
                continue
            if n not in latest or record["step"] >= latest[n]["step"]:
                latest[n] = record
        key = (run.passes, *(run.config.get(f) for f in fields))
        for n, record in latest.items():
            other_n |= n != run.passes
            points.setdefault(key, {}).setdefault(n, []).append(float(record[metric]))
    return points if other_n else {}


def _in_order(points: dict) -> list[tuple]:
    return sorted(points, key=lambda k: [format_value(v) for v in k])


def test_time_table(runs: list[Run], metric: str = "eval/accuracy") -> str:
    """Markdown table: trained N (rows) x N at test time (columns), `metric` as mean [min,
    max] over seeds of the --mode=eval records; "" when there are none at another N."""
    points = test_time_points(runs, metric)
    if not points:
        return ""
    fields = point_fields(runs)
    tests = sorted({n for cells in points.values() for n in cells})
    header = ["trained N", *map(short_name, fields), *(f"test N = {n}" for n in tests)]
    rows = []
    for key in _in_order(points):
        cells = []
        for n in tests:
            text = format_spread(points[key].get(n, []), count=True)
            cells.append(f"**{text}**" if n == key[0] and text != "-" else text)
        rows.append([*map(format_value, key), *cells])
    return markdown_table(header, rows)


def plot_test_time(runs: list[Run], metric: str, path: Path) -> bool:
    """`metric` of the --mode=eval records against N at test time, one line per trained N
    (and other varying fields), mean over seeds with a min-max band, chance dashed. False
    (and no file) when no record is at another N."""
    points = test_time_points(runs, f"eval/{metric}")
    if not points:
        return False
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    fields = point_fields(runs)
    for i, key in enumerate(_in_order(points)):
        ns = sorted(points[key])
        stats = [spread(points[key][n]) for n in ns]
        label = ", ".join(
            [
                f"trained N = {key[0]}",
                *(f"{short_name(f)} = {plain(v)}" for f, v in zip(fields, key[1:], strict=True)),
            ]
        )
        ax.plot(ns, [m for m, _, _ in stats], marker="o", color=f"C{i % 10}", label=label)
        ax.fill_between(
            ns,
            [lo for _, lo, _ in stats],
            [hi for _, _, hi in stats],
            color=f"C{i % 10}",
            alpha=0.15,
        )
        ax.plot(
            [key[0]],
            [dict(zip(ns, stats, strict=True)).get(key[0], (math.nan,))[0]],
            marker="*",
            markersize=12,
            color=f"C{i % 10}",
        )
    plots.draw_chance(ax, plots.chance_for(runs, metric, Difficulty("", "", None)))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sleep passes N at test time (star: the trained N)")
    ax.set_ylabel(f"eval {metric.replace('_', ' ')}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    plots.save(plt, fig, path)
    return True
