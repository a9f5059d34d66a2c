"""The paper's GSM-Infinite fine-tune presets (experiments/gsm_infinite.py: ouro, ouro_sliding,
jet, tiny, tiny_jet) and the tiny checkpoint writer (sleep_lm/pretrained/tiny.py)."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from sleep_lm import config as config_lib
from sleep_lm import run as run_lib
from sleep_lm.pretrained import load_hf, load_tokenizer, published, tiny
from sleep_lm.train import loop

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG = REPO / "experiments" / "gsm_infinite.py"

# config.json of the released models, to validate the full-size presets against the real
# architectures without their weights.
OURO_1_4B = published.OURO_1_4B
JET_NEMOTRON_2B = published.JET_NEMOTRON_2B


def preset(name):
    return config_lib.load_config(f"{CONFIG}:{name}")


def sweep(name):
    return config_lib.load_config_module(CONFIG).get_sweep(name)


def architecture_only(path, hf_config):
    """A checkpoint directory with the real config.json and the tiny tokenizer, no weights:
    enough for config validation and build_components (neither reads weights)."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps(hf_config))
    tiny.train_tokenizer().save(str(path / "tokenizer.json"))
    return path


def test_full_presets_hold_the_papers_settings():
    for name, family, window, eviction, loop_blocks, passes in (
        ("ouro", "ouro", 2000, "hard", "all", [1, 2, 4]),
        ("ouro_sliding", "ouro", 512, "sliding", "all", [1, 2, 4]),
        ("jet", "qwen2", 2000, "hard", "7:21", [1, 2, 4, 6]),
    ):
        config = preset(name)
        assert config.model.family == family
        assert (config.sleep.window, config.sleep.eviction) == (window, eviction)
        assert config.sleep.loop_blocks == loop_blocks
        assert config.sleep.remat == "pass"
        assert config.train.batch_size == 256
        assert (config.train.optimizer, config.train.lr, config.train.adam_lr) == (
            "muon",
            1e-3,
            5e-5,
        )
        assert (config.mesh.data, config.mesh.fsdp, config.mesh.tensor) == (1, -1, 1)
        assert (config.task.min_op, config.task.max_op, config.train.eval_size) == (2, 8, 200)
        assert [p["sleep.passes"] for p in sweep(name)] == passes
    assert preset("ouro").model.hf_options.jet_positions == 6
    with pytest.raises(ValueError, match="choose one preset, got ouro, jet"):
        preset("ouro,jet")


@pytest.mark.parametrize("name", ["ouro", "ouro_sliding", "jet", "tiny", "tiny_jet"])
def test_missing_checkpoint_is_a_one_line_error(name):
    config = preset(name)
    for from_hf, message in (
        ("", f"config.model.family={config.model.family!r} takes its architecture from a"),
        ("/nonexistent/model", "config.init.from_hf='/nonexistent/model': checkpoint directory"),
    ):
        config.init.from_hf = from_hf
        with pytest.raises(config_lib.ConfigError) as e:
            config_lib.validate(config)
        assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_task_tokenizer_follows_init_from_hf(tmp_path):
    config = preset("tiny")
    assert config.task.tokenizer == ""
    config.init.from_hf = str(tmp_path)
    assert config.task.tokenizer == str(tmp_path / "tokenizer.json")
    assert json.loads(config.to_json_best_effort())["task"]["tokenizer"] == config.task.tokenizer
    config.task.tokenizer = "/elsewhere/tokenizer.json"  # an explicit value wins
    config.init.from_hf = str(tmp_path / "other")
    assert config.task.tokenizer == "/elsewhere/tokenizer.json"


@pytest.mark.parametrize(
    "name, hf_config, loop_blocks",
    [
        ("ouro", OURO_1_4B, (None, None)),
        ("ouro_sliding", OURO_1_4B, (None, None)),
        ("jet", JET_NEMOTRON_2B, (7, 21)),
    ],
)
def test_full_presets_validate_on_the_real_architectures(tmp_path, name, hf_config, loop_blocks):
    """With the released models' config.json (no weights), each full-size preset validates
    on 8 devices and builds its model: Ouro gets its 6 Jet layers at 2, 6, ..., 22 and sleeps
    through all 4 loops (96 + 24 units); Jet-Nemotron loops its blocks 7..20."""
    config = preset(name)
    config.init.from_hf = str(architecture_only(tmp_path / "model", hf_config))
    task = config_lib.validate(config, num_devices=8)
    assert task.seq_len == 3300 and task.vocab_size == tiny.TOKENIZER_VOCAB
    components = run_lib.build_components(config)
    model = components.model
    assert components.spec.loop_blocks == loop_blocks
    assert components.spec.schedule[-1] and not any(components.spec.schedule[:-1])
    if name.startswith("ouro"):
        assert model.config.jet_positions == (2, 6, 10, 14, 18, 22)
        assert len(model.config.layers) == 4 * (24 + 6)
        assert model.config.dtype == "bfloat16"
    else:
        assert len(model.config.layers) == 28 and model.config.layers[14] == "attn"
    with pytest.raises(config_lib.ConfigError, match="multiple of the batch axes"):
        config_lib.validate(config, num_devices=16)  # eval_size 200 over 16 devices


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_tiny_writer_writes_a_loadable_checkpoint(tmp_path, family):
    assert tiny.main([f"--family={family}", f"--out={tmp_path / 'a'}"]) == 0
    model, params = load_hf(tmp_path / "a", window=32)
    tok = load_tokenizer(tmp_path / "a")
    assert model.vocab_size == tok.get_vocab_size() == tiny.TOKENIZER_VOCAB
    assert tok.token_to_id(tiny.END_TOKEN) == 0
    text = "What is the number of owls in Pine Ridge Zoo?\nAnswer: 17"
    ids = tok.encode(text).ids
    assert tok.decode(ids) == text and len(ids) < len(text) / 2  # merges were learned
    assert tok.to_str() == tiny.train_tokenizer().to_str()  # deterministic
    with pytest.raises(SystemExit):
        tiny.main(["--family=llama", f"--out={tmp_path / 'c'}"])

    # Its preset validates and builds on it: Ouro with one Jet layer inserted at load
    # (sleeping through both loops), or Jet-Nemotron-style looping its middle 2 of 4 blocks.
    config = preset("tiny" if family == "ouro" else "tiny_jet")
    config.init.from_hf = str(tmp_path / "a")
    config_lib.validate(config, num_devices=1)
    components = run_lib.build_components(config)
    if family == "ouro":
        assert components.model.config.jet_positions == (1,)
        assert components.spec.loop_blocks == (None, None)
    else:
        assert components.spec.loop_blocks == (1, 3)
    assert components.spec.passes == 2 and components.spec.schedule == (False,) * 3 + (True,)


