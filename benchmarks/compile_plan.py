"""Memory plan of the paper's fine-tunes, measured with the real TPU and GPU compilers.

Each row runs ``python -m sleep_lm.main --mode=compile`` (README "Will it fit?") for one
preset of experiments/gsm_infinite.py at full size on one target, in its own process, and
collects WORKDIR/compile.json: per-device arguments, outputs, aliased, temporaries, total
(args + out - alias + temp) against the chip, fits, compile time. Needs the compilers:

    python -m venv /tmp/aotvenv && /tmp/aotvenv/bin/pip install -e '.[aot]'
    /tmp/aotvenv/bin/python benchmarks/compile_plan.py --rows ouro:4:h100-1,ouro:4:v5p-8
    /tmp/aotvenv/bin/python benchmarks/compile_plan.py --table   # the collected rows

A row is PRESET:N:TARGET[:key=value;...], the extra settings as --config overrides (e.g.
``ouro:4:h100-1:sleep.remat=none``). Nothing is downloaded: the checkpoint directories hold
only config.json (Ouro-1.4B's and Jet-Nemotron-2B's published architectures,
benchmarks/pretrained_memory.py) and, for the task, sleep_lm.pretrained.tiny's byte-level
BPE (the batch's shape is task.seq_len whatever the tokenizer). One example per device per
microbatch: train.microbatches = global batch / devices. Rows append to --out (JSON lines) as
they end; a row already there (same preset, N, target, settings) is skipped: it resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

GIB = 2**30
PRESETS = ("ouro", "ouro_sliding", "jet")
GLOBAL_BATCH = 256  # the presets' train.batch_size


def parse_row(text: str) -> dict:
    parts = text.strip().split(":", 3)
    if len(parts) < 3 or parts[0] not in PRESETS:
        raise SystemExit(f"--rows: {text!r}: PRESET:N:TARGET[:k=v;...], PRESET in {PRESETS}")
    extra = dict(kv.split("=", 1) for kv in parts[3].split(";")) if len(parts) == 4 else {}
    return dict(preset=parts[0], passes=int(parts[1]), target=parts[2], settings=extra)


def _devices(target: str) -> int:
    from sleep_lm import aot

    return aot.parse_target(target).num_devices


def checkpoint_dirs(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """config.json (published architecture) + a tiny byte-level BPE, per family."""
    from pretrained_memory import write_checkpoint_configs

    from sleep_lm.pretrained.tiny import train_tokenizer

    dirs = write_checkpoint_configs(root)
    tokenizer = train_tokenizer()
    for path in dirs.values():
        tokenizer.save(str(path / "tokenizer.json"))
    return dirs


def run_row(row: dict, dirs: dict, workdir: pathlib.Path) -> dict:
    devices = _devices(row["target"])
    checkpoint = dirs["jet" if row["preset"] == "jet" else "ouro"]
    overrides = {
        "init.from_hf": str(checkpoint),
        "sleep.passes": str(row["passes"]),
        "compile.target": row["target"],
        "train.microbatches": str(max(1, GLOBAL_BATCH // devices)),
        **row["settings"],
    }
    command = [
        sys.executable,
        "-m",
        "sleep_lm.main",
        f"--config=experiments/gsm_infinite.py:{row['preset']}",
        f"--workdir={workdir}",
        "--mode=compile",
        *(f"--config.{k}={v}" for k, v in overrides.items()),
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    record_path = workdir / "compile.json"
    record_path.unlink(missing_ok=True)  # a failed compile must not report an older record
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode not in (0, 1) or not record_path.exists():
        lines = (done.stderr + done.stdout).strip().splitlines()
        tail = [line for line in lines if "rror" in line][-2:] or lines[-2:]
        if done.returncode < 0:  # e.g. SIGKILL from the kernel's OOM killer: no Python error
            tail = [f"killed by signal {-done.returncode} (host out of memory?)"]
        return {**row, "error": " | ".join(tail), "wall_s": round(wall, 1)}
    record = json.loads(record_path.read_text())
    return {**row, "wall_s": round(wall, 1), "record": record}


def table(rows: list[dict]) -> str:
    lines = [
        "| preset | N | target | settings | mesh | per device: args | temp | total | of | "
        "fits | compile s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        settings = " ".join(f"{k}={v}" for k, v in r["settings"].items()) or "preset"
        if "error" in r:
            lines.append(
                f"| {r['preset']} | {r['passes']} | {r['target']} | {settings} | | "
                f"error: {r['error'][:120]} | | | | | |"
            )
            continue
        rec = r["record"]
        mesh = " ".join(f"{k}={v}" for k, v in rec["mesh"].items() if v > 1) or "1"
        train = rec["steps"]["train"]

        def gib(v):
            return "" if v is None else f"{v / GIB:.1f}"

        total = gib(train.get("total_bytes"))
        if train.get("reason"):  # a TPU compile that ran out of HBM
            total = "OOM: " + train["reason"][:80]
        lines.append(
            f"| {r['preset']} | {r['passes']} | {r['target']} | {settings} | {mesh} | "
            f"{gib(train.get('argument_bytes'))} | {gib(train.get('temp_bytes'))} | {total} | "
            f"{rec['memory_bytes'] / GIB:.0f} | {'yes' if rec['fits'] else 'no'} | "
            f"{train.get('compile_s', '')} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default="", help="PRESET:N:TARGET[:k=v;...],...")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "compile_plan.jsonl"))
    p.add_argument("--workdir", default="/tmp/compile_plan")
    p.add_argument("--table", action="store_true", help="print the collected rows' table")
    args = p.parse_args(argv)
    out = pathlib.Path(args.out)
    done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    key = lambda r: (r["preset"], r["passes"], r["target"], sorted(r["settings"].items()))  # noqa: E731
    have = {json.dumps(key(r)) for r in done if "error" not in r}
    work = pathlib.Path(args.workdir)
    dirs = checkpoint_dirs(work / "checkpoints") if args.rows else {}
    for i, text in enumerate(filter(None, args.rows.split(","))):
        row = parse_row(text)
        if json.dumps(key(row)) in have:
            print(f"skip (measured): {text}", flush=True)
            continue
        print(f"[{i + 1}] {text} ...", flush=True)
        result = run_row(row, dirs, work / f"row{len(done)}")
        done.append(result)
        with out.open("a") as f:
            f.write(json.dumps(result) + "\n")
        print(table([result]).splitlines()[-1], flush=True)
    if args.table or not args.rows:
        print(table(done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
