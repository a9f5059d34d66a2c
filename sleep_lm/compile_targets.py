"""Compile targets by name (`config.compile.target`): TPU slices, GPU hosts, `cpu-N`, and
their compile-only devices (see sleep_lm/aot.py for what is compiled for them)."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from pathlib import Path

GIB = 2**30
TARGETS_DIR = Path(__file__).resolve().parent / "aot_targets"

# TPU families: (topology prefix, chip config, HBM per device, TensorCores per device in the
# name). v4 and v5p devices are megacore chips (two TensorCores, one JAX device), so v5p-8 is
# 4 devices. HBM: Google's per-chip figures (the compiler itself knows the usable amount and
# fails with RESOURCE_EXHAUSTED beyond it).
TPU_FAMILIES = {
    "v4": ("v4", "megacore", 32 * GIB, 2),
    "v5p": ("v5", "megacore", 95 * GIB, 2),
    "v5e": ("v5e", "default", 16 * GIB, 1),
    "v6e": ("v6e", "default", 32 * GIB, 1),
}
# Chip grids by slice name (MaxText's accelerator_to_spec_map.py): v4 / v5p names count
# TensorCores (v5p-8 = 2x2x1 chips), v5e / v6e names count chips.
_CUBES = {
    8: "2x2x1",
    16: "2x2x2",
    32: "2x2x4",
    64: "2x4x4",
    128: "4x4x4",
    256: "4x4x8",
    512: "4x8x8",
    1024: "8x8x8",
    2048: "8x8x16",
    4096: "8x16x16",
}
_GRIDS = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
TPU_TOPOLOGIES = {"v4": _CUBES, "v5p": _CUBES, "v5e": _GRIDS, "v6e": _GRIDS}
GPU_CHIPS = ("h100", "h200", "a100-80", "a100-40")  # sleep_lm/aot_targets/<chip>.txtpb
GPUS_PER_HOST = 8
EXTRA = "pip install -e '.[aot]'"


class TargetError(ValueError):
    """A bad `config.compile.target`, or its compiler is not installed; one line."""


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    platform: str  # "tpu", "cuda" or "cpu"
    num_devices: int
    memory_bytes: int  # per device
    topology: str = ""  # TPU "v5e:4x4"; GPU "1xHOSTSxPER_HOST"
    chip_config: str = "default"
    wrap: tuple[bool, bool, bool] = (False, False, False)
    gpu_config: str = ""  # GpuTargetConfigProto text


def target_names() -> str:
    """The accepted names, for error messages."""
    tpus = "; ".join(
        f"{family}-{{{','.join(map(str, grid))}}}" for family, grid in TPU_TOPOLOGIES.items()
    )
    gpus = ", ".join(f"{chip}-N" for chip in GPU_CHIPS)
    return f"{tpus}; {gpus} (N = 1, 2, 4, 8 or a multiple of 8); cpu-N"


def _gpu_memory(text: str) -> int:
    return int(re.search(r"device_memory_size:\s*(\d+)", text).group(1))


def _host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def parse_target(name: str) -> Target:
    """The Target named `name`; TargetError (one line naming the field) otherwise."""
    bad = TargetError(
        f"config.compile.target={name!r} is not a known target; one of: {target_names()}"
    )
    match = re.fullmatch(r"(v4|v5p|v5e|v6e)-(\d+)", name)
    if match:
        family, count = match.group(1), int(match.group(2))
        prefix, chip_config, memory, cores = TPU_FAMILIES[family]
        grid = TPU_TOPOLOGIES[family].get(count)
        if grid is None:
            raise bad
        chips = count // cores
        if cores == 2:  # cubes: wraparound links from a full 4x4x4 up (MaxText's table)
            wrap = (chips >= 64,) * 3
        else:  # 2-D slices: wraparound on the long side from 128 chips, both from 256
            wrap = (chips >= 256, chips >= 128, False)
        return Target(name, "tpu", chips, memory, f"{prefix}:{grid}", chip_config, wrap)
    match = re.fullmatch(r"(h100|h200|a100-80|a100-40)-(\d+)", name)
    if match:
        count = int(match.group(2))
        if count not in (1, 2, 4) and (count < GPUS_PER_HOST or count % GPUS_PER_HOST):
            raise bad
        per_host = min(count, GPUS_PER_HOST)
        text = (TARGETS_DIR / f"{match.group(1)}.txtpb").read_text()
        topology = f"1x{count // per_host}x{per_host}"
        return Target(name, "cuda", count, _gpu_memory(text), topology, gpu_config=text)
    match = re.fullmatch(r"cpu-(\d+)", name)
    if match and int(match.group(1)) >= 1:
        count = int(match.group(1))
        return Target(name, "cpu", count, _host_memory() // count)
    raise bad


def missing_extra(target: Target) -> str | None:
    """One line saying what to install when the target's compiler is missing; else None."""
    need = {"tpu": ("libtpu",), "cuda": ("jax_cuda12_plugin", "jax_plugins.xla_cuda12")}
    for module in need.get(target.platform, ()):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a missing parent package
            found = False
        if not found:
            compiler = "XLA:TPU (libtpu)" if target.platform == "tpu" else "XLA:GPU (CUDA plugin)"
            return (
                f"--mode=compile for {target.name} needs the {compiler} compiler: {EXTRA} "
                f"(missing module {module})"
            )
    return None


def prepare_platforms(target: Target) -> None:
    """Before any backend starts: only XLA:CPU as a runtime (the TPU and GPU compilers are
    reached through topology descriptions), with `cpu-N`'s N devices."""
    import jax

    # libtpu takes a machine-wide lock (/tmp/libtpu_lockfile) unless told that several
    # processes may load it; a compile-only client never touches a chip.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    jax.config.update("jax_platforms", "cpu")
    if target.platform == "cpu":
        jax.config.update("jax_num_cpu_devices", target.num_devices)


def target_devices(target: Target) -> list:
    """Compile-only devices of the target (TPU, GPU) or XLA:CPU devices."""
    import jax
    from jax.experimental import topologies

    if target.platform == "cpu":
        devices = jax.devices("cpu")
        if len(devices) < target.num_devices:
            raise TargetError(
                f"config.compile.target={target.name!r}: jax has {len(devices)} CPU devices "
                "already (the backend started before --mode=compile could set the count)"
            )
        return devices[: target.num_devices]
    if target.platform == "cuda":
        return topologies.get_topology_desc(
            platform="cuda", target_config=target.gpu_config, topology=target.topology
        ).devices
    bounds = (1, 1, 1) if target.num_devices == 1 else (2, 2, 1)
    return topologies.get_topology_desc(
        platform="tpu",
        topology_name=target.topology,
        chip_config_name=target.chip_config,
        chips_per_host_bounds=bounds,
        wrap=target.wrap,
        num_slices=1,
    ).devices
