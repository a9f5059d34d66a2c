"""The GSM-Infinite-style problem generator (our own code, written from the paper's description).

World. A template (``worlds.py``) names locations, item types and qualifiers. A world draws
1-3 locations, 1-3 item types per location and, at level "hard", 1-2 qualifiers per item
type. Every leaf is an *instance* quantity; *implicit totals* sum the quantities below one
node: "medium" (2 levels) has one total per location (over its items); "hard" (3 levels) has
one total per (location, item type) (over its qualifiers) and one per location (over its item
totals).

Dependency graph. The instances are defined one by one in a random order; each gets exactly one
statement, of one of six kinds (k a constant):

    const   "A equals k."                          k in 1..4
    plus    "A equals k more than B."              A = B + k, k in 1..4
    times   "A equals k times B."                  A = k * B, k in 2..4
    equal   "A equals B."
    sum     "A equals the sum of B and C."         A = B + C
    diff    "A equals B minus C."                  A = B - C

where B, C are quantities already defined: earlier instances, or totals whose components are
all defined (so the graph is acyclic). Totals have no statement: they are implied by the
world (a total is the sum of every instance mentioned under its node). Every quantity of the
world, used or not, is an integer in [0, 1000]; a definition that would leave the range is
redrawn (after a few tries: a constant).

Operation count (difficulty, ``op``). The *in-degree* of a quantity is the number of operands
of its definition, constants included: const 1, equal 1, plus 2, times 2, sum 2, diff 2, and
a total the number of its components. The operation count of a problem is the sum of the
in-degrees over the quantities on its solution path (as GSM-Infinite counts: A = 2 (1),
D = A (1), X = A + D (2) gives 4):

- forward: the path is the asked quantity T and all its ancestors; T is the last quantity of
  the path in dependency order.
- reverse: one instance U among T's ancestors has its statement removed ("unknown but
  positive"); the question gives T's value and asks for U. The path is T and its ancestors,
  not expanding U (U is now a leaf with in-degree 0); the count is over that path, so it
  counts exactly the definitions the solver must use. T depends on U affinely (every product
  has a constant factor), T = a * U + b; draws with a = 0 (T does not determine U) or U < 1
  are rejected, so U is unique and positive.

A world is redrawn until some quantity (forward) or (T, U) pair (reverse) has the requested
count; the question is drawn uniformly among those.

Text. The problem (``problem``) is the shuffled statements joined by spaces: the path's
definitions, unneeded definitions of the same world (in-distribution distractors), and noise
statements about worlds of the *other* templates (instances only, defined by constants or from
earlier noise quantities), added until the prompt reaches ``length`` tokens. The prompt the
model reads is ``format_prompt``: the question first, then the problem, then "Answer:"; the
answer follows as " <integer>". ``length`` is the prompt's token count in the tokenizer in
use. With a target length, the prompt ends at most ``length`` tokens and, unless the noise
vocabulary runs out, less than one (short) noise statement below it: ``length - result`` is
smaller than the shortest noise statement tried last (< 72 tokens with the byte tokenizer).

Solution (``solution``): one step per path quantity in dependency order, e.g. "Define the
number of owls in Pine Ridge Zoo as B; so B = A + 2 = 5 + 2 = 7." and "Answer: 7."; in
reverse mode the unknown is x, every step gives its value as "a * x + b", and the last line
solves for x.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sleep_lm.tasks.gsm_infinite import tokens as tokens_lib
from sleep_lm.tasks.gsm_infinite.worlds import WORLDS, Template, instance_name, total_name

TEMPLATES = tuple(WORLDS)  # ("zoo", "school", "festival")
MODES = ("forward", "reverse")
LEVELS = ("medium", "hard")
MAX_VALUE = 1000
MAX_ATTEMPTS = 2000  # world draws per problem before giving up (an op the setup cannot reach)

# Definition kinds of instance quantities and their draw weights.
KINDS = ("const", "plus", "times", "equal", "sum", "diff")
_KIND_P = np.array([0.25, 0.15, 0.1, 0.1, 0.25, 0.15])
_ARITY = {"const": 0, "plus": 1, "times": 1, "equal": 1, "sum": 2, "diff": 2}
_INDEGREE = {"const": 1, "plus": 2, "times": 2, "equal": 1, "sum": 2, "diff": 2}


@dataclasses.dataclass
class Quantity:
    name: str  # "the number of owls in Pine Ridge Zoo" (lower case)
    kind: str  # one of KINDS, or "total"
    args: tuple[int, ...] = ()  # indices of operand quantities
    k: int = 0  # the constant of const / plus / times
    value: int = 0

    @property
    def indegree(self) -> int:
        return len(self.args) if self.kind == "total" else _INDEGREE[self.kind]


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def statement(q: Quantity, world: list[Quantity]) -> str:
    """The one sentence that defines instance ``q``."""
    a = _capital(q.name)
    names = [world[i].name for i in q.args]
    if q.kind == "const":
        return f"{a} equals {q.k}."
    if q.kind == "plus":
        return f"{a} equals {q.k} more than {names[0]}."
    if q.kind == "times":
        return f"{a} equals {q.k} times {names[0]}."
    if q.kind == "equal":
        return f"{a} equals {names[0]}."
    if q.kind == "sum":
        return f"{a} equals the sum of {names[0]} and {names[1]}."
    if q.kind == "diff":
        return f"{a} equals {names[0]} minus {names[1]}."
    raise ValueError(f"no statement for a {q.kind} quantity")


def _evaluate(kind: str, k: int, values: list[int]) -> int:
    if kind == "const":
        return k
    if kind == "plus":
        return values[0] + k
    if kind == "times":
        return k * values[0]
    if kind == "equal":
        return values[0]
    if kind == "sum":
        return values[0] + values[1]
    if kind == "diff":
        return values[0] - values[1]
    raise ValueError(kind)


# ------------------------------------------------------------------------------- worlds


def _draw_world(rng: np.random.Generator, template: Template, level: str) -> list[Quantity]:
    """Quantities of one world with their definitions and values (see the module docstring)."""
    world: list[Quantity] = []
    instances: list[int] = []
    totals: list[int] = []  # in dependency order: item totals before their location total
    n_loc = int(rng.integers(1, 4))
    for loc in rng.choice(len(template.locations), n_loc, replace=False):
        location = template.locations[loc]
        loc_parts = []
        n_items = int(rng.integers(1, 4))
        for it in rng.choice(len(template.items), n_items, replace=False):
            item = template.items[it]
            if level == "hard":
                leaves = []
                n_q = int(rng.integers(1, 3))
                for qi in rng.choice(len(template.qualifiers), n_q, replace=False):
                    name = instance_name(template, location, item, template.qualifiers[qi])
                    world.append(Quantity(name, "const"))
                    instances.append(len(world) - 1)
                    leaves.append(len(world) - 1)
                world.append(Quantity(total_name(template, location, item), "total", tuple(leaves)))
                totals.append(len(world) - 1)
                loc_parts.append(len(world) - 1)
            else:
                world.append(Quantity(instance_name(template, location, item, None), "const"))
                instances.append(len(world) - 1)
                loc_parts.append(len(world) - 1)
        world.append(Quantity(total_name(template, location, None), "total", tuple(loc_parts)))
        totals.append(len(world) - 1)

    defined: list[int] = []
    done = set()
    pending = list(totals)
    for i in rng.permutation(instances):
        q = world[int(i)]
        for _ in range(4):
            kind = KINDS[int(rng.choice(len(KINDS), p=_KIND_P))]
            if len(defined) < _ARITY[kind] or (kind == "diff" and len(defined) < 2):
                continue
            args = tuple(int(a) for a in rng.choice(defined, _ARITY[kind], replace=False))
            k = int(rng.integers(2, 5)) if kind == "times" else int(rng.integers(1, 5))
            value = _evaluate(kind, k, [world[a].value for a in args])
            if 0 <= value <= MAX_VALUE:
                break
        else:
            kind, args, k = "const", (), int(rng.integers(1, 5))
            value = k
        q.kind, q.args, q.k, q.value = kind, args, k, value
        defined.append(int(i))
        done.add(int(i))
        # Totals become usable once all their components are defined.
        for t in list(pending):
            if all(a in done for a in world[t].args):
                world[t].value = sum(world[a].value for a in world[t].args)
                pending.remove(t)
                done.add(t)
                defined.append(t)
    return world


def _ancestors(world: list[Quantity], target: int, stop: int | None = None) -> list[int]:
    """Target and its ancestors in dependency order (postorder), not expanding ``stop``."""
    order: list[int] = []
    seen: set[int] = set()

    def visit(i):
        if i in seen:
            return
        seen.add(i)
        if i != stop:
            for a in world[i].args:
                visit(a)
        order.append(i)

    visit(target)
    return order


def _op_count(world, path, unknown=None) -> int:
    return sum(world[i].indegree for i in path if i != unknown)


def _affine(world, path, unknown) -> dict[int, tuple[int, int]]:
    """(a, b) with value = a * x + b for every path quantity, x the unknown's value."""
    out: dict[int, tuple[int, int]] = {}
    for i in path:
        q = world[i]
        if i == unknown:
            out[i] = (1, 0)
            continue
        ab = [out[a] for a in q.args]
        if q.kind == "const":
            out[i] = (0, q.k)
        elif q.kind == "plus":
            out[i] = (ab[0][0], ab[0][1] + q.k)
        elif q.kind == "times":
            out[i] = (q.k * ab[0][0], q.k * ab[0][1])
        elif q.kind == "equal":
            out[i] = ab[0]
        elif q.kind in ("sum", "total"):
            out[i] = (sum(a for a, _ in ab), sum(b for _, b in ab))
        elif q.kind == "diff":
            out[i] = (ab[0][0] - ab[1][0], ab[0][1] - ab[1][1])
    return out


