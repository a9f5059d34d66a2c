"""Tests for sleep_lm.ops.gated_delta against a plain float64 NumPy recurrence.

Shapes: q, k [batch, time, heads, key]; v [batch, time, heads, value]; g, beta
[batch, time, heads]; state [batch, heads, key, value]. Key != value everywhere so that a
transposed state or a swapped axis cannot pass by accident.

Tolerances: float32 results are compared with ``rtol = 1e-4`` and ``atol = 1e-4 * max|ref|``
(an error relative to the magnitude of the reference, so that entries that are tiny after
strong decay are not held to a relative bound they cannot meet in float32). bfloat16 results
use 2e-2 on the same scale: bf16 keeps 8 significant bits (unit roundoff 2^-8, 0.4%).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sleep_lm import ops
from tests import tolerance

BATCH, HEADS, KEY, VALUE = 2, 2, 8, 12
RTOL_F32 = 1e-4
RTOL_BF16 = 2e-2
CHUNK_SIZES = (16, 24, 64)  # 24: a chunk size that is neither a power of two nor divides 64
DECAYS = ("weak", "strong")
RULES = {"delta": ops.gated_delta_rule, "linear": ops.gated_linear_rule}


# ----------------------------------------------------------------------------- helpers


def _make_inputs(seed: int, time: int, decay: str, *, batch=BATCH, heads=HEADS) -> dict:
    """Fresh random float64 inputs, as Gated DeltaNet feeds the rule.

    q and k are L2-normalised over key; beta = sigmoid(N(0, 1)) in (0, 1). Weak decay:
    g = log_sigmoid(N(0, 1)) (a_t around 0.5). Strong decay: g = -exp(N(1.5, 1)), mean about
    -7.4 per token, so the cumulative gate sum inside a 64-token chunk reaches several
    hundred: exp of their positive differences (the masked, j > i half) overflows float32.
    """
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, time, heads, KEY))
    k = rng.standard_normal((batch, time, heads, KEY))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.standard_normal((batch, time, heads, VALUE))
    if decay == "weak":
        g = -np.logaddexp(0.0, -rng.standard_normal((batch, time, heads)))
    elif decay == "strong":
        g = -np.exp(rng.normal(1.5, 1.0, (batch, time, heads)))
    else:
        raise ValueError(decay)
    beta = 1.0 / (1.0 + np.exp(-rng.standard_normal((batch, time, heads))))
    s0 = rng.standard_normal((batch, heads, KEY, VALUE))
    return dict(q=q, k=k, v=v, g=g, beta=beta, initial_state=s0)


def _cast(inputs: dict, dtype) -> tuple[dict, dict]:
    """Returns (jax inputs in dtype, float64 NumPy copies of exactly those values).

    The state is always float32. The reference sees the rounded values, so that only the
    implementation's own error is measured.
    """
    x = {
        n: jnp.asarray(a, jnp.float32 if n == "initial_state" else dtype) for n, a in inputs.items()
    }
    return x, {n: np.asarray(a, np.float64) for n, a in x.items()}


def reference(q, k, v, g, beta, initial_state=None, *, scale=None, delta=True):
    """Plain float64 NumPy recurrence, token by token.

    S_t = a_t S_{t-1} + k_t (beta_t (v_t - a_t S_{t-1}^T k_t))^T   (delta rule)
    S_t = a_t S_{t-1} + beta_t k_t v_t^T                          (linear rule)
    o_t = scale * S_t^T q_t, with a_t = exp(g_t).
    """
    q, k, v, g, beta = (np.asarray(x, np.float64) for x in (q, k, v, g, beta))
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    scale = dk**-0.5 if scale is None else scale
    s = np.zeros((b, h, dk, dv)) if initial_state is None else np.array(initial_state, np.float64)
    o = np.zeros((b, t, h, dv))
    for i in range(t):
        s = np.exp(g[:, i])[..., None, None] * s
        u = v[:, i]
        if delta:
            u = u - np.einsum("bhkv,bhk->bhv", s, k[:, i])
        s = s + np.einsum("bhk,bhv->bhkv", k[:, i], beta[:, i, :, None] * u)
        o[:, i] = scale * np.einsum("bhkv,bhk->bhv", s, q[:, i])
    return o, s


def _assert_close(actual, expected, rtol, what=""):
    """|actual - expected| <= rtol * |expected| + rtol * max|expected|, elementwise."""
    actual = np.asarray(jnp.asarray(actual, jnp.float32), np.float64)
    expected = np.asarray(expected, np.float64)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    err = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
    chex.assert_trees_all_close(
        actual,
        expected,
        rtol=rtol,
        atol=rtol * scale,
        custom_message=f"{what}: max abs err {err:.3e}, max |ref| {scale:.3e}",
    )


# Chunk sizes run at each time length. Each (impl, chunk size, time) is one XLA compilation,
# which dominates this file's runtime, so the matrix is chosen rather than full. Together
# they cover: chunk >= time (one short chunk), several chunks with a padded last chunk
# (7 = 2*3 + 1, 100 = 4*24 + 4, 257 = 4*64 + 1), exact multiples (64 = 4*16 and 1*64),
# chunk sizes 16, 24 (not a power of two) and 64. The gradient test adds the forward pass
# at time 100 (= 6*16 + 4 = 1*64 + 36) with chunk sizes 16 and 64.
_DELTA_CHUNKS = {1: (16,), 7: (3,), 64: (16, 64), 100: (24,), 257: (64,)}
_LINEAR_CHUNKS = {1: (64,), 7: (3,), 64: (64,), 100: (24,), 257: (16,)}


def _impls(rule: str, time: int):
    """(impl, chunk_size) pairs of a rule to run at this time length; every impl appears."""
    chunks = (_DELTA_CHUNKS if rule == "delta" else _LINEAR_CHUNKS)[time]
    pairs = [("chunked", c) for c in chunks] + [("recurrent", 64)]
    if rule == "linear":
        pairs.append(("associative", 64))
    return pairs


def _loss(rule, impl, chunk_size, cotangents, q, k, v, g, beta, initial_state):
    """Scalar touching both outputs and final state: sum(o * do) + sum(S * dS)."""
    do, ds = cotangents
    o, s = RULES[rule](
        q, k, v, g, beta, initial_state=initial_state, impl=impl, chunk_size=chunk_size
    )
    return jnp.sum(o.astype(jnp.float32) * do) + jnp.sum(s * ds), (o, s)


# Module level so that the compilation cache is shared across parametrised tests.
_grad = jax.jit(
    jax.grad(_loss, argnums=(4, 5, 6, 7, 8, 9), has_aux=True),
    static_argnames=("rule", "impl", "chunk_size"),
)  # returns (grads, (o, final_state))
_ARG_NAMES = ("q", "k", "v", "g", "beta", "initial_state")


def _np_loss(x: dict, cotangents, delta: bool) -> float:
    o, s = reference(**x, delta=delta)
    return float(np.sum(o * cotangents[0]) + np.sum(s * cotangents[1]))


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("time", [1, 7, 64, 100, 257])
def test_forward_matches_float64_reference(time):
    """Every impl of both rules, outputs and final state, weak and strong decay."""
    for d, decay in enumerate(DECAYS):
        x, x64 = _cast(_make_inputs(1000 * time + d, time, decay), jnp.float32)
        for rule, fn in RULES.items():
            o_ref, s_ref = reference(**x64, delta=rule == "delta")
            for impl, chunk_size in _impls(rule, time):
                o, s = fn(**x, impl=impl, chunk_size=chunk_size)
                what = f"{rule} {impl} chunk={chunk_size} time={time} decay={decay}"
                assert o.shape == o_ref.shape and o.dtype == jnp.float32, what
                assert s.shape == s_ref.shape and s.dtype == jnp.float32, what
                _assert_close(o, o_ref, RTOL_F32, what + " output")
                _assert_close(s, s_ref, RTOL_F32, what + " final state")


def test_impl_lists():
    assert set(ops.DELTA_IMPLS) == {"chunked", "recurrent"}
    assert set(ops.LINEAR_IMPLS) == {"chunked", "associative", "recurrent"}


@pytest.mark.parametrize("decay", DECAYS)
@pytest.mark.parametrize("rule", ["delta", "linear"])
def test_gradients_chunked_match_recurrent(rule, decay):
    """d/d(q, k, v, g, beta, initial_state) of sum(o * do) + sum(S * dS), random cotangents.

    Time 100 is not a multiple of any chunk size (a padded last chunk). The recurrent
    gradient is itself checked against float64 central differences of the NumPy reference
    along a random direction per argument.
    """
    time, delta = 100, rule == "delta"
    seed = {"delta": 7, "linear": 8}[rule] * 10 + DECAYS.index(decay)
    x, x64 = _cast(_make_inputs(seed, time, decay), jnp.float32)
    rng = np.random.default_rng(seed + 1)
    do = rng.standard_normal((BATCH, time, HEADS, VALUE)).astype(np.float32)
    ds = rng.standard_normal((BATCH, HEADS, KEY, VALUE)).astype(np.float32)
    cot = (jnp.asarray(do), jnp.asarray(ds))
    args = [x[n] for n in _ARG_NAMES]

    g_rec, _ = _grad(rule, "recurrent", 64, cot, *args)
    cot64 = (do.astype(np.float64), ds.astype(np.float64))
    eps = 1e-6
    for name, grad in zip(_ARG_NAMES, g_rec, strict=True):
        direction = rng.standard_normal(x64[name].shape)
        plus = dict(x64, **{name: x64[name] + eps * direction})
        minus = dict(x64, **{name: x64[name] - eps * direction})
        fd = (_np_loss(plus, cot64, delta) - _np_loss(minus, cot64, delta)) / (2 * eps)
        ad = float(np.sum(np.asarray(grad, np.float64) * direction))
        # Scale: the sum of |terms| of the directional derivative. Rounding errors of the
        # float32 gradient entries largely cancel in the sum (measured ~1e-8 of it), while
        # a wrong gradient (e.g. the other rule's) errs by 3e-4 to 4e-2 of it: 1e-5 splits
        # the two with a wide margin on both sides.
        mag = float(np.sum(np.abs(np.asarray(grad, np.float64) * direction)))
        tolerance.record(abs(ad - fd) / (1e-5 * mag), "directional derivative")
        assert abs(ad - fd) <= 1e-5 * mag, (
            f"{rule} recurrent d/d{name} ({decay}): autodiff {ad:.6e} vs float64 "
            f"central difference {fd:.6e} (scale {mag:.3e})"
        )

    o_ref, s_ref = reference(**x64, delta=delta)
    # The associative impl's gradient is not tested (not a training path; saves a compile).
    for impl, chunk_size in [("chunked", 16), ("chunked", 64)]:
        grads, (o, s) = _grad(rule, impl, chunk_size, cot, *args)
        what = f"{rule} {impl} chunk={chunk_size} time={time} decay={decay}"
        _assert_close(o, o_ref, RTOL_F32, what + " output")
        _assert_close(s, s_ref, RTOL_F32, what + " final state")
        for name, got, want in zip(_ARG_NAMES, grads, g_rec, strict=True):
            assert got.shape == want.shape and got.dtype == want.dtype, name
            what = f"{rule} {impl} chunk={chunk_size} ({decay}) d/d{name}"
            _assert_close(got, np.asarray(want), RTOL_F32, what)


@pytest.mark.parametrize("rule", ["delta", "linear"])
def test_bfloat16(rule):
    """bf16 q, k, v, g, beta: output in bf16, state float32, both against float64 on the
    bf16 values, for every impl. For the delta rule (the model's training path) also the
    chunked gradients, in the inputs' dtypes, against the float32 recurrent gradient on the
    same rounded values (that gradient is checked against float64 in the test above)."""
    time, delta, fn = 100, rule == "delta", RULES[rule]
    x, x64 = _cast(_make_inputs(31 if delta else 32, time, "weak"), jnp.bfloat16)
    o_ref, s_ref = reference(**x64, delta=delta)
    impls = [("chunked", 64), ("recurrent", 64)] + ([] if delta else [("associative", 64)])
    for impl, chunk_size in impls:
        o, s = fn(**x, impl=impl, chunk_size=chunk_size)
        what = f"bf16 {rule} {impl} chunk={chunk_size}"
        assert o.dtype == jnp.bfloat16, what
        assert s.dtype == jnp.float32, what
        _assert_close(o, o_ref, RTOL_BF16, what + " output")
        _assert_close(s, s_ref, RTOL_BF16, what + " final state")
    if not delta:
        return

    rng = np.random.default_rng(33)
    cot = (
        jnp.asarray(rng.standard_normal((BATCH, time, HEADS, VALUE)), jnp.float32),
        jnp.asarray(rng.standard_normal((BATCH, HEADS, KEY, VALUE)), jnp.float32),
    )
    x32 = {n: jnp.asarray(a, jnp.float32) for n, a in x64.items()}
    want, _ = _grad(rule, "recurrent", 64, cot, *[x32[n] for n in _ARG_NAMES])
    got, _ = _grad(rule, "chunked", 64, cot, *[x[n] for n in _ARG_NAMES])
    for name, a, b in zip(_ARG_NAMES, got, want, strict=True):
        assert a.dtype == x[name].dtype, f"d/d{name} dtype {a.dtype} != {x[name].dtype}"
        _assert_close(a, np.asarray(b), RTOL_BF16, f"bf16 {rule} chunked d/d{name}")


@pytest.mark.parametrize("rule", ["delta", "linear"])
def test_jit_and_vmap(rule):
    """The chunked impl under jax.jit(jax.vmap(...)) over an extra leading axis, with an
    initial state and, in the same program, without one (None means zeros) and with an
    explicit scale. One compilation per rule."""
    time, extra, delta, fn = 37, 3, rule == "delta", RULES[rule]
    per = [_cast(_make_inputs(50 + i, time, "weak"), jnp.float32) for i in range(extra)]
    x = {n: jnp.stack([p[0][n] for p in per]) for n in _ARG_NAMES}

    def both(q, k, v, g, beta, s0):
        with_state = fn(q, k, v, g, beta, initial_state=s0, impl="chunked", chunk_size=16)
        zero_state = fn(q, k, v, g, beta, scale=0.5, impl="chunked", chunk_size=16)
        return with_state, zero_state

    (o, s), (o0, s0) = jax.jit(jax.vmap(both))(*[x[n] for n in _ARG_NAMES])
    for i, (_, x64) in enumerate(per):
        what = f"{rule} chunked vmap[{i}]"
        o_ref, s_ref = reference(**x64, delta=delta)
        _assert_close(o[i], o_ref, RTOL_F32, what + " output")
        _assert_close(s[i], s_ref, RTOL_F32, what + " final state")
        args = {n: a for n, a in x64.items() if n != "initial_state"}
        o_ref, s_ref = reference(**args, scale=0.5, delta=delta)
        _assert_close(o0[i], o_ref, RTOL_F32, what + " output (zero state, scale 0.5)")
        _assert_close(s0[i], s_ref, RTOL_F32, what + " final state (zero state)")


def _bad_inputs():
    """(case id, rule, kwargs overrides, words the ValueError message must contain)."""
    b, t, h = BATCH, 5, HEADS
    f32, bf16 = jnp.float32, jnp.bfloat16
    z = lambda *shape, dtype=f32: jnp.zeros(shape, dtype)
    return [
        ("k_shape", "delta", dict(k=z(b, t, h, KEY + 1)), ["k", str((b, t, h, KEY + 1))]),
        ("v_time", "delta", dict(v=z(b, t + 1, h, VALUE)), ["v", str((b, t + 1, h, VALUE))]),
        ("v_heads", "linear", dict(v=z(b, t, h + 1, VALUE)), ["v", str((b, t, h + 1, VALUE))]),
        ("q_rank", "delta", dict(q=z(b, t, h * KEY)), ["q", str((b, t, h * KEY))]),
        ("g_shape", "delta", dict(g=z(b, t, h, 1)), ["g", str((b, t, h, 1))]),
        ("beta_shape", "linear", dict(beta=z(b, t + 1, h)), ["beta", str((b, t + 1, h))]),
        ("v_dtype", "delta", dict(v=z(b, t, h, VALUE, dtype=bf16)), ["v", "dtype"]),
        ("k_dtype", "linear", dict(k=z(b, t, h, KEY, dtype=bf16)), ["k", "dtype"]),
        ("g_int", "delta", dict(g=z(b, t, h, dtype=jnp.int32)), ["g", "dtype"]),
        ("impl_unknown", "delta", dict(impl="fast"), ["impl", "fast"]),
        ("impl_assoc_delta", "delta", dict(impl="associative"), ["impl", "associative"]),
        ("impl_unknown_linear", "linear", dict(impl="scan"), ["impl", "scan"]),
        ("chunk_zero", "delta", dict(chunk_size=0), ["chunk_size", "0"]),
        ("chunk_negative", "linear", dict(chunk_size=-16), ["chunk_size", "-16"]),
        ("precision_unknown", "delta", dict(precision="fp32"), ["precision", "fp32"]),
        (
            "state_shape",
            "delta",
            dict(initial_state=z(b, h, VALUE, KEY)),
            ["initial_state", str((b, h, VALUE, KEY))],
        ),
        (
            "state_batch",
            "linear",
            dict(initial_state=z(b + 1, h, KEY, VALUE)),
            ["initial_state", str((b + 1, h, KEY, VALUE))],
        ),
        (
            "state_dtype",
            "delta",
            dict(initial_state=z(b, h, KEY, VALUE, dtype=bf16)),
            ["initial_state", "float32", "bfloat16"],
        ),
    ]


@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda c: c[0])
def test_bad_inputs_raise(case):
    _, rule, overrides, words = case
    b, t, h = BATCH, 5, HEADS
    kwargs = dict(
        q=jnp.zeros((b, t, h, KEY)),
        k=jnp.zeros((b, t, h, KEY)),
        v=jnp.zeros((b, t, h, VALUE)),
        g=jnp.zeros((b, t, h)),
        beta=jnp.zeros((b, t, h)),
        impl="chunked",
        chunk_size=16,
    )
    kwargs.update(overrides)
    with pytest.raises(ValueError) as info:
        RULES[rule](**kwargs)
    message = str(info.value)
    name, details = words[0], words[1:]
    assert re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", message), (name, message)
    for word in details:
        assert word in message, f"{word!r} not in error message {message!r}"


_LONG_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from sleep_lm import ops

    b, t, h, dk, dv = 1, 2048, 2, 16, 16
    rng = np.random.default_rng(0)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    def loss(q, k, v, g, beta, s0, impl):
        o, s = ops.gated_delta_rule(q, k, v, g, beta, initial_state=s0, impl=impl)
        return jnp.sum(o * o) + jnp.sum(s * s), (o, s)

    grad = jax.jit(
        jax.grad(loss, argnums=(0, 1, 2, 3, 4, 5), has_aux=True), static_argnames="impl"
    )
    for rep in range(3):
        q = jnp.asarray(unit(rng.standard_normal((b, t, h, dk))), jnp.float32)
        k = jnp.asarray(unit(rng.standard_normal((b, t, h, dk))), jnp.float32)
        v = jnp.asarray(rng.standard_normal((b, t, h, dv)), jnp.float32)
        g = jnp.asarray(-np.logaddexp(0, -rng.standard_normal((b, t, h))), jnp.float32)
        beta = jnp.asarray(1 / (1 + np.exp(-rng.standard_normal((b, t, h)))), jnp.float32)
        s0 = jnp.asarray(rng.standard_normal((b, h, dk, dv)), jnp.float32)

        got, (o, s) = jax.block_until_ready(grad(q, k, v, g, beta, s0, impl="chunked"))
        if rep == 0:  # one comparison with the oracle is enough; the repeats guard the hang
            want, (o_r, s_r) = grad(q, k, v, g, beta, s0, impl="recurrent")
            for name, a, r in [("o", o, o_r), ("S", s, s_r)] + list(
                zip("qkvgbS", got, want)
            ):
                err = float(jnp.max(jnp.abs(a - r)) / jnp.max(jnp.abs(r)))
                assert err < 1e-4, (name, err)
    print("ok")
    """
)


