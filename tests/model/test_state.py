import chex
import jax.numpy as jnp
import pytest

from sleep_lm.model import FastWeightState, KVCache, ModelConfig, ModelState, build_model
from sleep_lm.model import state as state_lib


def test_init_state_shapes_and_dtypes():
    state = state_lib.init_state(
        ("attn", "gdn"), 3, heads=2, head_dim=4, conv_size=4, cache_len=5, dtype=jnp.bfloat16
    )
    assert isinstance(state, ModelState)
    cache, fw = state.layers
    assert isinstance(cache, KVCache) and isinstance(fw, FastWeightState)
    chex.assert_shape(cache.keys, (3, 5, 2, 4))
    chex.assert_shape(cache.values, (3, 5, 2, 4))
    chex.assert_shape(cache.positions, (3, 5))
    chex.assert_type([cache.keys, cache.positions], [jnp.bfloat16, jnp.int32])
    assert (cache.positions == state_lib.EMPTY_POSITION).all()
    chex.assert_shape(fw.fast_weights, (3, 2, 4, 4))
    chex.assert_type(fw.fast_weights, jnp.float32)  # fast weights stay f32 in bf16 models
    chex.assert_shape(fw.conv_tail, (3, 3, 2 * 3 * 4))
    chex.assert_type(fw.conv_tail, jnp.bfloat16)


def test_model_init_state_default_cache_is_window():
    model = build_model(
        {"width": 8, "heads": 2, "layers": "attn"}, vocab_size=3, max_len=9, window=4
    )
    chex.assert_shape(model.init_state(2).layers[0].keys, (2, 4, 2, 4))
    chex.assert_shape(model.init_state(2, cache_len=0).layers[0].keys, (2, 0, 2, 4))


def _filled(kinds=("attn", "gdn")):
    state = state_lib.init_state(kinds, 1, heads=1, head_dim=2, conv_size=2, cache_len=2)
    return ModelState(
        layers=tuple(
            type(layer)(*(jnp.ones_like(x) * (i + 1) for x in layer))
            for i, layer in enumerate(state.layers)
        )
    )


def test_clear_local_keeps_only_fast_weights():
    cleared = state_lib.clear_local(_filled())
    cache, fw = cleared.layers
    assert (cache.keys == 0).all() and (cache.values == 0).all()
    assert (cache.positions == state_lib.EMPTY_POSITION).all()
    assert (fw.conv_tail == 0).all()
    assert (fw.fast_weights == 2).all()


def test_restart_local_takes_context_from_start_only_inside_range():
    new = _filled(("attn", "gdn", "gdn"))
    start = state_lib.init_state(
        ("attn", "gdn", "gdn"), 1, heads=1, head_dim=2, conv_size=2, cache_len=2
    )
    out = state_lib.restart_local(new, start, 0, 2)
    chex.assert_trees_all_equal(out.layers[0], start.layers[0])  # KV cache from start
    assert (out.layers[1].conv_tail == 0).all()  # conv tail from start
    assert (out.layers[1].fast_weights == 2).all()  # fast weights carried
    chex.assert_trees_all_equal(out.layers[2], new.layers[2])  # outside the range: untouched


def test_config_parses_layers_and_defaults():
    cfg = ModelConfig.from_config({"width": 8, "heads": 2, "layers": "attn, gdn,gdn"})
    assert cfg.layers == ("attn", "gdn", "gdn")
    assert cfg.head_dim == 4 and cfg.positions == "learned" and cfg.rule == "delta"
    hash(cfg)


@pytest.mark.parametrize(
    "override, field",
    [
        ({"layers": "attn,mamba"}, "model.layers"),
        ({"heads": 3}, "model.heads"),
        ({"rule": "hebb"}, "model.rule"),
        ({"positions": "alibi"}, "model.positions"),
        ({"dtype": "float16"}, "model.dtype"),
        ({"gdn_precision": "fp32"}, "model.gdn_precision"),
        ({"gdn_impl": "associative"}, "model.gdn_impl"),  # associative exists for linear only
        ({"width": 0}, "model.width"),
    ],
)
def test_config_errors_name_the_field(override, field):
    with pytest.raises(ValueError, match=field):
        build_model({"width": 8, "heads": 2, **override}, vocab_size=3, max_len=4, window=2)
