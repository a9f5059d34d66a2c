"""How a sequence is slept on, fixed before tracing: ``SleepSpec`` and its static schedule.

``SleepSpec`` (passes N, window L, eviction, remat, loop_blocks, the wake/sleep schedule,
truncated gradients) is parsed from ``config.sleep`` here, with errors naming the
``sleep.*`` field. The schedule marks each window of L tokens wake (some loss position) or
sleep (none); it is computed once on the host from one example, and ``check_schedule``
refuses a batch with a loss position in a sleep window. Activation rematerialisation
(``remat``) and truncated gradients (``grad_passes``, ``grad_windows``) are described in
README.md, "How sleep runs"; their measured memory in benchmarks/RESULTS.md.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

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
    scored_from: the first position that can carry a loss (the task's, e.g. GSM-Infinite's
        answer span); wake windows apply the LM head only from there on, so no logits (and
        no [time, vocab] buffers for the backward) exist for the prompt. 0 = every position.
        ``check_schedule`` refuses a batch with a loss position before it.
    """

    passes: int
    window: int
    eviction: str = "hard"
    remat: str = "none"
    loop_blocks: tuple = (None, None)
    schedule: tuple = ()
    grad_passes: int = 0
    grad_windows: int = 0
    scored_from: int = 0

    @classmethod
    def from_config(cls, sleep_cfg, schedule, scored_from: int = 0) -> SleepSpec:
        """From ``config.sleep`` (ConfigDict or dict), a ``window_schedule`` result and the
        task's first scored position (``scored_from``).

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
            scored_from=int(scored_from),
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
    """Host-side: ValueError (one line) if any loss position lies in a sleep window or
    before ``spec.scored_from``.

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
    if spec.scored_from and mask[:, : spec.scored_from].any():
        row, col = np.argwhere(mask[:, : spec.scored_from])[0]
        raise ValueError(
            f"loss_mask: example {row} has a loss position at {col}, before the first scored "
            f"position {spec.scored_from} (SleepSpec.scored_from: the task's); it would not "
            "be scored"
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
