"""Scale-out: the device mesh, logical-axis rules, parameter partitioning, multi-host init and
per-host data. JAX's own SPMD partitioning (jit with in/out shardings) and multi-controller
runtime do the work; this module only says where each array lives.

Mesh (`config.mesh`): three named axes, in this order (outer to inner):

    data    pure data parallelism: parameters replicated, batch split
    fsdp    data parallelism with parameters (and optimiser state) split too, gathered per use
    tensor  tensor (model) parallelism: heads and MLP hidden units split

A size of -1 takes all devices the other axes leave. The default (data=-1, fsdp=1,
tensor=1) is plain data parallelism over every device; on one device it is a 1x1x1 mesh
and the program is the single-device one. `tensor` is innermost so that it stays within a
host (fast links); `data` is outermost so that hosts own distinct slices of the batch.

Logical axes (`config.mesh.rules`, maxtext / big_vision style): arrays name their
dimensions with logical names, and the rules table maps each name to zero or more mesh
axes, as a comma-separated string (empty = replicated):

    batch  examples of a batch, and the batch axis of fast weights and KV caches
    embed  the residual width of weight matrices and embeddings
    heads  attention / GDN heads (of projections, fast weights, KV caches)
    mlp    MLP hidden units
    vocab  the vocabulary axis of the embedding table and the output head
    kv     the per-head key / value axis (head_dim)

Parameters are annotated by path (`PARAM_AXES`, regexes on the "/"-joined parameter path)
rather than with `nn.with_logical_partitioning` in the modules: the parameter tree stays a
tree of plain arrays (the optimiser's path-based labels, orbax checkpoints and inference
code see exactly what they saw before), the whole layout is one table next to the rules,
and the same table also places the optimiser state, whose leaves end in the parameter's
path. The model's recurrent state (fast weights, KV caches) and residual stream are
constrained inside the model with `nn.with_logical_constraint` (`sleep_lm/model/state.py`),
which is a no-op unless `sharding_context` is active, as it is in the train loop.

A dimension whose size is not a multiple of its mesh axes (say a vocabulary of 4 over
tensor=3) is replicated instead; `config.validate_mesh` rejects the cases that matter
(batch, heads) before anything is compiled.

Multi-host: `initialize_distributed` wraps `jax.distributed.initialize` (TPU pods: no
arguments; GPU clusters: the SLURM environment or explicit coordinator / process count /
process id). Each host keeps only the rows of the global batch that its devices hold
(`host_rows`; every host draws the same global batch, so the data does not depend on the
host count), and `jax.make_array_from_process_local_data` assembles the global batch.

Modules: ``mesh`` (axes, rules, sizes, make_mesh), ``sharding`` (PARAM_AXES, shardings of
trees and batches, sharding_context), ``distributed`` (multi-host init, primary process),
``batches`` (host rows, global arrays); every name is importable from ``sleep_lm.parallel``.
"""

from __future__ import annotations

from sleep_lm.parallel.batches import (
    HostRows,
    global_batch,
    host_rows,
    replicated_batch,
)
from sleep_lm.parallel.distributed import (
    DISTRIBUTED_MODES,
    any_process,
    distributed_args,
    initialize_distributed,
    is_primary,
    quiet_non_primary,
)
from sleep_lm.parallel.mesh import (
    DEFAULT_MESH,
    DEFAULT_RULES,
    LOGICAL_AXES,
    MESH_AXES,
    MeshError,
    axes_size,
    check_mesh_config,
    make_mesh,
    mesh_config,
    mesh_shape,
    parse_rules,
)
from sleep_lm.parallel.sharding import (
    PARAM_AXES,
    batch_sharding,
    flax_rules,
    logical_spec,
    param_logical_axes,
    path_name,
    replicated,
    sharding_context,
    tree_shardings,
)

__all__ = [
    "DEFAULT_MESH",
    "DEFAULT_RULES",
    "DISTRIBUTED_MODES",
    "HostRows",
    "LOGICAL_AXES",
    "MESH_AXES",
    "MeshError",
    "PARAM_AXES",
    "any_process",
    "axes_size",
    "batch_sharding",
    "check_mesh_config",
    "distributed_args",
    "flax_rules",
    "global_batch",
    "host_rows",
    "initialize_distributed",
    "is_primary",
    "logical_spec",
    "make_mesh",
    "mesh_config",
    "mesh_shape",
    "param_logical_axes",
    "parse_rules",
    "path_name",
    "quiet_non_primary",
    "replicated",
    "replicated_batch",
    "sharding_context",
    "tree_shardings",
]
