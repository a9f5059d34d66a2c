"""TFDS builders: tiny splits built into tmp_path and read back equal the generators' batches;
per-host sharding and epochs of the batch reader; no TensorFlow involved."""

import sys

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from sleep_lm.tasks import tfds_builders as tb  # noqa: E402

SEED = 3


def assert_batches_equal(actual: dict, expected: dict):
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
        np.testing.assert_array_equal(actual[key], value, err_msg=key)


def concat(batches: list[dict]) -> dict:
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}


@pytest.fixture(scope="module")
def rule110(tmp_path_factory):
    """10 training examples made in chunks of 4 (the last one 2), 6 test examples."""
    data_dir = tmp_path_factory.mktemp("tfds")
    config = tb.Rule110Config(
        name="tiny", steps=2, train_size=10, test_size=6, batch_size=4, seed=SEED
    )
    tb.build(tb.Rule110Builder, data_dir, config=config)
    return data_dir, config


def read(rule110, split, **kwargs):
    data_dir, config = rule110
    return tb.read_split(tb.Rule110Builder, split, data_dir, config=config, **kwargs)


def test_rule110_splits_match_the_generator_and_the_trainer(rule110):
    _, config = rule110
    task = config.task()
    assert_batches_equal(read(rule110, "test"), task.eval_batch(6, SEED))

    # The train split is the trainer's on-the-fly stream at batch size 4, step by step.
    from sleep_lm.train import loop

    assert tb.TRAIN_STREAM == loop.TRAIN_STREAM
    train = read(rule110, "train")
    expected = concat(
        [
            loop.batch_for_step(task, SEED, 0, 4),
            loop.batch_for_step(task, SEED, 1, 4),
            task.sample(np.random.default_rng([SEED, loop.TRAIN_STREAM, 2]), 2),
        ]
    )
    assert_batches_equal(train, expected)
    assert "tensorflow" not in sys.modules  # Built and read without TensorFlow.


def test_read_split_shards_per_host(rule110):
    whole = read(rule110, "train")
    shares = [read(rule110, "train", process_index=i, process_count=3) for i in range(3)]
    assert [len(s["inputs"]) for s in shares] == [3, 3, 4]
    assert_batches_equal(concat(shares), whole)


def test_batches_per_host_epochs_and_resume(rule110):
    data_dir, config = rule110
    whole = read(rule110, "train")

    def batches(**kwargs):
        return list(
            tb.batches(tb.Rule110Builder, "train", data_dir, config=config, batch_size=4, **kwargs)
        )

    # Two full batches per epoch (the last 2 examples are dropped); step 2 starts epoch 1.
    in_order = batches(num_steps=3)
    for step, batch in enumerate(in_order):
        start = (step % 2) * 4
        assert_batches_equal(batch, {k: v[start : start + 4] for k, v in whole.items()})

    # Process i of 2 gets the i-th half of every global batch.
    for step in range(3):
        hosts = [
            batches(start_step=step, num_steps=1, process_index=i, process_count=2)[0]
            for i in range(2)
        ]
        assert_batches_equal(concat(hosts), in_order[step])

    # Shuffled epochs: epoch e reads default_rng([seed, e]).permutation; resuming at any step
    # gives the same batch as reading from the start.
    shuffled = batches(num_steps=4, shuffle_seed=5)
    for step, batch in enumerate(shuffled):
        epoch, within = divmod(step, 2)
        rows = np.random.default_rng([5, epoch]).permutation(10)[within * 4 : within * 4 + 4]
        assert_batches_equal(batch, {k: v[rows] for k, v in whole.items()})
        assert_batches_equal(batches(start_step=step, num_steps=1, shuffle_seed=5)[0], batch)

    with pytest.raises(ValueError, match="multiple of process_count=3"):
        batches(num_steps=1, process_count=3)
    with pytest.raises(ValueError, match="process_index must be in 0..1"):
        batches(num_steps=1, process_index=2, process_count=2)


def test_depo_per_hop_splits(tmp_path):
    config = tb.DepoConfig(
        name="tiny",
        min_hops=1,
        max_train_hops=2,
        test_hops=(1, 4),
        max_nodes=5,
        num_queries=2,
        max_hops=4,
        num_names=8,
        train_size=3,
        test_size=3,
        batch_size=3,
        seed=SEED,
    )
    builder = tb.build(tb.DepoBuilder, tmp_path, config=config)
    assert sorted(builder.info.splits) == ["test", "test_k1", "test_k4", "train"]
    task = config.task()
    assert task.hops == (1, 2)

    def read_depo(split):
        return tb.read_split(tb.DepoBuilder, split, tmp_path, config=config)

    assert_batches_equal(read_depo("test"), task.eval_batch(3, SEED))
    for k in (1, 4):
        split = read_depo(f"test_k{k}")
        assert_batches_equal(split, task.eval_batch(3, SEED, hops=k))
        assert (split["hops"] == k).all()
    train = read_depo("train")
    assert_batches_equal(train, task.sample(np.random.default_rng([SEED, tb.TRAIN_STREAM, 0]), 3))
    assert set(np.unique(train["hops"])) <= {1, 2}


def test_registered_configs_and_missing_data(tmp_path):
    assert [c.name for c in tb.Rule110Builder.BUILDER_CONFIGS][:3] == ["t0", "t1", "t2"]
    assert [c.name for c in tb.DepoBuilder.BUILDER_CONFIGS] == ["hops1-16", "hops1-8", "hops1-4"]
    builder = tfds.builder("rule110/t8", data_dir=tmp_path)
    assert builder.builder_config.steps == 8
    with pytest.raises(FileNotFoundError, match="rule110/t8 is not built"):
        tb.read_split("rule110/t8", "test", tmp_path)
