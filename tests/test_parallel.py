"""Mesh, logical rules and multi-host setup (sleep_lm/parallel/, config.validate_mesh), and
end to end on 8 simulated CPU devices: the same losses as on one device, and checkpoints
resumed under other meshes (8 devices -> 1 -> 4).

Multi-device runs are subprocesses: XLA_FLAGS=--xla_force_host_platform_device_count=N must
be set before jax is imported.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from rule110_config import get_config

from sleep_lm import config as config_lib
from sleep_lm import parallel
from sleep_lm.model import build_model

REPO = Path(__file__).resolve().parents[1]


def device_env(devices: int) -> dict:
    flags = os.environ.get("XLA_FLAGS", "")
    flags = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags)


# ---------------------------------------------------------------------- mesh config


def test_default_mesh_is_all_devices_on_data():
    mesh = config_lib.default_mesh_config()
    assert (mesh.data, mesh.fsdp, mesh.tensor) == (-1, 1, 1)
    assert parallel.mesh_shape(mesh, 8) == {"data": 8, "fsdp": 1, "tensor": 1}
    assert parallel.mesh_shape(mesh, 1) == {"data": 1, "fsdp": 1, "tensor": 1}
    rules = dict(parallel.parse_rules(mesh.rules))
    assert rules["batch"] == ("data", "fsdp") and rules["kv"] == ()
    # The mesh this process builds by default is the single-device one.
    built = parallel.make_mesh(mesh)
    assert dict(built.shape) == {"data": jax.device_count(), "fsdp": 1, "tensor": 1}


def test_minus_one_takes_the_rest():
    assert parallel.mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 16) == {
        "data": 2,
        "fsdp": 4,
        "tensor": 2,
    }


def test_logical_spec_replicates_dimensions_that_do_not_divide():
    rules = parallel.parse_rules(config_lib.default_mesh_config().rules)
    sizes = {"data": 1, "fsdp": 2, "tensor": 2}
    assert parallel.logical_spec(
        ("embed", "vocab"), rules, (16, 4), sizes
    ) == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert parallel.logical_spec(
        ("embed", "vocab"), rules, (16, 3), sizes
    ) == jax.sharding.PartitionSpec("fsdp", None)


def test_token_table_rows_are_split_like_the_weight_matrices_width():
    """A pretrained vocabulary's table is split by rows over fsdp (its width stays whole)."""
    rules = parallel.parse_rules(config_lib.default_mesh_config().rules)
    axes = parallel.param_logical_axes("params/model/embed_tokens/embedding", 2)
    sizes = {"data": 1, "fsdp": 8, "tensor": 1}
    spec = parallel.logical_spec(axes, rules, (49152, 2048), sizes)
    assert spec == jax.sharding.PartitionSpec("fsdp", None)


def test_every_parameter_of_the_model_has_logical_axes():
    for layers in ("attn,gdn", "gdn,attn"):
        for positions in ("learned", "rope"):
            model = build_model(
                dict(width=16, heads=2, mlp_ratio=2, layers=layers, positions=positions),
                vocab_size=5,
                max_len=32,
                window=8,
            )
            params = jax.eval_shape(model.init_params, jax.random.PRNGKey(0))
            for path, x in jax.tree_util.tree_leaves_with_path(params):
                name = parallel.path_name(path)
                axes = parallel.param_logical_axes(name, x.ndim)
                assert axes is not None, name
                assert all(a is None or a in parallel.LOGICAL_AXES for a in axes), name


def mesh_case(fields: dict):
    """The smoke config with {"section.field": value} overrides."""
    config = get_config("smoke")
    for field, value in fields.items():
        *sections, name = field.split(".")
        target = config
        for part in sections:
            target = target[part]
        target[name] = value
    return config


