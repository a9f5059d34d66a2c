"""config.json read as the reference config classes read it (sleep_lm/pretrained/
reference.py), inserted layers drawn from config.seed, and the mesh checked against the
checkpoint's head counts."""

import json
import pathlib

import jax
import numpy as np
import pytest
from ml_collections import config_dict

from sleep_lm import config as config_lib
from sleep_lm.pretrained import load_hf, published, save_hf, tiny
from sleep_lm.pretrained import ouro as ouro_family
from sleep_lm.pretrained import qwen2 as qwen2_family

ROOT = pathlib.Path(__file__).parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
JET_2B = published.JET_NEMOTRON_2B
OURO_1_4B = published.OURO_1_4B


def without(hf_config, *keys):
    return {k: v for k, v in hf_config.items() if k not in keys}


def with_jet(hf_config, **jet):
    eff = {**hf_config["efficient_attention_config"], "jet": jet}
    return {**hf_config, "efficient_attention_config": eff}


def test_jet_nemotron_missing_fields_take_the_reference_defaults():
    # JetNemotronConfig's rope_theta is 1e6 (10_000 moves Jet-Nemotron-2B's logits)
    assert qwen2_family.config_from_hf(without(JET_2B, "rope_theta")).rope_theta == 1e6
    assert qwen2_family.config_from_hf(without(JET_2B, "num_key_value_heads")).kv_heads == 2
    # null num_key_value_heads: the query heads, as the reference class
    assert qwen2_family.config_from_hf({**JET_2B, "num_key_value_heads": None}).kv_heads == 12
    # Only model_type: every field the reference's default.
    cfg = qwen2_family.config_from_hf(
        {"model_type": "jet_nemotron", "efficient_attention_config": {}}
    )
    assert (cfg.width, cfg.intermediate, cfg.vocab_size, cfg.layers) == (
        1536,
        8960,
        151936,
        ("attn",) * 28,
    )
    assert (cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.tie_embeddings) == (12, 2, 128, True)


def test_jet_block_config_takes_its_defaults():
    """An empty jet block config is JetBlockConfig's defaults: 6 heads of key 256, expand_v
    2; a partial one fills the rest from them."""
    cfg = qwen2_family.config_from_hf(with_jet(JET_2B))
    assert (cfg.jet_heads, cfg.jet_key_head_dim, cfg.jet_value_head_dim) == (6, 256, 512)
    assert (cfg.jet_conv_size, cfg.jet_generator_reduction, cfg.jet_norm_eps) == (4, 8, 1e-5)
    cfg = qwen2_family.config_from_hf(with_jet(JET_2B, expand_v=1.5))
    assert (cfg.jet_heads, cfg.jet_key_head_dim, cfg.jet_value_head_dim) == (6, 256, 384)


def test_jet_block_config_refuses_unknown_keys():
    bad = with_jet(JET_2B, num_heads=2, head_dim=8, expnad_v=2.0)
    with pytest.raises(ValueError, match="efficient_attention_config.jet.*'expnad_v'"):
        qwen2_family.config_from_hf(bad)
    # The reference's implementation choices are known keys.
    ok = with_jet(JET_2B, mode="fused_recurrent", dconv_implementation="triton")
    assert qwen2_family.config_from_hf(ok).jet_heads == 6


@pytest.mark.parametrize(
    "hf_config, family",
    [
        (JET_2B, qwen2_family),
        (OURO_1_4B, ouro_family),
        (json.loads((FIXTURES / "qwen2_tiny" / "config.json").read_text()), qwen2_family),
    ],
)
def test_partial_rotary_factor_is_refused(hf_config, family):
    family.config_from_hf({**hf_config, "partial_rotary_factor": 1.0})
    with pytest.raises(ValueError, match="partial_rotary_factor"):
        family.config_from_hf({**hf_config, "partial_rotary_factor": 0.5})


def test_ouro_missing_fields_take_the_reference_defaults():
    # OuroConfig's rope_theta default (was refused)
    assert ouro_family.config_from_hf(without(OURO_1_4B, "rope_theta")).rope_theta == 10_000.0
    # num_key_value_heads missing: OuroConfig's 32, not the query heads
    hf_config = {**without(OURO_1_4B, "num_key_value_heads"), "num_attention_heads": 64}
    assert ouro_family.config_from_hf(hf_config).kv_heads == 32
    cfg = ouro_family.config_from_hf({"model_type": "ouro"})
    assert (cfg.width, cfg.heads, cfg.kv_heads, cfg.num_layers) == (4096, 32, 32, 32)
    assert (cfg.vocab_size, cfg.intermediate_size, cfg.total_ut_steps) == (151936, 22016, 4)


def test_ouro_early_exit_step_is_refused_unless_the_last_loop():
    for step in (None, 3):
        cfg = ouro_family.config_from_hf({**OURO_1_4B, "early_exit_step": step})
        assert cfg.total_ut_steps == 4
    with pytest.raises(ValueError, match="config.json early_exit_step:"):
        ouro_family.config_from_hf({**OURO_1_4B, "early_exit_step": 1})


def _jet_layer(params):
    return params["model"]["jet_layers_0"]


def test_inserted_layers_are_drawn_from_config_seed(tmp_path):
    model = tiny.tiny_model("ouro", vocab_size=64)
    save_hf(model, model.init_params(jax.random.key(0)), tmp_path)
    shape = {"jet_heads": 2, "jet_key_head_dim": 8, "jet_value_head_dim": 16}

    def load(seed):
        config = config_dict.ConfigDict(
            {"seed": seed, "model": {"hf_options": {"jet_positions": 1, **shape}}}
        )
        return _jet_layer(load_hf(tmp_path, window=8, **config_lib.pretrained_options(config))[1])

    one, again, two = load(1), load(1), load(2)
    same = lambda a, b: all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))
    assert same(one, again)
    kernel = lambda p: p["self_attn"]["q_proj"]["kernel"]
    assert not np.array_equal(kernel(one), kernel(two))


def test_mesh_is_checked_against_the_checkpoint_heads(monkeypatch):
    """tiny_jet on the Qwen2 fixture (4 heads, 2 KV heads): a tensor axis of 4 divides the
    query heads (and the from-scratch model.heads=4) but not the KV heads."""
    config = config_lib.load_config(f"{ROOT / 'experiments' / 'gsm_infinite.py'}:tiny_jet")
    config.init.from_hf = str(FIXTURES / "qwen2_tiny")
    config.model.heads = 4  # a from-scratch field: not what the checkpoint's mesh needs
    config.mesh.update(data=1, fsdp=1, tensor=2)
    # Read from config.json without building the model.
    monkeypatch.setattr(qwen2_family, "Qwen2LM", None)
    assert config_lib.validate_mesh(config, 2)["tensor"] == 2
    config.mesh.tensor = 4
    with pytest.raises(config_lib.ConfigError, match="num_key_value_heads=2 must be a multiple"):
        config_lib.validate_mesh(config, 4)
