"""Streaming inference (feed / decode_step / sleep / generate) against Algorithm 1.

Tiny float32 model with the chunked GDN op (chunk 2, so a window of L = 4 spans chunks and
decoding one token, which uses the recurrent op, is a different computation of the same
recurrence). Most checks run inside one jit with LLVM optimisation off (fast compiles).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sleep_lm import inference, sleep
from sleep_lm.model import FastWeightState, build_model
from sleep_lm.model.state import KVCache

CONFIG = dict(
    width=16,
    heads=2,
    layers="attn,gdn,attn,gdn",
    mlp_ratio=2,
    conv_size=3,
    gdn_impl="chunked",
    chunk_size=2,
)
VOCAB, T, L = 5, 18, 4
# Windows [0-3] [4-7] [8-11] [12-15] [16-17]: sleep, sleep, wake, sleep, wake (short). A full
# wake window followed by a sleep window is where N > 1 streaming must close a window
# without consolidating it, as Algorithm 1 does.
MASK_AT = (9, 17)
# float32 rounding: chunked vs one-token recurrent op, different sum orders (measured up to
# 5.2e-6 on logits of scale ~1; a streaming bug is off by 1e-2 or more).
ATOL = 1e-4


def jit(fn, **kwargs):
    return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0}, **kwargs)


@pytest.fixture(scope="module")
def model():
    return build_model(CONFIG, vocab_size=VOCAB, max_len=T + 8, window=L)


@pytest.fixture(scope="module")
def params(model):
    """Random parameters (larger than init, so that every path visibly matters)."""
    shapes = jax.eval_shape(model.init_params, jax.random.key(0))
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        noise = rng.standard_normal(leaf.shape)
        scale = "scale" in jax.tree_util.keystr(path)
        return jnp.asarray(1 + 0.1 * noise if scale else 0.3 * noise, jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(1)
    mask = np.zeros((2, T), bool)
    mask[:, list(MASK_AT)] = True
    mask[1, 16] = True
    return dict(
        inputs=rng.integers(0, VOCAB, (2, T)).astype(np.int32),
        targets=rng.integers(0, VOCAB, (2, T)).astype(np.int32),
        loss_mask=mask,
    )


def spec_for(mask, **overrides):
    cfg = {"passes": 1, "window": L, **overrides}
    return sleep.SleepSpec.from_config(cfg, sleep.window_schedule(mask, L))


def sleep_if_full_then_decode(model, params, spec, state, token):
    """One token the way a server decodes (written here, not taken from generate): sleep
    on the window if it is full, then one wake pass. Returns (logits, state)."""
    state = jax.lax.cond(
        inference.window_full(spec, state),
        lambda s: inference.sleep(model, params, spec, s, length=L),
        lambda s: s,
        state,
    )
    return inference.decode_step(model, params, spec, state, token)


def fast_weights(model_state):
    return [x.fast_weights for x in model_state.layers if isinstance(x, FastWeightState)]


# ------------------------------------------------------------- equals Algorithm 1


@pytest.mark.parametrize("eviction", ["hard", "sliding"])
@pytest.mark.parametrize("passes", [1, 3])
def test_streaming_equals_algorithm1(eviction, passes, model, params, batch):
    spec = spec_for(batch["loss_mask"], passes=passes, eviction=eviction)

    @jit
    def both(params, batch):
        ref, ref_state = sleep.sequence_logits(model, params, batch["inputs"], spec)
        _, ref_metrics = sleep.sequence_loss(model, params, batch, spec)
        got, got_state = inference.streaming_logits(model, params, batch["inputs"], spec)
        metrics = inference.evaluate(model, params, spec, batch)
        return ref, ref_state, ref_metrics, got, got_state, metrics

    ref, ref_state, ref_metrics, got, got_state, metrics = both(params, batch)
    wake = np.repeat(np.array(spec.schedule), L)[:T]
    assert wake.sum() == 6
    chex.assert_trees_all_close(got[:, wake], ref[:, wake], atol=ATOL)
    assert (got[:, ~wake] == 0).all()
    chex.assert_trees_all_close(metrics, ref_metrics, atol=ATOL)
    assert 0 < float(metrics["token_accuracy"]) < 1  # argmax agreement is not vacuous
    # The final state too: every window's transition matched (including the window closed
    # without consolidation). Under sliding eviction the ring buffers and conv tails survive
    # and must match as well; under hard eviction training keeps no cache at all.
    chex.assert_trees_all_close(fast_weights(got_state.live), fast_weights(ref_state), atol=ATOL)
    if eviction == "sliding":
        chex.assert_trees_all_close(got_state.live, ref_state, atol=ATOL)


@pytest.mark.parametrize("padded", [False, True])
def test_streaming_eval_feeds_the_unscored_prefix(padded, model, params, batch):
    """scored_from: a wake window's tokens before the first loss position are fed in chunks
    (3 of window [8-11] here), not decoded; the metrics and the scored logits are those of
    decoding every token, and a loss position before scored_from gives NaN metrics."""
    mask = np.zeros((2, T), bool)
    mask[:, [11, 17]] = True
    mask[1, 16] = True
    batch = dict(batch, loss_mask=mask)
    if padded:  # row 0 starts with 3 padded tokens
        batch["valid"] = np.arange(T)[None] >= np.array([[3], [0]])
    spec = spec_for(mask, passes=3, eviction="hard")
    valid = batch.get("valid")

    @jit
    def both(params, batch):
        every, _ = inference.streaming_logits(model, params, batch["inputs"], spec, valid)
        fed, _ = inference.streaming_logits(
            model, params, batch["inputs"], spec, valid, scored_from=11
        )
        metrics = [inference.evaluate(model, params, spec, batch, n) for n in (0, 11, 12)]
        return every, fed, metrics

    every, fed, (ref, got, too_late) = both(params, batch)
    scored = np.zeros(T, bool)
    scored[[11, 16, 17]] = True
    chex.assert_trees_all_close(fed[:, scored], every[:, scored], atol=ATOL)
    assert (fed[:, 8:11] == 0).all() and (every[:, 8:11] != 0).any()  # fed, not decoded
    assert got["accuracy"] == ref["accuracy"] and got["token_accuracy"] == ref["token_accuracy"]
    chex.assert_trees_all_close(got["loss"], ref["loss"], atol=ATOL)
    assert 0 < float(ref["token_accuracy"]) < 1
    assert all(np.isnan(float(v)) for v in too_late.values())


@pytest.mark.parametrize("padded", [False, True])
def test_fresh_prefill_equals_feed(padded, model, params, batch):
    """prefill_fresh (a window start under hard eviction: the caches are known empty, the
    prompt attends to itself alone) returns feed's state: the same KV caches, fast weights,
    window bookkeeping; so the next token's logits are the same too."""
    spec = spec_for(batch["loss_mask"], passes=2, eviction="hard")
    inputs = jnp.asarray(batch["inputs"])
    valid = (np.arange(T)[None] >= np.array([[5], [0]])) if padded else None
    part = (lambda a, b: (valid[:, a:b],)) if padded else (lambda a, b: ())

    @jit
    def both(params):
        state = inference.init_state(model, spec, 2, padded=padded)
        state = inference.feed(model, params, spec, state, inputs[:, :8], *part(0, 8))
        fed = inference.feed(model, params, spec, state, inputs[:, 8:11], *part(8, 11))
        fresh = inference.stream.prefill_fresh(
            model, params, spec, state, inputs[:, 8:11], *part(8, 11)
        )
        # Mid-window (the cache holds token 8) the mark is a lie: the prompt then ignores
        # the cached token, which shows the mark is what makes attention skip the cache.
        mid = inference.feed(model, params, spec, state, inputs[:, 8:9], *part(8, 9))
        lie = inference.stream.prefill_fresh(
            model, params, spec, mid, inputs[:, 9:11], *part(9, 11)
        )
        states = (fed, fresh, lie)
        nxt = [inference.decode_step(model, params, spec, s, inputs[:, 11])[0] for s in states]
        return fed, fresh, nxt

    fed, fresh, (fed_logits, fresh_logits, lie_logits) = both(params)
    assert np.abs(lie_logits - fed_logits).max() > 100 * ATOL
    assert int(fresh.count) == 3 and int(fresh.position) == 11
    chex.assert_trees_all_close(fresh, fed, atol=ATOL)
    chex.assert_trees_all_close(fresh_logits, fed_logits, atol=ATOL)
    cache = next(x for x in fresh.live.layers if isinstance(x, KVCache))
    assert type(cache) is KVCache  # the FreshCache mark does not outlive the call
    with pytest.raises(ValueError, match="hard eviction"):
        sliding = spec_for(batch["loss_mask"], eviction="sliding")
        inference.stream.prefill_fresh(model, params, sliding, fed, inputs[:, 8:11])


