"""Sleep: the paper's Algorithm 1. The only module that knows passes, windows and eviction.

A sequence is cut into consecutive windows of L tokens (the last may be shorter). Each
window is either

* **sleep** (no loss position in it): ``consolidate`` embeds the window once and runs the
  looped blocks N times over it, each pass writing the increasingly refined features into
  the fast weights; the features are then discarded; or
* **wake** (some loss position): one ordinary forward pass, logits, masked cross-entropy.

After every window the state is evicted: ``hard`` drops all local context (KV caches and
GDN conv tails), so only the fast weights cross the boundary; ``sliding`` keeps it, and
the attention mask then lets each query see L keys (itself and the previous L - 1 tokens).

Shapes: tokens, targets, loss_mask, valid [batch, time]; h [batch, window, width]; logits
[batch, window, vocab]. Design decisions (local context across passes, ``loop_blocks``,
the static schedule), inert padding (``batch["valid"]``), activation rematerialisation
(``remat``) and truncated gradients (``grad_passes``, ``grad_windows``) are described in
README.md, "How sleep runs"; their measured memory in benchmarks/RESULTS.md.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sleep_lm.model import state as state_lib
from sleep_lm.model.state import ModelState

EVICTIONS = ("hard", "sliding")
REMATS = ("none", "pass", "window")


# ------------------------------------------------------------------------------ spec


def parse_loop_blocks(value) -> tuple[int | None, int | None]:
    """ "all" -> (None, None); "start:stop" (Python slice, either end optional) -> ints."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        start, stop = value
    elif isinstance(value, str) and value.strip() == "all":
        return (None, None)
    elif isinstance(value, str) and value.count(":") == 1:
        try:
            start, stop = (int(s) if s.strip() else None for s in value.split(":"))
        except ValueError:
            start = stop = "bad"
    else:
        start = stop = "bad"
    for end in (start, stop):
        if end is not None and (not isinstance(end, int) or isinstance(end, bool)):
            raise ValueError(f'sleep.loop_blocks: allowed "all" or "start:stop", got {value!r}')
    return (start, stop)


def resolve_loop_blocks(loop_blocks, num_layers: int) -> tuple[int, int]:
    """(start, stop) with None / negative ends resolved over num_layers; must be non-empty."""
    start, stop, _ = slice(*parse_loop_blocks(loop_blocks)).indices(num_layers)
    if start >= stop:
        raise ValueError(
            f"sleep.loop_blocks: {loop_blocks!r} selects no block of the {num_layers} layers"
        )
    return start, stop


class SleepSpec(NamedTuple):
    """Static description of how a sequence is slept on (hashable: a jit static argument).

    passes: N >= 1 consolidation passes per sleep window.
    window: L >= 1 tokens per window.
    eviction: "hard" | "sliding".
    remat: "none" | "pass" | "window" (see the module docstring).
    loop_blocks: (start, stop) slice over layers looped during sleep; (None, None) = all.
    schedule: one bool per window, True = wake (see ``window_schedule``).
    grad_passes: M >= 0, gradients through only the last M passes of each sleep window;
        0 (or M >= N) = all passes (see "Truncated gradients" in the module docstring).
    grad_windows: K >= 0, gradients through the state for only the last K windows;
        0 (or K >= number of windows) = all windows.
    """

    passes: int
    window: int
    eviction: str = "hard"
    remat: str = "none"
    loop_blocks: tuple = (None, None)
    schedule: tuple = ()
    grad_passes: int = 0
    grad_windows: int = 0

    @classmethod
    def from_config(cls, sleep_cfg, schedule) -> SleepSpec:
        """From ``config.sleep`` (ConfigDict or dict) and a ``window_schedule`` result.

        Raises ValueError naming the offending ``sleep.*`` field.
        """
        get = sleep_cfg.get
        passes, window = get("passes", 1), get("window", None)
        for name, value in (("passes", passes), ("window", window)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"sleep.{name}: allowed an int >= 1, got {value!r}")
        # Absent in configs written before truncation existed: 0 = full BPTT, as they ran.
        grad_passes, grad_windows = get("grad_passes", 0), get("grad_windows", 0)
        for name, value in (("grad_passes", grad_passes), ("grad_windows", grad_windows)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"sleep.{name}: allowed an int >= 0 (0 = all), got {value!r}")
        eviction, remat = get("eviction", "hard"), get("remat", "none")
        if eviction not in EVICTIONS:
            raise ValueError(f"sleep.eviction: allowed {EVICTIONS}, got {eviction!r}")
        if remat not in REMATS:
            raise ValueError(f"sleep.remat: allowed {REMATS}, got {remat!r}")
        return cls(
            passes=passes,
            window=window,
            eviction=eviction,
            remat=remat,
            loop_blocks=parse_loop_blocks(get("loop_blocks", "all")),
            schedule=tuple(bool(x) for x in schedule),
            grad_passes=grad_passes,
            grad_windows=grad_windows,
        )


