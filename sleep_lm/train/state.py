"""The train state: everything a checkpoint holds, and nothing that is not an array.

The optimiser itself (an `optax.GradientTransformation`) is rebuilt from the config and kept
out of the state so that the state is a plain pytree that orbax saves and restores as is.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: number of optimiser updates applied so far.
    params: Any
    opt_state: Any

    @classmethod
    def create(cls, params, optimizer: optax.GradientTransformation) -> "TrainState":
        return cls(step=jnp.zeros([], jnp.int32), params=params, opt_state=optimizer.init(params))
