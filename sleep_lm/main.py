r"""Command line entry point: train or evaluate one config in one workdir.

  python -m sleep_lm.main --config=experiments/rule110.py:smoke --workdir=/tmp/rule110 \
      --config.task.steps=0 --config.sleep.passes=2

--mode=train (default) trains to config.train.steps, resuming from WORKDIR/checkpoints when
there is a checkpoint (a fresh workdir starts from `config.init`: random, or another run's
parameters with init.from_checkpoint=WORKDIR[:STEP]); --mode=eval evaluates the latest
checkpoint on the held-out set(s) through the streaming inference path (sleep_lm.inference:
windows fed and slept on, scored positions decoded token by token; with task.eval_generate
also greedy generation, eval/parsed_accuracy) and writes its record
to WORKDIR/eval/step<STEP>[-<field>=<value>...].json (one file per checkpoint and override;
`python -m sleep_lm.report` tabulates them). Eval metrics are broken down by difficulty
where the task defines it (`eval/accuracy@t=16` for Rule 110's `task.eval_steps`,
`eval/accuracy@k=8` for Depo's `task.eval_hops`). The config is validated before anything
is compiled: an invalid field prints one line `error: config.<field> ...` and exits with
status 2.

--mode=compile (README "Will it fit?") compiles the run's train and eval steps for
`config.compile.target` (e.g. v5e-32, h100-8) without its hardware, on `config.mesh` over
the target's devices, with abstract shapes (no allocation, no weights read; sleep_lm.aot).
It prints each step's per-device bytes against the chip's memory and writes
WORKDIR/compile.json; exit 0 when both fit, 1 when not (with a one-line hint). TPU and GPU
targets need `pip install -e '.[aot]'`.

Both modes refuse a config that differs from WORKDIR/config.json (the config the
checkpoints were trained with) outside budget, cadence, eval sets, mesh and init
(config.RESUMABLE_FIELDS): eval would otherwise report another experiment under this run's
name. To evaluate at another N or depth on purpose, name the fields:

  python -m sleep_lm.main --config=experiments/rule110.py:smoke,steps=0,passes=2 \
      --workdir=/tmp/rule110 --mode=eval --eval_overrides=sleep.passes \
      --config.sleep.passes=4

A record holds the checkpoint's step, the metrics, the resolved `task`, `model` and `sleep`
sections evaluated under (for a pretrained family, `model` is the checkpoint's architecture),
and each overridden field's trained and evaluated value.

Devices: `config.mesh` (data, fsdp, tensor; see sleep_lm/parallel/) lays the run out on
all devices; the mesh is checked against the device count before compiling. Multi-host:
every host runs this same command; `--distributed=on` starts JAX's multi-controller runtime
(TPU pods, and GPU clusters under `srun`, are detected by JAX), or pass
`--coordinator_address=HOST:PORT --num_processes=P --process_id=I` on each host. The
default `--distributed=auto` does that only when a coordinator address is given or inside a
SLURM step of several tasks. See launch/README.md.

Exit status: 0 done (--mode=compile: fits); 1 non-finite loss (the last good checkpoint is
kept), no checkpoint (or config.json) to evaluate, or (--mode=compile) does not fit; 2
invalid config (or distributed setup, or a config that differs from the workdir's, or an
init source this model cannot start from, or a missing compiler extra); 128 + signal
number when stopped by SIGINT / SIGTERM (after saving a checkpoint).
"""

import dataclasses
import json
import re
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. experiments/rule110.py:smoke.", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for config.json, metrics.jsonl and checkpoints/."
)
_MODE = flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "eval", "compile"],
    "What to do: train, evaluate the latest checkpoint, or compile for "
    "config.compile.target without its hardware (will it fit?).",
)
_EVAL_OVERRIDES = flags.DEFINE_string(
    "eval_overrides",
    "",
    "--mode=eval only: comma-separated config fields allowed to differ from the run's "
    "config.json, e.g. 'sleep.passes,task.steps' to evaluate at another N or depth (set "
    "them with --config.<field>=...). Each must name a config field; the eval record "
    "(WORKDIR/eval/*.json) holds their trained and evaluated values. Any other difference "
    "is refused.",
)
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "on", "off"],
    "Multi-host init (jax.distributed.initialize): 'on' always (TPU pods; srun), 'off' "
    "never, 'auto' when --coordinator_address is set or inside a multi-task SLURM step.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0, for multi-host runs without SLURM."
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Number of processes (default: detected, or SLURM_NTASKS)."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index (default: detected, or SLURM_PROCID)."
)
flags.mark_flags_as_required(["config", "workdir"])


