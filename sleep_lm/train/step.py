"""Train and eval steps: the loss's value and gradient (accumulated over microbatches), the
optimiser update, and held-out metrics as sums with a denominator.

`Components` bundles what the steps and the loop need from a task and a model, so tests
(and other tasks or models) can hand in their own (see `sleep_lm.run.build_components`):
- `task.sample(rng, batch_size)` / `task.eval_batch(size, seed)` -> dict of NumPy arrays
  (inputs, targets int32 [batch, time], loss_mask bool [batch, time]) and `task.seq_len`;
- `init_params(rng) -> params`;
- `loss_fn(params, batch) -> (loss, metrics)`, metrics holding scalar "token_accuracy" and
  "accuracy" (the Algorithm 1 loss over whole sequences, `sleep.sequence_loss`);
- optionally `eval_fn`, the same signature, used by checkpoint evaluation (`--mode=eval`):
  the streaming inference path `inference.streaming_loss` (defaults to `loss_fn`);
- optionally `load_weights(target) -> params`, a pretrained family's weights
  (`init.from_hf`) read onto `target`'s shardings.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sleep_lm.train.state import TrainState

LossFn = Callable[[Any, dict], tuple[jax.Array, dict]]


@dataclasses.dataclass(frozen=True)
class Components:
    task: Any
    init_params: Callable[[jax.Array], Any]
    loss_fn: LossFn
    eval_fn: LossFn | None = None  # held-out evaluation of a checkpoint; None: loss_fn
    model: Any = None  # the Flax model and its sleep.SleepSpec (sleep_lm.load_run returns
    spec: Any = None  # them); None for components a test builds by hand
    load_weights: Callable[[Any], Any] | None = None  # init.from_hf's weights onto a target


def split_microbatches(batch: dict, microbatches: int) -> dict:
    """[batch, ...] leaves -> [microbatches, batch / microbatches, ...]: microbatch j holds
    rows j, j + k, j + 2k, ... (k = microbatches), so each device's contiguous shard of the
    batch axis stays a contiguous shard of every microbatch (no data moves between devices)."""

    def split(x):
        x = jnp.asarray(x)
        rows = x.shape[0] // microbatches
        return jnp.swapaxes(x.reshape(rows, microbatches, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def accumulated_value_and_grad(loss_fn: LossFn, params, batch: dict, microbatches: int):
    """``jax.value_and_grad(loss_fn, has_aux=True)(params, batch)`` computed over
    `microbatches` equal slices of the batch one after another (``lax.scan``), so only one
    slice's activations are live at a time (gradient accumulation).

    The loss is a mean over loss positions (``batch["loss_mask"]``), so each slice's loss,
    gradient and token accuracy are weighted by its number of loss positions, and its
    example accuracy by its number of examples with a loss position: the result equals the
    whole batch's up to float32 summation order. Gradients accumulate in float32.
    """
    micro = split_microbatches(batch, microbatches)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def one(carry, mb):
        (loss, metrics), grads = grad_fn(params, mb)
        mask = jnp.asarray(mb["loss_mask"]).astype(bool)
        tokens = jnp.sum(mask).astype(jnp.float32)
        examples = jnp.sum(jnp.any(mask, axis=1)).astype(jnp.float32)
        grad_sum, sums = carry
        grad_sum = jax.tree.map(lambda a, g: a + tokens * g.astype(jnp.float32), grad_sum, grads)
        sums = {
            "tokens": sums["tokens"] + tokens,
            "examples": sums["examples"] + examples,
            "loss": sums["loss"] + tokens * loss,
            "token_accuracy": sums["token_accuracy"] + tokens * metrics["token_accuracy"],
            "accuracy": sums["accuracy"] + examples * metrics["accuracy"],
        }
        return (grad_sum, sums), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    sums = dict.fromkeys(("tokens", "examples", "loss", "token_accuracy", "accuracy"))
    sums = {k: jnp.zeros((), jnp.float32) for k in sums}
    (grad_sum, sums), _ = jax.lax.scan(one, (zeros, sums), micro)
    tokens = jnp.maximum(sums["tokens"], 1.0)
    examples = jnp.maximum(sums["examples"], 1.0)
    grads = jax.tree.map(lambda g, p: (g / tokens).astype(p.dtype), grad_sum, params)
    loss = sums["loss"] / tokens
    metrics = {
        "loss": loss,
        "token_accuracy": sums["token_accuracy"] / tokens,
        "accuracy": sums["accuracy"] / examples,
    }
    return (loss, metrics), grads


def make_train_step(
    loss_fn: LossFn, optimizer: optax.GradientTransformation, microbatches: int = 1
):
    """(state, batch) -> (state, metrics); jit it with the state donated.

    ``microbatches`` > 1 accumulates the gradient over that many slices of the batch
    (``accumulated_value_and_grad``): one optimiser update per batch, the activations of one
    slice in memory at a time. 1 (the default) is the plain step.
    """

    def train_step(state: TrainState, batch: dict):
        if microbatches > 1:
            (loss, metrics), grads = accumulated_value_and_grad(
                loss_fn, state.params, batch, microbatches
            )
        else:
            (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
        # A bad step must not poison the state (the loop stops, and the state in memory and
        # on disk stays the last good one).
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        metrics = {
            "loss": loss,
            "token_accuracy": metrics["token_accuracy"],
            "accuracy": metrics["accuracy"],
            "grad_norm": grad_norm,
            "finite": finite,
        }
        return new_state, metrics

    return train_step


def loss_weights(batch: dict) -> tuple[jax.Array, jax.Array]:
    """(loss positions, examples with a loss position) of a batch, float32 scalars: the
    denominators of the token metrics (loss, token accuracy) and of example accuracy."""
    mask = jnp.asarray(batch["loss_mask"]).astype(bool)
    tokens = jnp.sum(mask).astype(jnp.float32)
    examples = jnp.sum(jnp.any(mask, axis=1)).astype(jnp.float32)
    return tokens, examples


def make_eval_step(loss_fn: LossFn):
    """(params, batch) -> {name: (numerator, denominator)}: each metric as a sum over the
    batch with its weight (as flax's lm1b example does), so that `evaluate` can add chunks
    of different weights. Loss and token accuracy are weighted by loss positions, example
    accuracy by examples (an answer has 2-5 loss positions, so the two differ)."""

    def eval_step(params, batch: dict) -> dict:
        loss, metrics = loss_fn(params, batch)
        tokens, examples = loss_weights(batch)
        return {
            "eval/loss": (loss * tokens, tokens),
            "eval/token_accuracy": (metrics["token_accuracy"] * tokens, tokens),
            "eval/accuracy": (metrics["accuracy"] * examples, examples),
        }

    return eval_step


def evaluate_sets(eval_step, params, sets: dict, chunk_size: int, put=None) -> dict[str, float]:
    """`evaluate` on each set of `eval_sets`, metric names suffixed with the set's key."""
    metrics = {}
    for suffix, batch in sets.items():
        for key, value in evaluate(eval_step, params, batch, chunk_size, put).items():
            metrics[key + suffix] = value
    return metrics


def evaluate(eval_step, params, batch: dict, chunk_size: int, put=None) -> dict[str, float]:
    """Metrics on `batch`, evaluated `chunk_size` examples at a time (bounded memory).

    `eval_step` returns {name: (numerator, denominator)} per chunk (`make_eval_step`); both
    are summed over the chunks (in float64 on the host) and divided once, so each metric is
    its mean over the whole set whatever the chunks' weights. `put` turns a NumPy chunk
    into device arrays (sharded over the mesh).
    """
    size = len(batch["inputs"])
    sums: dict[str, list[float]] = {}
    for start in range(0, size, chunk_size):
        chunk = {k: v[start : start + chunk_size] for k, v in batch.items()}
        if put is not None:
            chunk = put(chunk)
        for key, (num, den) in jax.device_get(eval_step(params, chunk)).items():
            total = sums.setdefault(key, [0.0, 0.0])
            total[0] += float(num)
            total[1] += float(den)
    return {key: num / max(den, 1.0) for key, (num, den) in sums.items()}
