r"""Tables and plots from training workdirs (the paper's Fig. 2 and 3 style).

  python -m sleep_lm.report /tmp/r110_sweep --out /tmp/r110_sweep/report
  python -m sleep_lm.report runs/a runs/b runs/c --out report/

Each WORKDIR is a run directory (holding config.json and metrics.jsonl, as written by
sleep_lm.main) or a directory whose immediate subdirectories are runs (a sweep root). Writes:

- OUT/report.md: one row per run with its final eval metrics (the last eval line of
  metrics.jsonl): N (= sleep.passes), the config fields that differ between runs, the step,
  the training tokens, and every `eval/...` metric, including per-difficulty ones such as
  `eval/accuracy@t=16` or `eval/loss@k=8`;
- OUT/accuracy_vs_passes.png: final eval accuracy (and token accuracy) against N, one line
  per difficulty. A difficulty is a per-difficulty metric (`@t=16`, `@k=8`) when the runs log
  them, else the task's own difficulty field (task.steps, the Rule 110 depth t) when it
  differs between runs;
- OUT/curves_accuracy.png, OUT/curves_loss.png: eval accuracy / loss against training tokens,
  one line per N, one panel per difficulty;
- OUT/curves_accuracy_by_difficulty.png (two or more difficulties): the same accuracy curves
  in one panel, one colour per difficulty (the paper's Fig. 2a).

Chance level: the report.md gives, and every plot draws as a dashed line, the level a model
reaches without learning the task, per difficulty (`chance_level`): Rule 110 at depth t from
the label distribution of the task generator itself (the labels are not balanced): guess each
label position's majority bit, which gets token accuracy max(p, 1 - p), all labels right
(accuracy) with the measured frequency, and loss the labels' entropy; Depo from its answer
set: guess uniformly among the n nodes of the cycle, n ~ U[min_nodes, max_nodes], which gets
token accuracy E[1/n], accuracy (all queries right) E[n^-queries] and loss E[log n].

Seeds: runs whose configs differ only in `seed` are one point. report.md then has a second
table with the mean, min and max over the seeds of each final metric, and the plots draw the
mean with a min-max error bar (accuracy vs N) or band (curves).

Training tokens are step * train.batch_size * seq_len (seq_len from config.task.seq_len, or
else from the task itself); when neither is known the x axis is the step. Plots need
matplotlib (`pip install 'sleep_lm[report]'`); without it the table is still written and the
command exits with status 1.
"""

import argparse
import dataclasses
import json
import math
import re
import sys
from pathlib import Path

# Task fields that set an example's difficulty (lines/panels of the plots), by task name.
DIFFICULTY_FIELDS = {"rule110": ("task.steps", "t"), "depo": ("task.hops", "k")}
PASSES = "sleep.passes"
_METRIC_ORDER = ("accuracy", "token_accuracy", "loss")
_DIFFICULTY_KEY = re.compile(r"^eval/(?P<metric>[^@]+)@(?P<name>[A-Za-z_]+)=(?P<value>.+)$")


SEED = "seed"


@dataclasses.dataclass
class Run:
    workdir: Path
    name: str
    config: dict  # flattened: "sleep.passes" -> 2
    evals: list[dict]  # eval records of metrics.jsonl, by step
    tokens_per_step: int | None
    # --mode=eval records (WORKDIR/eval/*.json): {"step", "eval/...", "config", ...}
    checkpoint_evals: list[dict] = dataclasses.field(default_factory=list)

    @property
    def final(self) -> dict:
        return self.evals[-1] if self.evals else {}

    @property
    def passes(self):
        return self.config.get(PASSES)


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _number(value) -> float:
    # MetricsWriter stores non-finite values as the strings "nan", "inf", "-inf".
    return float(value)


