"""Inert padding (issue 11): a left-padded example's answer logits equal the unpadded one's.

One tiny float32 hybrid with all three mixer kinds (attn, gdn, jet; chunked GDN op with
chunk 4) so that a leak through any of them shows; N = 1 and 2; hard and sliding eviction.
T = 16 tokens in windows of L = 4; the last window wakes (the answer), the rest sleep.

A batch holds rows padded differently (per-example ``valid``), with random token ids at the
padded positions (inertness must not depend on the pad id):

* row 0: no padding (all valid);
* row 1: 8 pads = two whole windows. The unpadded example (8 tokens) has the same window
  boundaries relative to its content, so the reference is simply Algorithm 1
  (``sleep.sequence_logits``) on the 8 unpadded tokens.
* row 2: 6 pads = one and a half windows: a sleep window holds 2 pads and 2 real tokens.
  An unpadded run would cut the content at other places (its windows would start at
  content offsets 0, 4 instead of 0, 2, 6), which changes what each window holds; that is
  a different computation, not a padding leak. The honest reference is the same content at
  the same window alignment: Algorithm 1 written out by hand over the 10 real tokens in
  windows of 2, 4 and 4 (sleep, sleep, wake) from a zero state, at the same global
  positions (6..15). This is the case that catches padding leaking *within* a window
  (conv taps, attention over a padded key, a write or decay in the fast weights).

Logits are compared on the last window (the answer) relative to their largest magnitude, at
2e-4: float32 rounding measured up to 3.2e-6 here and 1.3e-5 on another CPU (Ouro, row 2),
while removing any one of the maskings errs by 4e-3 to 0.71.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sleep_lm import sleep
from sleep_lm.model import build_model
from tests.tolerance import assert_relative

VOCAB, T, L = 11, 16, 4
PADS = (0, 8, 6)  # per row; see the module docstring
RTOL = 2e-4
ANSWER = 2  # loss positions at the end of the last window


def jit(fn, **kwargs):
    """jax.jit without LLVM optimisation: these tests check numbers; compiles ~3x faster."""
    return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0}, **kwargs)


def make_model(positions="rope"):
    cfg = dict(
        width=16,
        heads=2,
        layers="attn,gdn,jet",
        mlp_ratio=2,
        conv_size=3,
        gdn_impl="recurrent",
        chunk_size=4,
        positions=positions,
    )
    return build_model(cfg, vocab_size=VOCAB, max_len=T, window=L)


def random_params(model, seed=0):
    shapes = jax.eval_shape(model.init_params, jax.random.key(0))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        noise = rng.standard_normal(leaf.shape)
        scale = "scale" in jax.tree_util.keystr(path)  # RMSNorm gains near one
        return jnp.asarray(1 + 0.1 * noise if scale else 0.3 * noise, jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def loss_mask(length):
    mask = np.zeros(length, bool)
    mask[-ANSWER:] = True
    return mask


def spec_for(length, passes, eviction):
    cfg = {"passes": passes, "window": L, "eviction": eviction}
    return sleep.SleepSpec.from_config(cfg, sleep.window_schedule(loss_mask(length), L))


def padded_batch(seed=1):
    """(tokens [rows, T] with random ids at the pads, valid [rows, T])."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, (len(PADS), T)).astype(np.int32)
    valid = np.arange(T)[None] >= np.array(PADS)[:, None]
    return tokens, valid


def by_hand(model, params, content, pad, passes, eviction):
    """Algorithm 1 over ``content`` [1, n] cut at the padded example's window boundaries:
    the first window holds L - pad % L tokens, the others L; every window but the last
    sleeps (consolidate, evict), the last wakes. Global positions start at ``pad``; the
    position-table indices (learned positions) at 0. Returns the last window's logits."""
    n = content.shape[1]
    state = model.init_state(1, cache_len=L if eviction == "sliding" else 0)
    begin = 0
    first = L - pad % L
    while True:
        length = first if begin == 0 else L
        tok = content[:, begin : begin + length]
        pos = jnp.arange(pad + begin, pad + begin + length, dtype=jnp.int32)
        epos = jnp.arange(begin, begin + length, dtype=jnp.int32)[None]
        if begin + length == n:
            logits, _ = sleep.wake(model, params, tok, pos, state, embed_pos=epos)
            return logits
        state = sleep.consolidate(model, params, tok, pos, state, passes, embed_pos=epos)
        state = sleep.evict(state, eviction)
        begin += length


