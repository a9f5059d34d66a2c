"""Numerical comparisons for the tests, and an audit of how close each one runs to its limit.

How tolerances are chosen (tests/README.md): a float32 comparison's tolerance is at least ~10x
the largest error measured for it (on the CI machine and on another CPU), and a wrong
computation (a removed mask, the other rule) must still fail it by a wide margin; where
exactness is the claim and float32 noise would hide it, the comparison runs in float64.

`SLEEP_LM_TOLERANCE_AUDIT=FILE python -m pytest` appends one JSON line per comparison to FILE
(chex.assert_trees_all_close, np.testing.assert_allclose and the helpers here): the test, the
call site and `ratio` = measured error / allowed error. `python -m tests.tolerance FILE` lists
the comparisons whose ratio exceeds 0.1 (within 10x of their limit).
"""

import inspect
import json
import os
import sys
from pathlib import Path

import numpy as np

AUDIT_ENV = "SLEEP_LM_TOLERANCE_AUDIT"
_TESTS = Path(__file__).resolve().parent


def _call_site() -> str:
    """file:line of the innermost caller inside tests/ (other than this file)."""
    for frame in inspect.stack()[2:]:
        path = Path(frame.filename).resolve()
        if path.is_relative_to(_TESTS) and path.name not in ("tolerance.py", "conftest.py"):
            return f"{path.relative_to(_TESTS.parent)}:{frame.lineno}"
    return "?"


def record(ratio: float, what: str = "") -> None:
    """Appends (test, call site, ratio) to the audit file, when auditing."""
    path = os.environ.get(AUDIT_ENV)
    if not path:
        return
    row = {
        "test": os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0],
        "site": _call_site(),
        "ratio": float(ratio),
        "what": what,
    }
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def closeness_ratio(actual, desired, rtol: float, atol: float) -> float:
    """max |actual - desired| / (atol + rtol |desired|) over elements (float64); 0 if equal."""
    a = np.asarray(actual, np.float64)
    d = np.asarray(desired, np.float64)
    diff = np.abs(a - d)
    allowed = atol + rtol * np.abs(d)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(diff == 0, 0.0, diff / allowed)
    return float(np.max(ratio)) if ratio.size else 0.0


def relative_error(got, want) -> float:
    """max |got - want| / max |want|, in float64."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-30))


def norm_relative_error(got, want) -> float:
    """||got - want|| / ||want|| (Frobenius, float64): an average, for low-precision compute."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.linalg.norm(got - want) / max(float(np.linalg.norm(want)), 1e-30))


def assert_norm_relative(got, want, tol: float, what: str = "") -> float:
    """Asserts norm_relative_error(got, want) < tol (recorded by the audit)."""
    err = norm_relative_error(got, want)
    assert_below(err, tol, what)
    return err


def assert_relative(got, want, tol: float, what: str = "") -> float:
    """Asserts relative_error(got, want) < tol (recorded by the audit); returns the error."""
    err = relative_error(got, want)
    record(err / tol, what)
    assert err < tol, f"{what + ': ' if what else ''}relative error {err:.2e} >= {tol:.0e}"
    return err


def assert_below(err: float, tol: float, what: str = "") -> None:
    """Asserts a measured error < tol (recorded by the audit)."""
    record(err / tol, what)
    assert err < tol, f"{what + ': ' if what else ''}error {err:.2e} >= {tol:.0e}"


def main(path: str, threshold: float = 0.1) -> int:
    """Prints the comparisons (per call site, worst ratio) above `threshold`; exit 1 if any."""
    worst: dict[str, tuple[float, str]] = {}
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        if row["ratio"] >= worst.get(row["site"], (-1.0, ""))[0]:
            worst[row["site"]] = (row["ratio"], row["test"])
    close = sorted(((r, s, t) for s, (r, t) in worst.items() if r > threshold), reverse=True)
    print(f"{len(worst)} call sites audited; {len(close)} within 1/{threshold:g} of the limit")
    for ratio, site, test in close:
        print(f"  {ratio:8.3f}  {site}  ({test})")
    return 1 if close else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
