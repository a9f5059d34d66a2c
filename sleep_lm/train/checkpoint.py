"""Checkpoints in WORKDIR/checkpoints with orbax (async), keeping the last few.

A checkpoint is the whole `TrainState` (step, params, optimiser state) at a step; the data
order is a function of (seed, step), so restoring the state is all a restart needs to
continue exactly where the run left off.

Meshes: orbax stores every array whole (as its global shape), so a checkpoint written on one
mesh restores on any other (8 devices -> 1 -> 4, another data/fsdp/tensor split, another
number of hosts): `restore` reads each array straight into the sharding of the target's
ShapeDtypeStructs (the train loop passes the current mesh's NamedShardings). With several
processes every process calls `save` and `restore`; orbax writes each process's shards and
lets process 0 finalise the checkpoint, so WORKDIR must be a directory all hosts share.

Damaged checkpoints: restoring the latest checkpoint (resume, `--mode=eval`, `load_run`, warm
starts) tries the steps newest first; a step that cannot be restored (unreadable data, an
empty or partial step folder) is skipped with one warning line naming the step and the reason,
and the newest good one is used. Only when none restores is it an error (`CheckpointError`,
one line). A resume moves the skipped steps out of the way, to WORKDIR/checkpoints.unreadable/,
so that the run can write those steps again; nothing is deleted. An explicit `step` gets no
fallback: its failure is the error.

Parameters only: `restore_params(directory, target, step)` reads just the `params` of a
checkpoint (an orbax partial restore: the optimiser state is never read), optionally into a
target tree of ShapeDtypeStructs, checked by name and shape first so that a mismatch is one
line naming the parameter. `sleep_lm.load_run`, `--mode=eval` and `config.init.
from_checkpoint` (warm starts) use it.
"""

import logging as std_logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from absl import logging


class _DropOrbaxInfo(std_logging.Filter):
    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


class _DropExpectedOrbaxWarnings(std_logging.Filter):
    """Warnings orbax gives for every read-only manager (what a params-only restore opens):
    they describe what was asked for, not a problem; and its note on a damaged step, which
    `restore_newest` reports in one line."""

    EXPECTED = (
        "is read only",
        "save_interval_steps=0",
        "read_only=True",
        # A damaged step folder: the fallback's own warning names the step and the reason.
        "Metadata file does not exist",
    )

    def filter(self, record: std_logging.LogRecord) -> bool:
        if "orbax" not in record.pathname:
            return True
        message = record.getMessage()
        return not any(text in message for text in self.EXPECTED)


def _quiet_orbax() -> None:
    """Orbax logs several INFO lines (through absl) per save; keep the training log readable."""
    handler = logging.get_absl_handler()
    for kind in (_DropOrbaxInfo, _DropExpectedOrbaxWarnings):
        if not any(isinstance(f, kind) for f in handler.filters):
            handler.addFilter(kind())
    # Orbax may log through its own Python loggers too (not only through absl's handler).
    for name in ("orbax", "absl"):
        logger = std_logging.getLogger(name)
        if not any(isinstance(f, _DropExpectedOrbaxWarnings) for f in logger.filters):
            logger.addFilter(_DropExpectedOrbaxWarnings())


class CheckpointError(RuntimeError):
    """No checkpoint in a directory can be restored; the message is one line."""


