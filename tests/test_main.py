"""The command line: config validation (one line, exit 2, nothing compiled) and a tiny end-to-end
run with the real task, model and sleep code, including resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sleep_lm import config as config_lib
from sleep_lm.train.metrics import read_events

REPO = Path(__file__).resolve().parents[1]


def experiment_config(arg=None):
    return config_lib.load_config(f"{REPO / 'experiments/rule110.py'}:{arg or ''}")


def run_main(*args, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "sleep_lm.main", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_configs_are_valid():
    for arg in (None, "smoke", "smoke,steps=2,passes=3"):
        config_lib.validate(experiment_config(arg))
    for arg in ("", ":smoke", ":smoke,passes=2"):
        config = config_lib.load_config(f"{REPO / 'experiments/depo.py'}{arg}")
        config_lib.validate(config, num_devices=1)
        assert config.task.name == "depo"


def test_config_arguments():
    config = experiment_config("smoke,steps=2,passes=3")
    assert (config.task.steps, config.sleep.passes, config.model.width) == (2, 3, 64)
    paper = experiment_config()
    assert (paper.model.width, paper.train.batch_size, paper.sleep.window) == (256, 512, 24)
    assert (paper.train.lr, paper.train.adam_lr, paper.sleep.passes) == (2e-3, 5e-5, 1)
    with pytest.raises(ValueError, match="unknown config argument 'smoek'"):
        experiment_config("smoek")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("sleep.passes", 0, "config.sleep.passes must be >= 1 (got 0)"),
        ("sleep.window", 0, "config.sleep.window must be >= 1 (got 0)"),
        ("sleep.window", 101, "config.sleep.window must be <= the task's sequence length 100"),
        ("sleep.eviction", "soft", "config.sleep.eviction must be one of 'hard', 'sliding'"),
        ("sleep.remat", "all", "config.sleep.remat must be one of 'none', 'pass', 'window'"),
        ("sleep.loop_blocks", "1:1", "config.sleep.loop_blocks: '1:1' selects no block"),
        ("sleep.loop_blocks", "middle", "config.sleep.loop_blocks: allowed"),
        ("sleep.grad_passes", -1, "config.sleep.grad_passes must be >= 0 (got -1)"),
        ("sleep.grad_windows", -2, "config.sleep.grad_windows must be >= 0 (got -2)"),
        ("task.steps", -1, "config.task.steps must be >= 0 (got -1)"),
        ("task.name", "rule30", "config.task.name must be one of 'rule110', 'depo'"),
        ("model.layers", "attn,mamba", "config.model.layers: allowed layer types"),
        ("model.heads", 3, "config.model.heads: allowed a divisor of model.width=64, got 3"),
        ("model.rule", "hebb", "config.model.rule: allowed ('delta', 'linear'), got 'hebb'"),
        ("model.gdn_impl", "fast", "config.model.gdn_impl: allowed ("),
        ("model.positions", "alibi", "config.model.positions: allowed ("),
        ("model.gdn_precision", "fp32", "config.model.gdn_precision: allowed ('highest'"),
        ("model.gdn_impl", "associative", "config.model.gdn_impl"),  # delta needs chunked/rec.
        ("train.batch_size", 0, "config.train.batch_size must be >= 1 (got 0)"),
        ("train.steps", 0, "config.train.steps must be >= 1 (got 0)"),
        ("train.lr", 0.0, "config.train.lr must be > 0.0 (got 0.0)"),
        ("train.lr", float("inf"), "config.train.lr must be > 0.0 (got inf)"),
        ("train.grad_clip", float("nan"), "config.train.grad_clip must be >= 0.0 (got nan)"),
        ("train.optimizer", "sgd", "config.train.optimizer must be one of 'muon', 'adamw'"),
        ("train.schedule", "linear", "config.train.schedule must be one of"),
        ("train.adam_patterns", "embed,(", "config.train.adam_patterns: bad regex '('"),
        ("train.eval_every", 0, "config.train.eval_every must be >= 1 (got 0)"),
        ("train.microbatches", 0, "config.train.microbatches must be >= 1 (got 0)"),
        ("train.microbatches", 3, "config.train.microbatches=3 must divide train.batch_size=64"),
        ("train.momentum_dtype", "fp16", "config.train.momentum_dtype must be one of"),
        ("train.weight_grads", "bf16", "config.train.weight_grads must be one of"),
        ("train.xla_options", "slop=15", "config.train.xla_options: 'slop=15' is not xla_"),
        ("seed", -1, "config.seed must be >= 0 (got -1)"),
        ("train.eval_seed", -2, "config.train.eval_seed must be >= -1 (got -2)"),
    ],
)
def test_validation_names_the_field(field, value, message):
    config = experiment_config("smoke")
    section, _, name = field.rpartition(".")
    (config[section] if section else config)[name] = value
    with pytest.raises(config_lib.ConfigError) as info:
        config_lib.validate(config)
    text = str(info.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_init_takes_one_source():
    config = experiment_config("smoke")
    assert (config.init.from_checkpoint, config.init.from_hf) == ("", "")
    config.init.from_checkpoint = "/runs/a:200"
    config_lib.validate(config)
    assert config_lib.init_checkpoint("/runs/a:200") == ("/runs/a", 200)
    assert config_lib.init_checkpoint("/runs/a") == ("/runs/a", None)
    config.init.from_hf = "/models/qwen"
    with pytest.raises(config_lib.ConfigError, match="^config.init.from_checkpoint and config"):
        config_lib.validate(config)
    config.init = {"from_checkpoint": 3, "from_hf": ""}
    with pytest.raises(config_lib.ConfigError, match=r"^config.init.from_checkpoint must be a "):
        config_lib.validate(config)


def test_window_without_sleep_is_rejected_only_with_passes():
    config = experiment_config("smoke")
    config.sleep.window = 100  # one window, and it holds the labels: nothing to sleep on
    config_lib.validate(config)  # N = 1: full attention over the sequence, a valid baseline
    config.sleep.passes = 2
    with pytest.raises(config_lib.ConfigError, match="config.sleep.window=100 leaves no window"):
        config_lib.validate(config)


def test_cli_invalid_config_one_line_exit_2(tmp_path):
    result = run_main(
        "--config=experiments/rule110.py:smoke",
        f"--workdir={tmp_path / 'w'}",
        "--config.sleep.passes=0",
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: config.sleep.passes must be >= 1 (got 0)"]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "w").exists()  # nothing written before validation


def test_cli_unknown_field_one_line_exit_2(tmp_path):
    result = run_main(
        "--config=experiments/rule110.py:smoke",
        f"--workdir={tmp_path / 'w'}",
        "--config.sleep.pases=2",
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: config.sleep.pases is not a config field (did you mean config.sleep.passes?)"
    ]


# A tiny model through the real CLI: both layer kinds, few blocks (fast to compile).
TINY_MODEL = (
    "--config.model.width=16",
    "--config.model.heads=2",
    "--config.model.mlp_ratio=2",
    "--config.model.layers=attn,gdn",
    "--config.train.batch_size=4",
    "--config.train.eval_size=8",
    # A learning rate that does not depend on train.steps: tiny_run's resumed run (steps=3)
    # compiles its first run's train step (steps=2), which the suite's compilation cache
    # (tests/conftest.py) then serves instead of compiling it again.
    "--config.train.schedule=constant",
    "--config.train.warmup_steps=0",
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cli")
    flags = [
        "--config=experiments/rule110.py:smoke,steps=0,passes=2",
        f"--workdir={workdir}",
        *TINY_MODEL,
        "--config.train.log_every=1",
        "--config.train.eval_every=2",
        "--config.train.checkpoint_every=2",
    ]
    first = run_main(*flags, "--config.train.steps=2")
    second = run_main(*flags, "--config.train.steps=3")
    return workdir, first, second


def test_cli_trains_writes_outputs_and_resumes(tiny_run):
    workdir, first, second = tiny_run
    assert first.returncode == 0, first.stderr[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]
    config = json.loads((workdir / "config.json").read_text())
    assert config["sleep"]["passes"] == 2 and config["train"]["steps"] == 3
    assert "resumed from checkpoint step 2" in second.stderr
    assert "step 3/3" in second.stderr  # the progress line
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert [r["step"] for r in records if "eval/token_accuracy" in r] == [2, 3]
    for r in records:
        if "loss" in r:
            assert {"lr", "grad_norm", "tokens_per_s", "token_accuracy"} <= set(r)
        else:
            assert set(r) == {"step", "eval/loss", "eval/token_accuracy", "eval/accuracy"}
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [2, 3]
    # TensorBoard (train.tensorboard defaults to on): the same steps, none twice after resuming.
    events = read_events(workdir)
    assert [s for s, tag, _ in events if tag == "train/loss"] == [1, 2, 3]
    assert [s for s, tag, _ in events if tag == "eval/accuracy"] == [2, 3]


def test_cli_eval_mode(tiny_run):
    workdir, _, _ = tiny_run
    result = run_main(
        "--config=experiments/rule110.py:smoke,steps=0,passes=2",
        f"--workdir={workdir}",
        *TINY_MODEL,
        "--mode=eval",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["step"] == 3
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in metrics if r["step"] == 3 and "eval/loss" in r][0]
    assert record["eval/loss"] == pytest.approx(final["eval/loss"], rel=1e-5)
    assert json.loads((workdir / "eval" / "step3.json").read_text()) == record
    # What was evaluated: the resolved task, model and sleep sections, nothing overridden.
    trained = json.loads((workdir / "config.json").read_text())
    assert record["config"] == {k: trained[k] for k in ("task", "model", "sleep")}
    assert record["eval_overrides"] == {}


def test_cli_eval_refuses_a_changed_config(tiny_run):
    workdir, _, _ = tiny_run
    result = run_main(
        "--config=experiments/rule110.py:smoke,steps=0,passes=3",  # trained with passes=2
        f"--workdir={workdir}",
        *TINY_MODEL,
        "--mode=eval",
    )
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: config.sleep.passes=3 differs from the value the checkpoints")
    assert line.endswith("or name the field in --eval_overrides")


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--mode=eval", "--eval_overrides=sleep.pases"],
            "error: --eval_overrides: config.sleep.pases is not a config field "
            "(did you mean sleep.passes?)",
        ),
        (
            ["--mode=eval", "--eval_overrides=sleep"],
            "error: --eval_overrides: config.sleep is not a config field (a section",
        ),
        (["--eval_overrides=sleep.passes"], "error: --eval_overrides applies to --mode=eval only"),
    ],
)
def test_cli_eval_overrides_are_validated(tmp_path, flags, message):
    result = run_main(
        "--config=experiments/rule110.py:smoke", f"--workdir={tmp_path / 'w'}", *flags
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(message), line


def test_cli_eval_at_another_n_when_asked(tiny_run):
    workdir, _, _ = tiny_run
    result = run_main(
        "--config=experiments/rule110.py:smoke,steps=0,passes=3",
        f"--workdir={workdir}",
        *TINY_MODEL,
        "--mode=eval",
        "--eval_overrides=sleep.passes,task.steps",
        "--config.task.steps=1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((workdir / "eval" / "step3-sleep.passes=3-task.steps=1.json").read_text())
    assert record["step"] == 3
    assert record["config"]["sleep"]["passes"] == 3 and record["config"]["task"]["steps"] == 1
    assert record["eval_overrides"] == {
        "sleep.passes": {"trained": 2, "evaluated": 3},
        "task.steps": {"trained": 0, "evaluated": 1},
    }
    assert 0 <= record["eval/token_accuracy"] <= 1


def test_load_run_rebuilds_the_trained_run(tiny_run, tmp_path):
    import sleep_lm
    from sleep_lm import inference

    workdir, _, _ = tiny_run
    run = sleep_lm.load_run(workdir)
    assert run.step == 3 and run.spec.passes == 2 and run.spec.window == 24
    assert run.task.steps == 0 and run.config.model.width == 16
    assert sleep_lm.load_run(workdir, step=2).step == 2
    # The trainer's final eval, recomputed from what load_run returns.
    held_out = run.task.eval_batch(run.config.train.eval_size, run.config.seed)
    metrics = inference.evaluate(run.model, run.params, run.spec, held_out)
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if r["step"] == 3 and "eval/loss" in r][0]
    assert float(metrics["loss"]) == pytest.approx(final["eval/loss"], rel=1e-4)
    # One line for a directory that is not a run, or a run without checkpoints.
    with pytest.raises(FileNotFoundError, match=r"^no config.json in .*: not a sleep_lm run"):
        sleep_lm.load_run(tmp_path)
    (tmp_path / "config.json").write_text((workdir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match=r"^no checkpoint in .*checkpoints"):
        sleep_lm.load_run(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"^no checkpoint of step 1 in .*\(steps: 2, 3\)$"):
        sleep_lm.load_run(workdir, step=1)


def test_cli_warm_start_recipe_hard_then_sliding(tiny_run, tmp_path):
    # README "Warm starts": N = 2 trained with hard eviction (tiny_run), then continued in a
    # new run with sliding eviction from its step-2 parameters.
    workdir, _, _ = tiny_run
    sliding = tmp_path / "sliding"
    flags = [
        "--config=experiments/rule110.py:smoke,steps=0,passes=2",
        f"--workdir={sliding}",
        *TINY_MODEL,
        "--config.sleep.eviction=sliding",
        "--config.train.steps=1",
    ]
    result = run_main(*flags, f"--config.init.from_checkpoint={workdir}:2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"initialised from {workdir}, checkpoint step 2" in result.stderr
    assert sorted(int(p.name) for p in (sliding / "checkpoints").iterdir()) == [1]
    config = json.loads((sliding / "config.json").read_text())
    assert config["sleep"]["eviction"] == "sliding"
    assert config["init"]["from_checkpoint"] == f"{workdir}:2"


def test_cli_warm_start_from_another_model_is_one_line(tiny_run, tmp_path):
    workdir, _, _ = tiny_run
    result = run_main(
        "--config=experiments/rule110.py:smoke,steps=0,passes=2",
        f"--workdir={tmp_path / 'wide'}",
        *TINY_MODEL,
        "--config.model.width=32",
        f"--config.init.from_checkpoint={workdir}",
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: config.init.from_checkpoint='{workdir}': parameter ")
    assert "has shape (16," in lines[-1] and "this model needs (32," in lines[-1]
    assert "Traceback" not in result.stderr


def test_resume_conflict_names_the_changed_field():
    previous = json.loads(experiment_config("smoke").to_json_best_effort())
    config = experiment_config("smoke")
    config.train.steps = 10_000  # budget, cadence and mesh may change on resume
    config.train.eval_every = 7
    config.mesh.data = 2
    assert config_lib.resume_conflict(previous, config) is None
    config.sleep.passes = 3
    message = config_lib.resume_conflict(previous, config)
    assert message.startswith("config.sleep.passes=3 differs from the value the checkpoints")


def test_resume_ignores_model_fields_an_older_version_wrote(caplog):
    """Older pretrained presets wrote the hybrid's model.width, heads, ... (a pretrained
    family does not read them; today's presets have none) and no remat_policy or
    attention_impl: such a workdir resumes, with one warning naming the fields it ignores.
    A field the family reads, missing now, still conflicts."""
    config = config_lib.load_config(f"{REPO / 'experiments/gsm_infinite.py'}:tiny")
    previous = json.loads(config.to_json_best_effort())
    previous["model"].update(width=64, heads=4, layers="attn,gdn", positions="learned")
    config.model.remat_policy, config.model.attention_impl = "full", "auto"
    with caplog.at_level("WARNING"):
        assert config_lib.resume_conflict(previous, config) is None
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "model.heads, model.layers, model.positions, model.width" in warning
    del config.model["chunk_size"]  # a compute setting load_hf passes on
    message = config_lib.resume_conflict(previous, config)
    assert message.startswith("config.model.chunk_size='<unset>' differs")
    # The hybrid reads every ModelConfig field: only names it has not got are ignored.
    config = experiment_config("smoke")
    previous = json.loads(config.to_json_best_effort())
    previous["model"]["retired_knob"] = 1
    assert config_lib.resume_conflict(previous, config) is None
    del config.model["conv_size"]
    assert config_lib.resume_conflict(previous, config).startswith("config.model.conv_size=")


def test_held_out_set_is_fixed_across_seeds_and_old_runs_resume():
    """train.eval_seed: one held-out set for every `seed` by default; -1 (or a config.json
    written before the field) ties it to `seed`; such an old run still resumes."""
    from sleep_lm.tasks import get_task
    from sleep_lm.train import loop

    config = experiment_config("smoke")
    task = get_task(config.task)
    sets = {}
    for seed, eval_seed in [(0, 0), (3, 0), (3, -1), (3, 3)]:
        config.seed, config.train.eval_seed = seed, eval_seed
        sets[seed, eval_seed] = loop.eval_sets(task, 4, loop.eval_seed(config))[""]["inputs"]
    assert (sets[0, 0] == sets[3, 0]).all()
    assert (sets[3, -1] == sets[3, 3]).all() and (sets[3, -1] != sets[0, 0]).any()
    old = json.loads(experiment_config("smoke").to_json_best_effort())
    del old["train"]["eval_seed"]
    old["seed"] = 3
    config = experiment_config("smoke")
    config.seed = 3
    assert config_lib.resume_conflict(old, config) is None
    del config.train["eval_seed"]  # a config rebuilt from that config.json: seed's own set
    assert loop.eval_seed(config) == 3


def test_cli_refuses_to_resume_under_a_changed_config(tiny_run):
    workdir, _, _ = tiny_run
    before = (workdir / "config.json").read_text()
    result = run_main(
        "--config=experiments/rule110.py:smoke,steps=0,passes=3",  # trained with passes=2
        f"--workdir={workdir}",
        *TINY_MODEL,
        "--config.train.steps=4",
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: config.sleep.passes=3")
    assert (workdir / "config.json").read_text() == before
