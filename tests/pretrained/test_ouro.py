"""The ouro family: golden logits, decode == prefill, sleep / streaming equivalence, Jet-layer
insertion, export -> load, full-size parameter count. No torch: the fixture
(tests/fixtures/ouro, written once by scripts/fixtures/make_ouro_fixture.py) is numpy +
safetensors."""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sleep_lm.pretrained.ouro as ouro_family
from sleep_lm import inference, sleep
from sleep_lm.model.ouro import OuroConfig, OuroLM, even_jet_positions
from sleep_lm.pretrained import hf
from sleep_lm.pretrained.ouro import insert_jet_layers
from tests.tolerance import assert_relative

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "ouro"
TINY_JET = dict(jet_heads=2, jet_key_head_dim=8, jet_value_head_dim=16)


@pytest.fixture(scope="module")
def expected():
    return dict(np.load(FIXTURE / "expected.npz"))


@pytest.fixture(scope="module")
def loaded():
    return hf.load_hf(FIXTURE, window=16)


@functools.cache
def _apply(model):
    return jax.jit(model.apply)  # one compilation per model across the tests


def _forward(model, params, tokens):
    positions = jnp.arange(tokens.shape[1], dtype=jnp.int32)
    state = model.init_state(tokens.shape[0])
    return _apply(model)({"params": params}, tokens, positions, state)[0]


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


def test_loaded_logits_match_reference(loaded, expected):
    model, params = loaded
    assert model.config.total_ut_steps == 3 and model.config.rope_theta == 1000.0
    assert len(model.config.layers) == 6  # 3 loops x 2 layers
    tokens = jnp.asarray(expected["tokens"])
    assert_relative(_forward(model, params, tokens), expected["logits"], 1e-4, "logits")
    positions = jnp.arange(tokens.shape[1])
    loop_logits, pdf, _ = model.apply(
        {"params": params}, tokens, positions, model.init_state(2), method=model.exit_logits
    )
    assert_relative(loop_logits, expected["loop_logits"], 1e-4, "loop logits")
    np.testing.assert_allclose(pdf, expected["exit_pdf"], atol=1e-5)


def test_decode_equals_prefill(loaded, expected):
    model, params = loaded
    tokens = jnp.asarray(expected["tokens"])
    full = _forward(model, params, tokens)

    @jax.jit
    def decode(tokens):
        def step(state, x):
            token, pos = x
            logits, state = model.apply({"params": params}, token[:, None], pos[None], state)
            return state, logits[:, 0]

        xs = (tokens.T, jnp.arange(tokens.shape[1], dtype=jnp.int32))
        return jax.lax.scan(step, model.init_state(tokens.shape[0]), xs)[1]

    # float32 rounding (one token at a time vs the whole prefill): measured 0.3 of 1e-5.
    np.testing.assert_allclose(jnp.swapaxes(decode(tokens), 0, 1), full, atol=1e-4, rtol=1e-4)