def _reason(error: Exception) -> str:
    """The first line of an exception, shortened: what a one-line warning can hold."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= 200 else text[:197] + "..."


def restore_newest(directory: Path, steps, restore: Callable[[int], object]):
    """(restore(step), step, skipped steps) for the newest of `steps` that restores.

    A step whose restore raises (anything but ParamMismatch, which is about the model and
    would fail for every step) is skipped with one warning line; CheckpointError (one line)
    when none restores."""
    skipped, reasons = [], []
    for step in sorted(steps, reverse=True):
        try:
            return restore(step), step, skipped
        except ParamMismatch:
            raise
        except Exception as e:  # noqa: BLE001 - any damage to a step's files
            reason = _reason(e)
            logging.warning(
                "checkpoint step %d in %s cannot be restored (%s); trying the previous one",
                step,
                directory,
                reason,
            )
            skipped.append(step)
            reasons.append(f"step {step}: {reason}")
    if not skipped:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    raise CheckpointError(
        f"no checkpoint in {directory} can be restored ({len(skipped)} tried; {reasons[0]})"
    )


def abstract_like(tree):
    """ShapeDtypeStructs (with a sharding) for `tree`, the restore target orbax wants.

    Leaves that carry a sharding (the train loop's NamedShardings) keep it: orbax restores
    into it, resharding as needed. Leaves without one (plain `jax.eval_shape`) are placed
    on the first local device.
    """
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def leaf(x):
        sharding = getattr(x, "sharding", None)
        if not isinstance(sharding, jax.sharding.Sharding):  # None, or orbax's metadata
            sharding = device
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree.map(leaf, tree)


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` for one pytree item (the train state)."""

    def __init__(self, directory: str | os.PathLike, *, keep: int, use_async: bool = True):
        _quiet_orbax()
        self.directory = Path(directory).absolute()
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=use_async
        )
        self._manager = self._open()
        self.unreadable: list[int] = []  # steps the last restore skipped as damaged

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state) -> bool:
        """Starts saving `state` as `step` (returns before the write ends); skips known steps.

        The device-to-host copy finishes before this returns, so the caller may donate
        `state`'s buffers to the next train step right away.
        """
        if step in self._manager.all_steps():
            return False
        saved = self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
        if saved:
            logging.info("checkpoint: saving step %d to %s", step, self.directory)
        return saved

    def restore(self, abstract_state, step: int | None = None):
        """The state saved at `step`, with the structure of `abstract_state`.

        step=None: the newest checkpoint that restores (damaged newer ones are skipped with a
        warning and remembered in `self.unreadable`, see `set_aside_unreadable`); raises
        CheckpointError when none does, FileNotFoundError when there is none."""
        target = abstract_like(abstract_state)

        def restore(at):
            return self._manager.restore(at, args=ocp.args.StandardRestore(target))

        if step is not None:
            return restore(step)
        state, _, self.unreadable = restore_newest(self.directory, self.all_steps(), restore)
        return state

    def set_aside_unreadable(self) -> None:
        """Moves the steps the last `restore` skipped to <directory>.unreadable/<step> (kept
        for inspection, out of orbax's sight) so that the run can write those steps again."""
        if not self.unreadable:
            return
        self._manager.wait_until_finished()
        self._manager.close()
        if jax.process_index() == 0:
            aside = self.directory.with_name(self.directory.name + ".unreadable")
            aside.mkdir(exist_ok=True)
            for step in self.unreadable:
                target = aside / str(step)
                if target.exists():
                    shutil.rmtree(target)
                shutil.move(str(self.directory / str(step)), str(target))
                logging.warning("checkpoint step %d moved to %s", step, target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("sleep_lm: unreadable checkpoints set aside")
        self.unreadable = []
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        # One item, said explicitly: otherwise orbax infers single vs several items from the
        # newest step folder, and an empty one would make every step unreadable.
        return ocp.CheckpointManager(
            self.directory, options=self._options, item_handlers=ocp.StandardCheckpointHandler()
        )

    def wait(self) -> None:
        """Blocks until pending async saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _param_names(tree) -> dict[str, tuple]:
    """{'block_0/mixer/q_proj/kernel': shape} of a parameter tree (arrays or metadata)."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {
        jax.tree_util.keystr(path, simple=True, separator="/"): tuple(x.shape) for path, x in leaves
    }


class ParamMismatch(ValueError):
    """A checkpoint lacks a parameter the model needs, or holds it with another shape."""


def check_params(found: dict[str, tuple], needed: dict[str, tuple], where: str) -> None:
    """Raises ParamMismatch (one line) naming the first parameter of `needed` that `found`
    lacks or holds with another shape ({name: shape} both, see `_param_names`)."""
    for name, shape in needed.items():
        if name not in found:
            raise ParamMismatch(f"parameter {name} (shape {shape}) is missing in {where}")
        if found[name] != shape:
            raise ParamMismatch(
                f"parameter {name} has shape {found[name]} in {where}; this model needs {shape}"
            )


def restore_params(directory: str | os.PathLike, target=None, step: int | None = None):
    """(params, step) of the checkpoint at `step` (default: latest) in `directory`, reading
    the parameters only (orbax partial restore; no optimiser state is read).

    target: the parameter tree to restore into (ShapeDtypeStructs or arrays; leaves with a
    sharding are restored into it, see `abstract_like`); checked by name and shape first,
    so that a missing or mis-shaped parameter is a ParamMismatch (ValueError) naming it.
    Parameters of the checkpoint that `target` does not name are not read. None: every
    parameter as stored.
    step=None: the newest checkpoint that restores (damaged ones skipped with a warning).
    Raises FileNotFoundError when `directory` holds no checkpoint (or not that step),
    CheckpointError when none of its checkpoints restores.
    """
    _quiet_orbax()
    directory = Path(directory).absolute()
    if not directory.is_dir():  # Checked before orbax: its manager would create it.
        raise FileNotFoundError(f"no checkpoint in {directory} (no such directory)")
    options = ocp.CheckpointManagerOptions(create=False, read_only=True)
    # The plain PyTree handler reads what StandardSave wrote and takes partial restores.
    manager = ocp.CheckpointManager(
        directory, options=options, item_handlers=ocp.PyTreeCheckpointHandler()
    )
    try:
        steps = list(manager.all_steps())
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {directory}")
        if step is not None and step not in steps:
            raise FileNotFoundError(
                f"no checkpoint of step {step} in {directory} (steps: "
                f"{', '.join(map(str, sorted(steps)))})"
            )

        def restore(at):
            stored = manager.item_metadata(at)
            stored = getattr(stored, "tree", stored)
            if not stored or "params" not in stored:
                raise ValueError(f"the checkpoint of step {at} in {directory} holds no params")
            where = f"the checkpoint of step {at} in {directory}"
            wanted = stored["params"] if target is None else target
            if target is not None:
                check_params(_param_names(stored["params"]), _param_names(target), where)
            item = abstract_like({"params": wanted})
            return manager.restore(
                at,
                args=ocp.args.PyTreeRestore(
                    item=item,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                    partial_restore=True,
                ),
            )

        if step is not None:
            restored = restore(step)
        else:
            restored, step, _ = restore_newest(directory, steps, restore)
    finally:
        manager.close()
    return restored["params"], int(step)
