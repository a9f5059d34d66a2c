"""Where a run's train state comes from: its latest checkpoint (resume), another run's
parameters (`init.from_checkpoint`), a Hugging Face checkpoint (`init.from_hf`, through
`Components.load_weights`), or random from `config.seed`; placed on the run's mesh."""

import dataclasses
from pathlib import Path
from typing import Any

import jax
import optax
from absl import logging
from ml_collections import config_dict

from sleep_lm import parallel
from sleep_lm.train.checkpoint import Checkpointer, CheckpointError, restore_params
from sleep_lm.train.state import TrainState


def init_checkpoint(value: str) -> tuple[str, int | None]:
    """`config.init.from_checkpoint` as (workdir, step): "WORKDIR" -> (WORKDIR, None: the
    latest checkpoint), "WORKDIR:STEP" -> (WORKDIR, STEP)."""
    path, sep, step = value.rpartition(":")
    if sep and step.isdigit() and path:
        return path, int(step)
    return value, None


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
    def platform(self) -> str:
        """The mesh devices' platform ("cpu", "gpu", "tpu"; a compile target's, under AOT)."""
        return self.mesh.devices.flat[0].platform

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
    components,
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
    params = initial_params(config, target.params, components.load_weights)
    if params is not None:
        # Fresh optimiser state and step 0: the schedule starts again from its warm-up.
        state = jax.jit(lambda p: TrainState.create(p, optimizer), out_shardings=shardings)(params)
        return state, shardings
    return jax.jit(create, out_shardings=shardings)(), shardings


class InitError(ValueError):
    """`config.init` names parameters this run cannot start from; one line naming the field."""


def initial_params(config: config_dict.ConfigDict, target, load_weights=None):
    """The parameters `config.init` starts a fresh run from, restored onto `target` (the
    run's parameter ShapeDtypeStructs with their shardings); None when `config.init` names no
    source (random initialisation from `config.seed`).

    init.from_checkpoint="WORKDIR[:STEP]": the parameters of another run's checkpoint
    (default: its latest), matched by name (the "/"-joined parameter path) and shape; the
    optimiser state is not read. Parameters the source has and this model lacks are not
    read. Raises InitError naming a missing or mis-shaped parameter, or a source without
    checkpoints. init.from_hf alone: the Hugging Face checkpoint's weights; with
    init.from_checkpoint (a pretrained family warm-started from a run of it): the run's.
    load_weights: `Components.load_weights` (needed for init.from_hf alone).
    """
    init = config.get("init", None) or {}
    source = init.get("from_checkpoint", "")
    if init.get("from_hf", "") and not source:
        if load_weights is None:
            raise InitError(
                f"config.init.from_hf={init.from_hf!r}: these components load no weights "
                "(build them with sleep_lm.run.build_components)"
            )
        return load_weights(target)
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