def _seq_len(config: dict) -> int | None:
    if "task.seq_len" in config:
        return int(config["task.seq_len"])
    try:
        from sleep_lm.tasks import get_task

        fields = {k.split(".", 1)[1]: v for k, v in config.items() if k.startswith("task.")}
        return int(get_task(fields).seq_len)
    except (ImportError, ValueError, TypeError):
        return None


def load_run(workdir: str | Path) -> Run:
    """A run's flattened config and its eval records (sorted by step; a restarted run never
    has two lines for one step and kind)."""
    workdir = Path(workdir)
    config = flatten(json.loads((workdir / "config.json").read_text()))
    evals = []
    path = workdir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []  # None before step 1.
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # A line cut short by a kill.
        metrics = {k: _number(v) for k, v in record.items() if k.startswith("eval/")}
        if metrics:
            evals.append({"step": int(record["step"]), **metrics})
    evals.sort(key=lambda r: r["step"])
    checkpoint_evals = []
    # eval.json: the single record an older --mode=eval wrote.
    for path in [workdir / "eval.json", *sorted((workdir / "eval").glob("*.json"))]:
        try:
            checkpoint_evals.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    seq_len = _seq_len(config)
    batch = config.get("train.batch_size")
    tokens = None if seq_len is None or batch is None else int(batch) * seq_len
    return Run(
        workdir=workdir,
        name=workdir.name,
        config=config,
        evals=evals,
        tokens_per_step=tokens,
        checkpoint_evals=checkpoint_evals,
    )


def find_runs(paths) -> list[Path]:
    """Run directories: each path that holds config.json, else its subdirectories that do."""
    out = []
    for path in map(Path, paths):
        if (path / "config.json").exists():
            out.append(path)
            continue
        children = sorted(p for p in path.glob("*/") if (p / "config.json").exists())
        if not children:
            raise FileNotFoundError(f"{path}: no config.json in it or in its subdirectories")
        out.extend(children)
    return out


def varying_fields(runs: list[Run]) -> list[str]:
    """Config fields (other than sleep.passes) whose value is not the same in every run."""
    keys = sorted({key for run in runs for key in run.config})
    missing = object()
    out = []
    for key in keys:
        if key == PASSES:
            continue
        values = {json.dumps(run.config.get(key, missing), default=str) for run in runs}
        if len(values) > 1:
            out.append(key)
    return out


def _natural(text: str):
    # "accuracy@k=16" after "accuracy@k=2".
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]


def metric_names(runs: list[Run]) -> list[str]:
    """All eval metric keys of the runs' final records: accuracy, token accuracy, loss first,
    each followed by its per-difficulty versions in natural order."""
    keys = {key for run in runs for key in run.final if key.startswith("eval/")}

    def order(key):
        base = key.removeprefix("eval/").split("@", 1)[0]
        rank = _METRIC_ORDER.index(base) if base in _METRIC_ORDER else len(_METRIC_ORDER)
        return (rank, base, "@" in key, _natural(key))

    return sorted(keys, key=order)


def _short(field: str) -> str:
    return field.removeprefix("task.").removeprefix("sleep.").removeprefix("train.")


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


# ----------------------------------------------------------------------------- chance level

_CHANCE_SAMPLES = 20_000  # Rule 110 examples drawn to measure the label distribution.
_CHANCE_CACHE: dict[tuple, dict] = {}


def rule110_chance(steps: int, state_bits: int = 24, num_states: int = 4) -> dict[str, float]:
    """Eval metrics of guessing each label position's majority bit at depth t = `steps`,
    measured on `_CHANCE_SAMPLES` examples of the task generator (fixed seed): accuracy (all
    labels right), token_accuracy, and loss (the labels' entropy in nats, the loss of
    predicting each position's bit frequencies)."""
    key = ("rule110", int(steps), int(state_bits), int(num_states))
    if key not in _CHANCE_CACHE:
        import numpy as np

        from sleep_lm.tasks.rule110 import Rule110

        task = Rule110(int(steps), int(state_bits), int(num_states))
        batch = task.sample(np.random.default_rng(12345), _CHANCE_SAMPLES)
        labels = batch["targets"][batch["loss_mask"]].reshape(_CHANCE_SAMPLES, -1)
        p = labels.mean(axis=0)  # P(label = 1) per position
        right = labels == (p >= 0.5)
        q = np.clip(p, 1e-12, 1 - 1e-12)
        entropy = -(q * np.log(q) + (1 - q) * np.log(1 - q))
        _CHANCE_CACHE[key] = {
            "accuracy": float(right.all(axis=1).mean()),
            "token_accuracy": float(right.mean()),
            "loss": float(entropy.mean()),
        }
    return _CHANCE_CACHE[key]