def test_long_sequence_chunked_does_not_hang():
    """Time 2048 under the chunked impl, forward + backward, three calls, in a subprocess
    with a timeout: jaxlib 0.10.2 deadlocked intermittently at this length when the chunked
    program used solve_triangular (shared/ANCHORS.md). A hung XLA call blocks in C++, where
    signal.alarm in this process would not fire, hence the subprocess."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    try:
        res = subprocess.run(
            [sys.executable, "-c", _LONG_SCRIPT],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("chunked gated_delta_rule at time 2048 did not finish within 120 s (hang?)")
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]


@pytest.mark.parametrize("chunk_size", [24, 40, 100])
def test_aligned_keys_chunk_not_multiple_of_16(chunk_size):
    """Keys close to one another (two prototypes plus small noise, beta near 1, weak decay):
    the intra-chunk WY matrix then has entries near 1, where a power series over a whole
    chunk of more than 16 tokens cancels catastrophically in float32. Rule 110's windows of
    24 binary tokens are this case. Outputs, final state and gradients vs float64 / recurrent.
    """
    time, key = 100, 64
    rng = np.random.default_rng(chunk_size)
    protos = rng.standard_normal((2, key))
    which = rng.integers(0, 2, (1, time, 1))
    k = protos[which] + 0.05 * rng.standard_normal((1, time, 1, key))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    q = rng.standard_normal((1, time, 1, key))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    inputs = dict(
        q=q,
        k=k,
        v=rng.standard_normal((1, time, 1, VALUE)),
        g=np.full((1, time, 1), -0.01),
        beta=np.full((1, time, 1), 0.9),
        initial_state=rng.standard_normal((1, 1, key, VALUE)),
    )
    x, x64 = _cast(inputs, jnp.float32)
    o_ref, s_ref = reference(**x64)
    cot = (
        jnp.asarray(rng.standard_normal((1, time, 1, VALUE)), jnp.float32),
        jnp.asarray(rng.standard_normal((1, 1, key, VALUE)), jnp.float32),
    )
    args = [x[n] for n in _ARG_NAMES]
    grads, (o, s) = _grad("delta", "chunked", chunk_size, cot, *args)
    what = f"aligned keys, chunk={chunk_size}"
    _assert_close(o, o_ref, RTOL_F32, what + " output")
    _assert_close(s, s_ref, RTOL_F32, what + " final state")
    g_rec, _ = _grad("delta", "recurrent", 64, cot, *args)
    for name, got, want in zip(_ARG_NAMES, grads, g_rec, strict=True):
        _assert_close(got, np.asarray(want), RTOL_F32, f"{what} d/d{name}")


# Near-identical keys: |chunked - float64| / max|float64| of outputs and final state must
# stay at the float32 recurrence's level (measured 2.5e-7 for the recurrent scan, 1.2e-6
# for the chunked form by forward substitution; the power-series inverse it replaced was
# off by 1.6e-4 to 2.9e-4 here, which the 1e-4-of-max tolerance above cannot see).
RTOL_ALIGNED = 1e-5


@pytest.mark.parametrize("chunk_size", [16, 24, 32, 64])
def test_near_identical_keys_chunked_is_as_exact_as_recurrence(chunk_size):
    """Keys = one vector + 2% noise (a window of similar tokens), beta 0.9-0.99, weak decay:
    the WY matrix's entries are near 1, the case where float32 cancellation shows. Outputs
    and final state vs the float64 recurrence at 1e-5 of their scale."""
    time, key = 96, 32
    rng = np.random.default_rng(7 + chunk_size)
    k = rng.standard_normal((BATCH, 1, HEADS, key))
    k = k + 0.02 * rng.standard_normal((BATCH, time, HEADS, key))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    q = rng.standard_normal((BATCH, time, HEADS, key))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    inputs = dict(
        q=q,
        k=k,
        v=rng.standard_normal((BATCH, time, HEADS, VALUE)),
        g=-rng.uniform(0.0, 0.05, (BATCH, time, HEADS)),
        beta=rng.uniform(0.9, 0.99, (BATCH, time, HEADS)),
        initial_state=0.1 * rng.standard_normal((BATCH, HEADS, key, VALUE)),
    )
    x, x64 = _cast(inputs, jnp.float32)
    o_ref, s_ref = reference(**x64)
    o, s = ops.gated_delta_rule(**x, impl="chunked", chunk_size=chunk_size)
    for what, got, want in (("output", o, o_ref), ("final state", s, s_ref)):
        err = np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want))
        assert err <= RTOL_ALIGNED, f"chunk={chunk_size} {what}: relative error {err:.2e}"


def _dot_precisions(jaxpr) -> list:
    """The precision parameter of every dot_general in a jaxpr, sub-jaxprs included (scan
    bodies, custom-VJP rules, pjit calls)."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(eqn.params["precision"])
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr holds a Jaxpr
                if hasattr(sub, "eqns"):
                    found += _dot_precisions(sub)
    return found