def test_n1_session_sleeping_on_every_window_is_algorithm1(model, params, batch):
    """N = 1: a plain session that decodes every token and sleeps whenever the window fills
    (the wake window too) gives Algorithm 1's logits at every wake position."""
    spec = spec_for(batch["loss_mask"], passes=1, eviction="sliding")
    session = inference.SleepSession(model, params, spec, batch_size=2)
    logits = np.stack([session.decode(batch["inputs"][:, t]) for t in range(T)], axis=1)
    assert session.count == T % L and session.position == T
    ref, _ = jit(sleep.sequence_logits, static_argnums=(0, 3))(model, params, batch["inputs"], spec)
    wake = np.repeat(np.array(spec.schedule), L)[:T]
    chex.assert_trees_all_close(logits[:, wake], np.asarray(ref)[:, wake], atol=ATOL)


def test_sleep_on_a_partial_window_is_algorithm1(model, params, batch):
    """sleep() on a short last window = Algorithm 1 consolidating its short last window."""
    mask = np.zeros((2, T), bool)  # every window sleeps; the last has 2 tokens
    spec = spec_for(mask, passes=2, eviction="sliding")
    _, ref_state = jit(sleep.run_sequence, static_argnums=(0, 3, 4))(
        model, params, batch["inputs"], spec, lambda x: x
    )
    state = inference.feed(
        model, params, spec, inference.init_state(model, spec, 2), batch["inputs"]
    )
    assert int(state.count) == 2
    # A length other than the window's count would consolidate some of its tokens (at the
    # wrong positions, before the fix): refused.
    for wrong in (1, 3):
        with pytest.raises(ValueError, match=f"^length={wrong} but the window holds 2 tokens"):
            inference.sleep(model, params, spec, state, length=wrong)
    state = inference.sleep(model, params, spec, state)  # length read from the state
    assert int(state.count) == 0 and int(state.position) == T
    chex.assert_trees_all_close(state.window_start, ref_state, atol=ATOL)
    chex.assert_trees_all_close(state.live, ref_state, atol=ATOL)


