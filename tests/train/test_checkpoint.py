"""Orbax round trip of the full train state (params + Muon/AdamW state)."""

import chex
import jax
import jax.numpy as jnp
from train_fakes import experiment_config, fake_init

from sleep_lm.train import optim
from sleep_lm.train.checkpoint import Checkpointer
from sleep_lm.train.state import TrainState


def _state(seed):
    optimizer = optim.make_optimizer(experiment_config("smoke").train)
    params = fake_init(jax.random.PRNGKey(seed))
    state = TrainState.create(params, optimizer)
    # One real update so that the moments are non-zero.
    grads = jax.tree.map(jnp.ones_like, params)
    updates, opt_state = optimizer.update(grads, state.opt_state, params)
    return TrainState(jnp.asarray(7, jnp.int32), optax_apply(params, updates), opt_state)


def optax_apply(params, updates):
    return jax.tree.map(lambda p, u: p + u, params, updates)


def test_round_trip_and_retention(tmp_path):
    checkpointer = Checkpointer(tmp_path / "checkpoints", keep=2)
    states = {step: _state(step) for step in (1, 2, 3)}
    for step, state in states.items():
        assert checkpointer.save(step, state)
    assert not checkpointer.save(3, states[3])  # a known step is skipped
    checkpointer.wait()
    assert checkpointer.all_steps() == [2, 3]
    assert checkpointer.latest_step() == 3
    abstract = jax.eval_shape(lambda: _state(0))
    restored = checkpointer.restore(abstract)
    chex.assert_trees_all_equal(restored, states[3])
    chex.assert_trees_all_equal_structs(restored, states[3])
    chex.assert_trees_all_equal(checkpointer.restore(abstract, step=2), states[2])
    checkpointer.close()
    # A new manager on the same directory sees the same checkpoints (what a restart does).
    again = Checkpointer(tmp_path / "checkpoints", keep=2)
    assert again.latest_step() == 3
    chex.assert_trees_all_equal(again.restore(abstract), states[3])
    again.close()


def test_restore_without_checkpoint_raises(tmp_path):
    checkpointer = Checkpointer(tmp_path / "empty", keep=1)
    assert checkpointer.latest_step() is None
    try:
        checkpointer.restore(jax.eval_shape(lambda: _state(0)))
    except FileNotFoundError as e:
        assert "no checkpoint" in str(e)
    else:
        raise AssertionError("expected FileNotFoundError")
    finally:
        checkpointer.close()
