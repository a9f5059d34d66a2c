"""Rule 110 task: generator against a per-cell reference, batch layout, seeds, get_task."""

import ml_collections
import numpy as np
import pytest

from sleep_lm.tasks import TASKS, Rule110, evolve, get_task


def reference_step(cells):
    """One Rule 110 update of a 1-D list of 0/1 cells, periodic boundary, cell by cell."""
    n = len(cells)
    out = []
    for i in range(n):
        pattern = (cells[(i - 1) % n] << 2) | (cells[i] << 1) | cells[(i + 1) % n]
        out.append((0b01101110 >> pattern) & 1)
    return out


def reference_evolve(cells, steps):
    cells = [int(c) for c in cells]
    for _ in range(steps):
        cells = reference_step(cells)
    return cells


def test_rule_table_neighbourhoods():
    # Each (left, centre, right) pattern placed at cells 1..3 of a ring of 5; cell 2 sees it.
    expected = {"111": 0, "110": 1, "101": 1, "100": 0, "011": 1, "010": 1, "001": 1, "000": 0}
    for pattern, new in expected.items():
        ring = np.array([0] + [int(c) for c in pattern] + [0])
        assert evolve(ring, 1)[2] == new, pattern


@pytest.mark.parametrize("steps", [0, 1, 2, 5, 16])
def test_evolve_matches_reference(steps):
    rng = np.random.default_rng(steps)
    bits = rng.integers(0, 2, size=(3, 2, 24))
    got = evolve(bits, steps)
    assert got.shape == bits.shape and got.dtype == bits.dtype
    for idx in np.ndindex(bits.shape[:-1]):
        np.testing.assert_array_equal(got[idx], reference_evolve(bits[idx], steps))


def test_evolve_periodic_boundary_and_no_mutation():
    bits = np.zeros(7, np.int32)
    bits[0] = 1  # only cell 0 is on: its left neighbour wraps to cell 6
    before = bits.copy()
    out = evolve(bits, 1)
    np.testing.assert_array_equal(bits, before)
    # Rule 110: cell 6 sees (left, centre, right) = (0, 0, 1) -> 1; cell 0 sees 010 -> 1.
    np.testing.assert_array_equal(out, [1, 0, 0, 0, 0, 0, 1])


def full_sequence(batch):
    return np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)


@pytest.mark.parametrize("steps", [0, 3, 10])
def test_sample_layout_and_labels(steps):
    task = Rule110(steps=steps)
    assert (task.name, task.vocab_size, task.seq_len) == ("rule110", 3, 100)
    batch = task.sample(np.random.default_rng(0), 16)
    assert set(batch) == {"inputs", "targets", "loss_mask"}
    for key, dtype in [("inputs", np.int32), ("targets", np.int32), ("loss_mask", np.bool_)]:
        assert batch[key].shape == (16, 100) and batch[key].dtype == dtype, key
    np.testing.assert_array_equal(batch["targets"][:, :-1], batch["inputs"][:, 1:])
    np.testing.assert_array_equal(np.nonzero(batch["loss_mask"][0])[0], [96, 97, 98, 99])
    assert (batch["loss_mask"] == batch["loss_mask"][:1]).all()

    full = full_sequence(batch)
    assert ((full[:, :96] == 0) | (full[:, :96] == 1)).all()
    assert (full[:, 96] == 2).all()
    for b in range(16):
        states = full[b, :96].reshape(4, 24)
        labels = [reference_evolve(s, steps)[0] for s in states]
        np.testing.assert_array_equal(full[b, 97:], labels)
        np.testing.assert_array_equal(batch["targets"][b, batch["loss_mask"][b]], labels)


def test_labels_depend_on_steps():
    # Same states, different t: labels must differ somewhere (otherwise t is ignored).
    a = Rule110(steps=0).sample(np.random.default_rng(1), 64)
    b = Rule110(steps=7).sample(np.random.default_rng(1), 64)
    np.testing.assert_array_equal(a["inputs"][:, :97], b["inputs"][:, :97])
    assert (a["targets"][:, 96:] != b["targets"][:, 96:]).any()


def test_other_sizes():
    task = Rule110(steps=2, state_bits=8, num_states=3)
    assert task.seq_len == 27
    batch = task.sample(np.random.default_rng(0), 5)
    full = full_sequence(batch)
    np.testing.assert_array_equal(np.nonzero(batch["loss_mask"][0])[0], [24, 25, 26])
    for b in range(5):
        expected = [reference_evolve(s, 2)[0] for s in full[b, :24].reshape(3, 8)]
        np.testing.assert_array_equal(full[b, 25:], expected)


def test_deterministic_given_seed_and_eval_is_held_out():
    task = Rule110(steps=4)
    a = task.sample(np.random.default_rng(5), 8)
    b = task.sample(np.random.default_rng(5), 8)
    c = task.sample(np.random.default_rng(6), 8)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert (a["inputs"] != c["inputs"]).any()

    e1, e2 = task.eval_batch(8, seed=5), task.eval_batch(8, seed=5)
    for key in e1:
        np.testing.assert_array_equal(e1[key], e2[key])
    # The held-out set is not the training stream of the same seed, nor of another seed.
    assert (e1["inputs"] != a["inputs"]).any()
    assert (task.eval_batch(8, seed=6)["inputs"] != e1["inputs"]).any()


def test_render():
    task = Rule110(steps=1)
    batch = task.sample(np.random.default_rng(0), 1)
    full = full_sequence(batch)[0]
    text = task.render(full)
    parts = text.split(" ")
    assert len(parts) == 6 and parts[4] == "?"
    assert "".join(parts[:4]) == "".join(map(str, full[:96]))
    assert parts[5] == "".join(map(str, full[97:]))


def test_get_task_and_validation():
    cfg = ml_collections.ConfigDict({"name": "rule110", "steps": 6})
    task = get_task(cfg)
    assert isinstance(task, Rule110) and task.steps == 6 and task.seq_len == 100
    assert get_task({"name": "rule110", "steps": 1, "state_bits": 8}).seq_len == 36
    assert TASKS == ("rule110", "depo", "gsm_infinite")
    with pytest.raises(ValueError, match=r"task\.name must be one of 'rule110', 'depo'"):
        get_task(ml_collections.ConfigDict({"name": "rule30", "steps": 1}))
    with pytest.raises(ValueError, match=r"task\.steps must be"):
        get_task(ml_collections.ConfigDict({"name": "rule110", "steps": -1}))
    with pytest.raises(ValueError, match=r"task\.steps must be"):
        get_task({"name": "rule110"})
    with pytest.raises(ValueError, match="steps"):
        Rule110(steps=1.5)


def test_eval_sets_by_rollout_depth():
    task = Rule110(steps=1, eval_steps=(0, 4))
    sets = task.eval_sets(8, seed=5)
    assert list(sets) == ["", "@t=0", "@t=4"]
    np.testing.assert_array_equal(sets[""]["inputs"], task.eval_batch(8, 5)["inputs"])
    for t in (0, 4):
        want = Rule110(steps=t).eval_batch(8, 5)
        for key in ("inputs", "targets", "loss_mask"):
            np.testing.assert_array_equal(sets[f"@t={t}"][key], want[key])
    # Same states, different depth: the labels differ somewhere between t = 0 and t = 4.
    assert not np.array_equal(sets["@t=0"]["targets"], sets["@t=4"]["targets"])
