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

Modules: ``graph`` (the world, its dependency graph, the op count), ``solver`` (the targets a
world offers, reverse mode's unknown), ``text`` (sentences, solution, prompt, filler); this
one checks the arguments and draws a problem from them.
"""

from __future__ import annotations

import numpy as np

from sleep_lm.tasks.gsm_infinite import tokens as tokens_lib
from sleep_lm.tasks.gsm_infinite.graph import DEPTH, _ancestors, _draw_world
from sleep_lm.tasks.gsm_infinite.solver import MAX_VALUE, _candidates
from sleep_lm.tasks.gsm_infinite.text import (
    _capital,
    _Filler,
    _solution,
    answer_text,
    format_prompt,
    statement,
)
from sleep_lm.tasks.gsm_infinite.worlds import WORLDS

# The public names task.py, export.py, pretrained/tiny.py and the tests read from here.
__all__ = [
    "BENCHMARK_MODE",
    "BENCHMARK_TEMPLATE",
    "DEPTH",
    "LEVELS",
    "MAX_ATTEMPTS",
    "MAX_VALUE",
    "MIN_OP",
    "MODES",
    "TEMPLATES",
    "TEMPLATE_WEIGHTS",
    "answer_text",
    "check_length",
    "check_op",
    "format_prompt",
    "generate_problem",
    "statement",
]


TEMPLATES = tuple(WORLDS)  # ("zoo", "school", "festival")
MODES = ("forward", "reverse")
LEVELS = ("medium", "hard")
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
MAX_ATTEMPTS = 4000  # world draws per problem before giving up


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
