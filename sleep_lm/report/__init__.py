"""Tables and plots from training workdirs (the paper's Fig. 2 and 3 style).

    python -m sleep_lm.report WORKDIR... --out OUT

Rooms: ``runs`` (reading workdirs; fields, seeds, difficulties), ``chance`` (chance levels),
``tables`` (Markdown tables), ``plots`` (PNGs of the training evals), ``test_time`` (checkpoints
evaluated at another N), ``write`` (report.md and the command line; its docstring says what
is written).
"""

from sleep_lm.report.chance import chance_level, depo_chance, rule110_chance
from sleep_lm.report.plots import plot_by_difficulty, plot_curves, plot_vs_passes
from sleep_lm.report.runs import (
    DIFFICULTY_FIELDS,
    PASSES,
    SEED,
    Difficulty,
    Run,
    difficulties,
    find_runs,
    flatten,
    group_by_seed,
    group_fields,
    load_run,
    metric_names,
    spread,
    varying_fields,
)
from sleep_lm.report.tables import chance_table, format_tokens, format_value, seed_table, table
from sleep_lm.report.test_time import plot_test_time, test_time_points, test_time_table
from sleep_lm.report.write import main, write_report

__all__ = [
    "DIFFICULTY_FIELDS",
    "PASSES",
    "SEED",
    "Difficulty",
    "Run",
    "chance_level",
    "chance_table",
    "depo_chance",
    "difficulties",
    "find_runs",
    "flatten",
    "format_tokens",
    "format_value",
    "group_by_seed",
    "group_fields",
    "load_run",
    "main",
    "metric_names",
    "plot_by_difficulty",
    "plot_curves",
    "plot_test_time",
    "plot_vs_passes",
    "rule110_chance",
    "seed_table",
    "spread",
    "table",
    "test_time_points",
    "test_time_table",
    "varying_fields",
    "write_report",
]
