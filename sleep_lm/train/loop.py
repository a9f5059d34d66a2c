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

Evaluation by difficulty: a task with `eval_sets(size, seed)` (Rule 110 per t, Depo per k)
returns held-out sets keyed by a suffix ("" for the task's own set, "@t=16", "@k=8", ...);
each set's metrics are logged with that suffix (`eval/accuracy@k=8`).

Determinism: the batch of step s is `task.sample(np.random.default_rng([seed, 2, s]), batch)`,
and parameters are initialised from `seed`, so a restarted run sees the same data in the
same order as an uninterrupted one and resuming from a checkpoint reproduces it. With
several hosts each host samples only its rows of the global batch, from
`[seed, 2, s, num_shards, shard]` (`batch_for_step`); one host, whatever its number of
devices, samples exactly the single-process batch.

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


def build_components(config: config_dict.ConfigDict) -> Components:
    """Task, model and sleep spec from the config (imports them here: they are optional for
    tests that bring their own components)."""
    from sleep_lm import inference, sleep
    from sleep_lm.model import build_model
    from sleep_lm.tasks import get_task

    task = get_task(config.task)
    model = build_model(
        config.model, vocab_size=task.vocab_size, max_len=task.seq_len, window=config.sleep.window
    )
    # The wake/sleep pattern of the windows is static: it comes from the task's layout, which
    # every example shares, so one example decides it.
    probe = task.eval_batch(1, config.seed)
    schedule = sleep.window_schedule(probe["loss_mask"][0], config.sleep.window)
    spec = sleep.SleepSpec.from_config(config.sleep, schedule)

    def loss_fn(params, batch):
        return sleep.sequence_loss(model, params, batch, spec)

    def eval_fn(params, batch):
        # The same metrics through the streaming wake/sleep path (feed, decode_step, sleep):
        # what a deployed model computes, equal to loss_fn's up to float rounding.
        return inference.streaming_loss(model, params, batch, spec)

    return Components(task=task, init_params=model.init_params, loss_fn=loss_fn, eval_fn=eval_fn)


# Training batches come from the seed stream [seed, TRAIN_STREAM, step]. The tasks draw their
# held-out set from [seed, 1] (tasks/_common.EVAL_STREAM); a plain [seed, step] would make the
# eval set a copy of the batch of step 1. (SeedSequence pads entropy with zeros, so the tag
# must also differ from 0 to keep [seed] itself apart.)
TRAIN_STREAM = 2


def batch_for_step(
    task, seed: int, step: int, batch_size: int, shard: int = 0, num_shards: int = 1
) -> dict:
    """The training batch of `step`: a function of (seed, step) only.

    With `num_shards` > 1 (several hosts, `parallel.host_rows`), the `batch_size` rows of
    shard `shard` of the global batch, from a seed that also holds (num_shards, shard): every
    host draws different rows, deterministically, without sampling the others'.
    """
    key = [seed, TRAIN_STREAM, step]
    if num_shards > 1:
        key += [num_shards, shard]
    return task.sample(np.random.default_rng(key), batch_size)


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation):
    """(state, batch) -> (state, metrics); jit it with the state donated."""

    def train_step(state: TrainState, batch: dict):
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


def make_eval_step(loss_fn: LossFn):
    def eval_step(params, batch: dict) -> dict:
        loss, metrics = loss_fn(params, batch)
        return {
            "eval/loss": loss,
            "eval/token_accuracy": metrics["token_accuracy"],
            "eval/accuracy": metrics["accuracy"],
        }

    return eval_step


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

    Every metric is a mean over examples (each example has the same number of labelled
    positions), so chunk means weighted by chunk size give the mean over the whole set.
    `put` turns a NumPy chunk into device arrays (sharded over the mesh).
    """
    size = len(batch["inputs"])
    totals: dict[str, float] = {}
    for start in range(0, size, chunk_size):
        chunk = {k: v[start : start + chunk_size] for k, v in batch.items()}
        n = len(chunk["inputs"])
        if put is not None:
            chunk = put(chunk)
        for key, value in jax.device_get(eval_step(params, chunk)).items():
            totals[key] = totals.get(key, 0.0) + float(value) * n
    return {key: value / size for key, value in totals.items()}


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
    if checkpointer.latest_step() is not None:
        # The target's shardings are this run's: orbax reshards whatever mesh wrote it.
        target = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
        )
        state = checkpointer.restore(target)
        logging.info("resumed from checkpoint step %d", int(state.step))
        return state, shardings
    return jax.jit(create, out_shardings=shardings)(), shardings


class _NoWriter:
    """metrics.jsonl stand-in on processes other than 0."""

    def write(self, step, values) -> None:
        pass

    def close(self) -> None:
        pass


def _compile_steps(components, optimizer, layout: Layout, state_shardings, eval_fn=None):
    """The jitted train step (state donated) and eval step (of `eval_fn`, default the
    training loss), with in/out shardings."""
    batch, replicated = layout.batch, layout.replicated
    train_step = jax.jit(
        make_train_step(components.loss_fn, optimizer),
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
) -> dict[str, float]:
    """Trains to `config.train.steps`, resuming from WORKDIR/checkpoints; returns the last
    eval metrics (empty if there was nothing left to do)."""
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
        start = int(state.step)
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

        train_step, eval_step = _compile_steps(components, optimizer, layout, state_shardings)
        held_out = eval_sets(task, train_cfg.eval_size, config.seed)
        eval_chunk = min(train_cfg.batch_size, train_cfg.eval_size)
        progress = Progress(total, train_cfg.batch_size * task.seq_len)
        sums: dict[str, float] = {}
        count = 0
        last_eval: dict[str, float] = {}
        rows = parallel.host_rows(layout.batch, train_cfg.batch_size)

        def sample(step):
            # This host's rows of the global batch of `step`, assembled across hosts.
            local = batch_for_step(task, config.seed, step, rows.size, rows.shard, rows.num_shards)
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
) -> tuple[int, dict[str, float]]:
    """(step, eval metrics) of the latest checkpoint in WORKDIR on the held-out set."""
    workdir = Path(workdir)
    components = components or build_components(config)
    optimizer = optim.make_optimizer(config.train)
    layout = Layout.from_config(config)
    if not (workdir / "checkpoints").is_dir():
        # Checked before orbax is asked: its manager would create the (empty) directory.
        raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'} (no such directory)")
    checkpointer = Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints)
    try:
        if checkpointer.latest_step() is None:
            raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}")
        state, shardings = init_or_restore(config, components, optimizer, checkpointer, layout)
    finally:
        checkpointer.close()
    _, eval_step = _compile_steps(
        components, optimizer, layout, shardings, eval_fn=components.eval_fn
    )
    held_out = eval_sets(components.task, config.train.eval_size, config.seed)
    chunk = min(config.train.batch_size, config.train.eval_size)

    def put(chunk):
        return parallel.replicated_batch(chunk, layout.batch)

    with layout.context():
        metrics = evaluate_sets(eval_step, state.params, held_out, chunk, put)
    return int(state.step), metrics
