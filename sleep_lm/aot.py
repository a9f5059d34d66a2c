r"""Will it fit? Compile a run's train and eval steps for a target without its hardware.

  python -m sleep_lm.main --config=experiments/rule110.py --workdir=/tmp/fit \
      --mode=compile --config.compile.target=v5e-32

The steps are the trainer's own (`loop._compile_steps`: loss, gradients, optimiser, the state
donated, in/out shardings on `config.mesh` laid over the target's devices), compiled with
abstract shapes (`jax.eval_shape`: nothing is allocated, no weight is read; a pretrained
preset needs only its checkpoint's config.json and the task's tokenizer). The per-device
numbers are the target compiler's buffer assignment (`compiled.memory_analysis()`): XLA:TPU
through libtpu, XLA:GPU through the CUDA plugin (no GPU or driver needed; no autotuning, so
default GEMM configs). XLA:CPU's numbers are not a stand-in for them (it fuses and schedules
differently). A TPU compile that runs out of HBM fails as on the chip (RESOURCE_EXHAUSTED):
reported as "does not fit" with the compiler's reason.

Targets (`config.compile.target`): TPU slices by MaxText's names (`v5p-8` = 4 v5p chips, the
number counting TensorCores, as Cloud TPU names them; `v5e-16` = 16 chips), GPU hosts
`h100-N`, `h200-N`, `a100-80-N`, `a100-40-N` (N = 1, 2, 4, 8, or a multiple of 8: hosts of 8;
GpuTargetConfigProto files in sleep_lm/aot_targets/), and `cpu-N` (XLA:CPU, N host devices;
the host's RAM split N ways). Needs `pip install -e '.[aot]'` for TPU and GPU targets.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import time
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


@dataclasses.dataclass
class StepMemory:
    """One compiled step's per-device bytes (None when the compiler ran out of memory)."""

    argument_bytes: int | None = None
    output_bytes: int | None = None
    alias_bytes: int | None = None
    temp_bytes: int | None = None
    total_bytes: int | None = None  # arguments + outputs - aliased + temporaries
    fits: bool = False
    compile_s: float = 0.0
    reason: str = ""  # the compiler's one line when it ran out of memory
    note: str = ""  # a compiler option changed to get a program at all

    @classmethod
    def measure(cls, jitted, args, memory_bytes: int) -> StepMemory:
        import jax

        start = time.perf_counter()
        lowered = jitted.lower(*args)
        note = ""
        try:
            try:
                compiled = lowered.compile()
            except jax.errors.JaxRuntimeError as e:
                # XLA:GPU without a device does not autotune, and its default Triton GEMM
                # tiling fails for some small dots; cuBLAS GEMMs then (memory is unaffected
                # in kind: the same buffers, other kernels).
                if "Couldn't find output tile sizes" not in str(e):
                    raise
                note = "Triton GEMMs off (XLA:GPU found no tiling without autotuning)"
                compiled = lowered.compile(compiler_options={"xla_gpu_enable_triton_gemm": False})
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            reason = next((line for line in lines if "RESOURCE_EXHAUSTED" in line), lines[0])
            return cls(compile_s=round(time.perf_counter() - start, 1), reason=reason)
        seconds = round(time.perf_counter() - start, 1)
        m = compiled.memory_analysis()
        out = cls(
            argument_bytes=int(m.argument_size_in_bytes),
            output_bytes=int(m.output_size_in_bytes),
            alias_bytes=int(m.alias_size_in_bytes),
            temp_bytes=int(m.temp_size_in_bytes),
            compile_s=seconds,
            note=note,
        )
        out.total_bytes = out.argument_bytes + out.output_bytes - out.alias_bytes + out.temp_bytes
        out.fits = out.total_bytes <= memory_bytes
        return out