# ------------------------------------------------------------------------- windows


def window_bounds(seq_len: int, window: int) -> list[tuple[int, int]]:
    """(start, length) of each consecutive window; the last is shorter if L does not divide."""
    return [(s, min(window, seq_len - s)) for s in range(0, seq_len, window)]


def window_schedule(loss_mask, window: int) -> tuple[bool, ...]:
    """Host-side: True for windows with any loss position (wake), False otherwise (sleep).

    loss_mask: [batch, time] or [time] bool NumPy array. Computed once at setup from the
    task's layout; a loss position that falls in a sleep window would be ignored by the
    loss, so the mask used here must cover every position the task can ever mask.
    """
    mask = np.asarray(loss_mask, dtype=bool)
    if mask.ndim == 1:
        mask = mask[None]
    return tuple(bool(mask[:, s : s + n].any()) for s, n in window_bounds(mask.shape[1], window))


def check_schedule(loss_mask, spec: SleepSpec) -> None:
    """Host-side: ValueError (one line) if any loss position lies in a sleep window.

    loss_mask: [batch, time] or [time] bool NumPy array (the batch about to be scored).
    The schedule is static (``window_schedule`` from one example), so a loss position in a
    window it marks as sleep would be silently unscored; this refuses the batch instead.
    """
    mask = np.asarray(loss_mask, dtype=bool)
    if mask.ndim == 1:
        mask = mask[None]
    bounds = window_bounds(mask.shape[1], spec.window)
    if len(bounds) != len(spec.schedule):
        raise ValueError(
            f"loss_mask: {mask.shape[1]} positions make {len(bounds)} windows of "
            f"{spec.window}; the sleep schedule has {len(spec.schedule)}"
        )
    for w, ((begin, length), wake_window) in enumerate(zip(bounds, spec.schedule, strict=True)):
        if wake_window or not mask[:, begin : begin + length].any():
            continue
        row, col = np.argwhere(mask[:, begin : begin + length])[0]
        raise ValueError(
            f"loss_mask: example {row} has a loss position at {begin + col}, in window {w} "
            f"(positions {begin}-{begin + length - 1}), which the static schedule sleeps on "
            "(computed from one example); it would not be scored"
        )


def embed_positions(valid: jax.Array) -> jax.Array:
    """[batch, time] int32 position-table index of each token of a padded batch: the number
    of real tokens before it in its example (0, 1, 2, ... on the real tokens, whatever the
    padding in front; a padded token's index is never read by a real token)."""
    valid = valid.astype(jnp.int32)
    return jnp.cumsum(valid, axis=1) - valid


def evict(state: ModelState, eviction: str) -> ModelState:
    """End of a window: "hard" clears KV caches and conv tails, "sliding" keeps them.

    Fast weights are kept either way. Under "sliding" the ring buffer still holds the last
    L tokens, and the attention mask (L keys per query) leaves the last L - 1 visible.
    """
    if eviction == "hard":
        return state_lib.clear_local(state)
    if eviction == "sliding":
        return state
    raise ValueError(f"sleep.eviction: allowed {EVICTIONS}, got {eviction!r}")


# ------------------------------------------------------------------- model stages


def _scan(f, init, xs, length: int, *, remat: bool = False):
    """``lax.scan``, or one direct call when length == 1: a one-step scan would still nest
    a loop level in the program, and nested loops multiply compile time under autodiff.

    remat checkpoints each step. Inside a scan, CSE of the recomputation with the forward is
    impossible anyway, so prevent_cse (which costs optimisation barriers) is only needed
    for the direct call.
    """
    if remat:
        f = jax.checkpoint(f, prevent_cse=length == 1)
    if length != 1:
        return jax.lax.scan(f, init, xs, length=length)
    carry, y = f(init, jax.tree.map(lambda x: x[0], xs))
    return carry, jax.tree.map(lambda x: x[None], y)


def _embed(model, params, tokens, positions):
    return model.apply({"params": params}, tokens, positions, method="embed")


def _blocks(model, params, h, state, positions, start, stop, valid=None):
    if start == stop:
        return h, state
    if valid is None:  # no padding: the model's call (and program) as without padding support
        return model.apply({"params": params}, h, state, positions, start, stop, method="blocks")
    return model.apply(
        {"params": params}, h, state, positions, start, stop, valid=valid, method="blocks"
    )


def _head(model, params, h):
    return model.apply({"params": params}, h, method="head")


def _frozen_layers(state: ModelState, frozen: ModelState, start: int, stop: int) -> ModelState:
    """``state`` with layers ``start:stop`` taken from ``frozen`` (the looped layers)."""
    layers = (
        f if start <= i < stop else x
        for i, (x, f) in enumerate(zip(state.layers, frozen.layers, strict=True))
    )
    return ModelState(layers=tuple(layers))


