"""A problem's world and its dependency graph (generator.py's docstring gives the semantics).

``Quantity`` (a count, average or total of the world), the structure draw (``scale``:
locations x items grown with the requested op), the definitions drawn one by one with 1..4
operands and their values (``_draw_world``), a quantity's solution path (``_ancestors``) and
its operation count (``op_count``).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from sleep_lm.tasks.gsm_infinite.worlds import Template, average_name, count_name, total_name

DEPTH = {"medium": 2, "hard": 3}  # the benchmark's d
MAX_EDGES = 20  # the benchmark's ip_max
# Its generation script's op ceiling per requested op (ops 2..20); beyond 20: 1.5 x op.
_CEILING = {2: 3, 3: 4, 4: 4, 5: 6, 6: 6, 7: 10, 8: 10, 9: 10, 10: 15, 11: 15}
_CEILING.update({k: 20 for k in range(12, 16)} | {k: 25 for k in range(16, 19)} | {19: 30, 20: 30})


@dataclasses.dataclass
class Quantity:
    name: str
    kind: str  # "count", "average", "total" (sum of counts), "children" (sum of count x average)
    location: str
    args: tuple[int, ...] = ()  # operand quantities (totals: components; children: pairs)
    k: int = 0  # constant (0: no RNG operand)
    times: bool = False  # k multiplies the operands' result (else: k plus it)
    diff: bool = False  # two operands: their difference (else: the sum of all operands)
    value: int = 0
    order: int = -1  # definition order (instances), -1 for totals

    @property
    def indegree(self) -> int:
        return len(self.args) + (1 if self.k else 0)

    @property
    def implicit(self) -> bool:
        return self.kind in ("total", "children")


def _combine(q: Quantity, values: list) -> object:
    """q's value from its operands' values (ints, or ``_Affine`` in reverse mode)."""
    if q.kind == "children":
        return sum((values[i] * values[i + 1] for i in range(0, len(values), 2)), 0)
    if not values:
        return q.k
    inner = values[0] - values[1] if q.diff else sum(values[1:], values[0])
    if not q.k:
        return inner
    return inner * q.k if q.times else inner + q.k


def scale(op: int) -> int:
    """The benchmark's structure scale s for a requested op (its script's ceiling, halved)."""
    return (_CEILING.get(op, math.ceil(1.5 * op)) + 1) // 2


def _draw_structure(rng, template: Template, op: int, mode: str, d: int) -> list[tuple[str, str]]:
    """(location, item) edges; widths and edge count grow with ``scale(op)`` as the
    benchmark's structure graphs do (soft-max weights over widths 1..5)."""
    s = scale(op)
    rel = (s - 1) / (MAX_EDGES - 1)
    weights = np.exp([-((rel - c) ** 2) for c in (0.1, 0.3, 0.5, 0.7, 0.9)])
    t = rng.choice(np.arange(1, 6), size=2, p=weights / weights.sum())
    if s <= 5:  # small problems: the benchmark narrows the widths
        t = np.maximum(t, 2) if (mode == "forward" and d == 2) else np.minimum(t, 3)
    w0, w1 = int(t.min()), int(t.max())
    e = int(min(rng.integers((d - 1) * w0, MAX_EDGES + 1, size=2).min(), w1**2 + (d - 2) * w1))
    sizes = [w0, w0]  # locations, items; grown towards w1 until e edges fit
    p = rng.random()
    while sizes != [w1, w1]:
        grow = [i for i in (0, 1) if sizes[i] < w1]
        if sizes[0] * sizes[1] < e or (sizes[1] != e and rng.random() < p):
            sizes[grow[int(rng.integers(len(grow)))]] += 1
        else:
            break
    n_loc, n_item = sizes
    n_loc, n_item = min(n_loc, len(template.locations)), min(n_item, len(template.items))
    locs = [template.locations[i] for i in rng.choice(len(template.locations), n_loc, False)]
    items = [template.items[i] for i in rng.choice(len(template.items), n_item, False)]
    edges = {(locs[int(rng.integers(n_loc))], item) for item in items}  # every item placed
    target = min(e, n_loc * n_item)
    while len(edges) < target:
        bare = [loc for loc in locs if all(x != loc for x, _ in edges)]
        loc = bare[0] if bare else locs[int(rng.integers(n_loc))]
        edges.add((loc, items[int(rng.integers(n_item))]))
    return sorted(edges, key=lambda x: (locs.index(x[0]), items.index(x[1])))


def _draw_world(rng, template: Template, op: int, mode: str, level: str) -> list[Quantity]:
    """Quantities with their definitions and values (see the module docstring)."""
    d = DEPTH[level]
    edges = _draw_structure(rng, template, op, mode, d)
    world: list[Quantity] = []
    instances, totals = [], []
    for loc in dict.fromkeys(loc for loc, _ in edges):
        counts, pairs = [], []
        for _, item in (x for x in edges if x[0] == loc):
            world.append(Quantity(count_name(template, loc, item), "count", loc))
            counts.append(len(world) - 1)
            if d == 3:
                world.append(Quantity(average_name(template, loc, item), "average", loc))
                pairs += [counts[-1], len(world) - 1]
        instances += counts + pairs[1::2]
        world.append(Quantity(total_name(template, loc, False), "total", loc, tuple(counts)))
        totals.append(len(world) - 1)
        if d == 3:
            world.append(Quantity(total_name(template, loc, True), "children", loc, tuple(pairs)))
            totals.append(len(world) - 1)

    defined: list[int] = []
    pending = list(totals)
    for order, i in enumerate(rng.permutation(instances)):
        q = world[int(i)]
        # Operand count as the benchmark's unneeded-parameter rule: 1, then +1 w.p. 1/2 up to 4.
        dep = 1
        while dep < min(4, len(defined) + 1) and rng.random() < 0.5:
            dep += 1
        use_rng = dep == len(defined) + 1 or rng.random() < 0.5
        n_args = dep - 1 if use_rng else dep
        q.args = tuple(int(a) for a in rng.choice(defined, n_args, replace=False)) if n_args else ()
        q.k, q.times = 0, False
        if use_rng or not q.args:
            q.times = bool(q.args) and rng.random() < 0.5
            q.k = int(rng.integers(2 if q.times else 1, 5))
        q.diff = len(q.args) == 2 and rng.random() < 0.5
        q.order = order
        defined.append(int(i))
        q.value = _value(q, world)
        for t in list(pending):  # totals become usable once all their components are defined
            if all(world[a].order >= 0 for a in world[t].args):
                world[t].value = _value(world[t], world)
                pending.remove(t)
                defined.append(t)
    return world


def _value(q: Quantity, world, env=None) -> object:
    return _combine(q, [env[a] if env is not None else world[a].value for a in q.args])


def _ancestors(world: list[Quantity], target: int) -> list[int]:
    """Target and its ancestors, in dependency order (postorder)."""
    order: list[int] = []
    seen: set[int] = set()

    def visit(i):
        if i in seen:
            return
        seen.add(i)
        for a in world[i].args:
            visit(a)
        order.append(i)

    visit(target)
    return order


def op_count(world: list[Quantity], path: list[int]) -> int:
    return sum(world[i].indegree for i in path)
