"""Which quantities of a world a problem may ask: targets whose solution path has the
requested op count and values in range (``_candidates``), and in reverse mode the unknown,
with the target as an affine function of it (``_Affine``, ``_unknown``)."""

from __future__ import annotations

from sleep_lm.tasks.gsm_infinite.graph import _ancestors, _value, op_count

MAX_VALUE = 1000


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
