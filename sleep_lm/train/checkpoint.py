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

Parameters only: `restore_params(directory, target, step)` reads just the `params` of a
checkpoint (an orbax partial restore: the optimiser state is never read), optionally into a
target tree of ShapeDtypeStructs, checked by name and shape first so that a mismatch is one
line naming the parameter. `sleep_lm.load_run`, `--mode=eval` and `config.init.
from_checkpoint` (warm starts) use it.
"""

import logging as std_logging
import os
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from absl import logging


class _DropOrbaxInfo(std_logging.Filter):
    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


def _quiet_orbax() -> None:
    """Orbax logs several INFO lines (through absl) per save; keep the training log readable."""
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _DropOrbaxInfo) for f in handler.filters):
        handler.addFilter(_DropOrbaxInfo())


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
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=use_async
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

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
        """The state saved at `step` (default: latest), with the structure of `abstract_state`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        target = abstract_like(abstract_state)
        return self._manager.restore(step, args=ocp.args.StandardRestore(target))

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
    Raises FileNotFoundError when `directory` holds no checkpoint (or not that step).
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
        step = max(steps) if step is None else step
        if step not in steps:
            raise FileNotFoundError(
                f"no checkpoint of step {step} in {directory} (steps: "
                f"{', '.join(map(str, sorted(steps)))})"
            )
        stored = manager.item_metadata(step)
        stored = getattr(stored, "tree", stored)
        if "params" not in stored:
            raise ValueError(f"the checkpoint of step {step} in {directory} holds no params")
        where = f"the checkpoint of step {step} in {directory}"
        if target is None:
            target = stored["params"]
        else:
            check_params(_param_names(stored["params"]), _param_names(target), where)
        item = abstract_like({"params": target})
        restored = manager.restore(
            step,
            args=ocp.args.PyTreeRestore(
                item=item,
                restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                partial_restore=True,
            ),
        )
    finally:
        manager.close()
    return restored["params"], int(step)