def _candidates(world, op: int, mode: str) -> list[tuple[int, int | None]]:
    found = []
    for t in range(len(world)):
        path = _ancestors(world, t)
        if mode == "forward":
            if _op_count(world, path) == op:
                found.append((t, None))
            continue
        for u in path[:-1]:
            if world[u].kind == "total" or world[u].value < 1:
                continue
            reduced = _ancestors(world, t, stop=u)
            if _op_count(world, reduced, u) != op:
                continue
            if _affine(world, reduced, u)[t][0] != 0:
                found.append((t, u))
    return found


# ------------------------------------------------------------------------------- text


def _letters(n: int) -> list[str]:
    alphabet = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWYZ"]  # no X: x is reverse mode's unknown
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
    if q.kind == "const":
        return str(q.k)
    if q.kind == "plus":
        return f"{refs[0]} + {q.k}"
    if q.kind == "times":
        return f"{q.k} * {refs[0]}"
    if q.kind == "equal":
        return refs[0]
    if q.kind in ("sum", "total"):
        return " + ".join(refs)
    if q.kind == "diff":
        return f"{refs[0]} - {refs[1]}"
    raise ValueError(q.kind)


def _solution(world, path, target, unknown, given) -> str:
    names = dict(zip(path, _letters(len(path)), strict=True))
    if unknown is not None:
        names[unknown] = "x"
        affine = _affine(world, path, unknown)
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
            numbers = _expression(q, [str(world[a].value) for a in q.args])
            chain = [expr, numbers] if q.args else [expr]
            if chain[-1] != str(q.value):
                chain.append(str(q.value))
        else:
            chain = [expr]
            value = _format_affine(*affine[i])
            if value != expr:
                chain.append(value)
        steps.append(head + " = ".join(dict.fromkeys(chain)) + ".")
    if unknown is None:
        steps.append(f"Answer: {world[target].value}.")
    else:
        a, b = affine[target]
        shifted = f"{given} - {b}" if b >= 0 else f"{given} + {-b}"
        x = world[unknown].value
        steps.append(
            f"We know {names[target]} = {given}, so {_format_affine(a, b)} = {given}, "
            f"so x = ({shifted}) / {a} = {x}."
        )
        steps.append(f"Answer: {x}.")
    return " ".join(steps)


