"""The training loop: Algorithm 1 loss, optimiser step, eval, logging, checkpoints, resume.

`train(config, workdir)` builds the task, model and sleep spec from the config. The loop only
needs three things from them, bundled in `Components`, so tests (and other tasks or models)
can hand in their own:
- `task.sample(rng, batch_size)` / `task.eval_batch(size, seed)` -> dict of NumPy arrays
  (inputs, targets int32 [batch, time], loss_mask bool [batch, time]) and `task.seq_len`;
- `init_params(rng) -> params`;
- `loss_fn(params, batch) -> (loss, metrics)`, metrics holding scalar "token_accuracy" and
  "accuracy" (the Algorithm 1 loss over whole sequences, `sleep.sequence_loss`);
- optionally `eval_fn`, the same signature, used by `evaluate_checkpoint` (`--mode=eval`):
  the streaming inference path `inference.streaming_loss` (defaults to `loss_fn`).
A batch may also carry `valid` (bool [batch, time], False at padding; see sleep.py,
"Variable-length examples"); it travels to `loss_fn` with the rest of the batch.

The wake/sleep schedule is static (from one example), so every batch is checked on the
host before its step (`check_batch`: `sleep.check_schedule` against `Components.spec`): a
loss position in a sleep window stops the run with a one-line ValueError instead of going
silently unscored.

Evaluation by difficulty: a task with `eval_sets(size, seed)` (Rule 110 per t, Depo per k)
returns held-out sets keyed by a suffix ("" for the task's own set, "@t=16", "@k=8", ...);
each set's metrics are logged with that suffix (`eval/accuracy@k=8`).

Determinism: the batch of step s is `task.sample(np.random.default_rng([seed, 2, s]), batch)`,
and parameters are initialised from `seed`, so a restarted run sees the same data in the
same order as an uninterrupted one and resuming from a checkpoint reproduces it. With
several hosts each host samples that same global batch and keeps its rows
(`batch_for_step`), so the data does not depend on the number of hosts or devices.

Devices (sleep_lm/parallel.py): the train state is placed on the mesh of `config.mesh` with
NamedShardings from the parameter layout table, the batch is split on its leading axis over
the "batch" rule's mesh axes, and the train and eval steps are jitted with these in/out
shardings (metrics replicated). Checkpoints restore onto the current mesh, whatever mesh
wrote them. Only process 0 writes metrics.jsonl; every process takes part in orbax saves.

Failure handling: a step with a non-finite loss or gradient leaves the state unchanged
(in-graph select) and the loop stops with `NonFiniteLoss`; the checkpoints on disk are all
from finite steps. SIGINT / SIGTERM set a flag; the loop finishes the current step, saves a
checkpoint and raises `Interrupted`. A second Ctrl-C interrupts at once.
"""

import dataclasses
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from ml_collections import config_dict

from sleep_lm import parallel
from sleep_lm.train import optim
from sleep_lm.train.checkpoint import Checkpointer
from sleep_lm.train.metrics import MetricsWriter, Progress, format_duration
from sleep_lm.train.state import TrainState

LossFn = Callable[[Any, dict], tuple[jax.Array, dict]]


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, last_checkpoint: int | None):
        self.step = step
        self.last_checkpoint = last_checkpoint
        where = "none" if last_checkpoint is None else f"step {last_checkpoint}"
        super().__init__(f"non-finite loss at step {step}; last good checkpoint: {where}")


class Interrupted(Exception):
    def __init__(self, signum: int, step: int):
        self.signum = signum
        self.step = step
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} at step {step}; checkpoint saved")


@dataclasses.dataclass(frozen=True)
class Components:
    task: Any
    init_params: Callable[[jax.Array], Any]
    loss_fn: LossFn
    eval_fn: LossFn | None = None  # held-out evaluation of a checkpoint; None: loss_fn
    model: Any = None  # the Flax model and its sleep.SleepSpec (sleep_lm.load_run returns
    spec: Any = None  # them); None for components a test builds by hand