# ----------------------------------------------------------- feed, decode, pieces


@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_feed_in_pieces_equals_feed_whole(eviction, model, params, batch):
    spec = spec_for(batch["loss_mask"], passes=2, eviction=eviction)
    pieces = (1, 3, 5, 1, 3, 5)  # fills a window exactly, crosses one mid-piece, spans >= L
    assert sum(pieces) == T

    @jit
    def whole_and_pieces(params, tokens):
        init = inference.init_state(model, spec, 2)
        whole = inference.feed(model, params, spec, init, tokens)
        state, start = init, 0
        for n in pieces:
            state = inference.feed(model, params, spec, state, tokens[:, start : start + n])
            start += n
        return whole, state

    whole, in_pieces = whole_and_pieces(params, batch["inputs"])
    assert int(whole.count) == T % L and int(whole.position) == T
    chex.assert_trees_all_close(in_pieces, whole, atol=ATOL)
    # Not vacuous: the pending window's wake pass and the slept windows both wrote state.
    assert np.abs(fast_weights(whole.live)[0] - fast_weights(whole.window_start)[0]).max() > 1e-3
    assert np.abs(fast_weights(whole.window_start)[0]).max() > 1e-3


@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_decode_token_by_token_equals_chunked_prefill(eviction, model, params, batch):
    """Decoding every token (sleeping whenever the window is full) gives the state of one
    feed, and the last window's decode logits equal a chunked wake pass over it."""
    spec = spec_for(batch["loss_mask"], passes=3, eviction=eviction)
    tokens = batch["inputs"]

    @jit
    def decoded_and_fed(params, tokens):
        init = inference.init_state(model, spec, 2)

        def step(state, token):
            logits, state = sleep_if_full_then_decode(model, params, spec, state, token)
            return state, logits

        decoded, logits = jax.lax.scan(step, init, tokens.T)
        fed = inference.feed(model, params, spec, init, tokens)
        pos = jnp.arange(16, T)
        prefill, _ = sleep.wake(model, params, tokens[:, 16:], pos, fed.window_start)
        return decoded, jnp.swapaxes(logits, 0, 1), fed, prefill

    decoded, logits, fed, prefill = decoded_and_fed(params, tokens)
    chex.assert_trees_all_close(decoded, fed, atol=ATOL)
    chex.assert_trees_all_close(logits[:, 16:], prefill, atol=ATOL)


