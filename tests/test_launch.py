"""launch/: dry runs print commands that parse back to the intended argv; shellcheck-clean."""

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ["launch/tpu_pod.sh", "launch/slurm_gpu.sbatch", "launch/local.sh"]
# Arguments with characters a shell would interpret: they must reach main unchanged.
MAIN_ARGS = [
    "--config=experiments/rule110.py",
    "--workdir=/mnt/runs/n2",
    "--config.train.adam_patterns=embed,(^|/)a_proj/",
    "--config.sleep.loop_blocks=it's 1:3",
]


def dry_run(script, *args, env=None):
    result = subprocess.run(
        ["bash", script, *args], cwd=REPO, capture_output=True, text=True, timeout=30, env=env
    )
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.strip().splitlines()]


def test_tpu_pod_dry_run():
    lines = dry_run(
        "launch/tpu_pod.sh",
        *("--dry-run", "--tpu", "v4-32", "--zone", "us-central2-b", "--project", "proj"),
        "--",
        *MAIN_ARGS,
    )
    assert len(lines) == 3
    pack, scp, ssh = lines
    assert "git" in pack and "tar" in pack
    assert scp[:4] == ["gcloud", "compute", "tpus", "tpu-vm"] and scp[4] == "scp"
    assert "--worker=all" in scp and "--zone=us-central2-b" in scp and "--project=proj" in scp
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "v4-32"]
    assert "--worker=all" in ssh
    command = next(a for a in ssh if a.startswith("--command="))[len("--command=") :]
    steps = [shlex.split(step) for step in command.split(" && ")]
    assert ["pip", "install", "-q", "-U", "jax[tpu]", "-e", "."] in steps
    main = steps[-1]
    assert main[:4] == ["python", "-m", "sleep_lm.main", "--distributed=on"]
    assert main[4:] == MAIN_ARGS


def test_tpu_pod_needs_tpu_and_zone():
    result = subprocess.run(
        ["bash", "launch/tpu_pod.sh", "--dry-run", "--", "--workdir=x"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--tpu and --zone are required" in result.stderr


def test_slurm_dry_run_without_slurm():
    (srun,) = dry_run(
        "launch/slurm_gpu.sbatch", "--dry-run", *MAIN_ARGS, env={"PATH": "/usr/bin:/bin"}
    )
    assert srun[:2] == ["srun", "--kill-on-bad-exit=1"]
    assert "--nodes=2" in srun and "--ntasks-per-node=8" in srun
    i = srun.index("sleep_lm.main")
    assert srun[i - 1 : i + 2] == ["-m", "sleep_lm.main", "--distributed=on"]
    assert srun[i + 2] == "--coordinator_address=node-0:12000"
    assert srun[i + 3 :] == MAIN_ARGS


def test_slurm_dry_run_inside_an_allocation():
    env = {
        "PATH": "/usr/bin:/bin",
        "SLURM_JOB_NUM_NODES": "4",
        "SLURM_NTASKS_PER_NODE": "4",
        "SLURM_JOB_ID": "4242",
        "SLEEP_LM_PORT": "23456",
        "PYTHON": "/venv/bin/python",
    }
    (srun,) = dry_run("launch/slurm_gpu.sbatch", "--dry-run", "--workdir=w", env=env)
    assert "--nodes=4" in srun and "--ntasks-per-node=4" in srun
    assert "/venv/bin/python" in srun
    assert "--coordinator_address=node-0:23456" in srun


def test_local_dry_runs():
    (plain,) = dry_run("launch/local.sh", "--dry-run", "--", *MAIN_ARGS)
    assert plain == ["python3", "-m", "sleep_lm.main", *MAIN_ARGS]
    (simulated,) = dry_run("launch/local.sh", "--dry-run", "--devices", "8", "--", *MAIN_ARGS)
    assert simulated[:3] == [
        "env",
        "JAX_PLATFORMS=cpu",
        "XLA_FLAGS=--xla_force_host_platform_device_count=8",
    ]
    assert simulated[-len(MAIN_ARGS) :] == MAIN_ARGS
    worker, primary = dry_run(
        "launch/local.sh", "--dry-run", "--processes", "2", "--", "--workdir=w"
    )
    for argv, index in ((worker, 1), (primary, 0)):
        assert "JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo" in argv
        assert "--coordinator_address=localhost:12355" in argv
        assert "--num_processes=2" in argv and f"--process_id={index}" in argv
    # Process 1 runs in the background with its log in a file; process 0 in the foreground.
    assert worker[-4] == ">" and worker[-3].endswith("sleep_lm.process1.log")
    assert worker[-2:] == ["2>&1", "&"]
    assert primary[-1] == "--workdir=w"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck_clean():
    result = subprocess.run(
        ["shellcheck", *SCRIPTS], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout
