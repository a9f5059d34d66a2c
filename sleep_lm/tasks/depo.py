"""Depo multi-hop retrieval task (from "Physics of Language Models"), pure NumPy.

Each example is a random directed cycle over n nodes, n ~ U[min_nodes, max_nodes] (defaults
3..75), with node names drawn without replacement from a pool of ``num_names`` names. The edges
are written in a random order as ``u -> v ,`` (4 tokens each; ``u->v`` means v is one hop after
u) and left-padded with PAD to ``4 * max_nodes`` = 300 tokens. Then come a query token and
``num_queries`` = 10 queries ``k hops after x : y`` (6 tokens each): x is a uniform node of the
cycle, k is drawn uniformly from the hop set (1..16 in training, one fixed k for evaluation) and
the answer y is the node reached from x by following k edges.

Vocabulary (``vocab_size = 7 + max_hops + num_names``, 123 with the defaults)::

    0 PAD   1 '->'   2 ','   3 query token   4 'hops'   5 'after'   6 ':'
    7 .. 6 + max_hops           hop counts 1 .. max_hops  (token of k is 6 + k)
    7 + max_hops .. vocab - 1   node names 'aa', 'ab', ... (two lowercase letters)

Full sequence per example (``seq_len + 1 = 361`` tokens with the defaults)::

    position 0 .. 299      PAD ... PAD  u -> v ,  u -> v ,  ...     (context, C = 300)
    position 300           query token
    position 301 + 6 j ..  k_j 'hops' 'after' x_j ':' y_j           (query j = 0 .. 9)

A batch is that sequence shifted by one: ``inputs = full[:, :360]``, ``targets = full[:, 1:]``
(int32 [batch, 360]), and ``loss_mask`` (bool [batch, 360]) is true exactly where the target
is an answer y_j, i.e. at positions ``C + 5 + 6 j`` (305, 311, ..., 359); the last target is the
last answer. With window L = 75 the context fills four windows and the queries the fifth. The
batch also carries ``hops`` (int32 [batch, num_queries]): k of each query, in the order of the
masked positions, so evaluation can be broken down by k.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

import numpy as np

from sleep_lm.tasks import _common

PAD, ARROW, COMMA, QUERY, HOPS, AFTER, COLON = range(7)
FIRST_HOP = 7  # token of hop count k is FIRST_HOP + k - 1
QUERY_LEN = 6  # k 'hops' 'after' x ':' y
EDGE_LEN = 4  # u '->' v ','
PAPER_EVAL_HOPS = (1, 2, 4, 8, 16)

_SYMBOLS = {PAD: "", ARROW: "->", COMMA: ",", QUERY: "\n", HOPS: "hops", AFTER: "after", COLON: ":"}


def node_name(index: int) -> str:
    """Name of node ``index``: two lowercase letters (no spaces, commas or colons)."""
    letters = string.ascii_lowercase
    return letters[index // len(letters)] + letters[index % len(letters)]


def _hop_set(name: str, hops, max_hops: int) -> tuple[int, ...]:
    values = (hops,) if isinstance(hops, int | np.integer) else tuple(hops)
    if not values:
        raise ValueError(f"{name} must list at least one hop count in 1..{max_hops}")
    for k in values:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= max_hops:
            raise ValueError(f"{name} must hold integers in 1..{max_hops} (max_hops), got {k!r}")
    return tuple(int(k) for k in values)


class Depo:
    """Multi-hop retrieval over a shuffled directed cycle; see the module docstring for the layout.

    Args:
      max_nodes: largest cycle; the context holds ``4 * max_nodes`` tokens (75 -> 300).
      min_nodes: smallest cycle (>= 2).
      num_queries: queries per example (10 -> 60 query tokens, T = 360 with the defaults).
      hops: training hop counts, drawn uniformly per query (default 1..max_hops).
      max_hops: largest hop count with a token in the vocabulary.
      num_names: size of the node-name pool (>= max_nodes), so names carry no order.
      eval_hops: the fixed k at which evaluation is reported (default: the paper's 1, 2, 4, 8,
        16 up to max_hops).
    """

    name = "depo"

    def __init__(
        self,
        max_nodes: int = 75,
        min_nodes: int = 3,
        num_queries: int = 10,
        hops: Iterable[int] | None = None,
        max_hops: int = 16,
        num_names: int = 100,
        eval_hops: Iterable[int] | None = None,
    ):
        self.min_nodes = _common.check_int("min_nodes", min_nodes, 2)
        self.max_nodes = _common.check_int(
            "max_nodes", max_nodes, self.min_nodes, f"min_nodes ({self.min_nodes})"
        )
        self.num_queries = _common.check_int("num_queries", num_queries, 1)
        self.max_hops = _common.check_int("max_hops", max_hops, 1)
        self.num_names = _common.check_int(
            "num_names", num_names, self.max_nodes, f"max_nodes ({self.max_nodes})"
        )
        if self.num_names > 26 * 26:
            raise ValueError(f"num_names must be <= {26 * 26}, got {self.num_names}")
        if hops is None:
            hops = range(1, self.max_hops + 1)
        self.hops = _hop_set("hops", hops, self.max_hops)
        if eval_hops is None:
            eval_hops = [k for k in PAPER_EVAL_HOPS if k <= self.max_hops]
        self.eval_hops = _hop_set("eval_hops", eval_hops, self.max_hops)

        self.first_node = FIRST_HOP + self.max_hops
        self.vocab_size = self.first_node + self.num_names
        self.context_len = EDGE_LEN * self.max_nodes
        self.seq_len = self.context_len + QUERY_LEN * self.num_queries

    def __repr__(self) -> str:
        return (
            f"Depo(max_nodes={self.max_nodes}, min_nodes={self.min_nodes}, "
            f"num_queries={self.num_queries}, hops={self.hops}, max_hops={self.max_hops}, "
            f"num_names={self.num_names}, eval_hops={self.eval_hops})"
        )

    @property
    def answer_positions(self) -> np.ndarray:
        """Target positions of the answers, int [num_queries] (where ``loss_mask`` is true)."""
        return self.context_len + (QUERY_LEN - 1) + QUERY_LEN * np.arange(self.num_queries)

    def hop_token(self, k: int) -> int:
        return FIRST_HOP + k - 1

    def sample(
        self, rng: np.random.Generator, batch_size: int, *, hops=None
    ) -> dict[str, np.ndarray]:
        """A fresh batch: ``inputs``/``targets`` int32 and ``loss_mask`` bool [batch, seq_len],
        plus ``hops`` int32 [batch, num_queries].

        Args:
          rng: source of randomness (the batch is a deterministic function of its state).
          batch_size: examples.
          hops: optional int or sequence overriding the training hop set. The hop counts are
            drawn last, so the same generator state gives the same cycles and query sources
            for every ``hops``.
        """
        batch_size = _common.check_batch_size(batch_size)
        hop_set = self.hops if hops is None else _hop_set("hops", hops, self.max_hops)
        b, m, q = batch_size, self.max_nodes, self.num_queries

        n = rng.integers(self.min_nodes, self.max_nodes + 1, size=b)  # cycle length [batch]
        # Distinct names in cycle order: slot j's successor is slot (j + 1) mod n.
        names = np.argsort(rng.random((b, self.num_names)), axis=1)[:, :m]
        slot = np.arange(m)[None, :]
        valid = slot < n[:, None]  # [batch, max_nodes]
        successor = np.take_along_axis(names, (slot + 1) % n[:, None], axis=1)

        # Shuffle the edges; padding slots sort first, so the context is left-padded.
        order = np.argsort(np.where(valid, rng.random((b, m)), -1.0), axis=1)
        src = np.take_along_axis(names, order, axis=1)
        dst = np.take_along_axis(successor, order, axis=1)
        keep = np.take_along_axis(valid, order, axis=1)
        edges = np.stack(
            [
                self.first_node + src,
                np.full_like(src, ARROW),
                self.first_node + dst,
                np.full_like(src, COMMA),
            ],
            axis=-1,
        )  # [batch, max_nodes, 4]
        edges = np.where(keep[..., None], edges, PAD).reshape(b, self.context_len)

        source = rng.integers(0, n[:, None], size=(b, q))  # slot of x per query
        k = rng.choice(np.asarray(hop_set), size=(b, q))
        answer = (source + k) % n[:, None]
        queries = np.stack(
            [
                self.hop_token(k),
                np.full_like(k, HOPS),
                np.full_like(k, AFTER),
                self.first_node + np.take_along_axis(names, source, axis=1),
                np.full_like(k, COLON),
                self.first_node + np.take_along_axis(names, answer, axis=1),
            ],
            axis=-1,
        ).reshape(b, q * QUERY_LEN)

        full = np.concatenate([edges, np.full((b, 1), QUERY), queries], axis=1)
        is_answer = np.zeros(full.shape, bool)
        is_answer[:, self.answer_positions + 1] = True
        batch = _common.shift(full, is_answer)
        batch["hops"] = k.astype(np.int32)
        return batch

    def eval_batch(self, size: int, seed: int = 0, hops=None) -> dict[str, np.ndarray]:
        """Fixed held-out set from a seed stream disjoint from training.

        ``hops=k`` asks every query for k hops; the cycles and query sources do not depend on
        ``hops``, so per-k sets from the same seed are paired.
        """
        return self.sample(_common.eval_rng(seed), size, hops=hops)

    def eval_sets(self, size: int, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
        """Held-out sets by difficulty: "" (the training hop mix) and "@k=K" per ``eval_hops``.

        The suffix is appended to the metric names (``eval/accuracy@k=8``).
        """
        sets = {"": self.eval_batch(size, seed)}
        for k in self.eval_hops:
            sets[f"@k={k}"] = self.eval_batch(size, seed, hops=k)
        return sets

    def token_str(self, token: int) -> str:
        """Text of one token (PAD is empty, the query token a line break)."""
        token = int(token)
        if token in _SYMBOLS:
            return _SYMBOLS[token]
        if FIRST_HOP <= token < self.first_node:
            return str(token - FIRST_HOP + 1)
        if self.first_node <= token < self.vocab_size:
            return node_name(token - self.first_node)
        return f"<{token}>"

    def render(self, tokens) -> str:
        """Paper notation: ``aa->bc, ..., xy->aa,`` then a line with ``3 hops after bc: xy, ...``.

        Takes any 1-D token sequence, typically the full ``seq_len + 1`` tokens (``inputs`` plus
        the last target). PAD tokens are skipped; queries are separated by ``, ``.
        """
        out: list[str] = []
        glue = True  # no space before the next word (start of a line or after '->')
        for token in np.asarray(tokens).reshape(-1).tolist():
            text = self.token_str(token)
            if token == PAD:
                continue
            if token in (ARROW, COMMA, COLON):
                out.append(text)
                glue = token == ARROW
                continue
            if token == QUERY:
                out.append(text)
                glue = True
                continue
            if FIRST_HOP <= token < self.first_node and not glue and out[-1] != ",":
                out.append(",")  # a new query starts: separate it from the previous answer
            out.append(text if glue else " " + text)
            glue = False
        return "".join(out)
