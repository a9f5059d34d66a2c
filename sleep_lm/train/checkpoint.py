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
        sharding = getattr(x, "sharding", None) or device
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