def _abstract(tree, shardings):
    import jax

    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def compile_run(config, target: Target, components=None, memory_bytes: int | None = None) -> dict:
    """Compiles the run's train step, then (if that fits) its eval step, for `target`; the
    record `--mode=compile` writes to WORKDIR/compile.json. `memory_bytes` overrides the
    chip's memory (tests). The config must be valid for the target's device count
    (`config.validate_mesh`)."""
    import jax
    import numpy as np

    from sleep_lm import parallel
    from sleep_lm import run as run_lib
    from sleep_lm.train import loop, optim
    from sleep_lm.train.state import TrainState

    memory = target.memory_bytes if memory_bytes is None else memory_bytes
    components = components or run_lib.build_components(config)
    optimizer = optim.make_optimizer(config.train)
    mesh_cfg = parallel.mesh_config(config)
    layout = loop.Layout(
        mesh=parallel.make_mesh(mesh_cfg, target_devices(target)),
        rules=parallel.parse_rules(mesh_cfg.get("rules", None)),
    )

    def create():
        params = components.init_params(jax.random.PRNGKey(config.seed))
        return TrainState.create(params, optimizer)

    abstract = jax.eval_shape(create)
    shardings = parallel.tree_shardings(abstract, layout.mesh, layout.rules)
    micro = config.train.get("microbatches", 1)
    train_step, eval_step = loop._compile_steps(
        components, optimizer, layout, shardings, microbatches=micro
    )
    # The batch as the loop feeds it: the task's arrays (one example shows keys, dtypes and
    # trailing shapes), train.batch_size rows; an eval step takes one microbatch's rows.
    probe = components.task.eval_batch(1, config.seed)
    batch_size = config.train.batch_size
    eval_rows = min(batch_size // micro, config.train.eval_size)

    def batch(rows):
        return {
            key: jax.ShapeDtypeStruct(
                (rows, *np.shape(value)[1:]), np.asarray(value).dtype, sharding=layout.batch
            )
            for key, value in probe.items()
        }

    state = _abstract(abstract, shardings)
    with layout.context():
        train = StepMemory.measure(train_step, (state, batch(batch_size)), memory)
        steps = {"train": train}
        if train.fits:  # a second, smaller program only matters once the first one fits
            steps["eval"] = StepMemory.measure(eval_step, (state.params, batch(eval_rows)), memory)
    device = layout.mesh.devices.flat[0]
    record = {
        "target": target.name,
        "platform": target.platform,
        "device_kind": device.device_kind,
        "num_devices": target.num_devices,
        "mesh": {axis: int(size) for axis, size in layout.mesh.shape.items()},
        "batch_size": batch_size,
        "microbatches": micro,
        "eval_rows": eval_rows,
        "memory_bytes": memory,
        **dataclasses.asdict(train),
        "fits": all(step.fits for step in steps.values()),
        "steps": {name: dataclasses.asdict(step) for name, step in steps.items()},
    }
    record["hint"] = "" if record["fits"] else hint(config, record)
    return record


def hint(config, record: dict) -> str:
    """One line: the first change that lowers the train step's per-device bytes, in the
    order that costs least (more accumulation slices, parameter sharding, rematerialisation)."""
    train = record["steps"]["train"]
    batch, micro = config.train.batch_size, config.train.get("microbatches", 1)
    mesh = record["mesh"]
    shards = mesh.get("data", 1) * mesh.get("fsdp", 1)
    known = train["total_bytes"] is not None
    activations = not known or train["temp_bytes"] > train["argument_bytes"]
    most = batch // shards  # microbatches that leave one example per device per slice
    if activations and micro < most:
        return (
            f"raise --config.train.microbatches (now {micro}; up to {most}: one example per "
            "device per slice)"
        )
    if mesh.get("fsdp", 1) < record["num_devices"] and not activations:
        return "shard parameters and optimiser state: --config.mesh.data=1 --config.mesh.fsdp=-1"
    remat = config.sleep.get("remat", "none")
    if remat != "window":
        better = "pass" if remat == "none" else "window"
        return f"recompute more in the backward: --config.sleep.remat={better} (now {remat})"
    if mesh.get("fsdp", 1) < record["num_devices"]:
        return "shard parameters and optimiser state: --config.mesh.data=1 --config.mesh.fsdp=-1"
    return "more devices (a larger target), or a shorter task.seq_len"


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    if value >= GIB:
        return f"{value / GIB:.2f} GiB"
    return f"{value / 2**20:.1f} MiB"


def report_lines(record: dict) -> list[str]:
    """What `--mode=compile` prints."""
    mesh = " ".join(f"{axis}={size}" for axis, size in record["mesh"].items())
    lines = [
        f"{record['target']}: {record['num_devices']} x {record['device_kind']}, "
        f"{_size(record['memory_bytes'])} per device; mesh {mesh}; batch "
        f"{record['batch_size']} in {record['microbatches']} microbatch(es)",
        f"{'step':<6}{'args':>12}{'out':>12}{'alias':>12}{'temp':>12}{'total':>12}"
        f"{'of':>12}  fits  compile",
    ]
    for name, step in record["steps"].items():
        if step["total_bytes"] is None:
            lines.append(f"{name:<6} does not fit: {step['reason']}  ({step['compile_s']} s)")
            continue
        lines.append(
            f"{name:<6}"
            + "".join(
                f"{_size(step[f]):>12}"
                for f in ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes")
            )
            + f"{_size(step['total_bytes']):>12}{_size(record['memory_bytes']):>12}"
            + f"  {'yes' if step['fits'] else 'NO':<4}  {step['compile_s']} s"
        )
    compiler = {"tpu": "XLA:TPU", "cuda": "XLA:GPU", "cpu": "XLA:CPU"}[record["platform"]]
    if record["fits"]:
        lines.append(f"fits: yes (per device, {compiler}'s buffer assignment)")
    else:
        lines.append(f"fits: NO; hint: {record['hint']}")
    return lines


def write_record(workdir: Path, record: dict) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "compile.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