def test_sleep_path_equals_forward_hard_n1(loaded, expected):
    """Hard eviction, N = 1, one window covering the sequence: Algorithm 1 = plain forward."""
    model, params = loaded
    tokens = jnp.asarray(expected["tokens"])
    spec = sleep.SleepSpec(passes=1, window=16, eviction="hard", schedule=(True,))
    logits, _ = jax.jit(sleep.sequence_logits, static_argnums=(0, 3))(model, params, tokens, spec)
    np.testing.assert_allclose(logits, _forward(model, params, tokens), atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def with_jets(loaded):
    """The loaded model with 2 inserted Jet layers, o_proj random (so they matter)."""
    model, params = loaded
    return insert_jet_layers(model, params, jax.random.key(1), count=2, identity=False, **TINY_JET)


def test_jet_insertion_identity_at_init(loaded, with_jets, expected):
    model, params = loaded
    tokens = jnp.asarray(expected["tokens"])
    # the paper's default: 6 layers, evenly spaced (here over 2 layers: 3 before each)
    assert even_jet_positions(24, 6) == (2, 6, 10, 14, 18, 22)
    assert even_jet_positions(2, 6) == (0, 0, 0, 1, 1, 1)
    new_model, new_params = insert_jet_layers(model, params, jax.random.key(0), count=2, **TINY_JET)
    assert new_model.config.jet_positions == (0, 1)
    assert len(new_model.config.layers) == 3 * 4
    # the loaded tensors are untouched, the new layers are there
    same = jax.tree.map(
        np.array_equal,
        params,
        {
            **new_params,
            "model": {k: v for k, v in new_params["model"].items() if k in params["model"]},
        },
    )
    assert all(jax.tree.leaves(same))
    assert set(new_params["model"]) - set(params["model"]) == {"jet_layers_0", "jet_layers_1"}
    np.testing.assert_array_equal(
        _forward(new_model, new_params, tokens), _forward(model, params, tokens)
    )
    # without the identity init (with_jets: same shape, o_proj random) the logits change
    assert _rel(_forward(*with_jets, tokens), expected["logits"]) > 1e-3


def test_jet_insertion_at_load(loaded, expected):
    """load_hf(..., jet_positions=n): the checkpoint lacks the new layers; they are fresh."""
    model, params = hf.load_hf(FIXTURE, window=16, jet_positions=2, **TINY_JET)
    assert model.config.jet_positions == (0, 1)
    assert set(params["model"]) - set(loaded[1]["model"]) == {"jet_layers_0", "jet_layers_1"}
    o_proj = params["model"]["jet_layers_1"]["self_attn"]["o_proj"]["kernel"]
    assert o_proj.shape == (2 * 16, 32) and not np.any(o_proj)
    tokens = jnp.asarray(expected["tokens"])
    np.testing.assert_array_equal(_forward(model, params, tokens), _forward(*loaded, tokens))
    with pytest.raises(ValueError, match="load option jet_positions"):
        ouro_family.config_from_hf(
            {
                **json.loads((FIXTURE / "config.json").read_text()),
                "jet_positions": [1],
                "jet_config": {k: 1 for k in ouro_family._JET_KEYS},
            },
            jet_positions=2,
        )


def test_export_load_exact(with_jets, expected, tmp_path):
    model, params = with_jets
    hf.save_hf(model, params, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["jet_positions"] == [0, 1] and saved["jet_config"]["heads"] == 2
    assert saved["eos_token_id"] == 2  # unmodelled keys written back
    again, again_params = hf.load_hf(tmp_path, window=16)
    # jet_identity_init is an init option, not architecture: it is not exported
    assert again.config == dataclasses.replace(model.config, jet_identity_init=True)
    same = jax.tree.map(
        lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), params, again_params
    )
    assert jax.tree.structure(params) == jax.tree.structure(again_params)
    assert all(jax.tree.leaves(same))


def test_streaming_equals_training_with_jets(with_jets, expected):
    """Two sleep windows (N = 2, the Jet fast weights carry them) then a wake window."""
    model, params = with_jets
    model = model.clone(window=4)
    tokens = jnp.asarray(expected["tokens"])
    spec = sleep.SleepSpec(passes=2, window=4, eviction="hard", schedule=(False, False, True))
    train, _ = jax.jit(sleep.sequence_logits, static_argnums=(0, 3))(model, params, tokens, spec)
    stream, _ = inference.streaming_logits(model, params, tokens, spec)
    np.testing.assert_allclose(stream[:, 8:], train[:, 8:], atol=1e-4, rtol=1e-4)
    # the sleep windows reach the wake window only through the Jet fast weights
    no_sleep = _forward(model, params, tokens[:, 8:])
    assert _rel(train[:, 8:], no_sleep) > 1e-3


def test_sleep_loops_last(loaded):
    model, _ = loaded
    assert model.sleep_loop_blocks == "all"
    last = model.clone(config=dataclasses.replace(model.config, sleep_loops="last"))
    assert last.sleep_loop_blocks == "4:"
    assert sleep.resolve_loop_blocks(last.sleep_loop_blocks, len(last.config.layers)) == (4, 6)


def test_config_errors():
    hf_cfg = json.loads((FIXTURE / "config.json").read_text())
    for key, value, field in (
        ("use_sliding_window", True, "use_sliding_window"),
        ("tie_word_embeddings", True, "tie_word_embeddings"),
        ("rope_scaling", {"rope_type": "yarn", "factor": 2.0}, "rope_scaling.rope_type"),
        ("hidden_act", "gelu", "hidden_act"),
    ):
        with pytest.raises(ValueError, match=f"config.json {field}:"):
            ouro_family.config_from_hf({**hf_cfg, key: value})
    with pytest.raises(ValueError, match="model.jet_positions"):
        OuroConfig(jet_positions=(3, 1))
    with pytest.raises(ValueError, match="model.sleep_loops"):
        OuroConfig(sleep_loops="first")
    with pytest.raises(ValueError, match="load option 'bogus'"):
        ouro_family.config_from_hf(hf_cfg, bogus=1)


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_full_size_parameter_count():
    """Ouro-1.4B (config.json of ByteDance/Ouro-1.4B: vocab 49152, hidden 2048, MLP 5632,
    24 layers, 16 heads, untied): 1,434,652,673 parameters, the "1.4B" of the model card."""
    model = OuroLM(OuroConfig())
    shapes = jax.eval_shape(model.init_params, jax.random.key(0))
    embed = 49152 * 2048
    layer = 4 * 2048 * 2048 + 3 * 2048 * 5632 + 4 * 2048
    assert _count(shapes) == 2 * embed + 24 * layer + 2048 + 2049 == 1_434_652_673
    assert len(model.config.layers) == 96
    # Loops share parameters: one loop suffices to count the Jet layers (faster to trace).
    jets = OuroLM(OuroConfig(total_ut_steps=1, jet_positions=even_jet_positions(24, 6)))
    jet_shapes = jax.eval_shape(jets.init_params, jax.random.key(0))
    per_jet = _count(jet_shapes["model"]["jet_layers_0"])
    assert _count(jet_shapes) == 1_434_652_673 + 6 * per_jet
    assert len(dataclasses.replace(jets.config, total_ut_steps=4).layers) == 4 * 30


def test_trainer_components_use_sleep_loops_and_jets():
    """config.model.family=ouro + init.from_hf: hf_options insert Jet layers at load and
    sleep_loops="last" makes sleep.loop_blocks=all loop the last Ouro loop only."""
    from sleep_lm import config as config_lib
    from sleep_lm import run as run_lib

    repo = pathlib.Path(__file__).resolve().parents[2]
    config = config_lib.load_config(f"{repo / 'experiments/rule110.py'}:smoke")
    config.model.family = "ouro"
    config.init.from_hf = str(FIXTURE)
    config.model.hf_options = {"sleep_loops": "last", "jet_positions": 2, **TINY_JET}
    config_lib.validate(config)
    components = run_lib.build_components(config)
    assert components.model.config.jet_positions == (0, 1)
    assert components.spec.loop_blocks == (8, None)  # loop 2 of 3, 4 units per loop


def test_blocks_split_anywhere_equals_whole(loaded, expected):
    """blocks() scans complete loops and unrolls the rest: any split gives the same."""
    model, params = loaded
    tokens = jnp.asarray(expected["tokens"][:1, :6])
    positions = jnp.arange(6)

    def run(cuts):
        h = model.apply({"params": params}, tokens, positions, method=model.embed)
        state = model.init_state(1)
        for start, stop in zip(cuts[:-1], cuts[1:], strict=True):
            h, state = model.apply(
                {"params": params}, h, state, positions, start, stop, method=model.blocks
            )
        return h, state

    whole = run((0, 6))
    for cuts in ((0, 1, 6), (0, 1, 2, 3, 4, 5, 6), (0, 3, 6)):
        # float32 rounding of different splits: measured up to 0.43 of 1e-5 here.
        np.testing.assert_allclose(run(cuts)[0], whole[0], atol=1e-4, rtol=1e-4)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4),
            run(cuts)[1],
            whole[1],
        )
