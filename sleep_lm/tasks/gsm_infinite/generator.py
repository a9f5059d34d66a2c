"""The GSM-Infinite-style problem generator (our own code; the semantics follow the benchmark's
published "realistic" generator, read side by side: see README.md in this folder).

World (structure graph). A template (``worlds.py``) gives locations and item types. The widths
w0 <= w1 (1..5) and the number of location-item edges e (<= 20) are drawn from distributions
that grow with the requested op (the benchmark's scale s(op)); every item sits in one or more
locations. Quantities: a *count* per (location, item) edge and an *item total* per location
(the sum of its counts); "hard" (d = 3) adds an *average* per edge ("the average number of
newborn children per adult owl in X") and a *child total* per location, the sum over its items
of count x average (a product of two quantities).

Dependency graph. Counts and averages (instances) are defined one by one in a random order;
each statement has 1..4 operands: the constant source ("RNG") and earlier quantities (earlier
instances, or totals whose components are all defined):

    RNG only                  "A equals k."                                   k in 1..4
    one quantity              "A equals B."
    two quantities            "A equals the sum of B and C." / "... the difference between B and C."
    three or more             "A equals the sum of B, C, and D."
    RNG + quantities          "A equals k plus <the above>." (k in 1..4) / "k times ..." (k 2..4)

Totals have no statement (implied by the world). The benchmark's number range 5: constants 1..4.

Operation count (``op``). The in-degree of a quantity is its number of operands (RNG counts
one; a child total counts both factors of each product); ``op`` is the sum of in-degrees over
the asked quantity T and all its ancestors (the solution path). The same path and count serve
both modes: in reverse mode the unknown's own edge (its constant) counts too. ops >= 2.

Modes. Forward: the question asks for T. Reverse: the unknown U is the last constant-only
instance of T's path in dependency order; its statement becomes "U is a positive number.", T's
value is one more statement ("T equals v."), and the question asks for U (unique: T must be
linear in U with a nonzero slope; draws that are not are rejected).

Values. Every quantity on the path is an integer in [0, 1000], and only totals and averages may
be 0; draws that break this are rejected and redrawn.

Text. ``sentences``: the path's statements, every other statement of the world (unneeded
in-world quantities), and filler statements until the prompt reaches the target length. Filler
uses the template's own schema with invented names (``Template.filler_*``), each defined from
one or two of the problem's real quantities ("The number of adult herons in Quillmoor Zoo
equals the sum of <real> and <real>."), so no sentence can be skipped by its words. Sentences
are shuffled; ``necessary`` marks the path's. The prompt (``format_prompt``) is the question
first, then the statements, then "Answer:"; the answer follows as " <integer>".
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from sleep_lm.tasks.gsm_infinite import tokens as tokens_lib
from sleep_lm.tasks.gsm_infinite.worlds import (
    WORLDS,
    Template,
    average_name,
    count_name,
    total_name,
)

TEMPLATES = tuple(WORLDS)  # ("zoo", "school", "festival")
MODES = ("forward", "reverse")
LEVELS = ("medium", "hard")
DEPTH = {"medium": 2, "hard": 3}  # the benchmark's d
# The benchmark's template mix (zoo : school : festival = 2 : 1 : 1).
TEMPLATE_WEIGHTS = {"zoo": 2, "school": 1, "festival": 1}
# The benchmark's names of templates and modes (the JSONL export in its layout).
BENCHMARK_TEMPLATE = {
    "zoo": "crazy_zootopia",
    "school": "teachers_in_school",
    "festival": "movie_festival_awards",
}
BENCHMARK_MODE = {"forward": "normalforward", "reverse": "forwardreverse"}
MIN_OP = 2
MAX_VALUE = 1000
MAX_ATTEMPTS = 4000  # world draws per problem before giving up
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


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _operands_text(names: list[str], diff: bool) -> str:
    if len(names) == 1:
        return names[0]
    if len(names) == 2:
        word = "the difference between" if diff else "the sum of"
        return f"{word} {names[0]} and {names[1]}"
    return "the sum of " + ", ".join(names[:-1]) + f", and {names[-1]}"


def statement(q: Quantity, world: list[Quantity]) -> str:
    """The one sentence that defines instance ``q``."""
    rhs = _operands_text([world[i].name for i in q.args], q.diff) if q.args else ""
    if q.k and rhs:
        rhs = f"{q.k} {'times' if q.times else 'plus'} {rhs}"
    elif q.k:
        rhs = str(q.k)
    return f"{_capital(q.name)} equals {rhs}."


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


class _Affine:
    """a * x + b with integer a, b; a product of two non-constants raises ``_Nonlinear``."""

    def __init__(self, a: int, b: int):
        self.a, self.b = a, b

    def __add__(self, other):
        o = other if isinstance(other, _Affine) else _Affine(0, other)
        return _Affine(self.a + o.a, self.b + o.b)

    __radd__ = __add__

    def __sub__(self, other):
        o = other if isinstance(other, _Affine) else _Affine(0, other)
        return _Affine(self.a - o.a, self.b - o.b)

    def __mul__(self, other):
        o = other if isinstance(other, _Affine) else _Affine(0, other)
        if self.a and o.a:
            raise _Nonlinear
        return _Affine(self.a * o.b + o.a * self.b, self.b * o.b)

    __rmul__ = __mul__


class _Nonlinear(Exception):
    pass


# ------------------------------------------------------------------------------- worlds


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


def _valid_values(world, path) -> bool:
    for i in path:
        v = world[i].value
        if not 0 <= v <= MAX_VALUE or (v == 0 and world[i].kind == "count"):
            return False
    return True


def _unknown(world, path, target) -> tuple[int, int, int] | None:
    """(unknown, slope, intercept) for reverse mode, or None (no constant-only instance, or
    the target is not linear in it with a nonzero slope)."""
    consts = [i for i in path if i != target and not world[i].args and not world[i].implicit]
    if not consts:
        return None
    u = max(consts, key=lambda i: world[i].order)
    env: dict[int, object] = {}
    try:
        for i in path:
            env[i] = _Affine(1, 0) if i == u else _value(world[i], world, env)
            if not isinstance(env[i], _Affine):
                env[i] = _Affine(0, env[i])
    except _Nonlinear:
        return None
    if env[target].a == 0:
        return None
    return u, env[target].a, env[target].b


def _candidates(world, op: int, mode: str) -> list[tuple[int, int | None]]:
    found = []
    for t in range(len(world)):
        path = _ancestors(world, t)
        if op_count(world, path) != op or not _valid_values(world, path):
            continue
        if mode == "forward":
            found.append((t, None))
        elif (unknown := _unknown(world, path, t)) is not None:
            found.append((t, unknown[0]))
    return found


# ------------------------------------------------------------------------------- text


def _letters(n: int) -> list[str]:
    alphabet = list("ABCDEFGHIJKLMNOPQRSTUVWYZ")  # no X: x is reverse mode's unknown
    out = list(alphabet)
    while len(out) < n:
        out += [a + b for a in alphabet for b in alphabet]
    return out[:n]


def _format_affine(a: int, b: int) -> str:
    if a == 0:
        return str(b)
    head = "x" if a == 1 else "-x" if a == -1 else f"{a} * x"
    if b > 0:
        return f"{head} + {b}"
    if b < 0:
        return f"{head} - {-b}"
    return head


def _expression(q: Quantity, refs: list[str]) -> str:
    if q.kind == "children":
        return " + ".join(f"{refs[i]} * {refs[i + 1]}" for i in range(0, len(refs), 2))
    if not refs:
        return str(q.k)
    inner = f"{refs[0]} - {refs[1]}" if q.diff else " + ".join(refs)
    if not q.k:
        return inner
    inner = f"({inner})" if len(refs) > 1 else inner
    return f"{q.k} * {inner}" if q.times else f"{q.k} + {inner}"


def _solution(world, path, target, unknown, given) -> str:
    names = dict(zip(path, _letters(len(path)), strict=True))
    affine = {}
    if unknown is not None:
        names[unknown] = "x"
        for i in path:
            affine[i] = _Affine(1, 0) if i == unknown else _value(world[i], world, affine)
            if not isinstance(affine[i], _Affine):
                affine[i] = _Affine(0, affine[i])
    steps = []
    for i in path:
        q = world[i]
        letter = names[i]
        if i == unknown:
            steps.append(f"Define {q.name} as x; x is unknown.")
            continue
        head = f"Define {q.name} as {letter}; so {letter} = "
        expr = _expression(q, [names[a] for a in q.args])
        if unknown is None:
            chain = [expr]
            if q.args:
                chain.append(_expression(q, [str(world[a].value) for a in q.args]))
            chain.append(str(q.value))
        else:
            chain = [expr, _format_affine(affine[i].a, affine[i].b)]
        steps.append(head + " = ".join(dict.fromkeys(chain)) + ".")
    if unknown is None:
        steps.append(f"Answer: {world[target].value}.")
    else:
        a, b = affine[target].a, affine[target].b
        shifted = f"{given} - {b}" if b >= 0 else f"{given} + {-b}"
        steps.append(
            f"We know {names[target]} = {given}, so {_format_affine(a, b)} = {given}, "
            f"so x = ({shifted}) / {a} = {world[unknown].value}."
        )
        steps.append(f"Answer: {world[unknown].value}.")
    return " ".join(steps)


def format_prompt(question: str, problem: str) -> str:
    """What the model reads: the question, the statements, then "Answer:" (the answer
    follows as " <integer>")."""
    return f"{question}\n{problem}\nAnswer:"


def answer_text(answer: int) -> str:
    return f" {int(answer)}"


class _Filler:
    """Filler statements in the template's own schema with invented names, each defined from
    one or two real quantities of the problem (``real``: their names)."""

    def __init__(self, rng, template: Template, level: str, real: list[str]):
        self.rng, self.t, self.real = rng, template, real
        self.hard = level == "hard"
        self.used: set[str] = set()

    def draw(self) -> str | None:
        rng, t = self.rng, self.t
        for _ in range(64):
            loc = t.filler_locations[int(rng.integers(len(t.filler_locations)))]
            item = t.filler_items[int(rng.integers(len(t.filler_items)))]
            average = self.hard and rng.random() < 0.5
            name = (average_name if average else count_name)(t, loc, item)
            if name in self.used:
                continue
            self.used.add(name)
            n = min(len(self.real), 1 if rng.random() < 0.5 else 2)
            refs = [self.real[int(j)] for j in rng.choice(len(self.real), n, replace=False)]
            diff = n == 2 and rng.random() < 0.5
            return f"{_capital(name)} equals {_operands_text(refs, diff)}."
        return None


# ------------------------------------------------------------------------------- problems


def _check_choice(field: str, value, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"{field} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def check_op(op, field: str = "op") -> int:
    if isinstance(op, bool) or not isinstance(op, int | np.integer) or op < MIN_OP:
        raise ValueError(
            f"{field} must be an integer >= {MIN_OP} (the benchmark's smallest op), got {op!r}"
        )
    return int(op)


def check_length(length, field: str = "length"):
    """None, an int >= 1, or (lo, hi) with 1 <= lo <= hi; returns (lo, hi) or None."""
    if length is None:
        return None
    if isinstance(length, int | np.integer) and not isinstance(length, bool):
        length = (int(length), int(length))
    try:
        lo, hi = (int(v) for v in length)
    except (TypeError, ValueError):
        raise ValueError(f"{field} must be an int or (lo, hi) tokens, got {length!r}") from None
    if not 1 <= lo <= hi:
        raise ValueError(f"{field} must satisfy 1 <= lo <= hi, got {length!r}")
    return lo, hi


def generate_problem(
    rng: np.random.Generator,
    *,
    op: int,
    mode: str,
    template: str,
    level: str = "medium",
    length=None,
    tokenizer=None,
    noise: bool = True,
) -> dict:
    """One problem; see the module docstring for the world, the op count and the text.

    Args:
      rng: the source of randomness (the problem is a deterministic function of its state).
      op: the operation count (>= 2).
      mode, template, level: from ``MODES``, ``TEMPLATES``, ``LEVELS``.
      length: the prompt's target length in tokens: an int, or (lo, hi) to draw it uniformly
        (raised to the world's own statements when those are longer, up to hi); filler is
        added up to it. None: the world's statements and the question only (no filler).
      tokenizer: measures ``length`` (default: ``tokens.ByteTokenizer()``, i.e. bytes).
      noise: add filler statements (otherwise the prompt stops at the world's statements).

    Returns:
      dict: ``problem`` (the statements joined), ``sentences`` (list, in order), ``necessary``
      (list of bool per sentence: on the solution path), ``question``, ``solution``,
      ``answer`` (int), ``op``, ``template``, ``mode``, ``level``, ``d`` (2 or 3), ``length``
      (tokens of ``prompt``) and ``prompt`` (``format_prompt(question, problem)``).

    Raises:
      ValueError naming the field: unknown template / mode / level, bad op or length, or a
      length that the path's own statements do not fit in.
    """
    op = check_op(op)
    _check_choice("mode", mode, MODES)
    _check_choice("template", template, TEMPLATES)
    _check_choice("level", level, LEVELS)
    bounds = check_length(length)
    tok = tokenizer or tokens_lib.ByteTokenizer()
    t = WORLDS[template]
    shortest = None
    hi = None if bounds is None else bounds[1]
    for _ in range(MAX_ATTEMPTS):
        world = _draw_world(rng, t, op, mode, level)
        found = _candidates(world, op, mode)
        # The benchmark's necessary graph is built around the deepest implicit total first
        # (hard: a child total, i.e. products; medium: an item total): prefer such targets.
        want = "children" if level == "hard" else "total"
        deep = [c for c in found if any(world[i].kind == want for i in _ancestors(world, c[0]))]
        found = deep or found
        if not found:
            continue
        target, unknown = found[int(rng.integers(len(found)))]
        path = _ancestors(world, target)
        given = world[target].value
        core = []  # (sentence, quantity): the path's statements
        for i in path:
            q = world[i]
            if i == unknown:
                core.append(f"{_capital(q.name)} is a positive number.")
            elif not q.implicit:
                core.append(statement(q, world))
        if mode == "forward":
            question, answer = f"What is {world[target].name}?", given
        else:
            core.append(f"{_capital(world[target].name)} equals {given}.")
            question, answer = f"What is {world[unknown].name}?", world[unknown].value
        base = len(tok.encode(format_prompt(question, " ".join(core))))
        if hi is None or base <= hi:
            break
        shortest = base if shortest is None else min(shortest, base)
    else:
        if shortest is None:
            raise ValueError(
                f"op: no {mode} {level} {template} problem with op={op} in {MAX_ATTEMPTS} worlds"
            )
        raise ValueError(
            f"length: {hi} tokens is shorter than the shortest {mode} {template} problem "
            f"with op={op} drawn ({shortest} tokens)"
        )

    on_path = set(path)
    extra = [
        statement(q, world) for i, q in enumerate(world) if not q.implicit and i not in on_path
    ]
    sentences, necessary = list(core), [True] * len(core)
    if bounds is None:
        sentences += extra
        necessary += [False] * len(extra)
    else:
        goal = max(int(rng.integers(bounds[0], bounds[1] + 1)), base)
        current = base
        # Unneeded in-world statements first (all of them when they fit), then filler.
        for j in rng.permutation(len(extra)):
            cost = len(tok.encode(" " + extra[j]))
            if current + cost <= goal:
                sentences.append(extra[j])
                necessary.append(False)
                current += cost
        if noise:
            mentioned = {q.name for i, q in enumerate(world) if i in on_path or not q.implicit}
            real = [q.name for q in world if q.name in mentioned and q.name != world[target].name]
            real = real or [world[target].name]
            pool = _Filler(rng, t, level, real)
            misses = 0
            while misses < 24:
                drawn = pool.draw()
                if drawn is None:
                    break
                cost = len(tok.encode(" " + drawn))
                if current + cost <= goal:
                    sentences.append(drawn)
                    necessary.append(False)
                    current += cost
                    misses = 0
                else:
                    misses += 1
        goal_max = goal
    order = rng.permutation(len(sentences))
    sentences = [sentences[i] for i in order]
    necessary = [necessary[i] for i in order]
    prompt = format_prompt(question, " ".join(sentences))
    measured = len(tok.encode(prompt))
    # Token counts of parts need not add up exactly under BPE: drop unneeded ones until it fits.
    while bounds is not None and measured > goal_max:
        drop = max(j for j, c in enumerate(necessary) if not c)
        del sentences[drop], necessary[drop]
        prompt = format_prompt(question, " ".join(sentences))
        measured = len(tok.encode(prompt))
    return {
        "problem": " ".join(sentences),
        "sentences": sentences,
        "necessary": necessary,
        "question": question,
        "solution": _solution(world, path, target, unknown, given),
        "answer": int(answer),
        "op": op,
        "template": template,
        "mode": mode,
        "level": level,
        "d": DEPTH[level],
        "length": measured,
        "prompt": prompt,
    }
