"""Synthetic tasks (pure NumPy, deterministic given a seed; no jax needed).

    task = get_task(config.task)                  # config.task.name in TASKS
    batch = task.sample(np.random.default_rng(seed), batch_size)
    # inputs, targets int32 [batch, seq_len]; loss_mask bool [batch, seq_len]
    held_out = task.eval_batch(size, seed)        # fixed set on a disjoint seed stream

Every task exposes ``name``, ``vocab_size``, ``seq_len`` (length of ``inputs``), ``sample``,
``eval_batch`` and ``render``. See :mod:`sleep_lm.tasks.rule110` and :mod:`sleep_lm.tasks.depo`
and :mod:`sleep_lm.tasks.gsm_infinite` for the token layouts. A task may also define
``check_window(window)`` (raises ValueError when a loss position could fall in a sleep window)
and ``check_vocab(model_vocab_size)``.
"""

from __future__ import annotations

from sleep_lm.tasks.depo import Depo
from sleep_lm.tasks.gsm_infinite import GsmInfinite
from sleep_lm.tasks.gsm_infinite.task import FIELDS as _GSM_FIELDS
from sleep_lm.tasks.rule110 import Rule110, evolve

TASKS = ("rule110", "depo", "gsm_infinite")

# Optional config fields per task, passed to the constructor when present in ``config.task``.
_DEPO_FIELDS = (
    "max_nodes",
    "min_nodes",
    "num_queries",
    "hops",
    "max_hops",
    "num_names",
    "eval_hops",
)
_RULE110_FIELDS = ("state_bits", "num_states", "eval_steps")

_MISSING = object()


def _field(cfg, key: str, default=_MISSING):
    """``cfg.key`` for a ConfigDict, dict or plain object; ``default`` when absent."""
    if hasattr(cfg, "get"):
        value = cfg.get(key, _MISSING)
    else:
        value = getattr(cfg, key, _MISSING)
    return default if value is _MISSING else value


def _present(cfg, keys) -> dict:
    found = {key: _field(cfg, key) for key in keys}
    return {
        key: value for key, value in found.items() if value is not _MISSING and value is not None
    }


def get_task(task_cfg):
    """Builds the task named by ``task_cfg.name``.

    Args:
      task_cfg: an ml_collections ConfigDict, dict or any object with attributes. ``rule110``
        needs ``steps`` (t >= 0) and reads ``state_bits``/``num_states`` when present; ``depo``
        reads ``max_nodes``, ``min_nodes``, ``num_queries``, ``hops``, ``max_hops``,
        ``num_names`` and ``eval_hops`` when present (defaults: the paper's setting);
        ``gsm_infinite`` reads the fields of ``GsmInfinite`` (``gsm_infinite.task.FIELDS``).

    Raises:
      ValueError: one line naming the offending ``task.<field>`` and what is allowed.
    """
    name = _field(task_cfg, "name", None)
    try:
        if name == "rule110":
            steps = _field(task_cfg, "steps", None)
            if steps is None:
                raise ValueError("steps must be set to an integer >= 0 for task.name='rule110'")
            return Rule110(steps=steps, **_present(task_cfg, _RULE110_FIELDS))
        if name == "depo":
            return Depo(**_present(task_cfg, _DEPO_FIELDS))
        if name == "gsm_infinite":
            return GsmInfinite(**_present(task_cfg, _GSM_FIELDS))
    except ValueError as e:
        raise ValueError(f"task.{e}") from None
    allowed = ", ".join(repr(t) for t in TASKS)
    raise ValueError(f"task.name must be one of {allowed}, got {name!r}")


__all__ = ["TASKS", "Depo", "GsmInfinite", "Rule110", "evolve", "get_task"]