def consolidate(
    model,
    params,
    window_tokens: jax.Array,
    positions: jax.Array,
    state: ModelState,
    passes: int,
    *,
    loop_blocks=(None, None),
    remat: str = "none",
    grad_passes: int = 0,
    valid: jax.Array | None = None,
    embed_pos: jax.Array | None = None,
) -> ModelState:
    """Sleep on one window: N passes of the looped blocks; returns the new state.

    window_tokens: [batch, time] int; positions: [time] global positions; state: the state
    at the window start (not evicted: the caller evicts afterwards). The window is embedded
    once; blocks before the loop run once, then a ``lax.scan`` runs ``passes`` passes of
    blocks ``loop_blocks`` carrying features and state (each pass restarting the looped
    layers' local context from the window start, keeping the fast weights), then blocks
    after the loop run once. The features are discarded. ``remat="pass"`` checkpoints
    each pass.

    ``grad_passes`` = M with 0 < M < N: the features and the looped layers' fast weights
    after the first N - M passes are constants to autodiff (``stop_gradient``); the values
    are unchanged. 0 or M >= N: gradients through every pass.

    ``valid`` [batch, time] bool marks real tokens (None: all; padded ones are inert, see the
    module docstring) and ``embed_pos`` [batch, time] their position-table indices
    (``embed_positions`` of the whole sequence, sliced; None: ``positions``).
    """
    num_layers = len(model.config.layers)
    start, stop = resolve_loop_blocks(loop_blocks, num_layers)
    h = _embed(model, params, window_tokens, positions if embed_pos is None else embed_pos)
    h, state = _blocks(model, params, h, state, positions, 0, start, valid)
    at_window_start = state

    def run_passes(params, h, state, at_window_start, count, remat):
        def one_pass(carry, _):
            h, st = carry
            st = state_lib.restart_local(st, at_window_start, start, stop)
            return _blocks(model, params, h, st, positions, start, stop, valid), None

        return _scan(one_pass, (h, state), None, count, remat=remat)[0]

    frozen = passes - grad_passes if 0 < grad_passes < passes else 0
    if frozen:
        # stop_gradient on every input rather than on the outputs: the same values and zero
        # gradient, but autodiff then sees a constant computation up front and neither traces
        # tangents nor keeps residuals for these passes (that is the memory saved).
        const = jax.lax.stop_gradient
        h, done = run_passes(
            const(params), const(h), const(state), const(at_window_start), frozen, False
        )
        # Only the looped layers' fast weights are the passes' product; the layers before and
        # after the loop keep their (differentiable) state.
        state = _frozen_layers(state, done, start, stop)
    h, state = run_passes(params, h, state, at_window_start, passes - frozen, remat == "pass")
    _, state = _blocks(model, params, h, state, positions, stop, num_layers, valid)
    return state


def wake(
    model,
    params,
    tokens: jax.Array,
    positions: jax.Array,
    state: ModelState,
    *,
    remat="none",
    valid: jax.Array | None = None,
    embed_pos: jax.Array | None = None,
) -> tuple[jax.Array, ModelState]:
    """One ordinary forward pass: (logits [batch, time, vocab] float32, new state).

    ``remat="pass"`` checkpoints the pass. The caller evicts at the window end. ``valid``
    and ``embed_pos`` as for ``consolidate`` (logits at padded tokens are meaningless).
    """
    if valid is None and embed_pos is None:

        def run(params, tokens, positions, state):
            h = _embed(model, params, tokens, positions)
            h, state = _blocks(model, params, h, state, positions, 0, len(model.config.layers))
            return _head(model, params, h), state

        if remat == "pass":
            run = jax.checkpoint(run)
        return run(params, tokens, positions, state)

    def run_padded(params, tokens, positions, state, valid, embed_pos):
        h = _embed(model, params, tokens, positions if embed_pos is None else embed_pos)
        layers = len(model.config.layers)
        h, state = _blocks(model, params, h, state, positions, 0, layers, valid)
        return _head(model, params, h), state

    if remat == "pass":
        run_padded = jax.checkpoint(run_padded)
    return run_padded(params, tokens, positions, state, valid, embed_pos)


# ---------------------------------------------------------------------- Algorithm 1


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
    [batch, window, ...] slices of each array in ``extras``) to a pytree. Returns
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

    def wake_step(state, xs):
        tok, pos, *ext = xs
        kwargs = padding(xs)
        ext = ext[2:] if padded else ext
        logits, state = wake(model, params, tok, pos, state, remat=pass_remat, **kwargs)
        return evict(state, spec.eviction), readout(logits, *ext)

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
            state, out = _scan(wake_step, state, xs, count, remat=window_remat)
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

    Positions in sleep windows get zero logits (sleep produces no prediction). This is the
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
        out = jnp.swapaxes(out, 0, 1).reshape(batch, count * length, -1)
        logits = logits.at[:, begin : begin + count * length].set(out)
    return logits, state
