"""The Muon / AdamW split, the schedules and what each group's first update looks like."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_fakes import experiment_config, fake_init

from sleep_lm import parallel
from sleep_lm.train import optim


@pytest.fixture(scope="module")
def model_params():
    """Parameters of the real model at a tiny width (all layer kinds present)."""
    from sleep_lm.model import build_model

    config = experiment_config("smoke")
    config.model.width = 16
    config.model.heads = 2
    model = build_model(config.model, vocab_size=3, max_len=100, window=24)
    return model.init_params(jax.random.PRNGKey(0))


def _labels_by_name(params, patterns):
    labels = optim.param_labels(params, patterns)
    leaves = jax.tree_util.tree_leaves_with_path(labels)
    return {parallel.path_name(path): label for path, label in leaves}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("embed, lm_head,,norm ", ("embed", "lm_head", "norm")),
        (r"x{1,3},[,;],(a|b,c),\,,[(],z", ("x{1,3}", "[,;]", "(a|b,c)", r"\,", "[(]", "z")),
        (("a,b", "c"), ("a,b", "c")),  # a sequence is taken as it is
    ],
)
def test_adam_patterns_split_only_at_top_level_commas(text, expected):
    assert optim.split_patterns(text) == expected


def test_comma_in_a_regex_reaches_the_param_labels(model_params):
    # Split at the comma, "kernel{1" would match nothing and both gates would go to Muon.
    labels = _labels_by_name(model_params, r"block_(1|3)/mixer/(a|b)_proj/kernel{1,}")
    assert labels["block_1/mixer/a_proj/kernel"] == optim.ADAM
    assert labels["block_3/mixer/b_proj/kernel"] == optim.ADAM
    assert labels["block_1/mixer/q_proj/kernel"] == optim.MUON


def test_muon_gets_exactly_the_mixing_and_mlp_matrices(model_params):
    patterns = experiment_config().train.adam_patterns
    labels = _labels_by_name(model_params, patterns)
    muon = {name for name, label in labels.items() if label == optim.MUON}
    suffixes = {name.split("/", 1)[1] for name in muon}
    assert suffixes == {
        "mixer/q_proj/kernel",
        "mixer/k_proj/kernel",
        "mixer/v_proj/kernel",
        "mixer/o_proj/kernel",
        "mlp/up_proj/kernel",
        "mlp/down_proj/kernel",
    }
    # Every block has its six matrices in Muon.
    assert len(muon) == 6 * 4
    adam = {name for name, label in labels.items() if label == optim.ADAM}
    for expected in (
        "token_embed/embedding",
        "position_embed",
        "lm_head/kernel",
        "final_norm/scale",
        "block_1/mixer/a_proj/kernel",  # forget gate
        "block_1/mixer/b_proj/kernel",  # input gate (beta)
        "block_1/mixer/o_gate_proj/kernel",  # output gate
        "block_1/mixer/conv_weight",
        "block_1/mixer/a_log",
        "block_1/mixer/dt_bias",
    ):
        assert expected in adam, expected


def test_non_matrices_go_to_adam_without_patterns():
    params = {"w": jnp.ones((3, 4)), "b": jnp.ones((4,)), "t": jnp.ones((2, 3, 4))}
    labels = optim.param_labels(params, "")
    assert labels == {"w": optim.MUON, "b": optim.ADAM, "t": optim.ADAM}


def test_schedule_warmup_cosine_and_constant():
    kwargs = dict(total_steps=100, warmup_steps=10, min_ratio=0.1)
    cosine = optim.make_schedule(2.0, kind="cosine", **kwargs)
    assert float(cosine(0)) == 0.0
    assert float(cosine(5)) == pytest.approx(1.0)
    assert float(cosine(10)) == pytest.approx(2.0)
    assert float(cosine(55)) == pytest.approx(0.2 + 0.9 * 1.0, rel=1e-5)  # half-way down
    assert float(cosine(100)) == pytest.approx(0.2)
    constant = optim.make_schedule(2.0, kind="constant", **kwargs)
    assert float(constant(5)) == pytest.approx(1.0)
    assert float(constant(90)) == pytest.approx(2.0)
    no_warmup = optim.make_schedule(2.0, kind="constant", **dict(kwargs, warmup_steps=0))
    assert float(no_warmup(0)) == 2.0


def _train_cfg(**overrides):
    train = experiment_config("smoke").train
    train.schedule = "constant"
    train.warmup_steps = 0
    train.grad_clip = 0.0
    train.lr = 0.1
    train.adam_lr = 0.01
    for key, value in overrides.items():
        train[key] = value
    return train


def _first_update(train, params, grads):
    optimizer = optim.make_optimizer(train)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    return updates


def test_first_updates_of_each_group():
    params = fake_init(jax.random.PRNGKey(0))
    grads = jax.tree.map(lambda x: jax.random.normal(jax.random.PRNGKey(1), x.shape), params)
    updates = _first_update(_train_cfg(), params, grads)
    # AdamW's first step is -lr * sign(g) (bias-corrected moments: m / sqrt(v) = g / |g|).
    for path in (("embed", "embedding"), ("lm_head", "kernel"), ("lm_head", "bias")):
        u = updates[path[0]][path[1]]
        g = grads[path[0]][path[1]]
        np.testing.assert_allclose(u, -0.01 * jnp.sign(g), rtol=1e-4)
    # Muon's step is an orthogonalised matrix: all singular values close to lr (Newton-Schulz
    # with the standard coefficients lands them in roughly [0.7, 1.2]), unlike sign(g).
    u = updates["block_0"]["mlp_in"]["kernel"]
    singular = np.linalg.svd(np.asarray(u) / -0.1, compute_uv=False)
    assert singular.min() > 0.5 and singular.max() < 1.3, singular


def test_adam_lr_zero_freezes_the_non_matrix_parameters():
    # train.adam_lr=0 is allowed and means: embeddings, head, norms, gates, biases (the AdamW
    # group) stay exactly as initialised while Muon trains the matrices (README).
    params = fake_init(jax.random.PRNGKey(0))
    optimizer = optim.make_optimizer(_train_cfg(adam_lr=0.0, warmup_steps=0))
    state = optimizer.init(params)
    start = params
    for seed in range(3):
        key = jax.random.PRNGKey(seed)
        grads = jax.tree.map(lambda x, key=key: jax.random.normal(key, x.shape), params)
        updates, state = optimizer.update(grads, state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    labels = optim.param_labels(params, _train_cfg().adam_patterns)
    for label, old, new in zip(*map(jax.tree.leaves, (labels, start, params)), strict=True):
        if label == optim.ADAM:
            np.testing.assert_array_equal(new, old)
        else:
            assert not np.allclose(new, old)
    assert optim.ADAM in jax.tree.leaves(labels) and optim.MUON in jax.tree.leaves(labels)


def test_adamw_optimizer_treats_all_params_alike():
    params = fake_init(jax.random.PRNGKey(0))
    grads = jax.tree.map(lambda x: jax.random.normal(jax.random.PRNGKey(1), x.shape), params)
    updates = _first_update(_train_cfg(optimizer="adamw"), params, grads)
    for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(u, -0.1 * jnp.sign(g), rtol=1e-4)


def test_clipping_bounds_the_gradient_norm_seen_by_the_optimiser():
    """Adam is scale-invariant in one step, so two steps: a huge gradient (norm 400) then a
    small one. The second update is checked against AdamW computed by hand on the clipped
    gradients; unclipped, the first step's moments dominate it and it is far off."""
    params = {"w": jnp.ones((4, 4))}
    g1, g2 = {"w": jnp.full((4, 4), 100.0)}, {"w": jnp.full((4, 4), -0.2)}

    def second_update(grad_clip):
        optimizer = optim.make_optimizer(_train_cfg(optimizer="adamw", grad_clip=grad_clip))
        state = optimizer.init(params)
        _, state = optimizer.update(g1, state, params)
        updates, _ = optimizer.update(g2, state, params)
        return float(updates["w"][0, 0])

    off, never, clipped = second_update(0.0), second_update(1e9), second_update(1.0)
    assert never == pytest.approx(off)  # a threshold above the norm changes nothing
    # Hand-computed AdamW (b1 0.9, b2 0.999, bias-corrected) on the clipped gradients
    # (entries 100 -> 100 / 400 = 0.25), lr 0.1.
    m = 0.9 * (0.1 * 0.25) + 0.1 * -0.2
    v = 0.999 * (0.001 * 0.25**2) + 0.001 * 0.2**2
    want = -0.1 * (m / (1 - 0.9**2)) / ((v / (1 - 0.999**2)) ** 0.5 + 1e-8)
    assert clipped == pytest.approx(want, rel=1e-3)
    assert abs(off - clipped) > 0.05  # unclipped: -0.0669 (the first step's moments rule)


