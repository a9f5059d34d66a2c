"""Sleep longer at test time: evaluates every finished run of a sweep root at N_test sleep
passes (results/README.md), through `python -m sleep_lm.main --mode=eval
--eval_overrides=sleep.passes`, one record per (run, N_test) in RUN/eval/. Runs whose record
exists are skipped, so it is resumable; `python -m sleep_lm.report ROOT` then draws the
trained-N x test-N table and plot.

  python results/eval_test_time.py --root=results/repro2b5m \
      --config=experiments/rule110.py:repro2b5m,steps=6 [--passes=1,2,4,8]
  python results/eval_test_time.py --root=results/depo_learns/long \
      --config=experiments/depo.py:learns,names=12,train_steps=3000 \
      --set=model.layers=attn,gdn,attn,gdn --set=train.eval_every=100 \
      --set=train.checkpoint_every=100

--set FIELD=VALUE (repeatable) passes the runs' other command-line overrides on, so the
evaluated config is the one they trained with.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def record_path(workdir: Path, step: int, trained: int, test: int) -> Path:
    name = f"step{step}" if test == trained else f"step{step}-sleep.passes={test}"
    return workdir / "eval" / f"{name}.json"


def final_step(workdir: Path) -> int | None:
    steps = [int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()]
    return max(steps) if steps else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--config", required=True, help="the sweep's --config argument")
    parser.add_argument("--passes", default="1,2,4,8", help="N at test time, comma-separated")
    parser.add_argument(
        "--set", action="append", default=[], help="FIELD=VALUE: a --config.FIELD override"
    )
    args = parser.parse_args()
    tests = [int(n) for n in args.passes.split(",")]
    runs = sorted(p.parent for p in args.root.glob("*/config.json"))
    for workdir in runs:
        config = json.loads((workdir / "config.json").read_text())
        trained, steps = config["sleep"]["passes"], config["train"]["steps"]
        step = final_step(workdir)
        if step is None or step < steps:
            print(f"[eval] {workdir.name}: not finished (checkpoint {step}), skipped", flush=True)
            continue
        for test in tests:
            if record_path(workdir, step, trained, test).exists():
                continue
            cmd = [
                sys.executable,
                "-m",
                "sleep_lm.main",
                f"--config={args.config}",
                f"--workdir={workdir}",
                f"--config.seed={config['seed']}",
                f"--config.sleep.passes={test}",
                "--mode=eval",
                *(f"--config.{override}" for override in args.set),
            ]
            if test != trained:
                cmd.append("--eval_overrides=sleep.passes")
            start = time.time()
            result = subprocess.run(cmd, capture_output=True, text=True)
            status = "ok" if result.returncode == 0 else result.stderr.strip().splitlines()[-1]
            print(
                f"[eval] {workdir.name} trained N={trained} test N={test}: {status} "
                f"({time.time() - start:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
