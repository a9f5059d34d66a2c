"""Runs read from workdirs (config.json, metrics.jsonl, eval records) and how they group:
varying fields, seeds, difficulties."""

import dataclasses
import json
import math
import re
from pathlib import Path

from sleep_lm.config.resume import with_absent
from sleep_lm.dotted import flatten

# Task fields that set an example's difficulty (lines/panels of the plots), by task name.
DIFFICULTY_FIELDS = {"rule110": ("task.steps", "t"), "depo": ("task.hops", "k")}
PASSES = "sleep.passes"
SEED = "seed"
METRIC_ORDER = ("accuracy", "token_accuracy", "loss")
_DIFFICULTY_KEY = re.compile(r"^eval/(?P<metric>[^@]+)@(?P<name>[A-Za-z_]+)=(?P<value>.+)$")


@dataclasses.dataclass
class Run:
    """One workdir: its flattened config and its eval records."""

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
    # A field added after the run was made takes the value its absence means.
    config = with_absent(flatten(json.loads((workdir / "config.json").read_text())))
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


def point_fields(runs: list[Run]) -> list[str]:
    """Varying fields that tell one point from another (all but `seed`: seeds are averaged)."""
    return [f for f in varying_fields(runs) if f != SEED]


def natural_key(text: str):
    # "accuracy@k=16" after "accuracy@k=2".
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]


def metric_names(runs: list[Run]) -> list[str]:
    """All eval metric keys of the runs' final records: accuracy, token accuracy, loss first,
    each followed by its per-difficulty versions in natural order."""
    keys = {key for run in runs for key in run.final if key.startswith("eval/")}

    def order(key):
        base = key.removeprefix("eval/").split("@", 1)[0]
        rank = METRIC_ORDER.index(base) if base in METRIC_ORDER else len(METRIC_ORDER)
        return (rank, base, "@" in key, natural_key(key))

    return sorted(keys, key=order)


def short_name(field: str) -> str:
    return field.removeprefix("task.").removeprefix("sleep.").removeprefix("train.")


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


def sort_key(run: Run, fields: list[str]):
    def key(value):
        # Numbers before strings, numbers by value.
        if isinstance(value, int | float) and not isinstance(value, bool):
            return (0, value, "")
        return (1, 0, str(value))

    return [key(run.config.get(f)) for f in fields] + [key(run.passes), key(run.name)]


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
        return [per_key[s] for s in sorted(per_key, key=natural_key)]
    varying = set(varying_fields(runs))
    for task, (field, short) in DIFFICULTY_FIELDS.items():
        if field in varying and all(run.config.get("task.name") == task for run in runs):
            values = sorted({json.dumps(run.config.get(field)) for run in runs}, key=natural_key)
            return [
                Difficulty(f"{short}={plain(json.loads(v))}", "", (field, json.loads(v)))
                for v in values
            ]
    return [Difficulty("", "", None)]


def plain(value) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def group_fields(runs: list[Run], difficulty_list: list[Difficulty]) -> list[str]:
    """Varying fields other than N, the seed and the difficulty field: they split lines
    further (runs that differ only in seed are averaged)."""
    used = {d.field_value[0] for d in difficulty_list if d.field_value} | {SEED}
    return [f for f in varying_fields(runs) if f not in used]


def line_label(run: Run, group: list[str]) -> str:
    return ", ".join(f"{short_name(f)}={plain(run.config.get(f))}" for f in group)


def runs_at(runs: list[Run], difficulty: Difficulty) -> list[Run]:
    if difficulty.field_value is None:
        return runs
    field, value = difficulty.field_value
    return [run for run in runs if run.config.get(field) == value]