def _sleep_components(dtype: str, weight_grads: str):
    """The rule110 smoke run's components at width 16 (N = 2), model.dtype `dtype`."""
    from sleep_lm import run

    config = experiment_config("smoke")
    config.model.width, config.model.heads, config.model.dtype = 16, 2, dtype
    config.sleep.passes = 2
    config.train.weight_grads = weight_grads
    return run.build_components(config)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_weight_grads_compute_keeps_loss_and_gradients(dtype):
    """train.weight_grads="compute": float32 model -> the same program's numbers exactly;
    bfloat16 model -> the same loss (every layer casts its matrices to bf16 anyway) and
    gradients equal up to bf16 summation (the matrices' gradients add up in bf16 over the
    passes)."""
    ref, cast = (_sleep_components(dtype, w) for w in ("float32", "compute"))
    params = ref.init_params(jax.random.PRNGKey(0))
    batch = ref.task.eval_batch(2, 0)

    def value_and_grad(components):
        fn = jax.jit(jax.value_and_grad(lambda p: components.loss_fn(p, batch)[0]))
        return fn(params)

    (loss, grads), (loss_cast, grads_cast) = value_and_grad(ref), value_and_grad(cast)
    assert jax.tree.map(lambda g: g.dtype, grads_cast) == jax.tree.map(lambda g: g.dtype, grads)
    if dtype == "float32":
        np.testing.assert_array_equal(loss_cast, loss)
        jax.tree.map(np.testing.assert_array_equal, grads_cast, grads)
        return
    # Measured here: loss equal, gradient error 3.6e-4 of the gradient norm (bf16 sums); a
    # matrix used in float32 (a conv weight) moves the loss by ~5e-3.
    np.testing.assert_allclose(loss_cast, loss, rtol=1e-4)
    flat, flat_cast = (
        jnp.concatenate([g.ravel() for g in jax.tree.leaves(t)]) for t in (grads, grads_cast)
    )
    error = float(jnp.linalg.norm(flat_cast - flat) / jnp.linalg.norm(flat))
    assert error < 5e-3, error


