"""Plots of the final and the running eval metrics (the paper's Fig. 2 and 3 style), with the
chance level dashed. They need matplotlib (`pip install 'sleep_lm[report]'`)."""

from pathlib import Path

from sleep_lm.report.chance import chance_level
from sleep_lm.report.runs import (
    Difficulty,
    Run,
    difficulties,
    group_fields,
    line_label,
    runs_at,
    spread,
)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # Files only; no display needed.
    import matplotlib.pyplot as plt

    return plt


def save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def chance_for(runs: list[Run], metric: str, difficulty: Difficulty):
    """The chance level shared by all `runs` at `difficulty`, or None (unknown or differing)."""
    levels = {chance_level(run.config, metric, difficulty) for run in runs}
    return levels.pop() if len(levels) == 1 else None


def draw_chance(ax, level, color="0.4", label="chance") -> None:
    if level is not None:
        ax.axhline(level, color=color, linestyle="--", linewidth=1, alpha=0.8, label=label)


def plot_vs_passes(runs: list[Run], path: Path) -> list[str]:
    """Final eval accuracy (and token accuracy) against N, one line per difficulty (and per
    combination of the other varying fields); the mean over seeds with a min-max error bar,
    and the difficulty's chance level dashed. Returns the metrics plotted."""
    metrics = [m for m in ("accuracy", "token_accuracy") if _has(runs, difficulties(runs, m), m)]
    if not metrics:
        return []
    plt = pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        found = difficulties(runs, metric)
        group = group_fields(runs, found)
        color = 0
        for difficulty in found:
            lines: dict[str, dict] = {}
            for run in runs_at(runs, difficulty):
                value = run.final.get(f"eval/{metric}{difficulty.suffix}")
                if value is None or run.passes is None:
                    continue
                by_line = lines.setdefault(line_label(run, group), {})
                by_line.setdefault(run.passes, []).append(value)
            first = color
            for extra, by_n in sorted(lines.items()):
                xs = sorted(by_n)
                stats = [spread(by_n[n]) for n in xs]
                means = [m for m, _, _ in stats]
                # max(0, .): the mean of equal floats can round past them.
                err = [
                    [max(0.0, m - lo) for m, lo, _ in stats],
                    [max(0.0, hi - m) for m, _, hi in stats],
                ]
                seeds = max(len(v) for v in by_n.values())
                label = ", ".join(p for p in (difficulty.label, extra) if p) or metric
                if seeds > 1:
                    label += f" (mean of {seeds} seeds, min-max)"
                ax.errorbar(
                    xs, means, yerr=err, marker="o", capsize=3, label=label, color=f"C{color % 10}"
                )
                color += 1
            level = chance_for(runs_at(runs, difficulty), metric, difficulty)
            chance_label = " ".join(p for p in ("chance", difficulty.label) if p)
            draw_chance(ax, level, color=f"C{first % 10}", label=chance_label)
        ax.set_xlabel("sleep passes N")
        ax.set_ylabel(f"final eval {metric.replace('_', ' ')}")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    save(plt, fig, path)
    return metrics


def _has(runs, found, metric) -> bool:
    return any(f"eval/{metric}{d.suffix}" in run.final for run in runs for d in found)


def _logged(runs: list[Run], metric: str) -> list[Difficulty]:
    """The difficulties at which some run's final record has `metric`."""
    return [d for d in difficulties(runs, metric) if _has(runs, [d], metric)]


def _lines(runs: list[Run], group: list[str]) -> list[tuple]:
    """The lines of a curves plot: (N, label of the `group` fields), one per seed group."""
    return sorted(
        {(run.passes, line_label(run, group)) for run in runs}, key=lambda k: (k[1], k[0] or 0)
    )


def _on_line(runs: list[Run], line: tuple, group: list[str]) -> list[Run]:
    return [run for run in runs if (run.passes, line_label(run, group)) == line]


