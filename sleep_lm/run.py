"""A run from its config: the components the trainer needs (`build_components`), a trained
run in one call (`load_run`: model, parameters, SleepSpec, task, from its workdir), and the
evaluation of a checkpoint (`evaluate_checkpoint`, what `--mode=eval` runs).

    import sleep_lm
    from sleep_lm import inference

    run = sleep_lm.load_run("/tmp/rule110")              # latest checkpoint; step=... for another
    session = inference.SleepSession(run.model, run.params, run.spec)
    metrics = inference.evaluate(run.model, run.params, run.spec, run.task.eval_batch(64, 0))

The model, task and spec are rebuilt from WORKDIR/config.json by the trainer's own builder
(`build_components`), so they are exactly what was trained; the parameters come
from WORKDIR/checkpoints by an orbax partial restore of the `params` alone (the optimiser
state, twice the parameters' size under Adam, is never read). `--mode=eval` and warm starts
(`config.init.from_checkpoint`) restore through the same function
(`train.checkpoint.restore_params`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from absl import logging
from ml_collections import config_dict

from sleep_lm import parallel
from sleep_lm.train import checkpoint, optim
from sleep_lm.train.init import InitError, Layout
from sleep_lm.train.loop import check_batch, compiler_options, eval_seed, eval_sets
from sleep_lm.train.step import Components, evaluate_sets, make_eval_step


class Run(NamedTuple):
    """A trained run: everything inference needs, plus where it came from.

    model: the Flax model (`model.build_model`'s HybridLM); params: its parameter tree (on
    the first local device, or on `shardings`); spec: the `sleep.SleepSpec` it was trained
    with; task: the task object (`sample`, `eval_batch`, `render`); config: the run's config
    (ConfigDict); step: the checkpoint's step.
    """

    model: Any
    params: Any
    spec: Any
    task: Any
    config: config_dict.ConfigDict
    step: int


def read_config(workdir: str | Path) -> config_dict.ConfigDict:
    """WORKDIR/config.json (written by `python -m sleep_lm.main`) as a ConfigDict.

    Raises FileNotFoundError (one line) when the workdir has none.
    """
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in {Path(workdir)}: not a sleep_lm run directory")
    return config_dict.ConfigDict(json.loads(path.read_text()))


def load_run(
    workdir: str | Path,
    step: int | None = None,
    *,
    config: config_dict.ConfigDict | None = None,
    components=None,
    shardings=None,
) -> Run:
    """The run in `workdir` at checkpoint `step` (default: the latest).

    config: use this config instead of WORKDIR/config.json (e.g. to evaluate at another
    sleep.passes; the parameters must have the same names and shapes). components: the
    `train.step.Components` to use (default: built from the config). shardings: a tree of
    shardings like the parameters to restore them onto (default: the first local device).

    Raises FileNotFoundError (one line) for a workdir without config.json or without a
    checkpoint (of that step), ValueError (one line) naming a parameter the model needs that
    the checkpoint lacks or holds with another shape.
    """
    workdir = Path(workdir)
    config = read_config(workdir) if config is None else config
    components = components or build_components(config)
    target = jax.eval_shape(components.init_params, jax.random.PRNGKey(0))
    if shardings is not None:
        target = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), target, shardings
        )
    params, step = checkpoint.restore_params(workdir / "checkpoints", target, step)
    return Run(
        model=components.model,
        params=params,
        spec=components.spec,
        task=components.task,
        config=config,
        step=step,
    )


def sleep_spec(config: config_dict.ConfigDict, loss_mask, model, scored_from: int = 0):
    """The run's SleepSpec: config.sleep with the window schedule of one example's
    `loss_mask` [time] and the task's first scored position (`scored_from`: the LM head
    runs from there on); sleep.loop_blocks=all lets the family choose what a pass loops
    (Ouro's sleep_loops)."""
    from sleep_lm import sleep

    schedule = sleep.window_schedule(loss_mask, config.sleep.window)
    spec = sleep.SleepSpec.from_config(config.sleep, schedule, scored_from)
    family_loop = getattr(model, "sleep_loop_blocks", "all")
    if spec.loop_blocks == (None, None) and family_loop != "all":
        spec = spec._replace(loop_blocks=sleep.parse_loop_blocks(family_loop))
    return spec


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
    # No loss position comes before this one (GSM: the answer span at the end): the loss
    # applies the LM head only from there on, and the streaming eval feeds everything
    # before it as a prompt and decodes only the rest.
    scored_from = int(getattr(task, "scored_from", 0))
    spec = sleep_spec(config, probe["loss_mask"][0], model, scored_from)

    compute_dtype = model.config.compute_dtype
    cast = optim.weight_grads(config.train) == "compute"

    def loss_fn(params, batch):
        if cast:  # train.weight_grads: the matrices' gradients in the compute dtype
            params = optim.cast_weights(params, compute_dtype, config.train.adam_patterns)
        return sleep.sequence_loss(model, params, batch, spec)

    def eval_fn(params, batch):
        # The same metrics through the streaming wake/sleep path (feed, decode_step, sleep):
        # what a deployed model computes, equal to loss_fn's up to float rounding.
        return inference.streaming_loss(model, params, batch, spec, scored_from=scored_from)

    load_weights = None
    if config_lib.model_family(config) != config_lib.MODEL_FAMILY_DEFAULT:

        def load_weights(target):
            return _hf_params(config, target)

    return Components(
        load_weights=load_weights,
        task=task,
        init_params=model.init_params,
        loss_fn=loss_fn,
        eval_fn=eval_fn,
        model=model,
        spec=spec,
    )


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
        compiler_options=compiler_options(config.train.get("xla_options", ""), layout.platform),
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
