"""Algorithm 1 over a sequence: ``run_sequence`` and the loss and logits built on it.

``run_sequence`` cuts tokens [batch, time] into windows of L (``window_bounds``), groups
consecutive windows of the same kind and length into segments (one ``lax.scan`` each),
sleeps or wakes each window (``passes.py``) and evicts after it; truncated BPTT
(``grad_windows``) stops the gradient at the state entering one window. ``sequence_loss``
(masked cross-entropy and accuracies, for training) and ``sequence_logits`` (the reference
a streaming decoder must reproduce) read its wake windows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sleep_lm.sleep.passes import _scan, consolidate, embed_positions, evict, wake
from sleep_lm.sleep.spec import SleepSpec, check_schedule, window_bounds


def _segments(bounds, schedule, cut: int = 0):
    """Groups consecutive windows of the same kind and length: (wake, first, count).

    A segment also starts at window ``cut`` (where truncated BPTT stops the gradient).
    """
    segments = []
    for i, ((_, length), is_wake) in enumerate(zip(bounds, schedule, strict=True)):
        same = segments and segments[-1][0] == is_wake and bounds[segments[-1][1]][1] == length
        if same and i != cut:
            segments[-1][2] += 1
        else:
            segments.append([is_wake, i, 1])
    return [tuple(s) for s in segments]


def run_sequence(
    model, params, tokens, spec: SleepSpec, readout, extras=(), state=None, valid=None
):
    """Algorithm 1's window loop over tokens [batch, time].

    ``readout(logits, *extras_window)`` maps a wake window's logits (and the matching
    [batch, window, ...] slices of each array in ``extras``) to a pytree; from
    ``spec.scored_from`` on only (``head_from``: a segment's windows share the last one's
    offset, so the time axis is ``window - head_from``). Returns
    (list of (first_window, count, readouts stacked [count, ...]), final state). ``state``
    defaults to zeros with KV caches of L slots under sliding eviction, none under hard.
    ``valid`` [batch, time] bool: real tokens (None: all; see "Variable-length examples").
    """
    batch, seq_len = tokens.shape
    bounds = window_bounds(seq_len, spec.window)
    if len(spec.schedule) != len(bounds):
        raise ValueError(
            f"SleepSpec.schedule has {len(spec.schedule)} windows; a sequence of {seq_len} "
            f"tokens with window {spec.window} has {len(bounds)}"
        )
    if state is None:
        state = model.init_state(batch, cache_len=spec.window if spec.eviction == "sliding" else 0)
    pass_remat = "pass" if spec.remat == "pass" else "none"
    window_remat = spec.remat == "window"
    num_windows = len(bounds)
    # Truncated BPTT: the state entering window `cut` is a constant to autodiff.
    cut = num_windows - spec.grad_windows if 0 < spec.grad_windows < num_windows else 0

    padded = valid is not None
    if padded:
        valid = jnp.asarray(valid).astype(bool)
        epos = embed_positions(valid)

    def padding(xs):
        # (tokens, positions, [valid, embed positions,] extras...) -> the padding kwargs.
        return dict(valid=xs[2], embed_pos=xs[3]) if padded else {}

    def sleep_step(state, xs, params=params, grad_passes=spec.grad_passes):
        tok, pos = xs[:2]
        state = consolidate(
            model,
            params,
            tok,
            pos,
            state,
            spec.passes,
            loop_blocks=spec.loop_blocks,
            remat=pass_remat,
            grad_passes=grad_passes,
            **padding(xs),
        )
        return evict(state, spec.eviction), None

    def frozen_sleep_step(state, xs):
        # A sleep window before the cut with no wake window between it and the cut: its only
        # product, the state, reaches the loss only through the cut, so its gradient is zero.
        # Constant inputs (parameters included) give the same values and tell autodiff so up
        # front: no tangents traced, no residuals kept.
        const = jax.lax.stop_gradient
        return sleep_step(const(state), xs, params=const(params), grad_passes=0)

    def wake_step(state, xs, head_from=0):
        tok, pos, *ext = xs
        kwargs = padding(xs)
        ext = [e[:, head_from:] for e in (ext[2:] if padded else ext)]
        logits, state = wake(
            model, params, tok, pos, state, remat=pass_remat, head_from=head_from, **kwargs
        )
        return evict(state, spec.eviction), readout(logits, *ext)

    def segment_head_from(begin, length, count):
        # The segment's windows share one static offset: the last window's (the smallest).
        last = begin + (count - 1) * length
        return min(max(spec.scored_from - last, 0), length - 1)

    outputs = []
    for is_wake, first, count in _segments(bounds, spec.schedule, cut):
        if cut and first == cut:
            state = jax.lax.stop_gradient(state)
        begin, length = bounds[first][0], bounds[first][1]
        end = begin + count * length

        def stack(x, begin=begin, end=end, length=length, count=count):
            # [batch, count * length, ...] -> [count, batch, length, ...]: scan over windows
            x = x[:, begin:end].reshape(batch, count, length, *x.shape[2:])
            return jnp.swapaxes(x, 0, 1)

        pos = jnp.arange(begin, end, dtype=jnp.int32).reshape(count, length)
        xs = (stack(tokens), pos, *((stack(valid), stack(epos)) if padded else ()))
        if is_wake:
            xs = (*xs, *(stack(e) for e in extras))
            offset = segment_head_from(begin, length, count)
            step = functools.partial(wake_step, head_from=offset)
            state, out = _scan(step, state, xs, count, remat=window_remat)
            outputs.append((first, count, out))
        elif first < cut and not any(spec.schedule[first:cut]):
            state, _ = _scan(frozen_sleep_step, state, xs, count)
        else:
            state, _ = _scan(sleep_step, state, xs, count, remat=window_remat)
    return outputs, state


def _window_stats(logits, targets, mask):
    logp = jax.nn.log_softmax(logits, axis=-1)
    ce = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    right = jnp.argmax(logits, axis=-1) == targets
    m = mask.astype(jnp.float32)
    return {
        "ce": jnp.sum(ce * m),
        "correct": jnp.sum(right * m),
        "wrong": jnp.sum(mask & ~right, axis=1),  # [batch] masked positions predicted wrong
    }


def sequence_loss(model, params, batch: dict, spec: SleepSpec) -> tuple[jax.Array, dict]:
    """Algorithm 1 over a batch; gradients flow through all windows and all passes (or the
    last ``spec.grad_windows`` windows and ``spec.grad_passes`` passes: truncated).

    batch: ``inputs``, ``targets`` int [batch, time], ``loss_mask`` bool [batch, time] and
    optionally ``valid`` bool [batch, time] (real tokens; padding is inert). A concrete
    batch is checked with ``check_schedule`` (a traced one is the caller's to check).
    Returns (loss, metrics): loss = mean cross-entropy over all masked positions; metrics
    "loss", "token_accuracy" (masked positions predicted right) and "accuracy" (fraction
    of examples with at least one masked position whose masked positions are all right),
    scalar float32.
    """
    try:  # a concrete mask can be checked here; under jit the trainer checked it on the host
        check_schedule(np.asarray(batch["loss_mask"]), spec)
    except jax.errors.TracerArrayConversionError:
        pass
    tokens = jnp.asarray(batch["inputs"])
    targets = jnp.asarray(batch["targets"])
    mask = jnp.asarray(batch["loss_mask"]).astype(bool)
    outputs, _ = run_sequence(
        model, params, tokens, spec, _window_stats, extras=(targets, mask), valid=batch.get("valid")
    )
    zero = jnp.zeros((), jnp.float32)
    ce, correct = zero, zero
    wrong = jnp.zeros(tokens.shape[:1], jnp.int32)
    for _, _, out in outputs:
        ce = ce + jnp.sum(out["ce"])
        correct = correct + jnp.sum(out["correct"])
        wrong = wrong + jnp.sum(out["wrong"], axis=0).astype(jnp.int32)
    count = jnp.maximum(jnp.sum(mask).astype(jnp.float32), 1.0)
    has_loss = jnp.any(mask, axis=1)
    all_right = jnp.sum(has_loss & (wrong == 0)) / jnp.maximum(jnp.sum(has_loss), 1)
    loss = ce / count
    metrics = {
        "loss": loss,
        "token_accuracy": correct / count,
        "accuracy": all_right.astype(jnp.float32),
    }
    return loss, metrics


def sequence_logits(model, params, tokens: jax.Array, spec: SleepSpec, valid=None):
    """Logits of Algorithm 1's wake windows: ([batch, time, vocab] float32, final state).

    Positions in sleep windows get zero logits (sleep produces no prediction), and so do
    positions before ``spec.scored_from`` (no head is applied there). This is the
    reference that a streaming decoder must reproduce at the prediction positions.
    ``valid`` [batch, time] bool: real tokens (None: all); logits at padded ones are
    meaningless.
    """
    batch, seq_len = tokens.shape
    outputs, state = run_sequence(model, params, tokens, spec, lambda logits: logits, valid=valid)
    logits = jnp.zeros((batch, seq_len, model.vocab_size), jnp.float32)
    bounds = window_bounds(seq_len, spec.window)
    for first, count, out in outputs:
        begin, length = bounds[first]
        skipped = length - out.shape[2]  # the segment's head_from: no logits there
        out = jnp.pad(out, ((0, 0), (0, 0), (skipped, 0), (0, 0)))
        out = jnp.swapaxes(out, 0, 1).reshape(batch, count * length, -1)
        logits = logits.at[:, begin : begin + count * length].set(out)
    return logits, state
