"""Training from a Hugging Face checkpoint through the command line: config.model.family
and config.init.from_hf (validation errors, and 2 real steps from the qwen2 fixture)."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from sleep_lm import config as config_lib
from sleep_lm import run as run_lib
from sleep_lm.pretrained import load_hf
from sleep_lm.train import loop

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "qwen2_tiny"
# Rule 110 (token ids 0..2) on the fixture's vocabulary of 96: ids index it as they are.
ARGS = [
    "--config=experiments/rule110.py:smoke",
    "--config.model.family=qwen2",
    f"--config.init.from_hf={FIXTURE}",
    "--config.train.steps=2",
    "--config.train.batch_size=4",
    "--config.train.eval_size=4",
    "--config.train.log_every=1",
    "--config.train.eval_every=100",
    "--config.train.checkpoint_every=100",
    "--config.train.warmup_steps=0",
    "--config.train.schedule=constant",
]


def config_with(**fields):
    config = config_lib.load_config(f"{REPO / 'experiments/rule110.py'}:smoke")
    config.model.family = "qwen2"
    config.init.from_hf = str(FIXTURE)
    for name, value in fields.items():
        section, key = name.split("__")
        config[section][key] = value
    return config


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"model__family": "llama"}, "config.model.family must be one of 'hybrid', 'ouro', "),
        ({"init__from_hf": ""}, "config.model.family='qwen2' takes its architecture from a"),
        ({"model__family": "hybrid"}, "config.init.from_hf needs config.model.family set to"),
        ({"model__family": "ouro"}, "holds a 'qwen2' model, but config.model.family='ouro'"),
        ({"init__from_hf": "/nonexistent/dir"}, "config.init.from_hf='/nonexistent/dir': check"),
        ({"model__hf_options": {"bogus": 1}}, "load_hf option 'bogus' not known; allowed"),
        ({"model__hf_options": "x"}, "config.model.hf_options must be a dict (got 'x')"),
        ({"sleep__loop_blocks": "2:"}, "selects no block of the 2 layers"),  # not 4
        # A pretrained family's compute settings, checked by model/config.py's ComputeConfig.
        ({"model__remat_policy": "dots"}, "config.model.remat_policy: allowed ('none', 'full', "),
        ({"model__gdn_impl": "associative"}, "config.model.gdn_impl: allowed ('chunked', 'rec"),
    ],
)
def test_config_errors(fields, message):
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(config_with(**fields))
    text = str(e.value).replace("checkpoint directory", "check")
    assert message in text and "\n" not in text, text


def test_train_two_steps_from_the_fixture(tmp_path):
    """`python -m sleep_lm.main` trains 2 steps from the fixture: the first step's logged
    loss is the loss of the loaded weights on that batch (so training started from them)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-m", "sleep_lm.main", *ARGS, f"--workdir={tmp_path}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in train)

    config = config_with()
    for arg in ARGS[3:]:
        name, value = arg.removeprefix("--config.").split("=")
        section, key = name.split(".")
        config[section][key] = type(config[section][key])(value)
    components = run_lib.build_components(config)
    _, params = load_hf(FIXTURE, window=config.sleep.window)
    batch = loop.batch_for_step(components.task, config.seed, 0, config.train.batch_size)
    loss, _ = jax.jit(components.loss_fn)(params, batch)
    np.testing.assert_allclose(train[0]["loss"], float(loss), rtol=1e-5)