def depo_chance(min_nodes: int = 3, max_nodes: int = 75, num_queries: int = 10) -> dict:
    """Eval metrics of guessing uniformly among the cycle's n nodes, n ~ U[min_nodes,
    max_nodes] (the answer set; the same for every hop count k)."""
    sizes = range(int(min_nodes), int(max_nodes) + 1)
    mean = lambda f: sum(f(n) for n in sizes) / len(sizes)  # noqa: E731
    return {
        "accuracy": mean(lambda n: n ** -float(num_queries)),
        "token_accuracy": mean(lambda n: 1.0 / n),
        "loss": mean(math.log),
    }


def chance_level(config: dict, metric: str, difficulty: "Difficulty | None" = None):
    """The chance level of eval `metric` ("accuracy", "token_accuracy", "loss") for a run's
    flattened `config` at `difficulty` (None: the run's own), or None for an unknown task."""
    task = config.get("task.name")
    if task == "rule110":
        steps = config.get("task.steps")
        if difficulty is not None and difficulty.suffix.startswith("@t="):
            steps = int(difficulty.suffix.removeprefix("@t="))
        elif difficulty is not None and difficulty.field_value is not None:
            steps = difficulty.field_value[1]
        if steps is None:
            return None
        levels = rule110_chance(
            steps, config.get("task.state_bits", 24), config.get("task.num_states", 4)
        )
    elif task == "depo":
        levels = depo_chance(
            config.get("task.min_nodes", 3),
            config.get("task.max_nodes", 75),
            config.get("task.num_queries", 10),
        )
    else:
        return None
    return levels.get(metric)


def _own_difficulty(config: dict) -> str:
    # Rule 110's depth when every run has the same one; Depo's training mix of hop counts.
    if config.get("task.name") == "rule110" and "task.steps" in config:
        return f"t={config['task.steps']}"
    return "all"


def chance_table(runs: list[Run]) -> str:
    """Markdown table of the chance level per difficulty (empty when no task is known)."""
    rows = []
    for difficulty in difficulties(runs, "accuracy"):
        chosen = _runs_for(runs, difficulty)
        levels = [chance_level(chosen[0].config, m, difficulty) for m in _METRIC_ORDER]
        if chosen and any(v is not None for v in levels):
            label = difficulty.label or _own_difficulty(chosen[0].config)
            rows.append([label, *map(format_value, levels)])
    if not rows:
        return ""
    header = ["difficulty", *_METRIC_ORDER]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


# ----------------------------------------------------------------------------- seeds


def group_by_seed(runs: list[Run]) -> list[list[Run]]:
    """Runs whose configs are equal but for `seed`, in first-seen order."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        key = json.dumps({k: v for k, v in run.config.items() if k != SEED}, sort_keys=True)
        groups.setdefault(key, []).append(run)
    return list(groups.values())


def spread(values: list[float]) -> tuple[float, float, float]:
    """(mean, min, max) of the finite values; NaN when none is finite."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return (math.nan, math.nan, math.nan)
    return (sum(finite) / len(finite), min(finite), max(finite))


