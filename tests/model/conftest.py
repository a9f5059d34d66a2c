"""Shared tiny model for the model tests (f32, recurrent GDN op: fast to compile)."""

import jax
import numpy as np
import pytest

from sleep_lm.model import build_model

CONFIG = dict(
    width=16, heads=2, layers="attn,gdn,attn,gdn", mlp_ratio=2, conv_size=3, gdn_impl="recurrent"
)
VOCAB = 5


def _make_model(window=8, max_len=16, **overrides):
    return build_model({**CONFIG, **overrides}, vocab_size=VOCAB, max_len=max_len, window=window)


@pytest.fixture(scope="session")
def make_model():
    """Factory for variants of the shared model (same parameter shapes unless overridden)."""
    return _make_model


@pytest.fixture(scope="session")
def model():
    return _make_model()


@pytest.fixture(scope="session")
def params(model):
    return model.init_params(jax.random.key(0))


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, VOCAB, (2, 6)).astype(np.int32)


def fast_jit(fn, **kwargs):
    """jax.jit with LLVM optimisation off: these tests check numbers, not speed, and
    compile about 3x faster this way."""
    return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0}, **kwargs)


@pytest.fixture(scope="session")
def jit():
    return fast_jit
