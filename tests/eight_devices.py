"""Checks that need 8 devices: run by tests/test_parallel.py in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (the flag must be set before jax is
imported, so these cannot share a process with the other tests). Skipped if run directly
with fewer devices.

Covers: per-host batch rows with simulated process indices (the same global batch for any
host count), the parameter / optimiser-state layout, the model state's sharding (batch and
heads), and checkpoints restored under other meshes (8 devices -> 1 -> 4).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rule110_config import get_config

from sleep_lm import parallel
from sleep_lm.config import default_mesh_config
from sleep_lm.model import build_model
from sleep_lm.model.state import FastWeightState, KVCache
from sleep_lm.train import loop, optim
from sleep_lm.train.checkpoint import Checkpointer
from sleep_lm.train.state import TrainState

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices")

RULES = parallel.parse_rules(default_mesh_config().rules)
MODEL = dict(width=16, heads=2, mlp_ratio=2, layers="attn,gdn", gdn_impl="recurrent")


def mesh(data, fsdp, tensor):
    """A mesh over the first data x fsdp x tensor devices."""
    cfg = {"data": data, "fsdp": fsdp, "tensor": tensor}
    return parallel.make_mesh(cfg, jax.devices()[: data * fsdp * tensor])


def normalise(spec):
    """PartitionSpec entries as tuples (("fsdp",) and "fsdp" mean the same)."""
    out = [(e,) if isinstance(e, str) else (tuple(e) if e else None) for e in spec]
    while out and out[-1] is None:
        out.pop()
    return tuple(out)


# ---------------------------------------------------------------- per-host batch rows


class FakeTask:
    """Rows carry their own random content, so that equal rows mean equal seeds."""

    def sample(self, rng, batch_size):
        x = rng.integers(0, 1 << 30, size=(batch_size, 3)).astype(np.int32)
        return {"inputs": x, "targets": x, "loss_mask": np.ones(x.shape, bool)}


def simulate_hosts(m, processes, global_size, step=5):
    """Each simulated host samples its rows; returns ({process: HostRows}, {process: batch})
    and checks that the global batch assembled from the hosts' data is consistent."""
    per_process = len(m.devices.flat) // processes
    process_of = lambda d: d.id // per_process  # devices 0..k-1 on host 0, ...
    sharding = parallel.batch_sharding(m, RULES)
    rows, data = {}, {}
    for p in range(processes):
        rows[p] = parallel.host_rows(sharding, global_size, process_index=p, process_of=process_of)
        data[p] = loop.batch_for_step(FakeTask(), 0, step, global_size, rows[p].rows)["inputs"]
    # Assemble the global batch device by device from the owning host's local data, as
    # make_array_from_process_local_data does across real hosts.
    shards = []
    for device, index in sharding.devices_indices_map((global_size, 3)).items():
        host = process_of(device)
        wanted = range(global_size)[index[0]]
        local = [rows[host].rows.index(r) for r in wanted]
        shards.append(jax.device_put(data[host][local], device))
    global_array = jax.make_array_from_single_device_arrays((global_size, 3), sharding, shards)
    full = np.asarray(global_array)
    for p in range(processes):
        np.testing.assert_array_equal(full[list(rows[p].rows)], data[p])
    # Whatever the number of hosts, the step's batch is the single-process batch.
    np.testing.assert_array_equal(
        full, loop.batch_for_step(FakeTask(), 0, step, global_size)["inputs"]
    )
    return rows, data


def test_host_rows_one_slice_per_host():
    rows, data = simulate_hosts(mesh(2, 2, 2), processes=2, global_size=8)
    assert rows[0] == parallel.HostRows(rows=(0, 1, 2, 3), shard=0, num_shards=2)
    assert rows[1] == parallel.HostRows(rows=(4, 5, 6, 7), shard=1, num_shards=2)
    assert not np.array_equal(data[0], data[1])  # different rows of the one global batch
    rows4, data4 = simulate_hosts(mesh(4, 2, 1), processes=4, global_size=16)
    assert [rows4[p].rows for p in range(4)] == [tuple(range(4 * p, 4 * p + 4)) for p in range(4)]
    assert [rows4[p].shard for p in range(4)] == [0, 1, 2, 3]
    assert len({d.tobytes() for d in data4.values()}) == 4