def format_prompt(question: str, problem: str) -> str:
    """What the model reads: the question, the statements, then "Answer:" (the answer
    follows as " <integer>")."""
    return f"{question}\n{problem}\nAnswer:"


def answer_text(answer: int) -> str:
    return f" {int(answer)}"


class _Noise:
    """Noise statements from the other templates' vocabularies (instances only: each defined
    by a constant or from an earlier noise quantity of its world)."""

    def __init__(self, rng: np.random.Generator, template: str):
        self.rng = rng
        self.templates = [WORLDS[t] for t in TEMPLATES if t != template]
        self.used: set[str] = set()
        self.defined: dict[str, list[tuple[str, int]]] = {t.name: [] for t in self.templates}

    def draw(self) -> tuple[str, str, int] | None:
        """(sentence, name, value, template) of a fresh noise quantity; None when 64 draws
        found none unused. ``accept`` it to make it usable by later noise statements."""
        rng = self.rng
        for _ in range(64):
            t = self.templates[int(rng.integers(len(self.templates)))]
            location = t.locations[int(rng.integers(len(t.locations)))]
            item = t.items[int(rng.integers(len(t.items)))]
            qualifier = t.qualifiers[int(rng.integers(len(t.qualifiers)))]
            name = instance_name(t, location, item, qualifier if rng.random() < 0.3 else None)
            if name in self.used:
                continue
            earlier = self.defined[t.name]
            kind = "const" if not earlier or rng.random() < 0.5 else KINDS[int(rng.integers(1, 4))]
            k = int(rng.integers(2, 5)) if kind == "times" else int(rng.integers(1, 5))
            if kind == "const":
                return self._sentence(name, f"{k}", k, t)
            other, value = earlier[int(rng.integers(len(earlier)))]
            value = _evaluate(kind, k, [value])
            if value > MAX_VALUE:
                return self._sentence(name, f"{k}", k, t)
            rhs = {"plus": f"{k} more than {other}", "times": f"{k} times {other}"}.get(kind, other)
            return self._sentence(name, rhs, value, t)
        return None

    def _sentence(self, name, rhs, value, template):
        return f"{_capital(name)} equals {rhs}.", name, value, template

    def accept(self, drawn) -> None:
        _, name, value, template = drawn
        self.used.add(name)
        self.defined[template.name].append((name, value))


