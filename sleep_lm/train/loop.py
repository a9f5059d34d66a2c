"""The training loop: data order, batch checks, held-out sets, logging, checkpoints, resume.

`train(config, workdir, components)` trains the task and model of `components`
(`train.step.Components`; `sleep_lm.run.build_components(config)` builds them from the
config) with the steps of `train/step.py` from the state `train/init.py` gives (resume,
warm start or random). A batch may also carry `valid` (bool [batch, time], False at
padding; see README.md, "Variable-length examples"); it travels to `loss_fn` with the rest of
the batch.

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

Devices (sleep_lm/parallel/): the train state is placed on the mesh of `config.mesh` with
NamedShardings from the parameter layout table, the batch is split on its leading axis over
the "batch" rule's mesh axes, and the train and eval steps are jitted with these in/out
shardings (metrics replicated). Checkpoints restore onto the current mesh, whatever mesh
wrote them. Only process 0 writes metrics.jsonl; every process takes part in orbax saves.

Failure handling: a step with a non-finite loss or gradient leaves the state unchanged
(in-graph select) and the loop stops with `NonFiniteLoss`; the checkpoints on disk are all
from finite steps. SIGINT / SIGTERM set a flag; the loop finishes the current step, saves a
checkpoint and raises `Interrupted`. A second Ctrl-C interrupts at once.
"""

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from absl import logging
from ml_collections import config_dict

from sleep_lm import parallel
from sleep_lm.train import optim
from sleep_lm.train.checkpoint import Checkpointer
from sleep_lm.train.init import InitError, Layout, init_or_restore, initial_params  # noqa: F401
from sleep_lm.train.metrics import MetricsWriter, Progress, format_duration
from sleep_lm.train.step import (  # noqa: F401  (re-exported: the loop's public names)
    Components,
    LossFn,
    accumulated_value_and_grad,
    evaluate,
    evaluate_sets,
    loss_weights,
    make_eval_step,
    make_train_step,
    split_microbatches,
)


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


EVAL_SEED_OWN = -1  # train.eval_seed: each seed's own held-out set (also a config without it)


def eval_seed(config: config_dict.ConfigDict) -> int:
    """The seed of the held-out sets: `train.eval_seed` (default 0: one fixed test set for
    every `seed` of a sweep); -1, or a config without the field (config.json files written
    before it existed), ties it to `config.seed` as before."""
    value = config.train.get("eval_seed", EVAL_SEED_OWN)
    return config.seed if value == EVAL_SEED_OWN else int(value)


def eval_sets(task, size: int, seed: int) -> dict[str, dict]:
    """Held-out sets keyed by metric suffix: the task's `eval_sets` if it has one, else
    {"": task.eval_batch(size, seed)}."""
    if hasattr(task, "eval_sets"):
        return task.eval_sets(size, seed)
    return {"": task.eval_batch(size, seed)}


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


class _NoWriter:
    """metrics.jsonl stand-in on processes other than 0."""

    def write(self, step, values) -> None:
        pass

    def close(self) -> None:
        pass


# The option-name prefix of each platform's own compiler: an option with another platform's
# prefix is left out (`compiler_options`), so one config serves every target.
_PLATFORM_PREFIXES = {"gpu": "xla_gpu_", "tpu": "xla_tpu_", "cpu": "xla_cpu_"}


def _option_value(text: str):
    """'true' / 'false' -> bool, an integer or a float -> that number, else the text."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_xla_options(text: str) -> dict:
    """`train.xla_options` ("name=value,name=value") -> {name: value}; ValueError naming
    the first item that is not `xla_<option>=<value>`."""
    options = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = (x.strip() for x in item.partition("="))
        if not sep or not name.startswith("xla_") or not value:
            raise ValueError(f"{item!r} is not xla_<option>=<value>")
        options[name] = _option_value(value)
    return options


def compiler_options(text: str, platform: str) -> dict | None:
    """The options of `text` (`parse_xla_options`) that apply to a compile for `platform`
    ("gpu", "cuda", "rocm", "tpu" or "cpu"): those named for another platform's compiler
    (xla_gpu_*, xla_tpu_*, xla_cpu_*) are left out. None when none is left."""
    platform = "gpu" if platform in ("cuda", "rocm") else platform
    others = tuple(prefix for name, prefix in _PLATFORM_PREFIXES.items() if name != platform)
    kept = {k: v for k, v in parse_xla_options(text).items() if not k.startswith(others)}
    return kept or None


def _compile_steps(
    components,
    optimizer,
    layout: Layout,
    state_shardings,
    eval_fn=None,
    microbatches: int = 1,
    xla_options: str = "",
):
    """The jitted train step (state donated; gradient accumulated over `microbatches`
    slices of the batch) and eval step (of `eval_fn`, default the training loss), with
    in/out shardings, compiled with `xla_options` (`train.xla_options`: those of the mesh's
    platform)."""
    batch, replicated = layout.batch, layout.replicated
    options = compiler_options(xla_options, layout.platform)
    train_step = jax.jit(
        make_train_step(components.loss_fn, optimizer, microbatches),
        in_shardings=(state_shardings, batch),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
        compiler_options=options,
    )
    eval_step = jax.jit(
        make_eval_step(eval_fn or components.loss_fn),
        in_shardings=(state_shardings.params, batch),
        out_shardings=replicated,
        compiler_options=options,
    )
    return train_step, eval_step


def train(
    config: config_dict.ConfigDict,
    workdir: str | Path,
    components: Components,
    on_start: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Trains to `config.train.steps`, resuming from WORKDIR/checkpoints (the newest one that
    restores; damaged newer ones are set aside); returns the last eval metrics (empty if
    there was nothing left to do). on_start(step) runs once the state is restored or
    initialised, before anything is written (main writes config.json there)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
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
            xla_options=train_cfg.get("xla_options", ""),
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
