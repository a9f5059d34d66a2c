"""Memory plan for fine-tuning the full-size pretrained models to sleep (issue 10 part 5).

Compiles the trainer's real jitted train step (``loop._compile_steps``: Algorithm 1 loss,
gradients, clipping, Muon + AdamW, the state donated, in/out shardings on the mesh) for a
full-size model with ABSTRACT shapes only (``jax.eval_shape`` / ``jax.ShapeDtypeStruct``:
no weight is allocated) and reads XLA's buffer assignment (``compiled.memory_analysis()``,
per device): arguments (parameters + optimiser state + batch), outputs, aliased (donated)
bytes and temporaries. Program bytes = arguments + outputs - aliased + temporaries: what one
device must hold for the step.

    python benchmarks/pretrained_memory.py --rows ouro_sliding:1:pass,ouro:4:window
    python benchmarks/pretrained_memory.py --devices 8 --rows ouro_sliding:1:pass

A row is PRESET:N:REMAT with PRESET one of experiments/gsm_infinite.py's fine-tuning
presets, built exactly as the trainer builds them (model through ``hf.build`` from a
config.json written here with the published architecture, ``pretrained_options``, the
family's ``sleep_loop_blocks``, the preset's optimiser and mesh):

  ouro:          Ouro-1.4B + 6 Jet layers (before layers 2, 6, ..., 22), hard eviction,
                 L = 2000: one sleep window (0-1999) and the answer's wake window;
  ouro_sliding:  the same, sliding eviction, L = 512: six sleep windows and the wake window;
  jet:           Jet-Nemotron-2B, sleep looping blocks 7:21, hard eviction, L = 2000.

Sequence length is the presets' task.seq_len (3300 tokens, the paper's longest problems)
with the loss on the last 16 positions (the answer), compute in bfloat16, parameters and
optimiser state float32. ``--batch`` is per device (the global batch is batch x devices).
``--devices n`` compiles on n fake CPU devices (XLA_FLAGS
--xla_force_host_platform_device_count, set before jax is imported) with the preset's mesh
(every device on the fsdp axis): the numbers are then per device.

On CPU the numbers are XLA:CPU's buffer assignment; a GPU/TPU compiler schedules and fuses
differently, so treat them as the plan's order of magnitude per device: measured, not
guessed. Writes a JSON file (--out) after every row.
"""

from __future__ import annotations

import os
import sys


def _devices_from_argv(argv) -> int:
    for i, arg in enumerate(argv):
        if arg == "--devices" and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--devices="):
            return int(arg.split("=", 1)[1])
    return 1


# The fake device count must be set before jax initialises its CPU backend.
if _devices_from_argv(sys.argv[1:]) > 1:
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={_devices_from_argv(sys.argv[1:])}"
    ).strip()

import argparse  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import machine  # noqa: E402

from sleep_lm import parallel, sleep  # noqa: E402
from sleep_lm import run as run_lib  # noqa: E402
from sleep_lm.config import load_config, pretrained_options  # noqa: E402
from sleep_lm.model.ouro import OuroConfig  # noqa: E402
from sleep_lm.pretrained import hf, published  # noqa: E402
from sleep_lm.pretrained import ouro as ouro_hf  # noqa: E402
from sleep_lm.train import loop, optim  # noqa: E402
from sleep_lm.train.state import TrainState  # noqa: E402

ANSWER = 16  # loss positions at the end of the sequence

JET_NEMOTRON_2B = published.JET_NEMOTRON_2B
PRESETS = ("ouro", "ouro_sliding", "jet")


def write_checkpoint_configs(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """config.json only (no weights: hf.build reads the architecture, nothing else)."""
    dirs = {}
    for name, config in (
        ("ouro", ouro_hf.config_to_hf(OuroConfig())),  # Ouro-1.4B's published config
        ("jet", JET_NEMOTRON_2B),
    ):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "config.json").write_text(json.dumps(config))
        dirs[name] = root / name
    return dirs