def test_host_rows_hosts_sharing_a_slice_draw_the_same_rows():
    # tensor=4 spans two hosts of 2 devices: hosts 0 and 1 hold the same batch rows.
    rows, data = simulate_hosts(mesh(2, 1, 4), processes=4, global_size=8)
    assert [rows[p].shard for p in range(4)] == [0, 0, 1, 1]
    assert all(rows[p].num_shards == 2 for p in range(4))
    np.testing.assert_array_equal(data[0], data[1])
    np.testing.assert_array_equal(data[2], data[3])
    assert not np.array_equal(data[0], data[2])


def test_host_rows_are_deterministic_and_one_host_gets_the_single_process_batch():
    _, first = simulate_hosts(mesh(2, 2, 2), processes=2, global_size=8, step=3)
    _, again = simulate_hosts(mesh(2, 2, 2), processes=2, global_size=8, step=3)
    _, other = simulate_hosts(mesh(2, 2, 2), processes=2, global_size=8, step=4)
    chex.assert_trees_all_equal(first, again)
    assert not np.array_equal(first[0], other[0])
    # One process owning all 8 devices: one shard, the whole batch.
    rows, data = simulate_hosts(mesh(2, 2, 2), processes=1, global_size=8, step=3)
    assert rows[0] == parallel.HostRows(rows=tuple(range(8)), shard=0, num_shards=1)
    np.testing.assert_array_equal(data[0], loop.batch_for_step(FakeTask(), 0, 3, 8)["inputs"])
    # Two, four and eight hosts hold slices of that same batch.
    for processes in (2, 4, 8):
        rows, more = simulate_hosts(mesh(8, 1, 1), processes=processes, global_size=8, step=3)
        joined = np.concatenate([more[p] for p in range(processes)])
        np.testing.assert_array_equal(joined, data[0])
    # And the real assembly (this process) places exactly that batch.
    sharding = parallel.batch_sharding(mesh(2, 2, 2), RULES)
    batch = parallel.global_batch({"inputs": data[0]}, sharding, 8)["inputs"]
    assert batch.sharding == sharding
    np.testing.assert_array_equal(np.asarray(batch), data[0])


# ------------------------------------------------------------------------- layout


def tiny_model():
    return build_model(MODEL, vocab_size=3, max_len=32, window=8)


def test_param_and_optimizer_state_layout():
    m = mesh(2, 2, 2)
    model = tiny_model()
    optimizer = optim.make_optimizer(_train_config())
    abstract = jax.eval_shape(
        lambda: TrainState.create(model.init_params(jax.random.PRNGKey(0)), optimizer)
    )
    shardings = parallel.tree_shardings(abstract, m, RULES)
    params = shardings.params
    fsdp_tensor = (("fsdp",), ("tensor",))
    assert normalise(params["block_0"]["mixer"]["q_proj"]["kernel"].spec) == fsdp_tensor
    assert normalise(params["block_0"]["mixer"]["o_proj"]["kernel"].spec) == fsdp_tensor[::-1]
    assert normalise(params["block_1"]["mlp"]["up_proj"]["kernel"].spec) == fsdp_tensor
    assert normalise(params["block_1"]["mlp"]["down_proj"]["kernel"].spec) == fsdp_tensor[::-1]
    # vocab 3 is not a multiple of tensor=2: that dimension is replicated.
    assert normalise(params["lm_head"]["kernel"].spec) == (("fsdp",),)
    assert normalise(params["final_norm"]["scale"].spec) == ()
    # The optimiser's moments follow their parameters.
    specs = {
        parallel.path_name(path): normalise(s.spec)
        for path, s in jax.tree_util.tree_leaves_with_path(shardings.opt_state)
    }
    moments = [v for k, v in specs.items() if k.endswith("block_0/mixer/q_proj/kernel")]
    assert moments and all(v == fsdp_tensor for v in moments)


def _train_config():
    return get_config("smoke").train