def build_components(config: config_dict.ConfigDict) -> Components:
    """Task, model and sleep spec from the config (imports them here: they are optional for
    tests that bring their own components)."""
    from sleep_lm import config as config_lib
    from sleep_lm import inference, sleep
    from sleep_lm.model import build_model
    from sleep_lm.tasks import get_task

    task = get_task(config.task)
    if config_lib.model_family(config) == config_lib.MODEL_FAMILY_DEFAULT:
        model = build_model(
            config.model,
            vocab_size=task.vocab_size,
            max_len=task.seq_len,
            window=config.sleep.window,
        )
    else:
        # A pretrained family: the architecture of init.from_hf's config.json (no weights
        # read here; initial_params loads them into a fresh run). Task token ids index the
        # checkpoint's vocabulary as they are (validated: they fit).
        from sleep_lm.pretrained import hf

        model = hf.build(
            config.init.from_hf,
            window=config.sleep.window,
            **config_lib.pretrained_options(config),
        )[2]
    # The wake/sleep pattern of the windows is static: it comes from the task's layout, which
    # every example shares, so one example decides it.
    probe = task.eval_batch(1, config.seed)
    if hasattr(task, "check_window"):  # loss positions vary per example: all must be awake
        task.check_window(config.sleep.window)
    schedule = sleep.window_schedule(probe["loss_mask"][0], config.sleep.window)
    spec = sleep.SleepSpec.from_config(config.sleep, schedule)
    # sleep.loop_blocks=all lets a family choose what a pass loops (Ouro's sleep_loops).
    family_loop = getattr(model, "sleep_loop_blocks", "all")
    if spec.loop_blocks == (None, None) and family_loop != "all":
        spec = spec._replace(loop_blocks=sleep.parse_loop_blocks(family_loop))

    def loss_fn(params, batch):
        return sleep.sequence_loss(model, params, batch, spec)

    # No loss position comes before this one (GSM: the answer span at the end): the
    # streaming eval feeds everything before it as a prompt and decodes only the rest.
    scored_from = int(getattr(task, "scored_from", 0))

    def eval_fn(params, batch):
        # The same metrics through the streaming wake/sleep path (feed, decode_step, sleep):
        # what a deployed model computes, equal to loss_fn's up to float rounding.
        return inference.streaming_loss(model, params, batch, spec, scored_from=scored_from)

    return Components(
        task=task,
        init_params=model.init_params,
        loss_fn=loss_fn,
        eval_fn=eval_fn,
        model=model,
        spec=spec,
    )


# Training batches come from the seed stream [seed, TRAIN_STREAM, step]. The tasks draw their
# held-out set from [seed, 1] (tasks/_common.EVAL_STREAM); a plain [seed, step] would make the
# eval set a copy of the batch of step 1. (SeedSequence pads entropy with zeros, so the tag
# must also differ from 0 to keep [seed] itself apart.)
TRAIN_STREAM = 2


def batch_for_step(task, seed: int, step: int, batch_size: int, rows=None) -> dict:
    """The global training batch of `step` (`batch_size` rows): a function of (seed, step)
    only, `task.sample(np.random.default_rng([seed, 2, step]), batch_size)`.

    rows: the global row indices to keep (a host's rows, `parallel.host_rows`); None: all.
    Every host samples the whole global batch and keeps its rows, so the batch of step s is
    the same rows whether one process or eight produce it: a sweep run on different host
    counts sees identical data. Sampling is cheap next to a step (about 10 ms for 512 Rule
    110 or Depo rows on one core) and overlaps with the device's step.
    """
    batch = task.sample(np.random.default_rng([seed, TRAIN_STREAM, step]), batch_size)
    if rows is None:
        return batch
    index = np.asarray(rows, np.int64)
    return {key: value[index] for key, value in batch.items()}


def check_batch(components: Components, batch: dict) -> dict:
    """`batch`, after refusing it (one-line ValueError) if a loss position lies in a window
    that `components.spec`'s static schedule sleeps on; no check without a spec."""
    if components.spec is not None:
        from sleep_lm import sleep

        sleep.check_schedule(batch["loss_mask"], components.spec)
    return batch


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


