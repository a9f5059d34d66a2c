"""A global batch over hosts: the rows of it each host holds (``host_rows``; every host draws
the same global batch, so the data does not depend on the host count), and the global arrays
made from them (``global_batch``; ``replicated_batch`` for data every host holds in full)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import NamedSharding


@dataclasses.dataclass(frozen=True)
class HostRows:
    """The rows of a global batch one host holds.

    rows: sorted global row indices its devices need (contiguous on a grid mesh);
    shard: index of this host's row set among the distinct row sets of all hosts (equal to
      the process index when every host holds its own slice; hosts whose devices hold the
      same rows, e.g. a tensor axis spanning hosts, get the same shard and the same data);
    num_shards: number of distinct row sets.
    """

    rows: tuple[int, ...]
    shard: int
    num_shards: int

    @property
    def size(self) -> int:
        return len(self.rows)


def host_rows(
    sharding: NamedSharding,
    global_batch: int,
    process_index: int | None = None,
    process_of: Callable[[object], int] | None = None,
) -> HostRows:
    """Which rows of a [global_batch, ...] array sharded by `sharding` a host holds.

    `process_index` and `process_of` (device -> process) default to this process and the
    devices' own process indices; tests pass others to simulate many hosts.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_of = process_of or (lambda d: d.process_index)
    needed: dict[int, set[int]] = {}
    for device, index in sharding.devices_indices_map((global_batch,)).items():
        rows = range(global_batch)[index[0]]
        needed.setdefault(process_of(device), set()).update(rows)
    distinct = sorted({tuple(sorted(r)) for r in needed.values()})
    flat = [row for rows in distinct for row in rows]
    if len(flat) != len(set(flat)):
        raise ValueError(
            "hosts hold overlapping but different rows of the batch; use a mesh whose batch "
            "axes (data, fsdp) split across hosts"
        )
    if process_index not in needed:
        raise ValueError(f"process {process_index} holds no device of the mesh")
    mine = tuple(sorted(needed[process_index]))
    return HostRows(rows=mine, shard=distinct.index(mine), num_shards=len(distinct))


def global_batch(local: dict, sharding: NamedSharding, global_size: int) -> dict:
    """The global batch from this host's rows (NumPy [host rows, ...] arrays)."""
    shapes = {k: (global_size, *np.shape(v)[1:]) for k, v in local.items()}
    return jax.make_array_from_process_local_data(sharding, local, shapes)


def replicated_batch(batch: dict, sharding: NamedSharding) -> dict:
    """A global array from data every host holds in full (the held-out set)."""
    return {
        k: jax.make_array_from_callback(np.shape(v), sharding, lambda index, v=v: v[index])
        for k, v in batch.items()
    }
