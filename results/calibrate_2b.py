"""Finds the depth t for the Fig. 2b study where N = 1 stays at chance (results/README.md).

For t = 4, 5, ... it trains N = 1 (seed 0) for the whole `repro2b5m` budget (800 steps, 5.1M
tokens) and stops the run as soon as a held-out eval reaches 1.5x the chance level of exact
accuracy; the first t whose run finishes below that line is chosen. Its run is the study's
N = 1, seed 0 point, so it is copied to ROOT/passes1_seed0 (the sweep then skips it), and the
chosen t is written to ROOT/depth.txt. Resumable: rerun the same command after a kill.

  python results/calibrate_2b.py --root=results/repro2b5m [--first=4] [--last=12]
"""

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from sleep_lm.report import rule110_chance

FACTOR = 1.5


def _evals(workdir: Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if "eval/accuracy" in r]


def _verdict(workdir: Path, limit: float, steps: int):
    """'above' (a held-out eval crossed `limit`), 'below' (finished under it) or None."""
    evals = _evals(workdir)
    if any(r["eval/accuracy"] >= limit for r in evals):
        return "above"
    if evals and max(r["step"] for r in evals) >= steps:
        return "below"
    return None


def calibrate(root: Path, first: int, last: int, steps: int) -> int | None:
    log = root / "calibration.jsonl"
    for depth in range(first, last + 1):
        workdir = root / "calibration" / f"steps{depth}"
        limit = FACTOR * rule110_chance(depth)["accuracy"]
        verdict = _verdict(workdir, limit, steps)
        start = time.time()
        if verdict is None:
            cmd = [
                sys.executable,
                "-m",
                "sleep_lm.main",
                f"--config=experiments/rule110.py:repro2b5m,steps={depth},passes=1",
                f"--workdir={workdir}",
            ]
            print(f"[calibrate] t={depth}: limit {limit:.4f}: {' '.join(cmd)}", flush=True)
            proc = subprocess.Popen(cmd)
            while proc.poll() is None:
                time.sleep(10)
                if _verdict(workdir, limit, steps) == "above":
                    proc.send_signal(signal.SIGTERM)  # saves a checkpoint, then exits
                    proc.wait()
            verdict = _verdict(workdir, limit, steps)
            if verdict is None:
                raise SystemExit(f"[calibrate] t={depth}: run ended (status {proc.returncode})")
        evals = _evals(workdir)
        row = {
            "depth": depth,
            "limit": limit,
            "chance": limit / FACTOR,
            "verdict": verdict,
            "last_step": max(r["step"] for r in evals),
            "max_eval_accuracy": max(r["eval/accuracy"] for r in evals),
            "wall_s": round(time.time() - start, 1),
        }
        print(f"[calibrate] {json.dumps(row)}", flush=True)
        with log.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if verdict == "below":
            target = root / "passes1_seed0"
            if not target.exists():
                shutil.copytree(workdir, target)
            (root / "depth.txt").write_text(f"{depth}\n")
            return depth
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("results/repro2b5m"))
    parser.add_argument("--first", type=int, default=4)
    parser.add_argument("--last", type=int, default=12)
    parser.add_argument("--steps", type=int, default=800, help="the preset's train.steps")
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    depth = calibrate(args.root, args.first, args.last, args.steps)
    if depth is None:
        raise SystemExit(f"[calibrate] N = 1 crossed {FACTOR}x chance at every t <= {args.last}")
    print(f"[calibrate] chosen t = {depth}")


if __name__ == "__main__":
    main()
