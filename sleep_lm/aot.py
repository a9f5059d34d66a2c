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
import json
import time
from pathlib import Path

from sleep_lm.compile_targets import (  # noqa: F401  (re-exported: main and tests use aot.*)
    GIB,
    Target,
    TargetError,
    missing_extra,
    parse_target,
    prepare_platforms,
    target_devices,
    target_names,
)


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
        components,
        optimizer,
        layout,
        shardings,
        microbatches=micro,
        xla_options=config.train.get("xla_options", ""),
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
    order that costs least (more accumulation slices, parameter sharding, rematerialisation,
    bfloat16 momentum and weight gradients)."""
    from sleep_lm.train import optim

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
    if optim.momentum_dtype(config.train) == "float32":
        return "keep the optimiser's momentum in bfloat16: --config.train.momentum_dtype=bfloat16"
    bf16 = config.model.get("dtype", "float32") == "bfloat16"
    if bf16 and optim.weight_grads(config.train) == "float32":
        return "add up the weights' gradients in bfloat16: --config.train.weight_grads=compute"
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
