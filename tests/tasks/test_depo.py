"""Depo task: answers against an independent walk of the cycle parsed from the edge tokens."""

import re

import ml_collections
import numpy as np
import pytest

from sleep_lm.tasks import Depo, get_task
from sleep_lm.tasks import depo as depo_lib

# Token ids as documented in the module docstring (written out, not imported, so a silent change
# of the vocabulary breaks this test).
PAD, ARROW, COMMA, QUERY, HOPS, AFTER, COLON = range(7)


def full_sequence(batch):
    return np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)


def parse_edges(context):
    """Successor map from the edge tokens of one context; checks the 'u -> v ,' format."""
    tokens = [int(t) for t in context]
    num_pad = 0
    while num_pad < len(tokens) and tokens[num_pad] == PAD:
        num_pad += 1
    body = tokens[num_pad:]
    assert len(body) % 4 == 0
    successor = {}
    for i in range(0, len(body), 4):
        u, arrow, v, comma = body[i : i + 4]
        assert (arrow, comma) == (ARROW, COMMA)
        assert u not in successor  # each node has exactly one outgoing edge
        successor[u] = v
    return num_pad, successor


def walk(successor, x, k):
    for _ in range(k):
        x = successor[x]
    return x


def check_batch(task, batch):
    """All structural properties plus every answer against a walk of the parsed cycle."""
    size = batch["inputs"].shape[0]
    for key, dtype in [("inputs", np.int32), ("targets", np.int32), ("loss_mask", np.bool_)]:
        assert batch[key].shape == (size, task.seq_len) and batch[key].dtype == dtype, key
    assert batch["hops"].shape == (size, task.num_queries)
    np.testing.assert_array_equal(batch["targets"][:, :-1], batch["inputs"][:, 1:])
    full = full_sequence(batch)
    assert full.min() >= 0 and full.max() < task.vocab_size
    c = task.context_len
    expected_mask = np.zeros(task.seq_len, bool)
    expected_mask[c + 5 :: 6] = True
    assert expected_mask[-1]  # the last target is the last answer
    for b in range(size):
        np.testing.assert_array_equal(batch["loss_mask"][b], expected_mask)
        num_pad, successor = parse_edges(full[b, :c])
        n = len(successor)
        assert task.min_nodes <= n <= task.max_nodes
        assert num_pad == 4 * (task.max_nodes - n)
        nodes = set(successor)
        assert set(successor.values()) == nodes
        assert all(task.first_node <= u < task.vocab_size for u in nodes)
        # A single cycle: walking n steps from any node visits all nodes and returns home.
        start = next(iter(nodes))
        seen = {walk(successor, start, i) for i in range(n)}
        assert seen == nodes and walk(successor, start, n) == start

        assert full[b, c] == QUERY
        queries = full[b, c + 1 :].reshape(task.num_queries, 6)
        for j, (hop, hops_word, after, x, colon, y) in enumerate(queries):
            k = int(hop) - 6
            assert (hops_word, after, colon) == (HOPS, AFTER, COLON)
            assert k == batch["hops"][b, j]
            assert x in nodes
            assert y == walk(successor, x, k)
            assert batch["targets"][b, c + 5 + 6 * j] == y


def test_default_layout_and_answers():
    task = Depo()
    assert (task.name, task.seq_len, task.context_len) == ("depo", 360, 300)
    assert task.vocab_size == 7 + 16 + 100
    assert task.eval_hops == (1, 2, 4, 8, 16)
    batch = task.sample(np.random.default_rng(0), 16)
    check_batch(task, batch)
    np.testing.assert_array_equal(np.nonzero(batch["loss_mask"][0])[0], task.answer_positions)
    assert batch["hops"].min() >= 1 and batch["hops"].max() <= 16


def test_cycle_sizes_and_hops_cover_their_ranges():
    task = Depo(max_nodes=6, min_nodes=3, num_queries=4, max_hops=5, num_names=10)
    batch = task.sample(np.random.default_rng(1), 200)
    check_batch(task, batch)
    full = full_sequence(batch)
    sizes = {len(parse_edges(row[: task.context_len])[1]) for row in full}
    assert sizes == {3, 4, 5, 6}
    assert set(np.unique(batch["hops"])) == {1, 2, 3, 4, 5}