def _curve(runs: list[Run], key: str, tokens: bool) -> dict[int, list]:
    """{training tokens (or step): [eval `key` of each run at it]}."""
    by_x: dict[int, list] = {}
    for run in runs:
        for record in run.evals:
            if key in record:
                x = record["step"] * run.tokens_per_step if tokens else record["step"]
                by_x.setdefault(x, []).append(record[key])
    return by_x


def plot_curves(runs: list[Run], metric: str, path: Path) -> bool:
    """Eval `metric` against training tokens, one panel per difficulty, one line per N (and
    per combination of the other varying fields): the mean over seeds with a min-max band,
    and the chance level dashed. False (and no file) if no run logs it."""
    found = _logged(runs, metric)
    if not found:
        return False
    plt = pyplot()
    group = group_fields(runs, found)
    tokens = all(run.tokens_per_step is not None for run in runs)
    lines = _lines(runs, group)  # One colour per line (N and group) across all panels.
    colors = {line: i for i, line in enumerate(lines)}
    cols = min(len(found), 3)
    rows = -(-len(found) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False, sharey=True)
    for ax, difficulty in zip(axes.flat, found, strict=False):
        selected = runs_at(runs, difficulty)
        key = f"eval/{metric}{difficulty.suffix}"
        for line in lines:
            members = _on_line(selected, line, group)
            by_step = _curve(members, key, tokens)
            if not by_step:
                continue
            xs = sorted(by_step)
            stats = [spread(by_step[x]) for x in xs]
            color = f"C{colors[line] % 10}"
            label = ", ".join(p for p in (f"N={line[0]}", line[1]) if p)
            if len(members) > 1:
                label += f" ({len(members)} seeds)"
                ax.fill_between(
                    xs,
                    [lo for _, lo, _ in stats],
                    [hi for _, _, hi in stats],
                    color=color,
                    alpha=0.2,
                    linewidth=0,
                )
            ax.plot(xs, [m for m, _, _ in stats], marker=".", label=label, color=color)
        draw_chance(ax, chance_for(selected, metric, difficulty))
        ax.set_title(difficulty.label or metric.replace("_", " "))
        ax.set_xlabel("training tokens" if tokens else "step")
        ax.set_ylabel(f"eval {metric.replace('_', ' ')}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(found) :]:
        ax.set_visible(False)
    save(plt, fig, path)
    return True


def plot_by_difficulty(runs: list[Run], metric: str, path: Path) -> bool:
    """Eval `metric` against training tokens in one panel, one colour per difficulty (the
    paper's Fig. 2a: deeper t learns slower), one line style per N and other varying fields;
    mean over seeds, each difficulty's chance level dashed in its colour. False (and no
    file) unless there are at least two difficulties."""
    found = _logged(runs, metric)
    if len(found) < 2:
        return False
    plt = pyplot()
    group = group_fields(runs, found)
    tokens = all(run.tokens_per_step is not None for run in runs)
    lines = _lines(runs, group)
    styles = ["-", "--", ":", "-."]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, difficulty in enumerate(found):
        color = f"C{i % 10}"
        selected = runs_at(runs, difficulty)
        key = f"eval/{metric}{difficulty.suffix}"
        for j, line in enumerate(lines):
            by_step = _curve(_on_line(selected, line, group), key, tokens)
            if not by_step:
                continue
            xs = sorted(by_step)
            parts = [difficulty.label, *(p for p in (f"N={line[0]}", line[1]) if len(lines) > 1)]
            ax.plot(
                xs,
                [spread(by_step[x])[0] for x in xs],
                marker=".",
                color=color,
                linestyle=styles[j % len(styles)],
                label=", ".join(p for p in parts if p),
            )
        level = chance_for(selected, metric, difficulty)
        if level is not None:
            ax.axhline(level, color=color, linestyle=(0, (2, 3)), linewidth=1, alpha=0.7)
    ax.set_xlabel("training tokens" if tokens else "step")
    ax.set_ylabel(f"eval {metric.replace('_', ' ')} (dotted: chance)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    save(plt, fig, path)
    return True
