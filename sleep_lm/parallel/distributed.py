"""The multi-host runtime: when to start ``jax.distributed.initialize`` (``distributed_args``:
TPU pods, SLURM steps, an explicit coordinator), which process writes (``is_primary``,
``quiet_non_primary``), and a flag agreed by all processes (``any_process``)."""

from __future__ import annotations

import logging as std_logging
import os
from collections.abc import Mapping

import jax
import numpy as np
from absl import logging

DISTRIBUTED_MODES = ("auto", "on", "off")


def distributed_args(
    mode: str,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict | None:
    """Keyword arguments for `jax.distributed.initialize`, or None for a single process.

    - "off": single process.
    - "on": always initialise; unset arguments are detected by JAX (Cloud TPU VM metadata on
      TPU pods; SLURM_* variables inside `srun`; Open MPI; Kubernetes).
    - "auto" (default): initialise when a coordinator address is given, or inside a SLURM
      step with more than one task; otherwise a single process. (TPU pods are launched with
      "on" by launch/tpu_pod.sh.)
    SLURM_NTASKS / SLURM_PROCID fill in a missing process count / id next to an explicit
    coordinator address.
    """
    if mode not in DISTRIBUTED_MODES:
        raise ValueError(f"distributed mode must be one of {DISTRIBUTED_MODES} (got {mode!r})")
    env = os.environ if environ is None else environ
    if mode == "off":
        return None
    in_slurm_step = "SLURM_STEP_NODELIST" in env and "SLURM_PROCID" in env
    slurm_tasks = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")) or 1)
    if mode == "auto" and not coordinator_address and not (in_slurm_step and slurm_tasks > 1):
        return None
    kwargs = {}
    if coordinator_address:
        kwargs["coordinator_address"] = coordinator_address
        if num_processes is None and "SLURM_NTASKS" in env:
            num_processes = int(env["SLURM_NTASKS"])
        if process_id is None and "SLURM_PROCID" in env:
            process_id = int(env["SLURM_PROCID"])
    if num_processes is not None:
        kwargs["num_processes"] = int(num_processes)
    if process_id is not None:
        kwargs["process_id"] = int(process_id)
    return kwargs


def initialize_distributed(mode: str = "auto", **flags) -> bool:
    """Starts JAX's multi-controller runtime when `distributed_args` asks for it; must run
    before anything touches a device. Returns whether it did."""
    kwargs = distributed_args(mode, **flags)
    if kwargs is None:
        return False
    jax.distributed.initialize(**kwargs)
    logging.info(
        "distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def is_primary() -> bool:
    """Process 0 writes metrics, the config and eval records (orbax coordinates checkpoints)."""
    return jax.process_index() == 0


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is true on any (so that all stop at the same step)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def quiet_non_primary() -> None:
    """Only process 0 logs INFO lines (progress, eval); the others log warnings and errors."""
    if not is_primary():
        logging.set_verbosity(logging.WARNING)
        std_logging.getLogger().setLevel(std_logging.WARNING)
