"""Chance levels: the eval metrics a model reaches without learning the task."""

import math

from sleep_lm.report.runs import Difficulty

_CHANCE_SAMPLES = 20_000  # Rule 110 examples drawn to measure the label distribution.
_CHANCE_CACHE: dict[tuple, dict] = {}


def rule110_chance(steps: int, state_bits: int = 24, num_states: int = 4) -> dict[str, float]:
    """Eval metrics of guessing each label position's majority bit at depth t = `steps`,
    measured on `_CHANCE_SAMPLES` examples of the task generator (fixed seed): accuracy (all
    labels right), token_accuracy, and loss (the labels' entropy in nats, the loss of
    predicting each position's bit frequencies)."""
    key = ("rule110", int(steps), int(state_bits), int(num_states))
    if key not in _CHANCE_CACHE:
        import numpy as np

        from sleep_lm.tasks.rule110 import Rule110

        task = Rule110(int(steps), int(state_bits), int(num_states))
        batch = task.sample(np.random.default_rng(12345), _CHANCE_SAMPLES)
        labels = batch["targets"][batch["loss_mask"]].reshape(_CHANCE_SAMPLES, -1)
        p = labels.mean(axis=0)  # P(label = 1) per position
        right = labels == (p >= 0.5)
        q = np.clip(p, 1e-12, 1 - 1e-12)
        entropy = -(q * np.log(q) + (1 - q) * np.log(1 - q))
        _CHANCE_CACHE[key] = {
            "accuracy": float(right.all(axis=1).mean()),
            "token_accuracy": float(right.mean()),
            "loss": float(entropy.mean()),
        }
    return _CHANCE_CACHE[key]


def depo_chance(min_nodes: int = 3, max_nodes: int = 75, num_queries: int = 10) -> dict:
    """Eval metrics of guessing uniformly among the cycle's n nodes, n ~ U[min_nodes,
    max_nodes] (the answer set; the same for every hop count k)."""
    sizes = range(int(min_nodes), int(max_nodes) + 1)
    mean = lambda f: sum(f(n) for n in sizes) / len(sizes)  # noqa: E731
    return {
        "accuracy": mean(lambda n: n ** -float(num_queries)),
        "token_accuracy": mean(lambda n: 1.0 / n),
        "loss": mean(math.log),
    }


def chance_level(config: dict, metric: str, difficulty: "Difficulty | None" = None):
    """The chance level of eval `metric` ("accuracy", "token_accuracy", "loss") for a run's
    flattened `config` at `difficulty` (None: the run's own), or None for an unknown task."""
    task = config.get("task.name")
    if task == "rule110":
        steps = config.get("task.steps")
        if difficulty is not None and difficulty.suffix.startswith("@t="):
            steps = int(difficulty.suffix.removeprefix("@t="))
        elif difficulty is not None and difficulty.field_value is not None:
            steps = difficulty.field_value[1]
        if steps is None:
            return None
        levels = rule110_chance(
            steps, config.get("task.state_bits", 24), config.get("task.num_states", 4)
        )
    elif task == "depo":
        levels = depo_chance(
            config.get("task.min_nodes", 3),
            config.get("task.max_nodes", 75),
            config.get("task.num_queries", 10),
        )
    else:
        return None
    return levels.get(metric)