def eval_seed(config: config_dict.ConfigDict) -> int:
    """The seed of the held-out sets: `train.eval_seed` (default 0: one fixed test set for
    every `seed` of a sweep); -1, or a config without the field (config.json files written
    before it existed), ties it to `config.seed` as before."""
    value = config.train.get("eval_seed", -1)
    return config.seed if value == -1 else int(value)


def eval_sets(task, size: int, seed: int) -> dict[str, dict]:
    """Held-out sets keyed by metric suffix: the task's `eval_sets` if it has one, else
    {"": task.eval_batch(size, seed)}."""
    if hasattr(task, "eval_sets"):
        return task.eval_sets(size, seed)
    return {"": task.eval_batch(size, seed)}


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


def generate_eval(config: config_dict.ConfigDict) -> bool:
    """`task.eval_generate`: whether `--mode=eval` also scores greedy generations (absent:
    off)."""
    return bool(config.task.get("eval_generate", False))


def session_generator(model, params, spec, batch_size: int, padded: bool):
    """(prompt int [n, P], valid bool [n, P] or None, steps) -> greedy tokens [n, steps]:
    each prompt is fed to an `inference.SleepSession` (which sleeps whenever its window
    fills), then `steps` tokens are generated (each fed back but the last). n <= batch_size
    (a short chunk is filled with copies of its first row: one compiled program)."""
    from sleep_lm import inference

    # auto_sleep off: no consolidation of a window that fills on the last generated token.
    session = inference.SleepSession(
        model, params, spec, batch_size, auto_sleep=False, padded=padded
    )

    def generate(prompt, valid, steps: int) -> np.ndarray:
        n = len(prompt)
        fill = np.r_[np.arange(n), np.zeros(batch_size - n, int)]
        session.reset()
        session.feed(prompt[fill], None if valid is None else valid[fill])
        tokens = session.generate(steps - 1) if steps > 1 else np.zeros((batch_size, 0), int)
        last = np.argmax(np.asarray(session.logits), axis=-1)
        return np.concatenate([tokens, last[:, None]], axis=1)[:n]

    return generate


def parsed_accuracy(generate, task, batch: dict, chunk_size: int) -> float:
    """The benchmark's score on a held-out batch: the fraction of problems whose generated
    answer, parsed (`task.parse_answer`), is the answer. `generate` as `session_generator`
    returns; at most `task.answer_span` new tokens (the longest answer and the end)."""
    prompts = task.generation_batch(batch)
    size = len(prompts["answer"])
    correct = 0
    for start in range(0, size, chunk_size):
        part = slice(start, start + chunk_size)
        valid = prompts["valid"][part] if "valid" in prompts else None
        tokens = generate(prompts["prompt"][part], valid, task.answer_span)
        answers = prompts["answer"][part]
        correct += sum(task.parse_answer(t) == a for t, a in zip(tokens, answers, strict=True))
    return correct / size


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag checked between steps (main thread only)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # Second Ctrl-C: stop now.
        self.signum = signum
        logging.warning("%s received: stopping after this step", signal.Signals(signum).name)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _log_param_split(params, train: config_dict.ConfigDict) -> None:
    if train.optimizer != "muon":
        logging.info("params: %s, all AdamW", f"{_count(params):,}")
        return
    labels = optim.param_labels(params, train.adam_patterns)
    sizes = {optim.MUON: 0, optim.ADAM: 0}
    for label, x in zip(jax.tree.leaves(labels), jax.tree.leaves(params), strict=True):
        sizes[label] += int(np.prod(x.shape))
    logging.info(
        "params: %s (Muon %s, AdamW %s)",
        f"{_count(params):,}",
        f"{sizes[optim.MUON]:,}",
        f"{sizes[optim.ADAM]:,}",
    )


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where arrays live: the mesh, its logical rules, and the batch's sharding."""

    mesh: jax.sharding.Mesh
    rules: tuple

    @classmethod
    def from_config(cls, config: config_dict.ConfigDict) -> "Layout":
        mesh_cfg = parallel.mesh_config(config)
        return cls(
            mesh=parallel.make_mesh(mesh_cfg),
            rules=parallel.parse_rules(mesh_cfg.get("rules", None)),
        )

    @property
    def batch(self) -> jax.sharding.NamedSharding:
        return parallel.batch_sharding(self.mesh, self.rules)

    @property
    def replicated(self) -> jax.sharding.NamedSharding:
        return parallel.replicated(self.mesh)

    def context(self):
        return parallel.sharding_context(self.mesh, self.rules)


