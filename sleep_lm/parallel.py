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
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging as std_logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
LOGICAL_AXES = ("batch", "embed", "heads", "mlp", "vocab", "kv")
# maxtext's defaults for these names: the batch over every data-parallel axis, weights split
# on their width by fsdp and on heads / hidden units / vocabulary by tensor.
DEFAULT_RULES = {
    "batch": ("data", "fsdp"),
    "embed": ("fsdp",),
    "heads": ("tensor",),
    "mlp": ("tensor",),
    "vocab": ("tensor",),
    "kv": (),
}
DEFAULT_MESH = {"data": -1, "fsdp": 1, "tensor": 1}

# Logical axes of each parameter, by regex searched in its "/"-joined lower-case path (the
# first match wins). Shapes are the model's (sleep_lm/model/hybrid.py docstring): Dense
# kernels [in, out] with heads * head_dim fused head-major, so splitting that axis over
# `tensor` gives whole heads to each device when heads is a multiple of tensor.
PARAM_AXES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    # Tables read by a gather ([vocab, width], [max_len, width]) keep their width whole: a
    # gather from a width-split table returns width-split rows, which XLA can only turn
    # into the batch-split residual stream by replicating them ("involuntary full
    # rematerialization"); the tables are small next to the weight matrices.
    (r"(^|/)(token_embed|embed_tokens)/embedding$", ("vocab", None)),
    (r"(^|/)position_embed$", (None, None)),
    (r"(^|/)(q|k|v|o_gate|g)_proj/kernel$", ("embed", "heads")),  # [width, heads * head_dim]
    (r"(^|/)(q|k|v)_proj/bias$", ("heads",)),  # pretrained families' attention biases
    (r"(^|/)o_proj/kernel$", ("heads", "embed")),  # [heads * head_dim, width]
    (r"(^|/)(up|gate)_proj/kernel$", ("embed", "mlp")),  # [width, mlp_ratio * width]
    (r"(^|/)down_proj/kernel$", ("mlp", "embed")),  # [mlp_ratio * width, width]
    (r"(^|/)(a|b)_proj/kernel$", ("embed", None)),  # gates [width, heads]: tiny
    (r"(^|/)lm_head/kernel$", ("embed", "vocab")),  # [width, vocab]
    # Small leaves, replicated: the GDN convolution [conv_size, 3 * heads * head_dim] (its
    # channels are q|k|v concatenated, not head-major), per-head decay parameters [heads],
    # norm scales [width] / [head_dim].
    (r"(^|/)conv_weight$", (None, None)),
    (r"(^|/)(a_log|dt_bias)$", (None,)),
    (r"(^|/)scale$", (None,)),
    # Jet blocks' kernel generator [width, hidden] -> [hidden, channels * W] and Ouro's
    # early-exit gate [width, 1]: small, replicated.
    (r"(^|/)(kernel_generator/w1|kernel_generator/w2|early_exit_gate)/kernel$", (None, None)),
    (r"(^|/)(kernel_generator/w2|early_exit_gate)/bias$", (None,)),
)


class MeshError(ValueError):
    """An invalid mesh or rules config; one line that starts with the config field."""


# ---------------------------------------------------------------------------------- config


def mesh_config(config) -> Mapping:
    """`config.mesh`, or the defaults for configs that have none."""
    mesh = config.get("mesh", None) if hasattr(config, "get") else None
    if mesh is None:
        return {**DEFAULT_MESH, "rules": {k: ",".join(v) for k, v in DEFAULT_RULES.items()}}
    return mesh


def parse_rules(rules_cfg: Mapping) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """`config.mesh.rules` ({logical: "axis,axis"}) -> ((logical, (mesh axes...)), ...).

    Raises MeshError naming the field for unknown names, duplicates and missing entries.
    """
    if not hasattr(rules_cfg, "items"):
        raise MeshError(
            f"config.mesh.rules must be a mapping of logical axis names (got {rules_cfg!r})"
        )
    rules = []
    for name, value in rules_cfg.items():
        if name not in LOGICAL_AXES:
            known = ", ".join(LOGICAL_AXES)
            raise MeshError(f"config.mesh.rules.{name} is not a logical axis; known: {known}")
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise MeshError(
                f"config.mesh.rules.{name} must be a comma-separated string of mesh axes "
                f"(got {value!r})"
            )
        axes = tuple(a.strip() for a in value.split(",") if a.strip())
        for axis in axes:
            if axis not in MESH_AXES:
                allowed = ", ".join(repr(a) for a in MESH_AXES)
                raise MeshError(
                    f"config.mesh.rules.{name}: unknown mesh axis {axis!r}; allowed: {allowed}"
                )
        if len(set(axes)) != len(axes):
            raise MeshError(f"config.mesh.rules.{name}: a mesh axis appears twice in {value!r}")
        rules.append((name, axes))
    for name in LOGICAL_AXES:
        if name not in dict(rules):
            raise MeshError(f"config.mesh.rules.{name} is missing")
    return tuple(rules)


def _mesh_sizes(mesh_cfg: Mapping) -> dict[str, int]:
    sizes = {}
    for axis in MESH_AXES:
        value = mesh_cfg.get(axis, None)
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise MeshError(f"config.mesh.{axis} must be an integer (got {value!r})")
        if value < 1 and value != -1:
            raise MeshError(f"config.mesh.{axis} must be >= 1 or -1 (all the rest) (got {value})")
        sizes[axis] = int(value)
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise MeshError(
            f"config.mesh: at most one axis may be -1 (got {', '.join(f'{a}=-1' for a in free)})"
        )
    return sizes