@pytest.mark.parametrize(
    "positions, passes, eviction",
    [
        ("rope", 1, "hard"),
        ("rope", 2, "hard"),
        ("rope", 1, "sliding"),
        # N = 2 with sliding eviction: here with learned positions (the position-table
        # index of padded examples); with RoPE in test_pretrained_families_pad_inertly.
        ("learned", 2, "sliding"),
    ],
)
def test_answer_logits_padded_equal_unpadded(positions, passes, eviction):
    model = make_model(positions)
    params = random_params(model)
    tokens, valid = padded_batch()
    spec = spec_for(T, passes, eviction)
    padded = jit(lambda p, t, v: sleep.sequence_logits(model, p, t, spec, v)[0])(
        params, tokens, valid
    )

    # Row 1: padded by whole windows -> Algorithm 1 on the unpadded example.
    pad = PADS[1]
    short = spec_for(T - pad, passes, eviction)
    want = jit(lambda p, t: sleep.sequence_logits(model, p, t, short)[0])(params, tokens[1:2, pad:])
    assert_relative(padded[1, -L:], want[0, -L:], RTOL, "row 1 (whole-window padding)")

    # Row 2: padded by 1.5 windows -> the same content at the same window alignment.
    pad = PADS[2]
    want = jit(lambda p, t: by_hand(model, p, t, pad, passes, eviction))(params, tokens[2:3, pad:])
    assert_relative(padded[2, -L:], want[0, -L:], RTOL, "row 2 (padding inside a window)")


def test_an_all_valid_mask_changes_nothing():
    """valid = all True gives the numbers of a batch without ``valid`` (whose traced program
    is the one from before padding support: the model's calls are unchanged when it is
    absent)."""
    model = make_model("learned")
    params = random_params(model)
    tokens, _ = padded_batch()
    mask = np.broadcast_to(loss_mask(T), tokens.shape)
    batch = {"inputs": tokens, "targets": tokens, "loss_mask": mask}
    spec = spec_for(T, 2, "sliding")
    loss = jit(lambda p, b: sleep.sequence_loss(model, p, b, spec)[0])
    plain = loss(params, batch)
    all_valid = loss(params, {**batch, "valid": np.ones(tokens.shape, bool)})
    np.testing.assert_allclose(all_valid, plain, rtol=1e-6)


class _TaskWithLateLoss:
    """FakeTask (8 tokens, loss at the last one) whose second training batch also scores
    position 2, inside the first window (a sleep window of the schedule from one example)."""

    def __init__(self):
        from tests.train.train_fakes import FakeTask

        self._task = FakeTask()
        self.name, self.vocab_size, self.seq_len = "fake", self._task.vocab_size, 8
        self.calls = 0

    def sample(self, rng, batch_size):
        batch = self._task.sample(rng, batch_size)
        self.calls += 1
        if self.calls == 2:
            batch["loss_mask"][3, 2] = True
        return batch

    def eval_batch(self, size, seed=0):
        return self._task.eval_batch(size, seed)


def test_a_loss_position_in_a_sleep_window_is_an_error(tmp_path):
    spec = spec_for(T, 1, "hard")  # windows 0-2 sleep, window 3 wakes
    mask = np.broadcast_to(loss_mask(T), (3, T)).copy()
    sleep.check_schedule(mask, spec)  # answers in the wake window: fine
    mask[1, 5] = True
    with pytest.raises(ValueError, match=r"example 1 has a loss position at 5, in window 1") as e:
        sleep.check_schedule(mask, spec)
    assert "\n" not in str(e.value)
    # sequence_loss refuses a concrete batch before computing anything.
    tokens = np.zeros((3, T), np.int32)
    batch = {"inputs": tokens, "targets": tokens, "loss_mask": mask}
    with pytest.raises(ValueError, match="loss position at 5"):
        sleep.sequence_loss(make_model(), None, batch, spec)

    # The trainer checks every batch on the host before its step: the run stops at step 2.
    from sleep_lm.train import loop
    from tests.train.train_fakes import fake_init, fake_loss, tiny_config

    fake_spec = sleep.SleepSpec.from_config(
        {"passes": 1, "window": 4}, sleep.window_schedule(np.arange(8) == 7, 4)
    )
    components = loop.Components(
        task=_TaskWithLateLoss(), init_params=fake_init, loss_fn=fake_loss, spec=fake_spec
    )
    with pytest.raises(ValueError, match=r"example 3 has a loss position at 2, in window 0"):
        loop.train(tiny_config(), tmp_path, components)
    assert components.task.calls == 2