def init_or_restore(
    config: config_dict.ConfigDict,
    components: Components,
    optimizer: optax.GradientTransformation,
    checkpointer: Checkpointer,
    layout: Layout | None = None,
) -> tuple[TrainState, Any]:
    """(state, its shardings): the latest checkpoint's state, or a fresh one from
    `config.seed`, placed on `layout`'s mesh (default: `config.mesh`)."""
    layout = layout or Layout.from_config(config)

    def create():
        params = components.init_params(jax.random.PRNGKey(config.seed))
        return TrainState.create(params, optimizer)

    abstract = jax.eval_shape(create)
    shardings = parallel.tree_shardings(abstract, layout.mesh, layout.rules)
    # The target's shardings are this run's: orbax reshards whatever mesh wrote it.
    target = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
    )
    if checkpointer.latest_step() is not None:  # Resuming takes precedence over config.init.
        state = checkpointer.restore(target)
        logging.info("resumed from checkpoint step %d", int(state.step))
        return state, shardings
    params = initial_params(config, target.params)
    if params is not None:
        # Fresh optimiser state and step 0: the schedule starts again from its warm-up.
        state = jax.jit(lambda p: TrainState.create(p, optimizer), out_shardings=shardings)(params)
        return state, shardings
    return jax.jit(create, out_shardings=shardings)(), shardings


class InitError(ValueError):
    """`config.init` names parameters this run cannot start from; one line naming the field."""


def initial_params(config: config_dict.ConfigDict, target):
    """The parameters `config.init` starts a fresh run from, restored onto `target` (the
    run's parameter ShapeDtypeStructs with their shardings); None when `config.init` names no
    source (random initialisation from `config.seed`).

    init.from_checkpoint="WORKDIR[:STEP]": the parameters of another run's checkpoint
    (default: its latest), matched by name (the "/"-joined parameter path) and shape; the
    optimiser state is not read. Parameters the source has and this model lacks are not
    read. Raises InitError naming a missing or mis-shaped parameter, or a source without
    checkpoints. init.from_hf alone: the Hugging Face checkpoint's weights; with
    init.from_checkpoint (a pretrained family warm-started from a run of it): the run's.
    """
    from sleep_lm.config import init_checkpoint
    from sleep_lm.train.checkpoint import CheckpointError, restore_params

    init = config.get("init", None) or {}
    source = init.get("from_checkpoint", "")
    if init.get("from_hf", "") and not source:
        return _hf_params(config, target)
    if not source:
        return None
    workdir, step = init_checkpoint(source)
    try:
        params, step = restore_params(Path(workdir) / "checkpoints", target, step)
    except (FileNotFoundError, ValueError, CheckpointError) as e:
        raise InitError(f"config.init.from_checkpoint={source!r}: {e}") from None
    logging.info(
        "initialised from %s, checkpoint step %d (fresh optimiser state and schedule)",
        workdir,
        step,
    )
    return params


def _hf_params(config: config_dict.ConfigDict, target):
    """init.from_hf=DIR: the checkpoint's weights, each device's slice read straight into
    `target`'s shardings (sleep_lm.pretrained.load_hf). InitError for a bad checkpoint."""
    from sleep_lm.config import pretrained_options
    from sleep_lm.pretrained import load_hf

    source = config.init.from_hf
    shardings = jax.tree.map(lambda t: t.sharding, target)
    try:
        _, params = load_hf(
            source,
            window=config.sleep.window,
            shardings=shardings,
            **pretrained_options(config),
        )
    except ValueError as e:
        raise InitError(f"config.init.from_hf={source!r}: {e}") from None
    logging.info("initialised from Hugging Face checkpoint %s (fresh optimiser state)", source)
    return params


