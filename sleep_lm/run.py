"""A trained run in one call: its model, parameters, SleepSpec and task, from its workdir.

    import sleep_lm
    from sleep_lm import inference

    run = sleep_lm.load_run("/tmp/rule110")              # latest checkpoint; step=... for another
    session = inference.SleepSession(run.model, run.params, run.spec)
    metrics = inference.evaluate(run.model, run.params, run.spec, run.task.eval_batch(64, 0))

The model, task and spec are rebuilt from WORKDIR/config.json by the trainer's own builder
(`train.loop.build_components`), so they are exactly what was trained; the parameters come
from WORKDIR/checkpoints by an orbax partial restore of the `params` alone (the optimiser
state, twice the parameters' size under Adam, is never read). `--mode=eval` and warm starts
(`config.init.from_checkpoint`) restore through the same function
(`train.checkpoint.restore_params`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from ml_collections import config_dict


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
    `train.loop.Components` to use (default: built from the config). shardings: a tree of
    shardings like the parameters to restore them onto (default: the first local device).

    Raises FileNotFoundError (one line) for a workdir without config.json or without a
    checkpoint (of that step), ValueError (one line) naming a parameter the model needs that
    the checkpoint lacks or holds with another shape.
    """
    import jax

    from sleep_lm.train import checkpoint, loop

    workdir = Path(workdir)
    config = read_config(workdir) if config is None else config
    components = components or loop.build_components(config)
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
