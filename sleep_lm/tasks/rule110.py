"""Rule 110 rollout task (the paper's first experiment), pure NumPy.

Each example holds ``num_states`` independent random states of ``state_bits`` cells (defaults
4 x 24). The model must say, for every state, the first cell (index 0) of that state after
``steps`` applications of the elementary cellular automaton Rule 110 with a periodic boundary.
Predicting t steps ahead has no known parallel shortcut, so the answer needs sequential compute.

Vocabulary (``vocab_size = 3``): ``0`` = cell '0', ``1`` = cell '1', ``2`` = query token.

Full sequence per example (``seq_len + 1 = 101`` tokens with the defaults)::

    position  0 .. 95   state 0 (cells 0..23), state 1, state 2, state 3   tokens 0/1
    position  96        query token                                         token 2
    position  97 .. 100 label 0, label 1, label 2, label 3                  tokens 0/1

A batch is that sequence shifted by one: ``inputs = full[:, :100]``, ``targets = full[:, 1:]``
(both int32 [batch, 100]), and ``loss_mask`` (bool [batch, 100]) is true exactly at positions
96..99, where the targets are labels 0..3. With window L = 24 each state fills its own window
and the query + labels form the last (partial) window.
"""

from __future__ import annotations

import numpy as np

from sleep_lm.tasks import _common

ZERO, ONE, QUERY = 0, 1, 2

# Rule 110 = 0b01101110: bit p of 110 is the new cell for neighbourhood p = 4*left + 2*centre
# + right, so 111 -> 0, 110 -> 1, 101 -> 1, 100 -> 0, 011 -> 1, 010 -> 1, 001 -> 1, 000 -> 0.
RULE = 110
_TABLE = np.array([(RULE >> p) & 1 for p in range(8)], dtype=np.uint8)


def evolve(bits: np.ndarray, steps: int) -> np.ndarray:
    """Applies Rule 110 ``steps`` times along the last axis, periodic boundary.

    Args:
      bits: array of 0/1 cells [..., cells] (any integer or bool dtype).
      steps: number of updates t >= 0.

    Returns:
      0/1 cells with the shape and dtype of ``bits`` after t updates (a copy when t = 0).
    """
    steps = _common.check_int("steps", steps, 0)
    bits = np.asarray(bits)
    cells = bits.astype(np.uint8)
    for _ in range(steps):
        # Cell i's left neighbour is cell i - 1 and its right neighbour is cell i + 1 (mod n).
        left = np.roll(cells, 1, axis=-1)
        right = np.roll(cells, -1, axis=-1)
        cells = _TABLE[(left << 2) | (cells << 1) | right]
    return cells.astype(bits.dtype)


class Rule110:
    """Four-state Rule 110 rollout task; see the module docstring for the layout.

    Args:
      steps: rollout depth t >= 0 (t = 0 is pure recall of each state's first cell).
      state_bits: cells per state (24 in the paper).
      num_states: states (and labels) per example (4 in the paper).
      eval_steps: extra rollout depths to evaluate at (``eval_sets``), e.g. (8, 16): the
        model trained at ``steps`` is also scored on held-out sets of these depths.
    """

    name = "rule110"
    vocab_size = 3

    def __init__(self, steps: int, state_bits: int = 24, num_states: int = 4, eval_steps=()):
        self.steps = _common.check_int("steps", steps, 0)
        self.eval_steps = tuple(_common.check_int("eval_steps", t, 0) for t in eval_steps)
        self.state_bits = _common.check_int("state_bits", state_bits, 1)
        self.num_states = _common.check_int("num_states", num_states, 1)
        self.context_len = self.num_states * self.state_bits
        # Context, query token, then all labels but the last (which is only a target).
        self.seq_len = self.context_len + self.num_states

    @property
    def query_position(self) -> int:
        """Input position of the query token (96 with the defaults)."""
        return self.context_len

    def __repr__(self) -> str:
        return (
            f"Rule110(steps={self.steps}, state_bits={self.state_bits}, "
            f"num_states={self.num_states})"
        )

    def labels(self, states: np.ndarray) -> np.ndarray:
        """First cell of each state after t updates: [batch, states, bits] -> [batch, states]."""
        return evolve(states, self.steps)[..., 0]

    def sample(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
        """A fresh batch: ``inputs``/``targets`` int32 and ``loss_mask`` bool, [batch, seq_len]."""
        batch_size = _common.check_batch_size(batch_size)
        states = rng.integers(0, 2, size=(batch_size, self.num_states, self.state_bits))
        states = states.astype(np.int32)
        full = np.concatenate(
            [
                states.reshape(batch_size, self.context_len),
                np.full((batch_size, 1), QUERY, np.int32),
                self.labels(states),
            ],
            axis=1,
        )
        answer = np.zeros(full.shape, bool)
        answer[:, self.context_len + 1 :] = True
        return _common.shift(full, answer)

    def eval_batch(self, size: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Fixed held-out set of ``size`` examples from a seed stream disjoint from training."""
        return self.sample(_common.eval_rng(seed), size)

    def eval_sets(self, size: int, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
        """Held-out sets by difficulty: "" (t = ``steps``) and "@t=T" for each ``eval_steps``.

        The suffix is appended to the metric names (``eval/accuracy@t=16``).
        """
        sets = {"": self.eval_batch(size, seed)}
        for t in self.eval_steps:
            other = Rule110(t, self.state_bits, self.num_states)
            sets[f"@t={t}"] = other.eval_batch(size, seed)
        return sets

    def render(self, tokens) -> str:
        """Readable form of one sequence, e.g. ``010...1 110...0 ... ? 0110``.

        Takes any 1-D token sequence (typically the full ``seq_len + 1`` tokens: ``inputs`` plus
        the last target). States are separated by spaces; the query renders as ``?`` and the
        labels follow it as one string; unknown ids render as ``<id>``.
        """
        symbols = {ZERO: "0", ONE: "1", QUERY: "?"}
        chars = [symbols.get(tok, f"<{tok}>") for tok in np.asarray(tokens).reshape(-1).tolist()]
        context, tail = chars[: self.context_len], chars[self.context_len :]
        groups = [
            "".join(context[i : i + self.state_bits])
            for i in range(0, len(context), self.state_bits)
        ]
        if tail and tail[0] == "?":
            groups.append("?")
            tail = tail[1:]
        groups.append("".join(tail))
        return " ".join(g for g in groups if g)