def seed_table(runs: list[Run]) -> str:
    """Markdown table over seeds: one row per group of runs equal but for `seed`, each final
    metric as `mean [min, max]`, with the number of seeds."""
    fields = [f for f in varying_fields(runs) if f != SEED]
    metrics = metric_names(runs)
    header = ["N", *fields, "seeds", "step", *(m.removeprefix("eval/") for m in metrics)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    groups = group_by_seed(runs)
    groups.sort(key=lambda g: _sort_key(g[0], fields))
    for group in groups:
        cells = []
        for m in metrics:
            values = [run.final[m] for run in group if m in run.final]
            if not values:
                cells.append("-")
                continue
            mean, low, high = spread(values)
            if len(values) == 1:
                cells.append(format_value(mean))
            else:
                cells.append(f"{format_value(mean)} [{format_value(low)}, {format_value(high)}]")
        steps = sorted({run.final.get("step") for run in group})
        row = [
            format_value(group[0].passes),
            *(format_value(group[0].config.get(f)) for f in fields),
            str(len(group)),
            "/".join(map(format_value, steps)),
            *cells,
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _test_passes(record: dict):
    """The N a --mode=eval record was evaluated at (None if it overrides anything else)."""
    if set(record.get("eval_overrides", {})) - {PASSES}:
        return None
    return record.get("config", {}).get("sleep", {}).get("passes")


def test_time_points(runs: list[Run], metric: str) -> dict:
    """{(trained N, other varying fields...): {test N: [metric of each seed's latest
    checkpoint record]}} from the runs' --mode=eval records that override at most
    sleep.passes; {} when no run was evaluated at an N other than its own."""
    fields = [f for f in varying_fields(runs) if f != SEED]
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
            points.setdefault(key, {}).setdefault(n, []).append(_number(record[metric]))
    return points if other_n else {}


def test_time_table(runs: list[Run], metric: str = "eval/accuracy") -> str:
    """Markdown table: trained N (rows) x N at test time (columns), `metric` as mean [min,
    max] over seeds of the --mode=eval records; "" when there are none at another N."""
    points = test_time_points(runs, metric)
    if not points:
        return ""
    fields = [f for f in varying_fields(runs) if f != SEED]
    tests = sorted({n for cells in points.values() for n in cells})
    header = ["trained N", *map(_short, fields), *(f"test N = {n}" for n in tests)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in sorted(points, key=lambda k: [format_value(v) for v in k]):
        cells = []
        for n in tests:
            values = points[key].get(n, [])
            if not values:
                cells.append("-")
                continue
            mean, low, high = spread(values)
            text = format_value(mean)
            if len(values) > 1:
                text += f" [{format_value(low)}, {format_value(high)}] ({len(values)})"
            cells.append(f"**{text}**" if n == key[0] else text)
        lines.append("| " + " | ".join([*map(format_value, key), *cells]) + " |")
    return "\n".join(lines) + "\n"


def table(runs: list[Run]) -> str:
    """Markdown table of the final eval metrics, one row per run."""
    fields = varying_fields(runs)
    metrics = metric_names(runs)
    header = ["run", "N", *fields, "step", "tokens", *(m.removeprefix("eval/") for m in metrics)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in sorted(runs, key=lambda r: _sort_key(r, fields)):
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
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _sort_key(run: Run, fields: list[str]):
    def key(value):
        # Numbers before strings, numbers by value.
        if isinstance(value, int | float) and not isinstance(value, bool):
            return (0, value, "")
        return (1, 0, str(value))

    return [key(run.config.get(f)) for f in fields] + [key(run.passes), key(run.name)]


# ----------------------------------------------------------------------------- plots


@dataclasses.dataclass(frozen=True)
class Difficulty:
    """One line of the accuracy-vs-N plot / one panel of the curves: which runs, which key."""

    label: str  # "t=16", "k=8", "" (no difficulty)
    suffix: str  # metric key suffix: "@t=16" or ""
    field_value: tuple | None  # (field, value) the runs must have, or None for all runs


def difficulties(runs: list[Run], metric: str) -> list[Difficulty]:
    """The difficulties `metric` can be shown at: its per-difficulty keys (`eval/<metric>@k=8`)
    when any run logs them, else the values of the task's difficulty field when that differs
    between runs (Rule 110: task.steps), else one difficulty-free entry."""
    keys = {key for run in runs for record in run.evals for key in record}
    per_key = {}
    for key in keys:
        match = _DIFFICULTY_KEY.match(key)
        if match and match["metric"] == metric:
            suffix = f"@{match['name']}={match['value']}"
            per_key[suffix] = Difficulty(f"{match['name']}={match['value']}", suffix, None)
    if per_key:
        return [per_key[s] for s in sorted(per_key, key=_natural)]
    varying = set(varying_fields(runs))
    for task, (field, short) in DIFFICULTY_FIELDS.items():
        if field in varying and all(run.config.get("task.name") == task for run in runs):
            values = sorted({json.dumps(run.config.get(field)) for run in runs}, key=_natural)
            return [
                Difficulty(f"{short}={_plain(json.loads(v))}", "", (field, json.loads(v)))
                for v in values
            ]
    return [Difficulty("", "", None)]


def _plain(value) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _group_fields(runs: list[Run], difficulty_list: list[Difficulty]) -> list[str]:
    """Varying fields other than N, the seed and the difficulty field: they split lines
    further (runs that differ only in seed are averaged)."""
    used = {d.field_value[0] for d in difficulty_list if d.field_value} | {SEED}
    return [f for f in varying_fields(runs) if f not in used]


def _label(run: Run, group: list[str]) -> str:
    return ", ".join(f"{_short(f)}={_plain(run.config.get(f))}" for f in group)


def _runs_for(runs: list[Run], difficulty: Difficulty) -> list[Run]:
    if difficulty.field_value is None:
        return runs
    field, value = difficulty.field_value
    return [run for run in runs if run.config.get(field) == value]


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # Files only; no display needed.
    import matplotlib.pyplot as plt

    return plt


def _chance_for(runs: list[Run], metric: str, difficulty: Difficulty):
    """The chance level shared by all `runs` at `difficulty`, or None (unknown or differing)."""
    levels = {chance_level(run.config, metric, difficulty) for run in runs}
    return levels.pop() if len(levels) == 1 else None


def _draw_chance(ax, level, color="0.4", label="chance") -> None:
    if level is not None:
        ax.axhline(level, color=color, linestyle="--", linewidth=1, alpha=0.8, label=label)


def plot_vs_passes(runs: list[Run], path: Path) -> list[str]:
    """Final eval accuracy (and token accuracy) against N, one line per difficulty (and per
    combination of the other varying fields); the mean over seeds with a min-max error bar,
    and the difficulty's chance level dashed. Returns the metrics plotted."""
    metrics = [m for m in ("accuracy", "token_accuracy") if _has(runs, difficulties(runs, m), m)]
    if not metrics:
        return []
    plt = _plt()
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        found = difficulties(runs, metric)
        group = _group_fields(runs, found)
        color = 0
        for difficulty in found:
            lines: dict[str, dict] = {}
            for run in _runs_for(runs, difficulty):
                value = run.final.get(f"eval/{metric}{difficulty.suffix}")
                if value is None or run.passes is None:
                    continue
                lines.setdefault(_label(run, group), {}).setdefault(run.passes, []).append(value)
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
            level = _chance_for(_runs_for(runs, difficulty), metric, difficulty)
            chance_label = " ".join(p for p in ("chance", difficulty.label) if p)
            _draw_chance(ax, level, color=f"C{first % 10}", label=chance_label)
        ax.set_xlabel("sleep passes N")
        ax.set_ylabel(f"final eval {metric.replace('_', ' ')}")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return metrics


def plot_test_time(runs: list[Run], metric: str, path: Path) -> bool:
    """`metric` of the --mode=eval records against N at test time, one line per trained N
    (and other varying fields), mean over seeds with a min-max band, chance dashed. False
    (and no file) when no record is at another N."""
    points = test_time_points(runs, f"eval/{metric}")
    if not points:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    fields = [f for f in varying_fields(runs) if f != SEED]
    for i, key in enumerate(sorted(points, key=lambda k: [format_value(v) for v in k])):
        ns = sorted(points[key])
        stats = [spread(points[key][n]) for n in ns]
        label = ", ".join(
            [
                f"trained N = {key[0]}",
                *(f"{_short(f)} = {_plain(v)}" for f, v in zip(fields, key[1:], strict=True)),
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
    _draw_chance(ax, _chance_for(runs, metric, Difficulty("", "", None)))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sleep passes N at test time (star: the trained N)")
    ax.set_ylabel(f"eval {metric.replace('_', ' ')}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _has(runs, found, metric) -> bool:
    return any(f"eval/{metric}{d.suffix}" in run.final for run in runs for d in found)


def plot_curves(runs: list[Run], metric: str, path: Path) -> bool:
    """Eval `metric` against training tokens, one panel per difficulty, one line per N (and
    per combination of the other varying fields): the mean over seeds with a min-max band,
    and the chance level dashed. False (and no file) if no run logs it."""
    found = [d for d in difficulties(runs, metric) if _has(runs, [d], metric)]
    if not found:
        return False
    plt = _plt()
    group = _group_fields(runs, found)
    tokens = all(run.tokens_per_step is not None for run in runs)
    # One colour per line (N and group) across all panels.
    lines = sorted(
        {(run.passes, _label(run, group)) for run in runs}, key=lambda k: (k[1], k[0] or 0)
    )
    colors = {line: i for i, line in enumerate(lines)}
    cols = min(len(found), 3)
    rows = -(-len(found) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False, sharey=True)
    for ax, difficulty in zip(axes.flat, found, strict=False):
        selected = _runs_for(runs, difficulty)
        key = f"eval/{metric}{difficulty.suffix}"
        for line in lines:
            members = [r for r in selected if (r.passes, _label(r, group)) == line]
            by_step: dict[int, list] = {}
            for run in members:
                for record in run.evals:
                    if key in record:
                        x = record["step"] * run.tokens_per_step if tokens else record["step"]
                        by_step.setdefault(x, []).append(record[key])
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
        _draw_chance(ax, _chance_for(selected, metric, difficulty))
        ax.set_title(difficulty.label or metric.replace("_", " "))
        ax.set_xlabel("training tokens" if tokens else "step")
        ax.set_ylabel(f"eval {metric.replace('_', ' ')}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(found) :]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_by_difficulty(runs: list[Run], metric: str, path: Path) -> bool:
    """Eval `metric` against training tokens in one panel, one colour per difficulty (the
    paper's Fig. 2a: deeper t learns slower), one line style per N and other varying fields;
    mean over seeds, each difficulty's chance level dashed in its colour. False (and no
    file) unless there are at least two difficulties."""
    found = [d for d in difficulties(runs, metric) if _has(runs, [d], metric)]
    if len(found) < 2:
        return False
    plt = _plt()
    group = _group_fields(runs, found)
    tokens = all(run.tokens_per_step is not None for run in runs)
    lines = sorted(
        {(run.passes, _label(run, group)) for run in runs}, key=lambda k: (k[1], k[0] or 0)
    )
    styles = ["-", "--", ":", "-."]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, difficulty in enumerate(found):
        color = f"C{i % 10}"
        selected = _runs_for(runs, difficulty)
        key = f"eval/{metric}{difficulty.suffix}"
        for j, line in enumerate(lines):
            by_step: dict[int, list] = {}
            for run in selected:
                if (run.passes, _label(run, group)) != line:
                    continue
                for record in run.evals:
                    if key in record:
                        x = record["step"] * run.tokens_per_step if tokens else record["step"]
                        by_step.setdefault(x, []).append(record[key])
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
        level = _chance_for(selected, metric, difficulty)
        if level is not None:
            ax.axhline(level, color=color, linestyle=(0, (2, 3)), linewidth=1, alpha=0.7)
    ax.set_xlabel("training tokens" if tokens else "step")
    ax.set_ylabel(f"eval {metric.replace('_', ' ')} (dotted: chance)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_report(paths, out: str | Path) -> Path:
    """Writes OUT/report.md and the plots; returns the report's path.

    Raises ImportError (after writing the table) when matplotlib is missing.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [load_run(p) for p in find_runs(paths)]
    names = [run.name for run in runs]
    for run in runs:
        if names.count(run.name) > 1:  # Runs from several sweep roots: keep them apart.
            run.name = f"{run.workdir.parent.name}/{run.name}"
    empty = [run.name for run in runs if not run.evals]
    runs = [run for run in runs if run.evals]
    if not runs:
        raise ValueError("no run has an eval line in its metrics.jsonl yet")

    parts = ["# Report", ""]
    parts += [f"Runs: {len(runs)}. N = sleep.passes. Final eval metrics (last eval line)."]
    if empty:
        parts += ["", f"Left out (no eval line yet): {', '.join(empty)}."]
    parts += ["", table(runs)]
    if any(len(group) > 1 for group in group_by_seed(runs)):
        parts += [
            "Over seeds (runs equal but for `seed`): mean [min, max] of the final metrics.",
            "",
            seed_table(runs),
        ]
    chance = chance_table(runs)
    if chance:
        parts += [
            "Chance level (no learning; dashed in the plots): Rule 110 guesses each label "
            "position's majority bit (measured on the task generator), Depo guesses uniformly "
            "among the cycle's nodes; loss is the labels' entropy / E[log n].",
            "",
            chance,
        ]
    for metric in ("eval/accuracy", "eval/token_accuracy"):
        test_time = test_time_table(runs, metric)
        if test_time:
            parts += [
                f"Sleeping longer (or shorter) at test time: `{metric}` of the checkpoints "
                "evaluated with `--mode=eval --eval_overrides=sleep.passes`, by the N trained "
                "with (rows, bold: the same N) and the N evaluated at (columns); mean [min, max] "
                "(seeds) over seeds.",
                "",
                test_time,
            ]
    report = out / "report.md"
    report.write_text("\n".join(parts))  # The table even if the plots fail below.

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(
            f"plots need matplotlib: pip install 'sleep_lm[report]' (the table is in {report})"
        ) from None
    plots = []
    if plot_vs_passes(runs, out / "accuracy_vs_passes.png"):
        plots.append(("Final eval accuracy against N", "accuracy_vs_passes.png"))
    for metric in ("accuracy", "loss"):
        name = f"curves_{metric}.png"
        if plot_curves(runs, metric, out / name):
            plots.append((f"Eval {metric} against training tokens", name))
    if plot_by_difficulty(runs, "accuracy", out / "curves_accuracy_by_difficulty.png"):
        title = "Eval accuracy against training tokens, all difficulties"
        plots.append((title, "curves_accuracy_by_difficulty.png"))
    for metric in ("accuracy", "token_accuracy"):
        name = f"test_time_{metric}.png"
        if plot_test_time(runs, metric, out / name):
            plots.append((f"Eval {metric.replace('_', ' ')} against N at test time", name))
    parts += ["## Plots", ""]
    for title, name in plots:
        parts += [f"{title}:", "", f"![{title}]({name})", ""]
    report.write_text("\n".join(parts))
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sleep_lm.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "workdirs", nargs="+", metavar="WORKDIR", help="A run directory or a sweep root."
    )
    parser.add_argument("--out", required=True, help="Directory for report.md and the PNGs.")
    args = parser.parse_args(argv)
    try:
        report = write_report(args.workdirs, args.out)
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
