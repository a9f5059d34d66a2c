"""A damaged latest checkpoint costs the steps since the previous good one, nothing else.

Resume, `evaluate_checkpoint` (what --mode=eval runs), `load_run`'s params-only restore and
warm starts skip a checkpoint that cannot be restored with one warning line and use the newest
good one; a resume sets the damaged step aside (checkpoints.unreadable/) and trains it again.
Three kinds of damage: garbage in the data files, an empty step folder, a truncated file.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import chex
import jax
import pytest
from absl import logging as absl_logging
from train_fakes import REPO, fake_components, fake_init, tiny_config

from sleep_lm import run as run_lib
from sleep_lm.train import loop
from sleep_lm.train.checkpoint import CheckpointError, restore_params
from sleep_lm.train.metrics import read_metrics


def _data_files(step_dir: Path) -> list[Path]:
    """The array data files of a step (orbax's OCDBT 'd/' folders), largest first."""
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, f"no data files under {step_dir}"
    return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


def corrupt(step_dir: Path) -> None:
    for path in _data_files(step_dir):
        path.write_bytes(b"\x00garbage" * (path.stat().st_size // 8 + 1))


def empty(step_dir: Path) -> None:
    shutil.rmtree(step_dir)
    step_dir.mkdir()


def truncate(step_dir: Path) -> None:
    # Every data file cut in half (which of them orbax reads depends on its version).
    for path in _data_files(step_dir):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# A failed read leaves an orbax/asyncio callback behind ("Event loop is closed"), reported by
# pytest as an unraisable exception; it is harmless.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

DAMAGE = {"corrupt": corrupt, "empty": empty, "truncate": truncate}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """8 uninterrupted steps, checkpoints at 4, 6, 8 (keep 3): the run to compare with."""
    workdir = tmp_path_factory.mktemp("reference")
    loop.train(tiny_config(steps=8, keep_checkpoints=3), workdir, fake_components())
    return workdir


def _copy(reference: Path, tmp_path: Path, damage: str) -> Path:
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    DAMAGE[damage](workdir / "checkpoints" / "8")
    return workdir


@pytest.fixture
def warnings(monkeypatch):
    """The warning lines logged through absl (the fallback's)."""
    lines = []
    original = absl_logging.warning

    def record(msg, *args, **kwargs):
        lines.append(msg % args if args else msg)
        return original(msg, *args, **kwargs)

    monkeypatch.setattr(absl_logging, "warning", record)
    return lines


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_resume_falls_back_to_the_previous_good_checkpoint(reference, tmp_path, damage, warnings):
    workdir = _copy(reference, tmp_path, damage)
    started = []
    config = tiny_config(steps=8, keep_checkpoints=3)
    loop.train(config, workdir, fake_components(), on_start=started.append)
    assert started == [6]  # resumed from step 6, the newest good checkpoint
    fallback = [w for w in warnings if "cannot be restored" in w]
    assert len(fallback) == 1 and fallback[0].startswith("checkpoint step 8 in ")
    assert "\n" not in fallback[0]
    # The damaged step is kept aside, and step 8 is trained and saved again.
    assert (workdir / "checkpoints.unreadable" / "8").is_dir()
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [4, 6, 8]
    # Steps 7 and 8 are recomputed to the same numbers (the data order is (seed, step)).
    records = read_metrics(workdir / "metrics.jsonl")
    original = read_metrics(reference / "metrics.jsonl")
    assert [r["step"] for r in records] == [r["step"] for r in original]
    for mine, want in zip(records, original, strict=True):
        for key in ("loss", "eval/loss"):
            if key in want:
                assert mine[key] == pytest.approx(want[key], rel=1e-6), (key, mine["step"])
    target = jax.eval_shape(fake_init, jax.random.PRNGKey(0))
    chex.assert_trees_all_close(
        restore_params(workdir / "checkpoints", target, 8)[0],
        restore_params(reference / "checkpoints", target, 8)[0],
        rtol=1e-6,
    )


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_params_restore_and_eval_fall_back(reference, tmp_path, damage, warnings):
    workdir = _copy(reference, tmp_path, damage)
    target = jax.eval_shape(fake_init, jax.random.PRNGKey(0))
    params, step = restore_params(workdir / "checkpoints", target)
    assert step == 6
    good, _ = restore_params(reference / "checkpoints", target, 6)
    chex.assert_trees_all_equal(params, good)
    step, _ = run_lib.evaluate_checkpoint(tiny_config(steps=8), workdir, fake_components())
    assert step == 6
    # Warm start (init.from_checkpoint=WORKDIR: its latest good checkpoint).
    config = tiny_config()
    config.init.from_checkpoint = str(workdir)
    init = loop.initial_params(config, target)
    chex.assert_trees_all_equal(init, good)
    assert all("checkpoint step 8 in " in w for w in warnings if "cannot be restored" in w)
    # An explicitly named damaged step is an error, not a silent fallback.
    with pytest.raises(Exception, match=r"."):
        restore_params(workdir / "checkpoints", target, 8)
    # Read-only: nothing was moved.
    assert (workdir / "checkpoints" / "8").is_dir()


def test_no_checkpoint_restores_is_one_line(reference, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    for step in (4, 6, 8):
        empty(workdir / "checkpoints" / str(step))
    target = jax.eval_shape(fake_init, jax.random.PRNGKey(0))
    with pytest.raises(CheckpointError, match=r"^no checkpoint in .* can be restored \(3 tried"):
        restore_params(workdir / "checkpoints", target)
    with pytest.raises(CheckpointError) as info:
        loop.train(tiny_config(steps=10), workdir, fake_components())
    assert "\n" not in str(info.value)


def test_cli_resume_failure_leaves_config_json_alone(tmp_path):
    """`python -m sleep_lm.main` on a workdir none of whose checkpoints restores: one line,
    exit 2, and config.json keeps the run's train.steps (it is written after the restore)."""
    workdir = tmp_path / "run"
    base = [
        sys.executable,
        "-m",
        "sleep_lm.main",
        "--config=experiments/rule110.py:smoke",
        f"--workdir={workdir}",
        "--config.model.width=8",
        "--config.model.layers=attn",
        "--config.train.batch_size=4",
        "--config.train.eval_size=4",
        "--config.train.eval_every=2",
        "--config.train.checkpoint_every=2",
        "--config.train.log_every=1",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")

    def run(*flags):
        return subprocess.run(
            [*base, *flags], cwd=REPO, capture_output=True, text=True, timeout=600, env=env
        )

    first = run("--config.train.steps=2")
    assert first.returncode == 0, first.stderr[-3000:]
    empty(workdir / "checkpoints" / "2")
    before = (workdir / "config.json").read_text()
    second = run("--config.train.steps=4")
    assert second.returncode == 2, second.stderr[-3000:]
    assert second.stderr.strip().splitlines()[-1].startswith("error: no checkpoint in ")
    assert (workdir / "config.json").read_text() == before
    assert json.loads(before)["train"]["steps"] == 2