class _NoWriter:
    """metrics.jsonl stand-in on processes other than 0."""

    def write(self, step, values) -> None:
        pass

    def close(self) -> None:
        pass


def _compile_steps(
    components, optimizer, layout: Layout, state_shardings, eval_fn=None, microbatches: int = 1
):
    """The jitted train step (state donated; gradient accumulated over `microbatches`
    slices of the batch) and eval step (of `eval_fn`, default the training loss), with
    in/out shardings."""
    batch, replicated = layout.batch, layout.replicated
    train_step = jax.jit(
        make_train_step(components.loss_fn, optimizer, microbatches),
        in_shardings=(state_shardings, batch),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )
    eval_step = jax.jit(
        make_eval_step(eval_fn or components.loss_fn),
        in_shardings=(state_shardings.params, batch),
        out_shardings=replicated,
    )
    return train_step, eval_step


def train(
    config: config_dict.ConfigDict,
    workdir: str | Path,
    components: Components | None = None,
    on_start: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Trains to `config.train.steps`, resuming from WORKDIR/checkpoints (the newest one that
    restores; damaged newer ones are set aside); returns the last eval metrics (empty if
    there was nothing left to do). on_start(step) runs once the state is restored or
    initialised, before anything is written (main writes config.json there)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    components = components or build_components(config)
    train_cfg = config.train
    task = components.task
    total = train_cfg.steps

    optimizer = optim.make_optimizer(train_cfg)
    lr_schedules = optim.schedules(train_cfg)
    layout = Layout.from_config(config)
    checkpointer = Checkpointer(workdir / "checkpoints", keep=train_cfg.keep_checkpoints)
    writer = None
    try:
        state, state_shardings = init_or_restore(
            config, components, optimizer, checkpointer, layout
        )
        checkpointer.set_aside_unreadable()
        start = int(state.step)
        if on_start is not None:
            on_start(start)
        if parallel.is_primary():
            # TensorBoard event files next to metrics.jsonl unless train.tensorboard is false.
            tensorboard = train_cfg.get("tensorboard", True)
            writer = MetricsWriter(
                workdir / "metrics.jsonl",
                resume_step=start,
                tensorboard_dir=workdir if tensorboard else None,
            )
        else:
            writer = _NoWriter()
        _log_param_split(state.params, train_cfg)
        logging.info(
            "devices: %d (%s), mesh %s, processes: %d",
            jax.device_count(),
            jax.devices()[0].platform,
            dict(layout.mesh.shape),
            jax.process_count(),
        )
        if start >= total:
            logging.info("already at step %d of %d: nothing to train", start, total)
            return {}

        train_step, eval_step = _compile_steps(
            components,
            optimizer,
            layout,
            state_shardings,
            microbatches=train_cfg.get("microbatches", 1),
        )
        held_out = eval_sets(task, train_cfg.eval_size, eval_seed(config))
        for held_out_batch in held_out.values():
            check_batch(components, held_out_batch)
        # Held-out examples per eval step: one microbatch (what a training step holds).
        micro = train_cfg.get("microbatches", 1)
        eval_chunk = min(train_cfg.batch_size // micro, train_cfg.eval_size)
        progress = Progress(total, train_cfg.batch_size * task.seq_len)
        sums: dict[str, float] = {}
        count = 0
        last_eval: dict[str, float] = {}
        rows = parallel.host_rows(layout.batch, train_cfg.batch_size)

        def sample(step):
            # This host's rows of the global batch of `step`, assembled across hosts.
            local = batch_for_step(task, config.seed, step, train_cfg.batch_size, rows.rows)
            check_batch(components, local)
            return parallel.global_batch(local, layout.batch, train_cfg.batch_size)

        def put_eval(chunk):
            return parallel.replicated_batch(chunk, layout.batch)

        logging.info("training steps %d..%d", start + 1, total)
        t_compile = time.perf_counter()
        next_batch = sample(start)
        with _StopFlag() as stop, layout.context():
            for step in range(start, total):
                state, metrics = train_step(state, next_batch)
                if step + 1 < total:
                    # Sample the next batch on the host while the device runs this step.
                    next_batch = sample(step + 1)
                metrics = jax.device_get(metrics)
                done = step + 1
                if step == start:
                    logging.info(
                        "first step (with compilation) took %s",
                        format_duration(time.perf_counter() - t_compile),
                    )
                    progress.start(done)
                if not metrics.pop("finite"):
                    raise NonFiniteLoss(done, checkpointer.latest_step())
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + float(value)
                count += 1

                if done % train_cfg.log_every == 0 or done == total:
                    means = {key: value / count for key, value in sums.items()}
                    tokens_per_s = progress.rate(done)
                    record = dict(means, lr=lr_schedules[optim.MUON](step))
                    if train_cfg.optimizer == "muon":  # "adamw" has one group, at lr.
                        record["adam_lr"] = lr_schedules[optim.ADAM](step)
                    record["tokens_per_s"] = tokens_per_s
                    writer.write(done, record)
                    logging.info("%s", progress.line(done, means["loss"], tokens_per_s))
                    sums, count = {}, 0

                paused = time.perf_counter()
                if done % train_cfg.eval_every == 0 or done == total:
                    last_eval = evaluate_sets(
                        eval_step, state.params, held_out, eval_chunk, put_eval
                    )
                    writer.write(done, last_eval)
                    logging.info(
                        "eval step %d: %s",
                        done,
                        " ".join(f"{k} {v:.4f}" for k, v in sorted(last_eval.items())),
                    )
                if done % train_cfg.checkpoint_every == 0 or done == total:
                    checkpointer.save(done, state)
                # Every host stops at the same step (a signal may reach only some of them).
                # A signal during the last step is not an interruption: the run is complete.
                if done < total and parallel.any_process(stop.signum is not None):
                    checkpointer.save(done, state)
                    checkpointer.wait()
                    raise Interrupted(stop.signum or signal.SIGTERM, done)
                progress.exclude(time.perf_counter() - paused)
        return last_eval
    finally:
        checkpointer.close()
        if writer is not None:
            writer.close()


def evaluate_checkpoint(
    config: config_dict.ConfigDict,
    workdir: str | Path,
    components: Components | None = None,
    step: int | None = None,
) -> tuple[int, dict[str, float]]:
    """(step, eval metrics) of the checkpoint at `step` (default: the latest) in WORKDIR on
    the held-out set(s), evaluated under `config` with `components.eval_fn`; with
    `task.eval_generate` also `eval/parsed_accuracy<suffix>` (`parsed_accuracy`: greedy
    generation through `inference.SleepSession`, answers parsed from the text).

    Only the parameters are read (`sleep_lm.run.load_run`: no optimiser state), straight
    into this mesh's shardings. Raises FileNotFoundError when WORKDIR holds no checkpoint.
    """
    from sleep_lm.run import load_run

    workdir = Path(workdir)
    components = components or build_components(config)
    layout = Layout.from_config(config)
    abstract = jax.eval_shape(components.init_params, jax.random.PRNGKey(0))
    shardings = parallel.tree_shardings(abstract, layout.mesh, layout.rules)
    run = load_run(workdir, step, config=config, components=components, shardings=shardings)
    eval_step = jax.jit(
        make_eval_step(components.eval_fn or components.loss_fn),
        in_shardings=(shardings, layout.batch),
        out_shardings=layout.replicated,
    )
    held_out = eval_sets(components.task, config.train.eval_size, eval_seed(config))
    for held_out_batch in held_out.values():
        check_batch(components, held_out_batch)
    micro = config.train.get("microbatches", 1)
    chunk = min(config.train.batch_size // micro, config.train.eval_size)

    def put(chunk):
        return parallel.replicated_batch(chunk, layout.batch)

    with layout.context():
        metrics = evaluate_sets(eval_step, run.params, held_out, chunk, put)
        if generate_eval(config):
            generate = session_generator(
                components.model,
                run.params,
                components.spec,
                chunk,
                padded=any("valid" in batch for batch in held_out.values()),
            )
            for suffix, batch in held_out.items():
                accuracy = parsed_accuracy(generate, components.task, batch, chunk)
                metrics["eval/parsed_accuracy" + suffix] = accuracy
    return run.step, metrics
