"""sleep_lm.report: the final-metrics table, the difficulty breakdown, and the PNG plots, on
workdirs written by a two-point sweep (tests/sweep_fake_main.py) and by hand."""

import json
import math
import sys

import pytest
from sweep_fake_main import fake_accuracy
from test_sweep import TINY_CONFIG, run_sweep

from sleep_lm import report
from sleep_lm.report import plots
from sleep_lm.report import runs as runs_lib

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(workdir, config: dict, records: list[dict]):
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return workdir


def rule110_config(passes, steps, seed=0, batch_size=8):
    return {
        "seed": seed,
        "task": {"name": "rule110", "steps": steps},
        "sleep": {"passes": passes, "window": 24},
        "train": {"steps": 20, "batch_size": batch_size},
    }


def table_rows(text: str) -> list[list[str]]:
    """Cells of the first markdown table in `text`."""
    lines = []
    for line in text.splitlines():
        if line.startswith("|"):
            lines.append(line)
        elif lines:
            break
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_two_point_sweep_report(tmp_path):
    config = tmp_path / "tiny_config.py"
    config.write_text(TINY_CONFIG)
    root = tmp_path / "root"
    result = run_sweep(f"--config={config}", f"--workdir={root}")
    assert result.returncode == 0, result.stdout + result.stderr

    out = tmp_path / "report"
    assert report.main([str(root), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    rows = table_rows(text)
    header = rows[0]
    assert header[:4] == ["run", "N", "step", "tokens"]
    assert header[4:] == ["accuracy", "accuracy@t=2", "token_accuracy", "loss"]
    body = {row[0]: dict(zip(header, row, strict=True)) for row in rows[2:]}
    assert sorted(body) == ["passes1", "passes2"]
    for n in (1, 2):
        row = body[f"passes{n}"]
        accuracy = fake_accuracy(n, 1, 4, 4)  # task.steps = 1, final step 4 of 4
        assert row["N"] == str(n)
        assert row["step"] == "4"
        assert row["tokens"] == "800"  # 4 steps * batch 2 * Rule 110's 100 tokens
        assert row["accuracy"] == f"{accuracy:.4f}"
        assert row["accuracy@t=2"] == f"{accuracy / 2:.4f}"
        assert row["loss"] == f"{1 - accuracy:.4f}"
    for name in ("accuracy_vs_passes.png", "curves_accuracy.png", "curves_loss.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, name
        assert f"]({name})" in text


def test_varying_fields_and_difficulty_from_task_steps(tmp_path):
    runs = []
    for steps in (8, 16):
        for passes in (1, 2):
            records = [
                {"step": 10, "loss": 1.0},
                {"step": 10, "eval/accuracy": 0.1 * passes, "eval/loss": 2.0},
                {"step": 20, "eval/accuracy": 0.2 * passes / steps, "eval/loss": 1.0},
            ]
            runs.append(
                write_run(tmp_path / f"p{passes}_t{steps}", rule110_config(passes, steps), records)
            )
    loaded = [report.load_run(p) for p in runs]
    assert report.varying_fields(loaded) == ["task.steps"]  # sleep.passes is always "N"
    found = report.difficulties(loaded, "accuracy")
    assert [(d.label, d.field_value) for d in found] == [
        ("t=8", ("task.steps", 8)),
        ("t=16", ("task.steps", 16)),
    ]
    assert loaded[0].tokens_per_step == 8 * 100
    assert [r["step"] for r in loaded[0].evals] == [10, 20]

    rows = table_rows(report.table(loaded))
    assert rows[0] == ["run", "N", "task.steps", "step", "tokens", "accuracy", "loss"]
    # Sorted by the varying fields, then N; tokens = 20 steps * 8 * 100.
    assert [row[:5] for row in rows[2:]] == [
        ["p1_t8", "1", "8", "20", "16k"],
        ["p2_t8", "2", "8", "20", "16k"],
        ["p1_t16", "1", "16", "20", "16k"],
        ["p2_t16", "2", "16", "20", "16k"],
    ]
    assert rows[3][5] == f"{0.4 / 8:.4f}"

    out = tmp_path / "out"
    report.write_report([str(p) for p in runs], out)
    for name in ("accuracy_vs_passes.png", "curves_accuracy.png", "curves_loss.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)


def test_per_difficulty_metrics_and_non_finite_values(tmp_path):
    # Depo-style per-k metrics; one run diverged (the trainer writes "nan" as a string).
    runs = []
    for passes in (1, 4):
        config = {
            "task": {"name": "depo"},
            "sleep": {"passes": passes},
            "train": {"batch_size": 4},
        }
        record = {"step": 5, "eval/accuracy": 0.5, "eval/loss": "nan" if passes == 4 else 1.5}
        for k in (16, 2, 8):
            record[f"eval/accuracy@k={k}"] = 1.0 / k
            record[f"eval/loss@k={k}"] = float(k)
        runs.append(write_run(tmp_path / f"n{passes}", config, [record]))
    loaded = [report.load_run(p) for p in runs]
    assert loaded[0].tokens_per_step == 4 * 360  # Depo's default T = 360
    assert math.isnan(loaded[1].final["eval/loss"])
    assert [d.label for d in report.difficulties(loaded, "accuracy")] == ["k=2", "k=8", "k=16"]
    assert [d.suffix for d in report.difficulties(loaded, "loss")] == ["@k=2", "@k=8", "@k=16"]
    assert [d.label for d in report.difficulties(loaded, "token_accuracy")] == [""]
    header = table_rows(report.table(loaded))[0]
    assert header[4:] == [
        "accuracy",
        "accuracy@k=2",
        "accuracy@k=8",
        "accuracy@k=16",
        "loss",
        "loss@k=2",
        "loss@k=8",
        "loss@k=16",
    ]
    assert table_rows(report.table(loaded))[3][8] == "nan"

    out = tmp_path / "out"
    report.write_report([str(p) for p in runs], out)
    assert (out / "curves_loss.png").read_bytes().startswith(PNG_MAGIC)


def test_runs_without_eval_lines_are_left_out(tmp_path):
    good = write_run(tmp_path / "good", rule110_config(1, 1), [{"step": 2, "eval/accuracy": 0.5}])
    early = write_run(tmp_path / "early", rule110_config(2, 1), [{"step": 1, "loss": 1.0}])
    fresh = write_run(tmp_path / "fresh", rule110_config(3, 1), [])
    (fresh / "metrics.jsonl").unlink()  # Started, nothing logged yet.
    path = report.write_report([str(good), str(early), str(fresh)], tmp_path / "out")
    text = path.read_text()
    assert "Left out (no eval line yet): early, fresh." in text
    assert [row[0] for row in table_rows(text)[2:]] == ["good"]
    with pytest.raises(ValueError, match="no run has an eval line"):
        report.write_report([str(early)], tmp_path / "out2")
    assert report.main([str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 1


def test_without_matplotlib_the_table_is_still_written(tmp_path, monkeypatch, capsys):
    run = write_run(tmp_path / "run", rule110_config(1, 1), [{"step": 2, "eval/accuracy": 0.5}])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert report.main([str(run), "--out", str(tmp_path / "out")]) == 1
    assert "pip install 'sleep_lm[report]'" in capsys.readouterr().err
    assert table_rows((tmp_path / "out" / "report.md").read_text())[2][0] == "run"
    assert not list((tmp_path / "out").glob("*.png"))


def test_chance_levels_from_the_task_generators():
    # t = 0: labels are uniform random bits; t = 1: P(1) = 5/8 (five of Rule 110's eight
    # neighbourhoods give 1), so the majority guess is 1 and gets 5/8 per label.
    zero, one = report.rule110_chance(0), report.rule110_chance(1)
    assert zero["token_accuracy"] == pytest.approx(0.5, abs=0.01)
    assert zero["accuracy"] == pytest.approx(1 / 16, abs=0.01)
    assert zero["loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert one["token_accuracy"] == pytest.approx(5 / 8, abs=0.01)
    assert one["accuracy"] == pytest.approx((5 / 8) ** 4, abs=0.01)
    depo = report.depo_chance(min_nodes=3, max_nodes=4, num_queries=2)
    assert depo["token_accuracy"] == pytest.approx((1 / 3 + 1 / 4) / 2)
    assert depo["accuracy"] == pytest.approx((1 / 9 + 1 / 16) / 2)
    assert depo["loss"] == pytest.approx((math.log(3) + math.log(4)) / 2)
    # Per difficulty: the @t= suffix, else the swept field, else the run's own depth.
    config = report.flatten(rule110_config(1, 1))
    at3 = report.Difficulty("t=3", "@t=3", None)
    assert report.chance_level(config, "accuracy", at3) == report.rule110_chance(3)["accuracy"]
    assert report.chance_level(config, "loss") == one["loss"]
    assert report.chance_level({"task.name": "other"}, "accuracy") is None


def test_seeds_are_aggregated_and_chance_is_drawn(tmp_path, monkeypatch):
    # Three seeds at N = 1 and 2, Rule 110 t = 1 and 2.
    final = {(1, 1): [0.2, 0.3, 0.4], (2, 1): [0.9, 1.0, 0.8], (1, 2): [0.1, 0.1, 0.1]}
    final[(2, 2)] = [0.5, 0.7, 0.6]
    for (passes, steps), values in final.items():
        for seed, value in enumerate(values):
            records = [
                {"step": 10, "eval/accuracy": value / 2, "eval/loss": 1.0},
                {"step": 20, "eval/accuracy": value, "eval/loss": 0.5},
            ]
            name = f"passes{passes}_steps{steps}_seed{seed}"
            write_run(tmp_path / "root" / name, rule110_config(passes, steps, seed), records)
    drawn = []
    real_draw = plots.draw_chance
    monkeypatch.setattr(
        plots, "draw_chance", lambda ax, level, **kw: drawn.append(level) or real_draw(ax, level)
    )
    out = tmp_path / "out"
    text = report.write_report([str(tmp_path / "root")], out).read_text()

    seed_part = text.split("Over seeds")[1].split("Chance level")[0]
    rows = table_rows(seed_part)
    assert rows[0] == ["N", "task.steps", "seeds", "step", "accuracy", "loss"]
    assert rows[2] == ["1", "1", "3", "20", "0.3000 [0.2000, 0.4000]", "0.5000 [0.5000, 0.5000]"]
    assert rows[3][:5] == ["2", "1", "3", "20", "0.9000 [0.8000, 1.0000]"]
    assert rows[5][:5] == ["2", "2", "3", "20", "0.6000 [0.5000, 0.7000]"]

    chance_rows = table_rows(text.split("Chance level")[1].split("## Plots")[0])
    assert chance_rows[0] == ["difficulty", "accuracy", "token_accuracy", "loss"]
    assert [row[0] for row in chance_rows[2:]] == ["t=1", "t=2"]
    assert chance_rows[2][1] == f"{report.rule110_chance(1)['accuracy']:.4f}"
    # accuracy vs N (one chance line per t), then one per panel of each curves plot.
    t1, t2 = report.rule110_chance(1), report.rule110_chance(2)
    assert drawn == [t1["accuracy"], t2["accuracy"]] + [t1["accuracy"], t2["accuracy"]] + [
        t1["loss"],
        t2["loss"],
    ]
    names = ["accuracy_vs_passes.png", "curves_accuracy.png", "curves_loss.png"]
    for name in names + ["curves_accuracy_by_difficulty.png"]:
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
        assert f"]({name})" in text
    # Seed lines averaged: the per-run table keeps every run (seed column), the plots do not
    # split lines by seed.
    loaded = [report.load_run(p) for p in report.find_runs([tmp_path / "root"])]
    assert "seed" in report.varying_fields(loaded)
    assert report.group_fields(loaded, report.difficulties(loaded, "accuracy")) == []
    assert report.spread([1.0, math.nan, 3.0]) == (2.0, 1.0, 3.0)


def test_checkpoint_evals_at_other_n_make_a_trained_by_test_table(tmp_path):
    """--mode=eval records (WORKDIR/eval/*.json) at N = 1, 2, 4 for runs trained at N = 1, 2
    (two seeds each): a trained-N x test-N table (mean [min, max] over seeds) and a plot."""
    for passes in (1, 2):
        for seed in (0, 1):
            workdir = write_run(
                tmp_path / f"passes{passes}_seed{seed}",
                rule110_config(passes, 2, seed=seed),
                [{"step": 20, "eval/accuracy": 0.5}],
            )
            (workdir / "eval").mkdir()
            for test_n in (1, 2, 4):
                overrides = {}
                if test_n != passes:
                    overrides = {"sleep.passes": {"trained": passes, "evaluated": test_n}}
                record = {
                    "step": 20,
                    "eval/accuracy": 0.1 * passes + 0.01 * test_n + 0.001 * seed,
                    "config": {"sleep": {"passes": test_n}},
                    "eval_overrides": overrides,
                }
                (workdir / "eval" / f"step20-{test_n}.json").write_text(json.dumps(record))
            # A record overriding another field is not a point of the N x N table.
            other = {**record, "eval_overrides": {"task.steps": {"trained": 2, "evaluated": 3}}}
            other["eval/accuracy"] = 99.0
            (workdir / "eval" / "step20-task.steps=3.json").write_text(json.dumps(other))
    out = tmp_path / "report"
    assert report.main([str(tmp_path), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    section = text[text.index("Sleeping longer") :]
    intro = section.split("\n", 1)[0]
    assert intro.endswith("mean [min, max] over seeds, with the number of seeds in parentheses.")
    rows = table_rows(section)
    assert rows[0] == ["trained N", "test N = 1", "test N = 2", "test N = 4"]
    assert rows[2] == [
        "1",
        "**0.1105 [0.1100, 0.1110] (2)**",
        "0.1205 [0.1200, 0.1210] (2)",
        "0.1405 [0.1400, 0.1410] (2)",
    ]
    assert rows[3][0] == "2" and rows[3][2] == "**0.2205 [0.2200, 0.2210] (2)**"
    assert "99" not in section
    data = (out / "test_time_accuracy.png").read_bytes()
    assert data.startswith(PNG_MAGIC)
    # Without records at another N there is no such section.
    runs = [report.load_run(p) for p in report.find_runs([tmp_path])]
    for run in runs:
        run.checkpoint_evals = [r for r in run.checkpoint_evals if _own_n(r, run)]
    assert report.test_time_table(runs) == ""


def _own_n(record, run):
    return record["config"]["sleep"]["passes"] == run.passes and not record["eval_overrides"]


def test_fields_added_later_take_the_value_their_absence_means(tmp_path):
    """A run made before train.eval_seed / train.momentum_dtype existed pools with a newer
    seed that sets them to what their absence means; another value is a separate point."""
    records = [{"step": 20, "eval/accuracy": 0.5, "eval/loss": 0.5}]
    old = rule110_config(1, 2, seed=0)
    same = rule110_config(1, 2, seed=1)
    same["train"].update(eval_seed=-1, momentum_dtype="float32", weight_grads="float32")
    same["compile"] = {"target": ""}
    other = rule110_config(1, 2, seed=2)
    other["train"].update(eval_seed=0)
    for name, config in (("a", old), ("b", same), ("c", other)):
        write_run(tmp_path / "root" / name, config, records)
    runs = [runs_lib.load_run(p) for p in runs_lib.find_runs([tmp_path / "root"])]
    assert [len(g) for g in runs_lib.group_by_seed(runs)] == [2, 1]
    assert runs_lib.point_fields(runs) == ["train.eval_seed"]
