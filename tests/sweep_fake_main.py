"""A stand-in for `python -m sleep_lm.main` in the sweep and report tests (no jax, ~0.5 s).

Takes the same flags (--config, --workdir, --config.<field>=...), writes WORKDIR/config.json
the way sleep_lm.main does and a metrics.jsonl in the trainer's format whose eval metrics are
a known function of the config (see `fake_accuracy`), and appends one line per invocation to
WORKDIR/invocations so tests can count runs. A run that ends writes WORKDIR/checkpoints/<steps>/
(empty: only its name matters to the sweep). With FAKE_MAIN_FAIL_PASSES=n in the environment,
a run with sleep.passes == n writes its metrics up to half way and exits with status 1.
"""

import json
import os
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags


def fake_accuracy(passes: int, steps: int, step: int, total: int) -> float:
    """Eval accuracy of the fake run: grows with N and training, falls with t."""
    return round(min(1.0, 0.1 * passes + 0.5 * step / total) / (1 + steps), 6)


def main(argv):
    config = flags.FLAGS.config
    workdir = Path(flags.FLAGS.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "invocations", "a") as f:
        f.write(" ".join(argv[1:]) + "\n")
    (workdir / "config.json").write_text(
        config.to_json_best_effort(indent=2, sort_keys=True) + "\n"
    )
    total = config.train.steps
    fail = os.environ.get("FAKE_MAIN_FAIL_PASSES")
    failing = fail is not None and int(fail) == config.sleep.passes
    with open(workdir / "metrics.jsonl", "w") as f:
        for step in range(1, total + 1):
            if failing and step > total // 2:
                raise SystemExit(1)
            f.write(json.dumps({"step": step, "loss": 1.0 / step, "accuracy": 0.5}) + "\n")
            if step % config.train.eval_every == 0 or step == total:
                t = config.task.steps
                accuracy = fake_accuracy(config.sleep.passes, t, step, total)
                record = {
                    "step": step,
                    "eval/loss": 1.0 - accuracy,
                    "eval/token_accuracy": accuracy,
                    "eval/accuracy": accuracy,
                    f"eval/accuracy@t={2 * t}": accuracy / 2,
                }
                f.write(json.dumps(record) + "\n")
    # The final checkpoint, as orbax leaves it once committed (a directory named by the step).
    (workdir / "checkpoints" / str(total)).mkdir(parents=True, exist_ok=True)


if __name__ == "__main__":
    # Flags only when run: the tests import fake_accuracy next to modules that define --config.
    config_flags.DEFINE_config_file("config", None, "config file", lock_config=True)
    flags.DEFINE_string("workdir", None, "workdir")
    app.run(main)