def check_mesh_config(mesh_cfg: Mapping) -> None:
    """Device-independent checks of `config.mesh` (sizes and rules)."""
    _mesh_sizes(mesh_cfg)
    parse_rules(mesh_cfg.get("rules", None))


def mesh_shape(mesh_cfg: Mapping, num_devices: int) -> dict[str, int]:
    """{axis: size} with -1 resolved; raises MeshError when the sizes do not fit the devices."""
    sizes = _mesh_sizes(mesh_cfg)
    fixed = math.prod(s for s in sizes.values() if s != -1)
    text = " x ".join(f"{a}={s}" for a, s in sizes.items())
    free = [a for a, s in sizes.items() if s == -1]
    devices = f"{num_devices} device{'s' if num_devices != 1 else ''}"
    if free:
        if num_devices % fixed:
            raise MeshError(
                f"config.mesh.{free[0]}=-1 takes the devices the other axes leave, but "
                f"{text} does not divide the {devices}"
            )
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise MeshError(
            f"config.mesh: {text} = {fixed} devices must equal the {devices} available "
            "(use -1 on one axis for 'all the rest')"
        )
    return sizes


def axes_size(sizes: Mapping[str, int], axes: Sequence[str]) -> int:
    return math.prod(sizes[a] for a in axes)


# ------------------------------------------------------------------------------------ mesh


def make_mesh(mesh_cfg: Mapping, devices: Sequence | None = None) -> Mesh:
    """A Mesh with axes ("data", "fsdp", "tensor") over `devices` (default: all devices).

    The device order comes from `jax.make_mesh` (TPU-topology aware; on GPUs and CPUs the
    plain order, which keeps each host's devices together on the inner axes). Axes are
    "auto" (the partitioner decides what the shardings do not pin down), as newer jax
    versions would otherwise default to explicit axes.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape(mesh_cfg, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    axis_type = getattr(jax.sharding, "AxisType", None)
    try:
        if axis_type is None:
            raise NotImplementedError("jax.sharding.AxisType is missing")
        auto = (axis_type.Auto,) * len(shape)
        return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
    except (ValueError, NotImplementedError, AssertionError, TypeError) as e:
        # Shapes that do not map onto the physical torus: fall back to the plain order.
        logging.warning("mesh %s: topology-aware layout failed (%s); using device order", shape, e)
        return Mesh(np.asarray(devices, dtype=object).reshape(shape), MESH_AXES)


def flax_rules(rules) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
    """Our rules as flax's `logical_axis_rules` wants them (None = replicated)."""
    return tuple((name, axes if axes else None) for name, axes in rules)


def logical_spec(logical: Sequence[str | None], rules, shape=None, sizes=None) -> P:
    """PartitionSpec of an array whose dimensions have the logical names `logical`.

    With `shape` and `sizes` ({mesh axis: size}), a dimension not divisible by its mesh
    axes is replicated instead (see the module docstring).
    """
    spec = list(nn.logical_to_mesh_axes(tuple(logical), flax_rules(rules)))
    if shape is not None and sizes is not None:
        for i, entry in enumerate(spec):
            if entry is None:
                continue
            axes = (entry,) if isinstance(entry, str) else tuple(entry)
            if shape[i] % axes_size(sizes, axes):
                spec[i] = None
    return P(*spec)


def path_name(path) -> str:
    """'/'-joined lower-case name of a pytree key path, e.g. 'params/block_0/mlp/kernel'."""
    return jax.tree_util.keystr(path, simple=True, separator="/").lower()


def param_logical_axes(name: str, ndim: int) -> tuple[str | None, ...] | None:
    """Logical axes of the array at path `name` (see PARAM_AXES); None when no rule
    matches with the right rank."""
    for pattern, axes in PARAM_AXES:
        if re.search(pattern, name) and len(axes) == ndim:
            return axes
    return None


def tree_shardings(tree, mesh: Mesh, rules, *, warn_unmatched: bool = True):
    """NamedShardings for a pytree of arrays (or ShapeDtypeStructs) laid out by path: params,
    or a whole TrainState (optimiser-state leaves end in their parameter's path). Scalars and
    leaves no rule matches are replicated; unmatched non-scalar leaves are logged."""
    sizes = dict(mesh.shape)
    unmatched = []

    def leaf(path, x):
        name = path_name(path)
        axes = param_logical_axes(name, x.ndim) if x.ndim else ()
        if axes is None:
            unmatched.append(name)
            axes = (None,) * x.ndim
        return NamedSharding(mesh, logical_spec(axes, rules, x.shape, sizes))

    shardings = jax.tree_util.tree_map_with_path(leaf, tree)
    # Optimiser-state leaves without a parameter's path (Muon's ns_coeffs, step counts)
    # are small and replicated as a matter of course; a parameter without a rule is news.
    unmatched = [name for name in unmatched if not name.startswith("opt_state/")]
    if unmatched and warn_unmatched:
        logging.warning(
            "no partitioning rule for %d arrays (replicated): %s", len(unmatched), unmatched[:5]
        )
    return shardings


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
    """Sharding of batch arrays ([batch, ...]): the leading axis over the "batch" rule."""
    return NamedSharding(mesh, logical_spec(("batch",), rules))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


@contextlib.contextmanager
def sharding_context(mesh: Mesh, rules):
    """Mesh + logical rules in context, so that the model's `nn.with_logical_constraint`
    calls (state and activations) become sharding constraints while tracing."""
    set_mesh = getattr(jax, "set_mesh", None)
    mesh_context = set_mesh(mesh) if set_mesh is not None else mesh
    with mesh_context, nn.logical_axis_rules(flax_rules(rules)):
        yield


# ------------------------------------------------------------------------------ multi-host


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