# ------------------------------------------------------------------------------- problems


def _check_choice(field: str, value, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"{field} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def check_op(op, field: str = "op") -> int:
    if isinstance(op, bool) or not isinstance(op, int | np.integer) or op < 1:
        raise ValueError(f"{field} must be an integer >= 1, got {op!r}")
    return int(op)


def generate_problem(
    rng: np.random.Generator,
    *,
    op: int,
    mode: str,
    template: str,
    level: str = "medium",
    length: int | None = None,
    tokenizer=None,
    noise: bool = True,
) -> dict:
    """One problem; see the module docstring for the world, the op count and the text.

    Args:
      rng: the source of randomness (the problem is a deterministic function of its state).
      op: the operation count (>= 1).
      mode: "forward" or "reverse" (``MODES``).
      template: a world template (``TEMPLATES``).
      level: "medium" (2-level hierarchy) or "hard" (3 levels).
      length: target prompt length in tokens (distractors and noise are added up to it);
        None: the path's statements and the question only.
      tokenizer: measures ``length`` (default: ``tokens.ByteTokenizer()``, i.e. bytes).
      noise: add statements from other templates when the world's distractors run out.

    Returns:
      dict with ``problem`` (the statements), ``question``, ``solution``, ``answer`` (int),
      ``op``, ``template``, ``mode``, ``level``, ``length`` (tokens of ``prompt``) and
      ``prompt`` (``format_prompt(question, problem)``).

    Raises:
      ValueError naming the field: unknown template / mode / level, bad op, or a ``length``
      that the problem's own statements do not fit in.
    """
    op = check_op(op)
    _check_choice("mode", mode, MODES)
    _check_choice("template", template, TEMPLATES)
    _check_choice("level", level, LEVELS)
    tok = tokenizer or tokens_lib.ByteTokenizer()
    shortest = None
    # Redraw worlds until one has a quantity with the requested op count whose own statements
    # (with the question) fit the length.
    for _ in range(MAX_ATTEMPTS):
        world = _draw_world(rng, WORLDS[template], level)
        found = _candidates(world, op, mode)
        if not found:
            continue
        target, unknown = found[int(rng.integers(len(found)))]
        path = _ancestors(world, target, stop=unknown)
        # Totals have no statement; in reverse mode the unknown's statement is left out.
        core = [
            statement(world[i], world) for i in path if world[i].kind != "total" and i != unknown
        ]
        given = world[target].value
        if mode == "forward":
            question = f"What is {world[target].name}?"
            answer = given
        else:
            question = f"If {world[target].name} is {given}, what is {world[unknown].name}?"
            answer = world[unknown].value
        base = len(tok.encode(format_prompt(question, " ".join(core))))
        if length is None or base <= length:
            break
        shortest = base if shortest is None else min(shortest, base)
    else:
        if shortest is None:
            raise ValueError(
                f"op: no {mode} {level} {template} problem with op={op} in {MAX_ATTEMPTS} worlds"
            )
        raise ValueError(
            f"length: {length} tokens is shorter than the shortest {mode} {template} problem "
            f"with op={op} drawn ({shortest} tokens)"
        )

    statements = list(core)
    n_core = len(statements)
    if length is not None:
        current = base
        on_path = set(path)
        extra = [
            statement(world[i], world)
            for i in range(len(world))
            if world[i].kind != "total" and i not in on_path and i != unknown
        ]
        for j in rng.permutation(len(extra)):
            cost = len(tok.encode(" " + extra[j]))
            if current + cost <= length:
                statements.append(extra[j])
                current += cost
        if noise:
            pool = _Noise(rng, template)
            misses = 0
            while misses < 24:
                drawn = pool.draw()
                if drawn is None:
                    break
                cost = len(tok.encode(" " + drawn[0]))
                if current + cost <= length:
                    pool.accept(drawn)
                    statements.append(drawn[0])
                    current += cost
                    misses = 0
                else:
                    misses += 1
    order = rng.permutation(len(statements))
    statements = [statements[i] for i in order]
    is_core = [i < n_core for i in order]
    prompt = format_prompt(question, " ".join(statements))
    measured = len(tok.encode(prompt))
    # Token counts of parts need not add up exactly under BPE: drop distractors until it fits.
    while length is not None and measured > length:
        drop = max(j for j, c in enumerate(is_core) if not c)
        del statements[drop], is_core[drop]
        prompt = format_prompt(question, " ".join(statements))
        measured = len(tok.encode(prompt))
    problem = " ".join(statements)
    return {
        "problem": problem,
        "question": question,
        "solution": _solution(world, path, target, unknown, given),
        "answer": int(answer),
        "op": op,
        "template": template,
        "mode": mode,
        "level": level,
        "length": measured,
        "prompt": prompt,
    }