_HIGHEST = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
_DEFAULT = (jax.lax.Precision.DEFAULT, jax.lax.Precision.DEFAULT)


@pytest.mark.parametrize(
    "rule, impl", [("delta", "chunked"), ("delta", "recurrent"), ("linear", "associative")]
)
@pytest.mark.parametrize(
    "precision, expected", [("highest", _HIGHEST), ("default", _DEFAULT), (None, None)]
)
def test_every_dot_forward_and_backward_has_the_precision(rule, impl, precision, expected):
    """Full float32 by default on every backend: JAX's own default for float32 dots is TF32
    on recent NVIDIA GPUs and one bfloat16 pass on TPU, which CPU tests cannot see. The
    hand-written backward is traced after the forward, so it is checked separately."""
    x = _make_inputs(0, 20, "weak")
    args = tuple(x[name] for name in _ARG_NAMES)
    kwargs = dict(impl=impl, chunk_size=8, precision=precision)
    if precision == "highest":
        kwargs.pop("precision")  # the default

    def loss(*args):
        o, s = RULES[rule](*args[:5], initial_state=args[5], **kwargs)
        return jnp.sum(o) + jnp.sum(s)

    if precision is None:  # JAX's global setting (JAX_DEFAULT_MATMUL_PRECISION), whatever it is
        eye = jnp.eye(2)
        (expected,) = set(_dot_precisions(jax.make_jaxpr(lambda a: a @ a)(eye).jaxpr))
    forward = _dot_precisions(jax.make_jaxpr(loss)(*args).jaxpr)
    both = _dot_precisions(jax.make_jaxpr(jax.grad(loss, argnums=range(6)))(*args).jaxpr)
    assert forward and len(both) > len(forward)  # the backward's dots are in there
    assert set(both) == {expected}, set(both)