def test_fast_weights_and_kv_cache_are_sharded_on_batch_and_heads():
    m = mesh(2, 2, 2)
    model = tiny_model()
    params = model.init_params(jax.random.PRNGKey(0))
    param_sh = parallel.tree_shardings(params, m, RULES)
    batch_sh = parallel.batch_sharding(m, RULES)
    tokens = jax.device_put(np.zeros((8, 6), np.int32), batch_sh)
    positions = jnp.arange(6)

    @jax.jit
    def forward(params, tokens):
        state = model.init_state(8)
        return model.apply({"params": params}, tokens, positions, state)

    with parallel.sharding_context(m, RULES):
        _, state = forward(jax.device_put(params, param_sh), tokens)
    attn, gdn = state.layers
    assert isinstance(attn, KVCache) and isinstance(gdn, FastWeightState)
    batch = (("data", "fsdp"),)
    assert normalise(gdn.fast_weights.sharding.spec) == batch + (("tensor",),)
    assert normalise(attn.keys.sharding.spec) == batch + (None, ("tensor",))
    assert normalise(attn.values.sharding.spec) == batch + (None, ("tensor",))
    assert normalise(attn.positions.sharding.spec) == batch
    # Without the context the same code runs unconstrained (the single-device path).
    _, plain = forward(params, np.zeros((8, 6), np.int32))
    chex.assert_trees_all_close(jax.device_get(plain), jax.device_get(state), atol=1e-6)


# ------------------------------------------------------------------------ checkpoints


def test_checkpoint_restores_under_other_meshes(tmp_path):
    model = tiny_model()
    optimizer = optim.make_optimizer(_train_config())

    def create():
        params = model.init_params(jax.random.PRNGKey(1))
        state = TrainState.create(params, optimizer)
        grads = jax.tree.map(jnp.ones_like, params)  # non-zero moments
        updates, opt_state = optimizer.update(grads, state.opt_state, params)
        params = jax.tree.map(jnp.add, params, updates)
        return TrainState(jnp.asarray(7, jnp.int32), params, opt_state)

    abstract = jax.eval_shape(create)
    meshes = {8: mesh(2, 2, 2), 1: mesh(1, 1, 1), 4: mesh(1, 2, 2)}
    shardings = {n: parallel.tree_shardings(abstract, m, RULES) for n, m in meshes.items()}
    state8 = jax.jit(create, out_shardings=shardings[8])()
    q8 = state8.params["block_0"]["mixer"]["q_proj"]["kernel"]
    assert len(q8.sharding.device_set) == 8 and not q8.sharding.is_fully_replicated
    expected = jax.device_get(state8)

    def target(n):
        return jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings[n]
        )

    ckpt = Checkpointer(tmp_path / "ckpt", keep=3)
    ckpt.save(7, state8)
    ckpt.wait()
    for n in (1, 4):  # 8 -> 1, then what 1 wrote -> 4
        restored = ckpt.restore(target(n), step=7 if n == 1 else 8)
        chex.assert_trees_all_equal(jax.device_get(restored), expected)
        for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(shardings[n]), strict=True):
            assert got.sharding == want
        q = restored.params["block_0"]["mixer"]["q_proj"]["kernel"]
        assert len(q.sharding.device_set) == n
        if n == 1:
            ckpt.save(8, restored)
            ckpt.wait()
    ckpt.close()


def test_splash_attention_runs_per_device_under_a_mesh():
    """ops/splash.causal_attention under the sharding context: shard_map over the batch axes
    (the Pallas interpreter standing in for the TPU kernel) equals the unsharded call, and
    its output keeps the batch sharding."""
    from sleep_lm.model.attention import dot_product_attention

    layout = mesh(4, 2, 1)
    batch, time, heads, dim = 8, 130, 2, 16
    ks = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(key, (batch, time, heads, dim)) for key in ks)
    pos = jnp.arange(time)
    k_pos = jnp.where(jnp.arange(batch)[:, None] % 3 == 0, pos, jnp.maximum(pos, 5))
    k_pos = jnp.where(k_pos > pos, -1, k_pos)  # a few examples left-padded by 5 tokens

    def attend(q, k, v):
        return dot_product_attention(
            q, k, v, pos, k_pos, time, jnp.float32, "splash", same_tokens=True, interpret=True
        )

    want = attend(q, k, v)
    batch_sharding = parallel.batch_sharding(layout, RULES)
    with parallel.sharding_context(layout, RULES):
        got = jax.jit(attend)(*(jax.device_put(x, batch_sharding) for x in (q, k, v)))
        jaxpr = str(jax.make_jaxpr(attend)(q, k, v))
    assert "shard_map" in jaxpr and "pallas_call" in jaxpr
    assert normalise(got.sharding.spec)[0] == ("data", "fsdp")
    # Measured (2-core CPU, jax 0.10.2): bitwise equal (the same kernel on each example).
    chex.assert_trees_all_close(got, want, atol=1e-6, rtol=1e-6)
