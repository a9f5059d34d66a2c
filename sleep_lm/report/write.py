r"""Writes report.md and the plots from training workdirs (the paper's Fig. 2 and 3 style).

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
import sys
from pathlib import Path

from sleep_lm.report.plots import plot_by_difficulty, plot_curves, plot_vs_passes
from sleep_lm.report.runs import find_runs, group_by_seed, load_run
from sleep_lm.report.tables import chance_table, seed_table, table
from sleep_lm.report.test_time import plot_test_time, test_time_table


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
                "with (rows, bold: the same N) and the N evaluated at (columns); each cell is the "
                "mean [min, max] over seeds, with the number of seeds in parentheses.",
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
