"""The device mesh and its config: the mesh axes (data, fsdp, tensor) and logical axes, the
rules table from one to the other (DEFAULT_RULES, ``parse_rules``), the axis sizes
(``mesh_shape``: -1 resolved against the devices) and ``make_mesh``. The package docstring
describes the axes."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh

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


class MeshError(ValueError):
    """An invalid mesh or rules config; one line that starts with the config field."""


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
