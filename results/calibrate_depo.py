"""Summarises the Depo calibration runs (results/README.md, "A Depo that learns").

Each run in ROOT/calibration/<name>/ is `python -m sleep_lm.main
--config=experiments/depo.py:learns,<sizes>,passes=1` (N = 1, seed 0), stopped by hand once
its k = 1 curve was clear. Appends one row per run to ROOT/calibration.jsonl: the preset
argument, the task sizes, steps reached, wall time, seconds per step, the per-answer chance
level E[1/n], and eval/token_accuracy@k=1 at every eval.

  python results/calibrate_depo.py --root=results/depo_learns
"""

import argparse
import json
from pathlib import Path

from sleep_lm.report import depo_chance


def summarise(workdir: Path) -> dict:
    config = json.loads((workdir / "config.json").read_text())
    metrics = workdir / "metrics.jsonl"
    text = metrics.read_text() if metrics.exists() else ""
    rows = [json.loads(x) for x in text.splitlines() if x]
    train = [r for r in rows if "tokens_per_s" in r]
    evals = [r for r in rows if "eval/token_accuracy@k=1" in r]
    task = config["task"]
    chance = depo_chance(task["min_nodes"], task["max_nodes"], task["num_queries"])
    sizes = range(task["min_nodes"], task["max_nodes"] + 1)
    events = sorted(workdir.glob("events.out.tfevents.*"))
    return {
        "run": workdir.name,
        "task": {k: task[k] for k in ("max_nodes", "num_names", "num_queries", "max_hops")},
        "window": config["sleep"]["window"],
        "width": config["model"]["width"],
        "layers": config["model"]["layers"],
        "train_steps": config["train"]["steps"],
        "passes": config["sleep"]["passes"],
        "last_step": max((r["step"] for r in train), default=0),
        "median_tokens_per_s": sorted(r["tokens_per_s"] for r in train)[len(train) // 2]
        if train
        else None,
        "chance_token_accuracy": chance["token_accuracy"],
        "chance_loss": chance["loss"],
        # "any node of the cycle but x": what a model gets at k = 1 without retrieval.
        "not_x_token_accuracy_k1": sum(1 / (n - 1) for n in sizes) / len(sizes),
        "eval_token_accuracy_k1": {
            r["step"]: round(r["eval/token_accuracy@k=1"], 4) for r in evals
        },
        "eval_loss_k1": {r["step"]: round(r["eval/loss@k=1"], 3) for r in evals},
        "first_event_file": events[0].name if events else None,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    args = parser.parse_args()
    out = args.root / "calibration.jsonl"
    with out.open("w") as f:
        for workdir in sorted(p.parent for p in (args.root / "calibration").glob("*/config.json")):
            row = summarise(workdir)
            print(json.dumps(row))
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
