"""sleep_lm.sweep: point names, --print_only, running points in order, skipping finished ones,
carrying on past a failed point. Points run `tests/sweep_fake_main.py` (--main_module), a
stand-in for sleep_lm.main that writes the same files in half a second."""

import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from ml_collections import config_dict

from sleep_lm import sweep

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

TINY_CONFIG = """
from ml_collections import config_dict


def get_config(arg=None):
    config = config_dict.ConfigDict()
    config.seed = 0
    config.task = config_dict.ConfigDict({"name": "rule110", "steps": 1})
    config.sleep = config_dict.ConfigDict({"passes": 1, "window": 24})
    config.train = config_dict.ConfigDict({"steps": 4, "batch_size": 2, "eval_every": 2})
    return config


def get_sweep(arg=None):
    if arg == "grid":
        return [{"sleep.passes": n, "task.steps": t} for t in (8, 16) for n in (1, 2, 3, 4)]
    if arg == "typo":
        return [{"sleep.pases": 2}]
    if arg == "wrong_type":
        return [{"sleep.passes": "two"}]
    return [{"sleep.passes": n} for n in (1, 2)]
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "tiny_config.py"
    path.write_text(TINY_CONFIG)
    return path


def run_sweep(*args, fail_passes=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(REPO), env.get("PYTHONPATH", "")])
    env.pop("FAKE_MAIN_FAIL_PASSES", None)
    if fail_passes is not None:
        env["FAKE_MAIN_FAIL_PASSES"] = str(fail_passes)
    return subprocess.run(
        [sys.executable, "-m", "sleep_lm.sweep", "--main_module=sweep_fake_main", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )


def invocations(workdir: Path) -> int:
    path = workdir / "invocations"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_point_names():
    assert sweep.point_names([{"sleep.passes": 2, "task.steps": 8}]) == ["passes2_steps8"]
    # Two fields ending in "steps": both keep their dotted names.
    assert sweep.point_names([{"task.steps": 8, "train.steps": 100}]) == [
        "task.steps8_train.steps100"
    ]
    # Values that are not file-name safe; a point without overrides.
    assert sweep.point_names([{"model.layers": "attn,gdn", "train.lr": 2e-3}, {}]) == [
        "layersattn-gdn_lr0.002",
        "default",
    ]
    with pytest.raises(sweep.SweepError, match="same directory name 'passes1'"):
        sweep.point_names([{"sleep.passes": 1}, {"sleep.passes": 1}])


def test_format_value_parses_back_through_config_flags():
    assert [sweep.format_value(v) for v in (True, False, 3, 0.002, "attn,gdn", (1, 2))] == [
        "true",
        "false",
        "3",
        "0.002",
        "attn,gdn",
        "(1, 2)",
    ]


def test_resolve_points_applies_overrides_and_rejects_conflicts():
    base = config_dict.ConfigDict({"sleep": {"passes": 1}, "task": {"steps": 1}})
    base.lock()
    points = sweep.resolve_points(base, [{"sleep.passes": 3}], {"task.steps": 5})
    assert points[0].config.sleep.passes == 3
    assert base.sleep.passes == 1  # The base config is not changed.
    with pytest.raises(sweep.SweepError, match="set both by the sweep"):
        sweep.resolve_points(base, [{"task.steps": 2}], {"task.steps": 5})
    with pytest.raises(sweep.SweepError, match="point 0"):
        sweep.resolve_points(base, [{"sleep.pases": 2}], {})


def test_print_only(config_file, tmp_path):
    root = tmp_path / "root"
    result = run_sweep(
        f"--config={config_file}:grid", f"--workdir={root}", "--print_only", "--config.seed=7"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 8
    expected = [(n, t) for t in (8, 16) for n in (1, 2, 3, 4)]
    for line, (n, t) in zip(lines, expected, strict=True):
        argv = shlex.split(line)
        assert argv[:3] == ["python", "-m", "sweep_fake_main"]
        assert argv[3:] == [
            f"--config={config_file}:grid",
            f"--workdir={root}/passes{n}_steps{t}",
            "--config.seed=7",
            f"--config.sleep.passes={n}",
            f"--config.task.steps={t}",
        ]
    assert not root.exists()  # Nothing ran.


def test_sweep_runs_points_and_skips_finished(config_file, tmp_path):
    root = tmp_path / "root"
    args = (f"--config={config_file}", f"--workdir={root}")
    result = run_sweep(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    for n in (1, 2):
        workdir = root / f"passes{n}"
        assert json.loads((workdir / "config.json").read_text())["sleep"]["passes"] == n
        assert invocations(workdir) == 1
    assert "sweep: 2 ran, 0 skipped" in result.stdout

    # Both finished: nothing runs again.
    result = run_sweep(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("finished already, skipping") == 2
    assert [invocations(root / f"passes{n}") for n in (1, 2)] == [1, 1]

    # A run cut short (no eval line at the last step) resumes; the other stays skipped.
    metrics = root / "passes2" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(lines[:-1]) + "\n")
    result = run_sweep(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [invocations(root / f"passes{n}") for n in (1, 2)] == [1, 2]

    # Killed after its last eval line but before the final checkpoint was committed (orbax's
    # temporary name): not finished, it runs again; the other stays skipped.
    final = root / "passes1" / "checkpoints" / "4"
    final.rename(final.with_name("4.orbax-checkpoint-tmp-1700000000"))
    result = run_sweep(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [invocations(root / f"passes{n}") for n in (1, 2)] == [2, 2]

    # A different config (more steps) is not the finished run: both run again.
    result = run_sweep(*args, "--config.train.steps=6")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [invocations(root / f"passes{n}") for n in (1, 2)] == [3, 3]
    assert "--config.train.steps=6 --config.sleep.passes=1" in result.stdout


def _finished_run(workdir: Path, config, steps=(2, 4), checkpoints=True, drop=()):
    """A workdir as the trainer leaves it: config.json (without the fields in `drop`), eval
    lines at `steps`, and (if `checkpoints`) committed checkpoints of those steps."""
    workdir.mkdir(parents=True)
    on_disk = json.loads(config.to_json_best_effort())
    for field in drop:
        section, name = field.split(".")
        del on_disk[section][name]
    (workdir / "config.json").write_text(json.dumps(on_disk))
    lines = [json.dumps({"step": s, "eval/loss": 1.0}) for s in steps]
    (workdir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if checkpoints:
        for s in steps:
            (workdir / "checkpoints" / str(s)).mkdir(parents=True)


def test_is_finished_reads_absent_fields_and_metrics_without_checkpoints(tmp_path):
    from sleep_lm.config import ABSENT_MEANS

    config = config_dict.ConfigDict(
        {"seed": 0, "train": {"steps": 4, "eval_seed": 0, "momentum_dtype": "float32"}}
    )
    assert ABSENT_MEANS["train.momentum_dtype"] == "float32"
    assert ABSENT_MEANS["train.eval_seed"] != 0

    # Committed results on a fresh clone: metrics and config, no checkpoints at all.
    _finished_run(tmp_path / "kept", config, checkpoints=False)
    assert sweep.is_finished(tmp_path / "kept", config)
    # ... but not when the final eval line is missing.
    _finished_run(tmp_path / "short", config, steps=(2,), checkpoints=False)
    assert not sweep.is_finished(tmp_path / "short", config)
    # A run killed before its final save: earlier checkpoints, final one absent.
    _finished_run(tmp_path / "killed", config)
    (tmp_path / "killed" / "checkpoints" / "4").rmdir()
    assert not sweep.is_finished(tmp_path / "killed", config)

    # A run made before train.momentum_dtype existed: its absence means float32, this config's
    # value, so the run is this point's.
    _finished_run(tmp_path / "old", config, drop=("train.momentum_dtype",))
    assert sweep.is_finished(tmp_path / "old", config)
    # A run made before train.eval_seed existed was scored on another held-out set.
    _finished_run(tmp_path / "old_eval", config, drop=("train.eval_seed",))
    assert not sweep.is_finished(tmp_path / "old_eval", config)
    config.train.eval_seed = ABSENT_MEANS["train.eval_seed"]
    assert sweep.is_finished(tmp_path / "old_eval", config)


def test_failed_point_does_not_stop_the_sweep(config_file, tmp_path):
    root = tmp_path / "root"
    args = (f"--config={config_file}", f"--workdir={root}")
    result = run_sweep(*args, fail_passes=1)
    assert result.returncode == 1
    assert "failed: passes1 (exit status 1)" in result.stdout
    assert invocations(root / "passes2") == 1  # Ran after passes1 failed.

    # Rerun: only the failed point runs.
    result = run_sweep(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [invocations(root / f"passes{n}") for n in (1, 2)] == [2, 1]


@pytest.mark.parametrize(
    "arg, extra, message",
    [
        ("typo", (), "sweep point 0 (pases2)"),
        ("wrong_type", (), "sweep point 0 (passestwo)"),
        ("", ("--config.sleep.passes=3",), "config.sleep.passes is set both"),
    ],
)
def test_bad_sweeps_fail_before_running(config_file, tmp_path, arg, extra, message):
    root = tmp_path / "root"
    result = run_sweep(f"--config={config_file}:{arg}", f"--workdir={root}", *extra)
    assert result.returncode == 2
    assert message in result.stderr
    assert not root.exists()


def test_config_without_get_sweep(tmp_path):
    path = tmp_path / "plain.py"
    path.write_text(TINY_CONFIG.split("def get_sweep")[0])
    result = run_sweep(f"--config={path}", f"--workdir={tmp_path / 'root'}")
    assert result.returncode == 2
    assert "defines no get_sweep()" in result.stderr


def test_default_main_validates_every_point_first(tmp_path):
    # With sleep_lm.main as the runner, each point's config goes through config.validate
    # before anything starts (here: a window longer than the Rule 110 sequence).
    path = tmp_path / "r110_sweep.py"
    path.write_text(
        (REPO / "experiments" / "rule110.py").read_text()
        + textwrap.dedent(
            """

            def get_sweep(arg=None):
                return [{"sleep.passes": 1}, {"sleep.window": 200}]
            """
        )
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sleep_lm.sweep",
            f"--config={path}:smoke",
            f"--workdir={tmp_path / 'root'}",
            "--print_only",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 2
    assert "sweep point window200: config.sleep.window must be <=" in result.stderr
