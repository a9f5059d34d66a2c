"""Suite-wide:

- With SLEEP_LM_TOLERANCE_AUDIT=FILE set, every chex.assert_trees_all_close and
  np.testing.assert_allclose records how close it ran to its tolerance (tests/tolerance.py).
- One JAX compilation cache for this run only: a fresh temporary directory, made when the
  suite starts and deleted when it ends (nothing carries over to the next run). Processes the
  tests start (`python -m sleep_lm.main`, the 8-device pytest) inherit it through the
  environment, so that a program compiled once in the run (the same train step in several
  CLI runs, the reference run and a resumed run) is not compiled again. The cache is keyed
  on the program, the devices and XLA_FLAGS, and a hit loads the executable the compiler
  made for it: results are the same bits. SLEEP_LM_SUITE_JAX_CACHE=off runs without it.
"""

import functools
import os
import shutil
import tempfile

# Before jax is imported (jax reads JAX_COMPILATION_CACHE_DIR then). A pytest started by a
# test (tests/eight_devices.py) finds SUITE_CACHE set and shares the run's cache.
SUITE_CACHE = "SLEEP_LM_SUITE_JAX_CACHE"
_OWN_CACHE = SUITE_CACHE not in os.environ
if _OWN_CACHE:
    os.environ[SUITE_CACHE] = tempfile.mkdtemp(prefix="sleep_lm_suite_jax_cache_")
_USE_CACHE = os.environ[SUITE_CACHE] != "off"
if _USE_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ[SUITE_CACHE]

import chex  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

if _USE_CACHE:
    jax.config.update("jax_compilation_cache_dir", os.environ[SUITE_CACHE])

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


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(os.environ.pop(SUITE_CACHE), ignore_errors=True)


def pytest_configure(config):
    if os.environ.get(tolerance.AUDIT_ENV):
        # chex: rtol 1e-6, atol 0 by default; numpy: rtol 1e-7, atol 0.
        chex.assert_trees_all_close = _audited(chex.assert_trees_all_close, 1e-6, 0.0, False)
        np.testing.assert_allclose = _audited(np.testing.assert_allclose, 1e-7, 0.0, True)