def test_decode_program_does_not_depend_on_passes(model, params, batch):
    """decode_step's lowered program is the same for N = 1 and N = 4: its cost cannot
    depend on N. (feed's program does change with N: the comparison is sensitive.)"""
    token = jnp.zeros((2,), jnp.int32)
    texts = {}
    for passes in (1, 4):
        spec = spec_for(batch["loss_mask"], passes=passes, eviction="sliding")
        state = inference.init_state(model, spec, 2)
        decode = inference.decode_step.lower(model, params, spec, state, token).as_text()
        feed = inference.feed.lower(model, params, spec, state, batch["inputs"]).as_text()
        texts[passes] = decode, feed
    assert texts[1][0] == texts[4][0]
    assert texts[1][1] != texts[4][1]


def test_decode_on_a_full_window_returns_nan(model, params, batch):
    spec = spec_for(batch["loss_mask"], passes=2, eviction="hard")
    state = inference.init_state(model, spec, 2)
    step = jit(inference.decode_step, static_argnums=(0, 2))
    for t in range(L):
        logits, state = step(model, params, spec, state, batch["inputs"][:, t])
        assert np.isfinite(logits).all()
    assert bool(inference.window_full(spec, state))
    logits, after = step(model, params, spec, state, batch["inputs"][:, L])
    assert np.isnan(logits).all()
    chex.assert_trees_all_equal(after, state)  # the refused token leaves no trace


# ---------------------------------------------------------------------- generate


def test_generate_matches_a_decode_loop_and_session(model, params, batch):
    spec = spec_for(batch["loss_mask"], passes=2, eviction="sliding")
    prompt, steps = batch["inputs"][:, :7], 6  # generation crosses two window boundaries

    @jit
    def run(params, prompt):
        state = inference.feed(
            model, params, spec, inference.init_state(model, spec, 2), prompt[:, :-1]
        )
        logits, state = inference.decode_step(model, params, spec, state, prompt[:, -1])
        greedy = inference.generate(
            model, params, spec, state, logits, jax.random.key(0), steps=steps
        )
        # The same by hand: argmax, sleep when full, decode.
        tokens = []
        for _ in range(steps):
            token = jnp.argmax(logits, -1).astype(jnp.int32)
            tokens.append(token)
            logits, state = sleep_if_full_then_decode(model, params, spec, state, token)
        sampled = [
            inference.generate(
                model, params, spec, greedy[2], greedy[1], jax.random.key(seed), steps=8,
                temperature=1.0,
            )[0]
            for seed in (1, 1, 2)
        ]  # fmt: skip
        return greedy, (jnp.stack(tokens, 1), logits, state), sampled

    greedy, by_hand, sampled = run(params, prompt)
    chex.assert_trees_all_close(greedy, by_hand, atol=ATOL)
    np.testing.assert_array_equal(sampled[0], sampled[1])  # same key, same tokens
    assert not np.array_equal(sampled[0], sampled[2])
    assert ((0 <= sampled[2]) & (sampled[2] < VOCAB)).all()

    session = inference.SleepSession(model, params, spec, batch_size=2)
    tokens = session.generate(steps, prompt=prompt)
    np.testing.assert_array_equal(tokens, greedy[0])
    assert session.position == 7 + steps and session.count == (7 + steps) % L
    chex.assert_trees_all_close((session.logits, session.state), greedy[1:], atol=ATOL)