def measure(preset: str, passes: int, remat: str, args, dirs) -> dict:
    config = load_config(ROOT / f"experiments/gsm_infinite.py:{preset}")
    config.init.from_hf = str(dirs["jet" if preset == "jet" else "ouro"])
    config.sleep.passes, config.sleep.remat = passes, remat
    # As run_lib.build_components builds them (without the task, which needs a tokenizer).
    _, _, model, _ = hf.build(
        config.init.from_hf, window=config.sleep.window, **pretrained_options(config)
    )
    seq_len, devices = config.task.seq_len, jax.device_count()
    batch = args.batch * devices
    mask = np.zeros((seq_len,), bool)
    mask[-ANSWER:] = True
    spec = run_lib.sleep_spec(config, mask, model)

    def loss_fn(params, batch):
        return sleep.sequence_loss(model, params, batch, spec)

    components = loop.Components(task=None, init_params=model.init_params, loss_fn=loss_fn)
    optimizer = optim.make_optimizer(config.train)
    layout = loop.Layout.from_config(config)
    abstract = jax.eval_shape(
        lambda: TrainState.create(model.init_params(jax.random.key(0)), optimizer)
    )
    shardings = parallel.tree_shardings(abstract, layout.mesh, layout.rules)
    state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
    )
    train_step, _ = loop._compile_steps(components, optimizer, layout, shardings)
    tokens = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32, sharding=layout.batch)
    batch_spec = {
        "inputs": tokens,
        "targets": tokens,
        "loss_mask": jax.ShapeDtypeStruct((batch, seq_len), jnp.bool_, sharding=layout.batch),
    }
    row = dict(
        preset=preset,
        passes=passes,
        remat=remat,
        window=config.sleep.window,
        eviction=config.sleep.eviction,
        loop_blocks=list(spec.loop_blocks),
        windows=len(spec.schedule),
        seq_len=seq_len,
        devices=devices,
        mesh=dict(layout.mesh.shape),
        batch_per_device=args.batch,
        global_batch=batch,
        params=sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params)),
    )
    t0 = time.perf_counter()
    with layout.context():
        compiled = train_step.lower(state, batch_spec).compile()
    row["compile_s"] = round(time.perf_counter() - t0, 1)
    m = compiled.memory_analysis()
    for field in ("argument", "output", "alias", "temp"):
        row[f"{field}_bytes"] = int(getattr(m, f"{field}_size_in_bytes"))
    row["program_bytes"] = machine.compiled_bytes(compiled)
    return row


def parse_rows(text: str) -> list[tuple[str, int, str]]:
    rows = []
    for item in text.split(","):
        preset, passes, remat = item.strip().split(":")
        if preset not in PRESETS or remat not in sleep.REMATS:
            raise SystemExit(f"--rows: {item!r}: PRESET:N:REMAT, PRESET in {PRESETS}")
        rows.append((preset, int(passes), remat))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default="ouro_sliding:1:pass", help="PRESET:N:REMAT,...")
    p.add_argument("--batch", type=int, default=1, help="examples per device")
    p.add_argument("--devices", type=int, default=1, help="fake CPU devices (fsdp mesh)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "pretrained_memory.json"))
    args = p.parse_args(argv)
    if jax.device_count() != args.devices:
        raise SystemExit(f"--devices {args.devices}: jax sees {jax.device_count()} devices")
    previous = []
    if os.path.exists(args.out):  # rows of earlier invocations (e.g. another device count)
        previous = [r for r in json.loads(pathlib.Path(args.out).read_text())["rows"]]
    rows = []
    gib = lambda b: f"{b / 2**30:.2f}"  # noqa: E731
    print(
        f"{'preset':>12} {'dev':>3} {'N':>2} {'remat':>6} {'args GiB':>9} {'temp GiB':>9} "
        f"{'program GiB':>12} {'compile s':>10} {'load':>5}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        dirs = write_checkpoint_configs(pathlib.Path(tmp))
        for preset, passes, remat in parse_rows(args.rows):
            row = measure(preset, passes, remat, args, dirs)
            row["load_average"] = machine.load_average()
            rows.append(row)
            print(
                f"{preset:>12} {row['devices']:>3} {passes:>2} {remat:>6} "
                f"{gib(row['argument_bytes']):>9} {gib(row['temp_bytes']):>9} "
                f"{gib(row['program_bytes']):>12} {row['compile_s']:>10} "
                f"{row['load_average']:>5}",
                flush=True,
            )
            out = dict(machine=machine.facts(), rows=previous + rows, complete=False)
            machine.write_json(args.out, out)
    machine.write_json(args.out, dict(machine=machine.facts(), rows=previous + rows, complete=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