def fail(message: str, status: int) -> None:
    """One line on stderr, no traceback."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def write_config(config, workdir: Path) -> None:
    """WORKDIR/config.json: the resolved config (a resumed run may differ only in
    config.RESUMABLE_FIELDS); notes when it differs from a previous run's."""
    path = workdir / "config.json"
    text = config.to_json_best_effort(indent=2, sort_keys=True) + "\n"
    if path.exists() and path.read_text() != text:
        logging.warning("config differs from the one in %s; overwriting it", path)
    path.write_text(text)


def _jsonable(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def evaluated_model(config, model) -> dict:
    """The architecture that was evaluated: config.model for the hybrid family; for a
    pretrained family, the family, its checkpoint and the model's own config (the fields read
    from its config.json, inserted layers included), not the unused hybrid fields."""
    family = config.model.get("family", "hybrid")
    if family == "hybrid" or not dataclasses.is_dataclass(getattr(model, "config", None)):
        return json.loads(config.model.to_json_best_effort())
    return {
        "family": family,
        "from_hf": config.init.get("from_hf", ""),
        "architecture": _jsonable(model.config),
    }


def eval_record(step: int, metrics: dict, config, previous: dict, overrides, model=None) -> dict:
    """An eval record: the checkpoint's step, the metrics, the task / model / sleep sections
    the checkpoint was evaluated under (`model`: see `evaluated_model`), and
    {field: {"trained": ..., "evaluated": ...}} for the fields of --eval_overrides."""
    from sleep_lm.dotted import flatten

    resolved = json.loads(config.to_json_best_effort())
    old, new = flatten(previous), flatten(resolved)
    sections = {name: resolved[name] for name in ("task", "model", "sleep") if name in resolved}
    if model is not None:
        sections["model"] = evaluated_model(config, model)
    return {
        "step": step,
        **metrics,
        "config": sections,
        "eval_overrides": {
            name: {"trained": old.get(name), "evaluated": new.get(name)} for name in overrides
        },
    }


def eval_record_path(workdir: Path, record: dict) -> Path:
    """WORKDIR/eval/step<step>[-<field>=<value>...].json: one file per checkpoint and
    override, so that evaluating at N = 1, 2, 4 keeps three records."""
    parts = [f"step{record['step']}"]
    for name, values in sorted(record["eval_overrides"].items()):
        value = json.dumps(values["evaluated"]).strip('"')
        parts.append(re.sub(r"[^\w.,=+-]", "_", f"{name}={value}"))
    return workdir / "eval" / ("-".join(parts) + ".json")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # Imports after flag parsing: `--help` and flag errors stay fast.
    from sleep_lm import config as config_lib

    config = _CONFIG.value
    try:
        config_lib.validate(config)
        overrides = config_lib.eval_overrides(_EVAL_OVERRIDES.value, config)
    except config_lib.ConfigError as e:
        fail(str(e), 2)
    if overrides and _MODE.value != "eval":
        fail("--eval_overrides applies to --mode=eval only", 2)
    if _MODE.value == "compile":
        compile_mode(config, Path(_WORKDIR.value))
        return

    # Multi-host init must precede anything that touches a device; the device-dependent
    # mesh checks follow it, still before anything is compiled.
    import jax

    from sleep_lm import parallel

    try:
        parallel.initialize_distributed(
            _DISTRIBUTED.value,
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    except (ValueError, RuntimeError) as e:
        fail(f"--distributed={_DISTRIBUTED.value}: {e}".splitlines()[0], 2)
    parallel.quiet_non_primary()
    try:
        config_lib.validate_mesh(config, jax.device_count())
    except config_lib.ConfigError as e:
        fail(str(e), 2)

    from sleep_lm import run as run_lib
    from sleep_lm.train import checkpoint, loop

    workdir = Path(_WORKDIR.value)
    try:
        components = run_lib.build_components(config)
    except ValueError as e:  # Anything the validation did not foresee, still before compiling.
        fail(f"config: {e}", 2)

    if _MODE.value == "eval":
        trained = workdir / "config.json"
        if not trained.is_file():
            fail(f"no config.json in {workdir}: no run to evaluate there", 1)
        previous = json.loads(trained.read_text())
        conflict = config_lib.resume_conflict(
            previous,
            config,
            allowed=overrides,
            hint="evaluate under the config the run was trained with, or name the field in "
            "--eval_overrides",
        )
        if conflict:
            fail(conflict, 2)
        try:
            step, metrics = run_lib.evaluate_checkpoint(config, workdir, components)
        except FileNotFoundError as e:
            fail(str(e), 1)
        except checkpoint.CheckpointError as e:
            fail(str(e), 2)
        except checkpoint.ParamMismatch as e:
            fail(f"--eval_overrides: {e}", 2)
        record = eval_record(step, metrics, config, previous, overrides, components.model)
        if parallel.is_primary():
            path = eval_record_path(workdir, record)
            path.parent.mkdir(exist_ok=True)
            path.write_text(json.dumps(record, indent=2) + "\n")
            print(json.dumps(record), flush=True)
            logging.info("eval record: %s", path)
        return

    workdir.mkdir(parents=True, exist_ok=True)
    previous = workdir / "config.json"
    if previous.exists() and any((workdir / "checkpoints").glob("[0-9]*")):
        conflict = config_lib.resume_conflict(json.loads(previous.read_text()), config)
        if conflict:
            fail(conflict, 2)

    def on_start(step: int) -> None:
        # Only once the resume check passed and the checkpoint restored: a failed resume
        # leaves the run's config.json as it was.
        if parallel.is_primary():
            write_config(config, workdir)

    try:
        metrics = loop.train(config, workdir, components, on_start=on_start)
    except (loop.InitError, checkpoint.CheckpointError) as e:
        fail(str(e), 2)
    except loop.NonFiniteLoss as e:
        fail(str(e), 1)
    except loop.Interrupted as e:
        logging.warning("%s", e)
        print(f"stopped: {e}", file=sys.stderr, flush=True)
        sys.exit(128 + e.signum)
    if metrics:
        logging.info("done: %s", " ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))


def compile_mode(config, workdir: Path) -> None:
    """--mode=compile: the run's steps compiled for config.compile.target; exits 0 (fits),
    1 (does not fit) or 2 (no target, or its compiler is not installed)."""
    from sleep_lm import aot
    from sleep_lm import config as config_lib

    try:
        target = config_lib.compile_target(config)
    except config_lib.ConfigError as e:
        fail(str(e), 2)
    if target is None:
        fail(
            "--mode=compile needs config.compile.target, e.g. --config.compile.target=v5e-32; "
            f"one of: {aot.target_names()}",
            2,
        )
    # The mesh against the target's devices first: a config error needs no compiler.
    try:
        config_lib.validate_mesh(config, target.num_devices)
    except config_lib.ConfigError as e:
        fail(f"{e} (on {target.name}: {target.num_devices} devices)", 2)
    missing = aot.missing_extra(target)
    if missing:
        fail(missing, 2)
    # Before anything starts a backend: XLA:CPU only at run time (and cpu-N's N devices).
    aot.prepare_platforms(target)
    from sleep_lm import run as run_lib

    try:
        components = run_lib.build_components(config)
    except ValueError as e:
        fail(f"config: {e}", 2)
    record = aot.compile_run(config, target, components)
    print("\n".join(aot.report_lines(record)), flush=True)
    path = aot.write_record(workdir, record)
    logging.info("compile record: %s", path)
    if not record["fits"]:
        train = record["steps"]["train"]
        reason = train["reason"].rstrip(".") or "more than the chip's memory per device"
        fail(f"does not fit on {target.name}: {reason}; hint: {record['hint']}", 1)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with a one-line error for `--config.<field>` overrides of missing fields
    (ml_collections raises a KeyError/AttributeError with a traceback from flag parsing)."""
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as e:
        text = str(e).replace("\\", "")
        lookup = re.search(r"Attempting to lookup: ([\w.]+)", text)
        if lookup:
            fail(f"config.{lookup.group(1)} is not a config field", 2)
        key = re.search(r"'(\w+)'", text)
        paths = [a[2:].split("=", 1)[0] for a in argv if a.startswith("--config.")]
        field = next((p for p in paths if key and key.group(1) in p.split(".")), None)
        if field is None:
            raise
        hint = re.search(r'Did you mean "(\w+)"', text)
        suggestion = ""
        if hint:
            parts = field.split(".")
            fixed = [hint.group(1) if part == key.group(1) else part for part in parts]
            suggestion = f" (did you mean {'.'.join(fixed)}?)"
        fail(f"{field} is not a config field{suggestion}", 2)


def run() -> None:
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
