"""The stage interface every family implements, and what the families share of it.

A family module (HybridLM, Qwen2LM, OuroLM) defines ``embed(tokens, positions)``,
``blocks(h, state, positions, start, stop, valid=None)`` and ``head(h)`` and gets from
``StagedLM`` the ordinary forward ``__call__``, ``init_params`` and (unless it has its own)
``init_state``, so sleep/, train/ and inference/ never branch on the family.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sleep_lm.model.state import ModelState, empty_cache

EMBED_INIT = nn.initializers.normal(stddev=0.02)


def token_embedding(cfg, vocab_size: int) -> nn.Embed:
    """Token table [vocab, width] (float32), looked up in the compute dtype."""
    return nn.Embed(
        vocab_size,
        cfg.width,
        embedding_init=EMBED_INIT,
        dtype=cfg.compute_dtype,
        param_dtype=jnp.float32,
    )


def run_blocks(blocks, h, state: ModelState, positions, start: int, stop: int, valid=None):
    """Runs ``blocks[start:stop]`` (Python ints) once on h [batch, time, width]; the other
    layers' states pass through. Returns (h, new ModelState)."""
    layers = list(state.layers)
    for i in range(start, stop):
        h, layers[i] = blocks[i](h, layers[i], positions, valid)
    return h, ModelState(layers=tuple(layers))


def layer_state(cfg, kind: str, batch: int, cache_len: int):
    """Zero state of one layer of a pretrained family: an empty KVCache [batch, cache_len,
    kv_heads, head_dim] for "attn" / "swa", a zero FastWeightState for "jet"."""
    if kind == "jet":
        from sleep_lm.model.jet import jet_state

        return jet_state(cfg.jet_config(), batch, cfg.compute_dtype)
    return empty_cache(batch, cache_len, cfg.kv_heads, cfg.head_dim, cfg.compute_dtype)


class StagedLM(nn.Module):
    """Base of the family modules (fields ``config`` and ``window`` in each)."""

    def __call__(
        self, tokens: jax.Array, positions: jax.Array, state: ModelState
    ) -> tuple[jax.Array, ModelState]:
        """One ordinary forward pass over all blocks: tokens [batch, time] int, positions
        [time] -> (logits [batch, time, vocab] float32, new state)."""
        h = self.embed(tokens, positions)
        h, state = self.blocks(h, state, positions, 0, len(self.config.layers))
        return self.head(h), state

    @nn.nowrap
    def init_params(self, rng: jax.Array) -> dict:
        """Initial parameter pytree (float32)."""
        tokens = jnp.zeros((1, 1), jnp.int32)
        positions = jnp.zeros((1,), jnp.int32)
        state = self.init_state(1)
        return jax.jit(lambda r: self.init(r, tokens, positions, state)["params"])(rng)

    @nn.nowrap
    def init_state(self, batch: int, cache_len: int | None = None) -> ModelState:
        """Zero state for ``batch`` sequences, one entry per ``config.layers`` kind; KV caches
        hold ``cache_len`` slots (default: the window)."""
        cache_len = self.window if cache_len is None else cache_len
        layers = (layer_state(self.config, k, batch, cache_len) for k in self.config.layers)
        return ModelState(layers=tuple(layers))