def test_custom_hop_set_and_fixed_eval_hops():
    task = Depo(max_nodes=8, num_queries=3, hops=(2, 7), max_hops=8, num_names=12)
    batch = task.sample(np.random.default_rng(2), 64)
    check_batch(task, batch)
    assert set(np.unique(batch["hops"])) == {2, 7}
    for k in (1, 4, 8):
        ev = task.eval_batch(16, seed=3, hops=k)
        check_batch(task, ev)
        assert (ev["hops"] == k).all()
    # Paired per-k sets: same cycles and query sources, only k (and the answers) differ.
    a, b = task.eval_batch(16, seed=3, hops=1), task.eval_batch(16, seed=3, hops=4)
    np.testing.assert_array_equal(
        a["inputs"][:, : task.context_len], b["inputs"][:, : task.context_len]
    )
    sources = task.context_len + 4  # x of query j sits at C + 4 + 6 j
    np.testing.assert_array_equal(a["inputs"][:, sources::6], b["inputs"][:, sources::6])
    with pytest.raises(ValueError, match="hops"):
        task.eval_batch(4, seed=0, hops=9)


def test_deterministic_given_seed_and_eval_is_held_out():
    task = Depo()
    a = task.sample(np.random.default_rng(7), 4)
    b = task.sample(np.random.default_rng(7), 4)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert (task.sample(np.random.default_rng(8), 4)["inputs"] != a["inputs"]).any()
    e1, e2 = task.eval_batch(4, seed=7), task.eval_batch(4, seed=7)
    for key in e1:
        np.testing.assert_array_equal(e1[key], e2[key])
    assert (e1["inputs"] != a["inputs"]).any()


def test_render_paper_notation():
    task = Depo()
    batch = task.sample(np.random.default_rng(4), 2)
    for row, hops in zip(full_sequence(batch), batch["hops"], strict=True):
        text = task.render(row)
        edge_line, query_line = text.split("\n")
        # Edges: "u->v, u->v, ..., u->v," with names free of spaces, commas and colons.
        edges = re.findall(r"([^\s,:>-]+)->([^\s,:>-]+),", edge_line)
        assert " ".join(f"{u}->{v}," for u, v in edges) == edge_line
        successor = dict(edges)
        _, token_successor = parse_edges(row[: task.context_len])
        assert len(successor) == len(token_successor)
        queries = query_line.split(", ")
        assert len(queries) == task.num_queries
        for q, k in zip(queries, hops, strict=True):
            m = re.fullmatch(r"(\d+) hops after ([^\s,:]+): ([^\s,:]+)", q)
            assert m, q
            assert int(m[1]) == k
            assert m[3] == walk(successor, m[2], int(m[1]))


def test_node_names_are_clean_and_distinct():
    names = [depo_lib.node_name(i) for i in range(100)]
    assert len(set(names)) == 100
    assert all(re.fullmatch(r"[a-z]+", name) for name in names)


def test_get_task_depo_fields():
    cfg = ml_collections.ConfigDict(
        {"name": "depo", "max_nodes": 10, "num_queries": 2, "hops": (1, 3), "max_hops": 4}
    )
    task = get_task(cfg)
    assert isinstance(task, Depo)
    assert (task.seq_len, task.hops, task.max_hops, task.eval_hops) == (52, (1, 3), 4, (1, 2, 4))
    assert get_task({"name": "depo"}).seq_len == 360
    with pytest.raises(ValueError, match=r"task\.hops must hold integers in 1\.\.16"):
        get_task(ml_collections.ConfigDict({"name": "depo", "hops": (0, 2)}))
    with pytest.raises(ValueError, match=r"task\.num_names must be an integer >= max_nodes"):
        get_task({"name": "depo", "max_nodes": 75, "num_names": 50})


def test_eval_sets_by_hop_count():
    task = Depo(max_hops=4, eval_hops=(1, 4))
    sets = task.eval_sets(6, seed=2)
    assert list(sets) == ["", "@k=1", "@k=4"]
    for k in (1, 4):
        assert np.all(sets[f"@k={k}"]["hops"] == k)
        np.testing.assert_array_equal(
            sets[f"@k={k}"]["inputs"], task.eval_batch(6, 2, hops=k)["inputs"]
        )
