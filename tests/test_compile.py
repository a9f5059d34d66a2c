"""--mode=compile (sleep_lm.aot): the run's steps compiled for a TPU / GPU target on a CPU.

The compiling tests need the `aot` extra (`pip install -e '.[aot]'`: libtpu and the CUDA
plugin) and are skipped without it; the rest run everywhere."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sleep_lm import aot
from sleep_lm import config as config_lib

ROOT = Path(__file__).resolve().parents[1]
TINY = (
    "--config=experiments/rule110.py:smoke",
    "--config.model.width=32",
    "--config.train.batch_size=8",
    "--config.train.eval_size=8",
)


def have(module):
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


needs_tpu = pytest.mark.skipif(not have("libtpu"), reason="needs the aot extra (libtpu)")
needs_gpu = pytest.mark.skipif(
    not have("jax_cuda12_plugin"), reason="needs the aot extra (jax-cuda12-plugin)"
)


def run_compile(workdir, *args, prelude="", timeout=600, env=None):
    """`python -m sleep_lm.main --mode=compile ...` in a fresh process (prelude: Python run
    before main, e.g. to hide a module; env: extra environment variables)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
    code = f"{prelude}\nfrom sleep_lm import main\nmain.run()"
    argv = ["--mode=compile", f"--workdir={workdir}", *args]
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def messages(stderr):
    """stderr without the C++ libraries' log lines (libtpu, the CUDA plugin's "no driver")."""
    noise = ("WARNING: All log messages", "WARNING: Logging before", "I0000", "W0000", "E0000")
    return [line for line in stderr.strip().splitlines() if not line.startswith(noise)]


def check_record(record, target):
    for step in record["steps"].values():
        if step["total_bytes"] is None:
            continue
        parts = step["argument_bytes"] + step["output_bytes"] - step["alias_bytes"]
        assert step["total_bytes"] == parts + step["temp_bytes"]
        assert step["fits"] == (step["total_bytes"] <= record["memory_bytes"])
    assert record["fits"] == all(s["fits"] for s in record["steps"].values())
    assert record["total_bytes"] == record["steps"]["train"]["total_bytes"]
    assert record["target"] == target.name
    assert record["num_devices"] == target.num_devices
    assert record["memory_bytes"] == target.memory_bytes


@needs_tpu
def test_tpu_target_fits_and_records(tmp_path):
    dump = tmp_path / "hlo"
    # model.attention_impl=splash (auto picks it on a TPU for windows of more than one
    # 256-query chunk; the smoke model's are 24 tokens).
    args = (*TINY, "--config.compile.target=v5e-4", "--config.model.attention_impl=splash")
    result = run_compile(tmp_path, *args, env={"XLA_FLAGS": f"--xla_dump_to={dump}"})
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((tmp_path / "compile.json").read_text())
    check_record(record, aot.parse_target("v5e-4"))
    assert record["device_kind"] == "TPU v5 lite" and record["platform"] == "tpu"
    assert record["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
    assert set(record["steps"]) == {"train", "eval"} and record["fits"]
    train = record["steps"]["train"]
    assert train["alias_bytes"] > 0  # the state is donated
    assert 0 < train["temp_bytes"] < 2**30 and train["compile_s"] > 0
    assert "fits: yes (per device, XLA:TPU's buffer assignment)" in result.stdout
    # The hard-evicted windows' attention is the Pallas splash kernel (a Mosaic custom
    # call), forward and backward.
    (hlo,) = dump.glob("*jit_train_step*before_optimizations.txt")
    assert hlo.read_text().count('custom_call_target="tpu_custom_call"') >= 3


@needs_gpu
def test_gpu_target_fits_and_records(tmp_path):
    args = (*TINY, "--config.compile.target=h100-2", "--config.mesh.data=1")
    result = run_compile(tmp_path, *args, "--config.mesh.fsdp=-1")
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((tmp_path / "compile.json").read_text())
    check_record(record, aot.parse_target("h100-2"))
    assert record["device_kind"] == "NVIDIA H100 80GB HBM3" and record["platform"] == "cuda"
    assert record["mesh"] == {"data": 1, "fsdp": 2, "tensor": 1}
    assert record["fits"] and record["memory_bytes"] == 84942979072


@needs_gpu
def test_gpu_causal_chunks_keep_no_score_tensor(tmp_path):
    """The chunked attention of a hard-evicted window (causal key ranges, unrolled, ordered
    by optimization barriers) compiled for an H100: its gradient's temporaries stay well
    under one float32 [heads, query, key] tensor (16 chunks of 128 queries: measured 0.19
    of one; 0.44 with the barriers removed, as XLA:CPU does), the dense path's hold three."""
    out = tmp_path / "attention.json"
    args = ["--target=h100-1", "--impls=xla,chunked", "--time=2048", "--heads=4"]
    args += ["--kv_heads=2", "--head_dim=32", "--chunk=128", f"--out={out}"]
    result = subprocess.run(
        [sys.executable, "benchmarks/attention.py", *args],
        cwd=ROOT,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    temp = {row["impl"]: row["temp_mib"] for row in json.loads(out.read_text())}
    scores = 4 * 2048 * 2048 * 4 / 2**20  # MiB of one float32 [heads, query, key] tensor
    assert temp["xla"] >= scores
    assert temp["chunked"] < 0.3 * scores  # measured 12.1 MiB of 64


@needs_tpu
def test_tpu_out_of_memory_is_one_line_exit_1(tmp_path):
    # Width 8192: the parameters and optimiser state alone exceed a v5e's 16 GiB.
    args = ("--config=experiments/rule110.py:smoke", "--config.model.width=8192")
    args += ("--config.train.batch_size=1", "--config.train.eval_size=1")
    result = run_compile(tmp_path, *args, "--config.compile.target=v5e-1")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: does not fit on v5e-1: RESOURCE_EXHAUSTED"), last
    assert "hint: " in last
    record = json.loads((tmp_path / "compile.json").read_text())
    assert not record["fits"] and record["total_bytes"] is None
    assert "RESOURCE_EXHAUSTED" in record["reason"] and "eval" not in record["steps"]


def test_over_the_chips_memory_does_not_fit_with_a_hint():
    # XLA:CPU in this process, the chip's memory set below what the step needs.
    config = config_lib.load_config("experiments/rule110.py:smoke")
    config.model.width, config.train.batch_size, config.train.eval_size = 32, 8, 8
    target = aot.parse_target("cpu-1")
    record = aot.compile_run(config, target, memory_bytes=2**20)
    train = record["steps"]["train"]
    assert not record["fits"] and not train["fits"] and train["total_bytes"] > 2**20
    assert "eval" not in record["steps"]  # not compiled once the train step does not fit
    assert record["hint"].startswith("raise --config.train.microbatches (now 1; up to 8")
    lines = aot.report_lines(record)
    assert lines[-1].startswith("fits: NO; hint: raise --config.train.microbatches")
    # Once slicing, sharding and remat are exhausted: the bfloat16 memory options, in order.
    config.train.microbatches, config.sleep.remat = 8, "window"
    assert "train.momentum_dtype=bfloat16" in aot.hint(config, record)
    config.train.momentum_dtype, config.model.dtype = "bfloat16", "bfloat16"
    assert "train.weight_grads=compute" in aot.hint(config, record)
    config.train.weight_grads = "compute"
    assert aot.hint(config, record).startswith("more devices")


def test_missing_extra_is_one_line_exit_2(tmp_path):
    hide = (
        "import importlib.util as u\n"
        "_find = u.find_spec\n"
        "u.find_spec = lambda name, *a: None if name == 'libtpu' else _find(name, *a)"
    )
    result = run_compile(tmp_path, *TINY, "--config.compile.target=v5p-8", prelude=hide)
    assert result.returncode == 2
    assert messages(result.stderr) == [
        "error: --mode=compile for v5p-8 needs the XLA:TPU (libtpu) compiler: "
        "pip install -e '.[aot]' (missing module libtpu)"
    ]
    assert not (tmp_path / "compile.json").exists()


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--config.compile.target=v5p-12", "config.compile.target='v5p-12' is not a known target"),
        ("--config.compile.target=tpu-8", "config.compile.target='tpu-8' is not a known target"),
        ("", "--mode=compile needs config.compile.target"),
    ],
)
def test_bad_or_missing_target_is_one_line_exit_2(tmp_path, flag, message):
    result = run_compile(tmp_path, *TINY, *([flag] if flag else []))
    assert result.returncode == 2
    lines = messages(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), lines
    assert "v5e-{1,4,8,16,32,64,128,256}" in lines[0] and "h100-N" in lines[0]


