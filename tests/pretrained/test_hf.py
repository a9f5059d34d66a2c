"""Hugging Face checkpoint directories: golden logits against transformers, shards, bfloat16,
export round trip, the one-line errors, the tokenizer, loading onto an 8-device mesh.

Fixtures: tests/fixtures/qwen2_tiny (full attention, untied) and qwen2_swa_tiny (a
sliding-window layer of 4 keys, tied head), written once by
scripts/fixtures/make_qwen2_fixture.py with transformers 5.24.0's Qwen2ForCausalLM. No torch
or transformers here.
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from sleep_lm.pretrained import hf, load_hf, load_tokenizer, save_hf
from tests.tolerance import assert_relative

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures"
TINY = FIXTURES / "qwen2_tiny"
SWA = FIXTURES / "qwen2_swa_tiny"
REPO = pathlib.Path(__file__).parent.parent.parent
WF = "model.safetensors"


def flat(params) -> dict:
    return {
        hf.hf_name(hf._path_keys(p)): np.asarray(x)
        for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
    }


def assert_same(a, b):
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    for name in fa:
        np.testing.assert_array_equal(fa[name], fb[name], err_msg=name)


@pytest.fixture(scope="module")
def tiny():
    return load_hf(TINY, window=16)


def copy_config(src: pathlib.Path, dst: pathlib.Path, **changes) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    config = json.loads((src / "config.json").read_text())
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config))


# ------------------------------------------------------------------------ golden logits


@pytest.mark.parametrize("path", [TINY, SWA], ids=["full_untied", "swa_tied"])
def test_logits_match_transformers(path):
    model, params = load_hf(path, window=16)
    expected = np.load(path / "expected.npz")
    tokens = jnp.asarray(expected["tokens"])
    batch, time = tokens.shape
    logits, _ = jax.jit(model.apply)(
        {"params": params}, tokens, jnp.arange(time), model.init_state(batch)
    )
    ref = expected["logits"]
    assert_relative(logits, ref, 1e-4, "logits vs transformers")
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    if path == SWA:
        assert model.config.layers == ("swa", "attn") and model.config.sliding_window == 4
        assert model.config.tie_embeddings and "lm_head" not in params


# ------------------------------------------------------------- shards, bf16, round trip


def test_two_shards_load_identical_params(tiny, tmp_path):
    _, params = tiny
    tensors = load_file(TINY / "model.safetensors")
    names = sorted(tensors)
    half = {n: i % 2 for i, n in enumerate(names)}
    files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for shard, file in enumerate(files):
        save_file({n: tensors[n] for n in names if half[n] == shard}, tmp_path / file)
    index = {"metadata": {}, "weight_map": {n: files[half[n]] for n in names}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    copy_config(TINY, tmp_path)
    _, sharded = load_hf(tmp_path, window=16)
    assert_same(params, sharded)


def test_bfloat16_file_loads_as_float32(tiny, tmp_path):
    model, params = tiny
    save_hf(model, params, tmp_path, dtype="bfloat16")
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    _, loaded = load_hf(tmp_path, window=16)
    expected = jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), params)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(loaded))
    assert_same(expected, loaded)


def test_load_save_load_is_exact(tiny, tmp_path):
    model, params = tiny
    save_hf(model, params, tmp_path / "one")
    model2, params2 = load_hf(tmp_path / "one", window=16)
    # The same architecture; config.json's other fields (token ids, ...) carried over.
    assert dataclasses.replace(model2.config, hf_extra="") == dataclasses.replace(
        model.config, hf_extra=""
    )
    written = json.loads((tmp_path / "one" / "config.json").read_text())
    original_config = json.loads((TINY / "config.json").read_text())
    for key in ("bos_token_id", "eos_token_id", "max_position_embeddings", "architectures"):
        assert written[key] == original_config[key], key
    assert_same(params, params2)
    # The exported tensors are the checkpoint's, bit for bit, under the same names.
    original, exported = load_file(TINY / "model.safetensors"), load_file(tmp_path / "one" / WF)
    assert original.keys() == exported.keys()
    for name in original:
        np.testing.assert_array_equal(original[name], exported[name], err_msg=name)
    # Sharded export (index + shards) loads to the same parameters too.
    save_hf(model, params, tmp_path / "sharded", shard_bytes=20_000)
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert_same(params, load_hf(tmp_path / "sharded", window=16)[1])


def test_tokenizer(tmp_path):
    tok = load_tokenizer(TINY)
    assert tok.encode("w0 w1 w91").ids == [4, 5, 95]
    assert tok.decode([4, 5]) == "w0 w1"
    with pytest.raises(ValueError, match="has no tokenizer.json"):
        load_tokenizer(tmp_path)


# ------------------------------------------------------------------------------ errors


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(ValueError, match=r"checkpoint directory .*nope.* does not exist"):
        load_hf(tmp_path / "nope")
    with pytest.raises(ValueError, match="has no config.json"):
        load_hf(tmp_path)
    copy_config(TINY, tmp_path)
    with pytest.raises(ValueError, match="has neither model.safetensors nor"):
        load_hf(tmp_path)
    index = {"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="lists shard 'model-00001-of-00002.safetensors'"):
        load_hf(tmp_path)


def test_unsupported_model_type(tmp_path):
    copy_config(TINY, tmp_path, model_type="llama")
    with pytest.raises(ValueError) as e:
        load_hf(tmp_path)
    message = str(e.value)
    assert "'llama'" in message and "\n" not in message
    for supported in ("qwen2", "jet_nemotron", "ouro"):
        assert supported in message


def tensors_with(tmp_path, change):
    copy_config(TINY, tmp_path)
    tensors = load_file(TINY / WF)
    change(tensors)
    save_file(tensors, tmp_path / WF)


def test_missing_tensor(tmp_path):
    tensors_with(tmp_path, lambda t: t.pop("model.layers.1.self_attn.k_proj.bias"))
    with pytest.raises(ValueError, match="missing tensor 'model.layers.1.self_attn.k_proj.bias'"):
        load_hf(tmp_path)


def test_unexpected_tensor(tmp_path):
    tensors_with(tmp_path, lambda t: t.update({"model.layers.1.extra": np.zeros(3, np.float32)}))
    with pytest.raises(ValueError, match="unexpected tensor 'model.layers.1.extra'"):
        load_hf(tmp_path)


def test_shape_mismatch(tmp_path):
    name = "model.layers.0.mlp.up_proj.weight"
    tensors_with(tmp_path, lambda t: t.update({name: np.zeros((65, 32), np.float32)}))
    with pytest.raises(ValueError) as e:
        load_hf(tmp_path)
    assert str(e.value) == (
        f"tensor {name!r} has shape [65, 32] in the checkpoint, the model expects [64, 32]"
    )


def test_tied_checkpoint_may_hold_lm_head(tmp_path):
    """Some tied checkpoints also store lm_head.weight: ignored, not an error."""
    copy_config(SWA, tmp_path)
    tensors = load_file(SWA / WF)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    save_file(tensors, tmp_path / WF)
    _, params = load_hf(tmp_path, window=16)
    assert "lm_head" not in params


def test_bad_options(tmp_path):
    with pytest.raises(ValueError, match="load_hf option 'widht' not known"):
        load_hf(TINY, widht=3)
    with pytest.raises(ValueError, match="window: allowed a positive int, got 0"):
        load_hf(TINY, window=0)
    copy_config(TINY, tmp_path, rope_parameters={"rope_type": "yarn", "rope_theta": 1.0})
    with pytest.raises(ValueError, match="rope type 'yarn' is not supported"):
        load_hf(tmp_path)


# --------------------------------------------------------------------- 8-device mesh

_MESH_SCRIPT = r"""
import jax, jax.numpy as jnp, numpy as np
from sleep_lm import parallel
from sleep_lm.pretrained import load_hf
assert jax.device_count() == 8
mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
_, host = load_hf(PATH, window=16)
model, sharded = load_hf(PATH, window=16, mesh=mesh)
flat_h = jax.tree_util.tree_leaves_with_path(host)
flat_s = dict(jax.tree_util.tree_leaves_with_path(sharded))
split = 0
for path, x in flat_h:
    y = flat_s[path]
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert y.sharding.mesh.shape == mesh.shape
    shard = y.addressable_shards[0].data.shape
    split += shard != x.shape
