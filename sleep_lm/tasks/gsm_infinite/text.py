"""A problem's text: the sentence that defines a quantity (``statement``), the worked
solution (``_solution``), the prompt's layout (``format_prompt``, ``answer_text``) and filler
statements in the template's own schema (``_Filler``)."""

from __future__ import annotations

from sleep_lm.tasks.gsm_infinite.graph import Quantity, _value
from sleep_lm.tasks.gsm_infinite.solver import _Affine
from sleep_lm.tasks.gsm_infinite.worlds import Template, average_name, count_name


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