def test_mesh_is_checked_against_the_targets_devices(tmp_path):
    result = run_compile(tmp_path, *TINY, "--config.compile.target=h100-16")
    assert result.returncode == 2
    assert messages(result.stderr) == [
        "error: config.train.batch_size=8 must be a multiple of the batch axes mesh.data=16 "
        "x mesh.fsdp=1 = 16 (mesh.rules.batch) (on h100-16: 16 devices)"
    ]


@pytest.mark.parametrize(
    "name, platform, devices, topology, memory",
    [
        ("v5p-8", "tpu", 4, "v5:2x2x1", 95 * 2**30),
        ("v4-128", "tpu", 64, "v4:4x4x4", 32 * 2**30),
        ("v5e-16", "tpu", 16, "v5e:4x4", 16 * 2**30),
        ("v6e-8", "tpu", 8, "v6e:2x4", 32 * 2**30),
        ("h100-8", "cuda", 8, "1x1x8", 84942979072),
        ("h200-16", "cuda", 16, "1x2x8", 151397597184),
        ("a100-80-4", "cuda", 4, "1x1x4", 85100068864),
        ("a100-40-1", "cuda", 1, "1x1x1", 42331013120),
        ("cpu-8", "cpu", 8, "", None),
    ],
)
def test_target_names(name, platform, devices, topology, memory):
    target = aot.parse_target(name)
    assert (target.platform, target.num_devices, target.topology) == (platform, devices, topology)
    if memory is not None:
        assert target.memory_bytes == memory
    if platform == "cuda":
        assert f"device_memory_size: {target.memory_bytes}" in target.gpu_config
    if name == "v5p-8":
        assert target.chip_config == "megacore" and target.wrap == (False,) * 3
    if name == "v4-128":
        assert target.wrap == (True,) * 3


@pytest.mark.parametrize("name", ["v5p-12", "v5e-2", "h100-3", "h100-12", "cpu-0", "x", ""])
def test_bad_target_names(name):
    if not name:  # "" is no target: compile_target gives None, --mode=compile asks for one
        config = config_lib.load_config("experiments/rule110.py:smoke")
        assert config_lib.compile_target(config) is None
        return
    with pytest.raises(aot.TargetError, match=f"config.compile.target={name!r} is not a known"):
        aot.parse_target(name)


def test_compile_target_is_validated_and_resumable():
    config = config_lib.load_config("experiments/rule110.py:smoke")
    config.compile.target = "v9-8"
    with pytest.raises(config_lib.ConfigError, match="config.compile.target='v9-8'"):
        config_lib.validate(config)
    previous = json.loads(config_lib.load_config("experiments/rule110.py:smoke").to_json())
    assert config_lib.resume_conflict(previous, config) is None