gate = sharded["model"]["layers_0"]["mlp"]["gate_proj"]["kernel"]  # [32, 64]: fsdp x tensor
assert gate.addressable_shards[0].data.shape == (16, 32), gate.addressable_shards[0].data.shape
bias = sharded["model"]["layers_0"]["self_attn"]["q_proj"]["bias"]  # heads over tensor
assert bias.addressable_shards[0].data.shape == (16,)
tokens = jnp.asarray(np.load(PATH + "/expected.npz")["tokens"])
run = jax.jit(model.apply)
a, _ = run({"params": host}, tokens, jnp.arange(12), model.init_state(2))
b, _ = run({"params": sharded}, tokens, jnp.arange(12), model.init_state(2))
np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
print("OK", split)
"""


def test_load_onto_eight_device_mesh():
    """One subprocess with 8 fake CPU devices: every parameter placed by the layout table
    (gate_proj split 2 x 2, q bias over tensor), values equal to a host load, same logits."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    script = _MESH_SCRIPT.replace("PATH", repr(str(TINY)))
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    split = int(result.stdout.split("OK")[-1])
    assert split > 10, result.stdout  # most weights are really split


def test_fixture_size():
    for path in (TINY, SWA):
        total = sum(f.stat().st_size for f in path.iterdir())
        assert total < 1_000_000, (path, total)