def run_main(*args):
    # -O0 LLVM codegen: compiles a few times faster; only finiteness is checked here.
    flags = os.environ.get("XLA_FLAGS", "")
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"{flags} --xla_backend_optimization_level=0".strip(),
    )
    return subprocess.run(
        [sys.executable, "-m", "sleep_lm.main", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_tiny_preset_trains_and_evaluates(tmp_path):
    """The documented tiny path: write the checkpoint, train 2 steps of the `tiny` preset
    (Ouro + an inserted Jet layer, N = 2) through `python -m sleep_lm.main`, then
    --mode=eval; every logged loss and eval metric is finite."""
    checkpoint = tmp_path / "tiny_ouro"
    tiny.main(["--family=ouro", f"--out={checkpoint}"])
    workdir = tmp_path / "run"
    args = [
        "--config=experiments/gsm_infinite.py:tiny,steps=2",
        f"--config.init.from_hf={checkpoint}",
        f"--workdir={workdir}",
        "--config.train.batch_size=2",
        "--config.train.eval_size=2",
    ]
    result = run_main(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((workdir / "config.json").read_text())
    assert config["task"]["tokenizer"] == str(checkpoint / "tokenizer.json")
    assert config["sleep"]["passes"] == 2
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"]) for r in train)
    final = [r for r in records if "eval/loss@op=3" in r][-1]
    assert final["step"] == 2

    result = run_main(*args, "--mode=eval")
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.loads((workdir / "eval" / "step2.json").read_text())
    assert evaluated["step"] == 2
    # The record names the evaluated architecture (the checkpoint's), not hybrid fields.
    model = evaluated["config"]["model"]
    hf_config = json.loads((checkpoint / "config.json").read_text())
    assert model["family"] == "ouro" and model["from_hf"] == str(checkpoint)
    assert model["architecture"]["total_ut_steps"] == hf_config["total_ut_steps"]
    assert "layers" not in model
    for op in (2, 3):
        for key in (f"eval/loss@op={op}", f"eval/accuracy@op={op}"):
            assert np.isfinite(final[key]) and np.isfinite(evaluated[key]), key
        # task.eval_generate (on in the presets): --mode=eval also generated and parsed, on
        # the 2 problems of each op (a random model: 0 or 1/2 or 1, any of them).
        assert evaluated[f"eval/parsed_accuracy@op={op}"] in (0.0, 0.5, 1.0)
        assert f"eval/parsed_accuracy@op={op}" not in final  # training's eval never generates


def test_pretrained_family_warm_starts_from_a_run(tmp_path):
    """The paper's "hard eviction first, then sliding" for a pretrained family: the sliding
    run names the checkpoint directory (its architecture and tokenizer) and the hard run
    (`init.from_checkpoint`), and starts from the run's parameters, not the checkpoint's."""
    import jax
    import jax.numpy as jnp

    from sleep_lm import parallel
    from sleep_lm.train.checkpoint import Checkpointer

    def target_of(config):  # the parameters' ShapeDtypeStructs on the run's mesh
        abstract = jax.eval_shape(
            run_lib.build_components(config).init_params, jax.random.PRNGKey(0)
        )
        layout = loop.Layout.from_config(config)
        shardings = parallel.tree_shardings(abstract, layout.mesh, layout.rules)
        return jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
        )

    checkpoint = tmp_path / "tiny_ouro"
    tiny.main(["--family=ouro", f"--out={checkpoint}"])
    hard = preset("tiny")
    hard.init.from_hf = str(checkpoint)
    config_lib.validate(hard)
    weights = run_lib.build_components(hard).load_weights  # init.from_hf's loader
    loaded = loop.initial_params(hard, target_of(hard), weights)
    # What the hard run "trained" to: the loaded weights, moved.
    trained = jax.tree.map(lambda x: x + 0.5, loaded)
    saver = Checkpointer(tmp_path / "hard" / "checkpoints", keep=1)
    saver.save(7, {"params": trained})
    saver.close()

    sliding = preset("tiny")
    sliding.sleep.eviction = "sliding"
    sliding.init.from_hf = str(checkpoint)
    sliding.init.from_checkpoint = str(tmp_path / "hard")
    config_lib.validate(sliding)  # both sources: allowed for a pretrained family
    start = loop.initial_params(sliding, target_of(sliding))
    for got, want, hf in zip(
        jax.tree.leaves(start), jax.tree.leaves(trained), jax.tree.leaves(loaded), strict=True
    ):
        np.testing.assert_array_equal(got, want)
        assert not jnp.array_equal(got, hf)
    # The hybrid still takes one source.
    hybrid = config_lib.load_config(f"{REPO / 'experiments' / 'rule110.py'}:smoke")
    hybrid.init.from_hf, hybrid.init.from_checkpoint = str(checkpoint), str(tmp_path / "hard")
    with pytest.raises(config_lib.ConfigError, match="^config.init.from_checkpoint and config"):
        config_lib.validate(hybrid)