@pytest.mark.parametrize(
    "fields, devices, message",
    [
        (
            {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 4},
            8,
            "config.mesh: data=2 x fsdp=2 x tensor=4 = 16 devices must equal the 8 devices",
        ),
        (
            {"mesh.data": -1, "mesh.tensor": 3},
            8,
            "config.mesh.data=-1 takes the devices the other axes leave, but data=-1 x fsdp=1 x "
            "tensor=3 does not divide the 8 devices",
        ),
        (
            {"mesh.data": -1, "mesh.fsdp": -1},
            8,
            "config.mesh: at most one axis may be -1 (got data=-1, fsdp=-1)",
        ),
        ({"mesh.tensor": 0}, 8, "config.mesh.tensor must be >= 1 or -1"),
        (
            {"mesh.data": 4, "mesh.fsdp": 2, "train.batch_size": 4},
            8,
            "config.train.batch_size=4 must be a multiple of the batch axes mesh.data=4 x "
            "mesh.fsdp=2 = 8 (mesh.rules.batch)",
        ),
        (
            {"mesh.data": 8, "train.eval_size": 100},
            8,
            "config.train.eval_size=100 must be a multiple of the batch axes mesh.data=8",
        ),
        (
            {"mesh.data": 1, "mesh.tensor": 8},
            8,
            "config.model.heads=4 must be a multiple of the heads axes mesh.tensor=8 "
            "(mesh.rules.heads)",
        ),
        (
            {"mesh.rules.embed": "fsdp,model"},
            8,
            "config.mesh.rules.embed: unknown mesh axis 'model'; allowed: 'data', 'fsdp', 'tensor'",
        ),
        (
            {"mesh.rules.batch": "data,data"},
            8,
            "config.mesh.rules.batch: a mesh axis appears twice",
        ),
    ],
)
def test_mesh_validation_names_the_field(fields, devices, message):
    config = mesh_case(fields)
    with pytest.raises(config_lib.ConfigError) as info:
        config_lib.validate(config, num_devices=devices)
    text = str(info.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_static_mesh_checks_need_no_devices():
    config = mesh_case({"mesh.rules.embed": "fsdp,model"})
    with pytest.raises(config_lib.ConfigError, match="config.mesh.rules.embed: unknown mesh"):
        config_lib.validate(config)  # no device count: sizes vs devices not checked
    config = mesh_case({"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 4})
    config_lib.validate(config)


def test_unknown_and_missing_logical_axes():
    rules = dict(config_lib.default_mesh_config().rules)
    with pytest.raises(parallel.MeshError, match="config.mesh.rules.length is not a logical"):
        parallel.parse_rules({**rules, "length": ""})
    del rules["heads"]
    with pytest.raises(parallel.MeshError, match="config.mesh.rules.heads is missing"):
        parallel.parse_rules(rules)


def test_microbatches_must_split_over_the_batch_axes():
    config = get_config("smoke")  # batch 64
    config.train.microbatches = 32  # 2 rows per microbatch
    assert config_lib.validate_mesh(config, 2)["data"] == 2
    with pytest.raises(config_lib.ConfigError, match=r"^config.train.microbatches=32: each "):
        config_lib.validate_mesh(config, 4)


def test_configs_without_mesh_get_the_defaults():
    config = get_config("smoke")
    del config["mesh"]
    assert config_lib.validate_mesh(config, 4) == {"data": 4, "fsdp": 1, "tensor": 1}


# ---------------------------------------------------------------------- distributed


def test_distributed_args():
    args = parallel.distributed_args
    assert args("off", coordinator_address="h:1", environ={}) is None
    assert args("auto", environ={}) is None  # a plain single-process run
    assert args("on", environ={}) == {}  # JAX detects TPU pods / SLURM / MPI itself
    explicit = args("auto", coordinator_address="h:1", num_processes=4, process_id=2, environ={})
    assert explicit == {"coordinator_address": "h:1", "num_processes": 4, "process_id": 2}
    slurm = {
        "SLURM_JOB_ID": "7",
        "SLURM_STEP_NODELIST": "gpu[01-02]",
        "SLURM_NTASKS": "16",
        "SLURM_STEP_NUM_TASKS": "16",
        "SLURM_PROCID": "5",
        "SLURM_LOCALID": "5",
    }
    assert args("auto", environ=slurm) == {}  # inside srun: JAX reads SLURM_*
    assert args("auto", coordinator_address="gpu01:1234", environ=slurm) == {
        "coordinator_address": "gpu01:1234",
        "num_processes": 16,
        "process_id": 5,
    }
    one_task = {**slurm, "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1"}
    assert args("auto", environ=one_task) is None
    with pytest.raises(ValueError, match="distributed mode"):
        args("maybe", environ={})


# ------------------------------------------------------------------ 8-device checks


def test_eight_device_checks():
    """tests/eight_devices.py (batch rows per simulated host, layouts, state sharding,
    checkpoints across meshes) under 8 CPU devices."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-p", "no:cacheprovider", "eight_devices.py"],
        cwd=REPO / "tests",
        env=device_env(8),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]


# ------------------------------------------------------------------------ CLI runs

TINY = [
    "--config=experiments/rule110.py:smoke,steps=0,passes=2",
    "--config.model.width=16",
    "--config.model.heads=2",
    "--config.model.mlp_ratio=2",
    "--config.model.layers=attn,gdn",
    "--config.train.batch_size=8",
    "--config.train.eval_size=8",
    "--config.train.log_every=1",
    "--config.train.eval_every=100",
    "--config.train.checkpoint_every=100",
    # A learning rate that does not depend on train.steps, so that runs stopped at
    # different steps follow the same trajectory.
    "--config.train.schedule=constant",
    "--config.train.warmup_steps=0",
]


def run_main(devices: int, workdir, *args):
    return subprocess.run(
        [sys.executable, "-m", "sleep_lm.main", *TINY, f"--workdir={workdir}", *args],
        cwd=REPO,
        env=device_env(devices),
        capture_output=True,
        text=True,
        timeout=600,
    )


def losses(workdir) -> dict[int, float]:
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def test_cli_bad_mesh_one_line_exit_2(tmp_path):
    result = run_main(8, tmp_path / "w", "--config.mesh.data=3")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "error: config.mesh: data=3 x fsdp=1 x tensor=1 = 3 devices must equal the 8 devices "
        "available (use -1 on one axis for 'all the rest')"
    ]
    assert not (tmp_path / "w").exists()


@pytest.fixture(scope="module")
def mesh_runs(tmp_path_factory):
    """A 1-device reference (4 steps); 2 steps on 8 devices (data=2, fsdp=2, tensor=2)
    resumed to step 3 on 1 device and to step 4 on 4 devices (fsdp=2, tensor=2)."""
    root = tmp_path_factory.mktemp("mesh")
    ref = run_main(1, root / "ref", "--config.train.steps=4")
    assert ref.returncode == 0, ref.stderr[-3000:]
    moved = root / "moved"
    runs = [
        (8, ["--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"], 2),
        (1, [], 3),
        (4, ["--config.mesh.fsdp=2", "--config.mesh.tensor=2"], 4),
    ]
    logs = []
    for devices, mesh_flags, steps in runs:
        result = run_main(
            devices,
            moved,
            *mesh_flags,
            f"--config.train.steps={steps}",
            f"--config.train.checkpoint_every={steps}",
        )
        assert result.returncode == 0, result.stderr[-3000:]
        logs.append(result.stderr)
    return losses(root / "ref"), losses(moved), logs


def test_eight_devices_log_the_one_device_losses(mesh_runs):
    reference, moved, logs = mesh_runs
    assert "mesh {'data': 2, 'fsdp': 2, 'tensor': 2}" in logs[0]
    for step in (1, 2):
        assert moved[step] == pytest.approx(reference[step], rel=1e-3), step


def test_resume_under_other_meshes_continues_the_run(mesh_runs):
    reference, moved, logs = mesh_runs
    assert "resumed from checkpoint step 2" in logs[1]
    assert "mesh {'data': 1, 'fsdp': 2, 'tensor': 2}" in logs[2]
    assert "resumed from checkpoint step 3" in logs[2]
    assert sorted(moved) == [1, 2, 3, 4]
    for step in (3, 4):
        assert moved[step] == pytest.approx(reference[step], rel=1e-3), step


def test_two_processes_share_one_run(tmp_path):
    """Two processes x 2 CPU devices coordinated on localhost (what two hosts do), through
    launch/local.sh: each process samples its half of the batch, process 0 alone writes
    metrics, both write the checkpoint, and one process evaluates it afterwards."""
    import socket

    import numpy as np

    from sleep_lm import run as run_lib
    from sleep_lm.train import loop

    with socket.socket() as s:  # a free port for the coordinator
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    workdir = tmp_path / "w"
    flags = [*TINY, f"--workdir={workdir}", "--config.train.steps=2", "--config.mesh.tensor=2"]
    result = subprocess.run(
        ["bash", "launch/local.sh", "--devices", "2", "--processes", "2", "--", *flags],
        cwd=REPO,
        env=dict(os.environ, SLEEP_LM_PORT=str(port), TMPDIR=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    worker_log = (tmp_path / "sleep_lm.process1.log").read_text()
    assert result.returncode == 0, result.stderr[-3000:] + worker_log[-2000:]
    assert "mesh {'data': 2, 'fsdp': 1, 'tensor': 2}, processes: 2" in result.stderr
    assert "step 2/2" not in worker_log  # the other process logs warnings only
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], "loss" in r) for r in records] == [(1, True), (2, True), (2, False)]
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [2]

    # Step 1's loss is the loss of the initial parameters on the one-process batch of step
    # 0: host 0 holds its first half, host 1 its second.
    config = get_config("smoke,steps=0,passes=2")
    for flag in TINY[1:]:
        field, value = flag[len("--config.") :].split("=")
        section, name = field.split(".")
        config[section][name] = type(config[section][name])(value)
    components = run_lib.build_components(config)
    params = components.init_params(jax.random.PRNGKey(config.seed))
    halves = [
        loop.batch_for_step(components.task, config.seed, 0, 8, r) for r in (range(4), range(4, 8))
    ]
    batch = {k: np.concatenate([h[k] for h in halves]) for k in halves[0]}
    whole = loop.batch_for_step(components.task, config.seed, 0, 8)
    for key in whole:
        np.testing.assert_array_equal(batch[key], whole[key])
    loss, _ = jax.jit(components.loss_fn)(params, batch)
    assert records[0]["loss"] == pytest.approx(float(loss), rel=1e-4)

    # One process, one device, evaluates the two-process checkpoint to the same metrics.
    evaluated = run_main(1, workdir, "--mode=eval", "--config.train.steps=2")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    final = json.loads((workdir / "eval" / "step2.json").read_text())
    assert final["step"] == 2
    assert final["eval/loss"] == pytest.approx(records[-1]["eval/loss"], rel=1e-4)