def test_jet_nemotron_layout_round_trip(tmp_path):
    """A qwen2 model with jet / swa layers is exported as a jet_nemotron directory whose
    tensors carry Jet-Nemotron's names and torch shapes, and loads back exactly."""
    from sleep_lm.model.qwen2 import Qwen2Config, Qwen2LM

    cfg = Qwen2Config(
        layers=("jet", "swa"),
        sliding_window=3,
        tie_embeddings=True,
        jet_heads=2,
        jet_key_head_dim=4,
        jet_value_head_dim=8,
        jet_generator_reduction=4,
    )
    model = Qwen2LM(cfg, window=8)
    params = model.init_params(jax.random.key(1))
    save_hf(model, params, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "jet_nemotron" and config["layer_types"] == ["jet", "swa"]
    assert config["efficient_attention_config"]["swa"] == {"window_size": 3}
    jet = config["efficient_attention_config"]["jet"]
    assert int(jet["head_dim"] * jet["expand_v"]) == 8 and jet["num_heads"] == 2
    shapes = {name: tuple(t.shape) for name, t in load_file(tmp_path / WF).items()}
    prefix = "model.layers.0.self_attn."
    expected = {  # torch Linear weights are [out, in]; width 32, key dim 8, value dim 16
        "q_proj.weight": (8, 32),
        "k_proj.weight": (8, 32),
        "v_proj.weight": (16, 32),
        "a_proj.weight": (2, 32),
        "b_proj.weight": (2, 32),
        "g_proj.weight": (16, 32),
        "o_proj.weight": (32, 16),
        "A_log": (2,),
        "dt_bias": (2,),
        "dynamic_conv1d.kernel_generator.w1.weight": (4, 32),
        "dynamic_conv1d.kernel_generator.w2.weight": (64, 4),
        "dynamic_conv1d.kernel_generator.w2.bias": (64,),
        "o_norm.weight": (8,),
    }
    assert {n[len(prefix) :]: s for n, s in shapes.items() if n.startswith(prefix)} == expected
    assert shapes["model.layers.1.self_attn.q_proj.bias"] == (32,)
    assert "lm_head.weight" not in shapes
    loaded_model, loaded = load_hf(tmp_path, window=8)
    assert dataclasses.replace(loaded_model.config, hf_extra="") == cfg
    assert_same(params, loaded)