def test_cast_weights_casts_only_the_muon_matrices(model_params):
    patterns = experiment_config().train.adam_patterns
    cast = optim.cast_weights(model_params, "bfloat16", patterns)
    labels = _labels_by_name(model_params, patterns)
    for path, leaf in jax.tree_util.tree_leaves_with_path(cast):
        muon = labels[parallel.path_name(path)] == optim.MUON
        assert leaf.dtype == (jnp.bfloat16 if muon else jnp.float32), parallel.path_name(path)


def test_momentum_dtype_bfloat16(model_params):
    """train.momentum_dtype="bfloat16": Muon's momentum and AdamW's first moment in bf16,
    AdamW's second moment float32. The first update reads the momentum before it is stored,
    so the second is where bf16 storage shows: equal to float32's up to bf16 rounding in
    both groups (full-rank random gradients; measured 2.2e-3 / 2.0e-3 of the norm)."""
    rng = np.random.default_rng(0)

    def draw():
        return jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape)), model_params)

    grads = (draw(), draw())
    labels = jax.tree.leaves(
        optim.param_labels(model_params, experiment_config().train.adam_patterns)
    )
    updates, states = {}, {}
    for dtype in ("float32", "bfloat16"):
        train = experiment_config("smoke").train
        train.momentum_dtype = dtype
        optimizer = optim.make_optimizer(train)
        state = optimizer.init(model_params)
        _, state = optimizer.update(grads[0], state, model_params)
        updates[dtype], states[dtype] = optimizer.update(grads[1], state, model_params)
    dtypes = {str(x.dtype) for x in jax.tree.leaves(states["bfloat16"]) if x.ndim >= 1}
    assert dtypes == {"bfloat16", "float32"}, dtypes
    assert {str(x.dtype) for x in jax.tree.leaves(states["float32"]) if x.ndim >= 1} == {"float32"}
    for group in (optim.MUON, optim.ADAM):
        got, ref = (
            jnp.concatenate(
                [
                    u.ravel()
                    for u, label in zip(jax.tree.leaves(tree), labels, strict=True)
                    if label == group
                ]
            )
            for tree in (updates["bfloat16"], updates["float32"])
        )
        error = float(jnp.linalg.norm(got - ref) / jnp.linalg.norm(ref))
        assert 0 < error < 2e-2, (group, error)