def _pretrained(family):
    """Tiny random Qwen2 (Jet, sliding-window and full attention layers) or Ouro (two layers
    looped twice, one inserted Jet layer that is not the identity) with the same stages."""
    if family == "qwen2":
        from sleep_lm.model.qwen2 import Qwen2Config, build_qwen2

        cfg = Qwen2Config(
            vocab_size=VOCAB,
            width=16,
            intermediate=24,
            heads=4,
            kv_heads=2,
            head_dim=4,
            layers=("jet", "swa", "attn"),
            sliding_window=3,
            rope_theta=10_000.0,
            jet_heads=2,
            jet_key_head_dim=4,
            jet_value_head_dim=8,
            jet_conv_size=3,
            jet_generator_reduction=4,
            chunk_size=2,
        )
        return build_qwen2(cfg, window=L)
    from sleep_lm.model.ouro import OuroConfig, OuroLM

    cfg = OuroConfig(
        vocab_size=VOCAB,
        width=16,
        intermediate_size=24,
        num_layers=2,
        heads=2,
        kv_heads=2,
        head_dim=8,
        rope_theta=10_000.0,
        total_ut_steps=2,
        jet_positions=(1,),
        jet_heads=2,
        jet_key_head_dim=4,
        jet_value_head_dim=8,
        jet_conv_size=3,
        jet_generator_reduction=4,
        jet_identity_init=False,
        chunk_size=2,
    )
    return OuroLM(cfg, window=L)


@pytest.mark.parametrize("family", ["qwen2", "ouro"])
def test_pretrained_families_pad_inertly(family):
    """The same check for the pretrained families' own attention (RoPE, grouped heads,
    sliding-window layers) and Jet layers; N = 2, sliding eviction."""
    model = _pretrained(family)
    params = random_params(model)
    tokens, valid = padded_batch()
    spec = spec_for(T, 2, "sliding")
    padded = jit(lambda p, t, v: sleep.sequence_logits(model, p, t, spec, v)[0])(
        params, tokens, valid
    )
    pad = PADS[1]
    short = spec_for(T - pad, 2, "sliding")
    want = jit(lambda p, t: sleep.sequence_logits(model, p, t, short)[0])(params, tokens[1:2, pad:])
    assert_relative(padded[1, -L:], want[0, -L:], RTOL, "row 1 (whole-window padding)")
    pad = PADS[2]
    want = jit(lambda p, t: by_hand(model, p, t, pad, 2, "sliding"))(params, tokens[2:3, pad:])
    assert_relative(padded[2, -L:], want[0, -L:], RTOL, "row 2 (padding inside a window)")


def test_streaming_pads_like_training():
    """inference.streaming_logits with ``valid`` (feed for the sleep windows, decode_step
    token by token in the wake window, a padded session state) equals Algorithm 1's padded
    logits on the answer window; learned positions, so the position-table index that the
    session tracks across windows (``valid_base``) is exercised. N = 2, sliding eviction."""
    from sleep_lm import inference

    model = make_model("learned")
    params = random_params(model)
    tokens, valid = padded_batch()
    spec = spec_for(T, 2, "sliding")
    want = jit(lambda p, t, v: sleep.sequence_logits(model, p, t, spec, v)[0])(
        params, tokens, valid
    )
    got, _ = inference.streaming_logits(model, params, jnp.asarray(tokens), spec, valid=valid)
    for row in range(len(PADS)):
        assert_relative(got[row, -L:], want[row, -L:], RTOL, f"row {row}: streaming vs training")


def test_gsm_infinite_batches_carry_the_padding_mask():
    """GSM-Infinite left-pads every example (the answer ends the sequence) and marks the
    padding in ``valid``; ``padding="filler"`` is the earlier layout (same tokens, no mask)."""
    from sleep_lm.tasks import get_task

    cfg = {"name": "gsm_infinite", "seq_len": 384, "min_op": 2, "max_op": 3}
    task = get_task(cfg)
    batch = task.sample(np.random.default_rng(0), 4)
    valid = batch["valid"]
    assert valid.shape == batch["inputs"].shape and valid.dtype == bool
    pads = (~valid).sum(axis=1)
    for row, pad in enumerate(pads):
        assert valid[row, pad:].all()  # left padding: one run of padding, then real tokens
        assert (batch["inputs"][row, :pad] == task.tokenizer.filler_id).all()
        assert not batch["loss_mask"][row, :pad].any()
        # the first real token starts the question (the prompt is not cut)
        assert task.render(batch["inputs"][row, pad:]).startswith(("If ", "What "))
    assert len(set(pads.tolist())) > 1  # the examples have different lengths
    filler = get_task({**cfg, "padding": "filler"}).sample(np.random.default_rng(0), 4)
    assert "valid" not in filler
    np.testing.assert_array_equal(filler["inputs"], batch["inputs"])
    with pytest.raises(ValueError, match=r"^task\.padding: allowed 'inert', 'filler', got 'x'$"):
        get_task({**cfg, "padding": "x"})
