"""Suite-wide: with SLEEP_LM_TOLERANCE_AUDIT=FILE set, every chex.assert_trees_all_close and
np.testing.assert_allclose records how close it ran to its tolerance (tests/tolerance.py)."""

import functools
import os

import chex
import jax
import numpy as np

try:
    from tests import tolerance
except ImportError:  # pytest started inside tests/ (tests/eight_devices.py's subprocess)
    import tolerance


def _audited(assert_fn, default_rtol, default_atol, positional_tolerances):
    @functools.wraps(assert_fn)
    def wrapper(actual, desired, *args, **kwargs):
        given = dict(zip(("rtol", "atol"), args, strict=False)) if positional_tolerances else {}
        rtol = kwargs.get("rtol", given.get("rtol", default_rtol))
        atol = kwargs.get("atol", given.get("atol", default_atol))
        try:
            pairs = zip(jax.tree.leaves(actual), jax.tree.leaves(desired), strict=True)
            ratio = max((tolerance.closeness_ratio(a, d, rtol, atol) for a, d in pairs), default=0)
            tolerance.record(ratio, assert_fn.__name__)
        except (TypeError, ValueError):
            pass  # shapes or structures differ: the assertion itself says so
        return assert_fn(actual, desired, *args, **kwargs)

    return wrapper


def pytest_configure(config):
    if os.environ.get(tolerance.AUDIT_ENV):
        # chex: rtol 1e-6, atol 0 by default; numpy: rtol 1e-7, atol 0.
        chex.assert_trees_all_close = _audited(chex.assert_trees_all_close, 1e-6, 0.0, False)
        np.testing.assert_allclose = _audited(np.testing.assert_allclose, 1e-7, 0.0, True)
