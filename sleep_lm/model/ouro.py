"""Ouro: a looped (Universal-Transformer style) attention LM, with optional inserted Jet layers.

ByteDance's Ouro-1.4B (read in the hub's ``modeling_ouro.py`` and vLLM's ``ouro.py``; our
own code). A stack of ``num_layers`` sandwich-norm blocks (model/block.py, h [batch, time,
width])::

    h = h + input_layernorm_2(self_attn(input_layernorm(h)))
    h = h + post_attention_layernorm_2(mlp(post_attention_layernorm(h)))

with attention without biases (RoPE, the checkpoint's theta) and a SwiGLU MLP, runs
``total_ut_steps`` times ("loops"); ``model.norm`` closes every loop, so the readout is
``lm_head`` of the last loop's output. ``exit_logits`` gives every loop's logits and the
early-exit gate's exit distribution.

Stage interface: ``blocks(start, stop)`` indexes *units* ``u = loop * stack_size + i``
(stack layer i in loop ``loop``); ``config.layers`` has one kind per unit and
``ModelState.layers`` one state per unit (a KVCache per (loop, attention layer), a
FastWeightState per (loop, Jet layer)). ``OuroConfig.sleep_loops`` chooses how sleep
passes compose with the loops ("all": a sleep pass is a whole Ouro forward; "last": only
the last loop repeats; README.md, "Pretrained models").

Inserted Jet layers (``jet_positions``: the original layer each is inserted before) are
mixer-only blocks ``h + self_attn(input_layernorm(h))`` with a JetBlock (model/jet.py);
inserting them into a checkpoint (identity init: zero ``o_proj``, logits unchanged at step
0) is the loader's: sleep_lm/pretrained/ouro.py.

Parameters mirror the Hugging Face names (pretrained/hf.py): ``model/{embed_tokens,
layers_{i}/{input_layernorm, input_layernorm_2, self_attn, post_attention_layernorm,
post_attention_layernorm_2, mlp}, jet_layers_{j}/{input_layernorm, self_attn}, norm,
early_exit_gate}``, ``lm_head``. Parameters are float32; compute uses ``dtype``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from sleep_lm.model.block import Block, block
from sleep_lm.model.config import DecoderConfig, one_of, positive
from sleep_lm.model.stages import StagedLM, token_embedding
from sleep_lm.model.state import ModelState

SLEEP_LOOPS = ("all", "last")


def even_jet_positions(num_layers: int, count: int) -> tuple[int, ...]:
    """``count`` insertion points spread evenly over ``num_layers`` layers: one in the middle
    of each of ``count`` equal groups (24 layers, 6 Jet layers -> 2, 6, 10, 14, 18, 22)."""
    return tuple(int((2 * j + 1) * num_layers // (2 * count)) for j in range(count))


@dataclasses.dataclass(frozen=True)
class OuroConfig(DecoderConfig):
    """Static Ouro hyper-parameters (hashable: the model is a jit static argument).

    Defaults are Ouro-1.4B's (its config.json); the shared fields are DecoderConfig's
    (model/config.py). Attributes:
      intermediate_size (SwiGLU), num_layers (stack depth, num_hidden_layers).
      total_ut_steps: loops of the stack.
      early_exit_threshold: kept for the round trip; the readout is always the last loop.
      jet_positions: insertion point of each new Jet layer (before original layer p).
      jet_*: the inserted Jet layers' shape; defaults for Ouro-1.4B's width 2048:
        Jet-Nemotron-2B's head shape (96 / 256) with 16 heads.
      jet_identity_init: the loader zeroes inserted Jet layers' o_proj (identity residual
        layers; pretrained/ouro.py).
      sleep_loops: "all" | "last": which loops a sleep pass runs (README, "Ouro").

    The sleep window L is the module's ``window`` field (``OuroLM(config, window=L)``).
    """

    vocab_size: int = positive(49152)
    width: int = positive(2048)
    heads: int = positive(16)
    kv_heads: int = positive(16)
    head_dim: int = positive(128)
    jet_heads: int = positive(16)
    jet_key_head_dim: int = positive(96)
    jet_value_head_dim: int = positive(256)
    intermediate_size: int = positive(5632)
    num_layers: int = positive(24)
    total_ut_steps: int = positive(4)
    early_exit_threshold: float = 1.0
    jet_positions: tuple[int, ...] = ()
    jet_identity_init: bool = True
    sleep_loops: str = one_of("all", SLEEP_LOOPS)

    qkv_bias: ClassVar[bool] = False

    def check(self):
        super().check()
        positions = tuple(self.jet_positions)
        if any(
            not isinstance(p, int) or isinstance(p, bool) or not 0 <= p <= self.num_layers
            for p in positions
        ) or list(positions) != sorted(positions):
            raise self.bad("jet_positions", f"sorted ints in 0..{self.num_layers}", positions)

    @property
    def mlp_hidden(self) -> int:
        return self.intermediate_size

    @property
    def stack(self) -> tuple[tuple[str, int], ...]:
        """One loop's layers in order: ("attn", original index) or ("jet", Jet index)."""
        out, jets = [], list(enumerate(self.jet_positions))
        for i in range(self.num_layers + 1):
            while jets and jets[0][1] == i:
                out.append(("jet", jets.pop(0)[0]))
            if i < self.num_layers:
                out.append(("attn", i))
        return tuple(out)

    @property
    def layers(self) -> tuple[str, ...]:
        """One kind per unit (loop-major): what ``blocks(start, stop)`` indexes."""
        return tuple(kind for kind, _ in self.stack) * self.total_ut_steps


def jet_layer(cfg: OuroConfig, window: int) -> Block:
    """An inserted Jet layer: h + self_attn(input_layernorm(h)), no MLP; FastWeightState."""
    return block(cfg, "jet", window, use_mlp=False)


class OuroModel(nn.Module):
    """The ``model.`` scope of the checkpoint: embeddings, layers, Jet layers, norm, gate."""

    config: OuroConfig
    window: int

    def setup(self):
        cfg = self.config
        self.embed_tokens = token_embedding(cfg, cfg.vocab_size)
        sandwich = dict(use_post_mixer_norm=True, use_post_mlp_norm=True)
        self.layers = [block(cfg, "attn", self.window, **sandwich) for _ in range(cfg.num_layers)]
        self.jet_layers = [jet_layer(cfg, self.window) for _ in cfg.jet_positions]
        self.norm = nn.RMSNorm(epsilon=cfg.norm_eps, dtype=cfg.compute_dtype)
        self.early_exit_gate = nn.Dense(
            1, use_bias=True, dtype=cfg.compute_dtype, param_dtype=jnp.float32
        )

    def embed(self, tokens: jax.Array) -> jax.Array:
        return self.embed_tokens(tokens)

    def unit(self, u: int, h: jax.Array, layer_state, positions: jax.Array, valid=None):
        """Runs unit u (Python int): its stack layer, then model.norm if it closes a loop.
        ``valid`` [batch, time] bool: False at padded tokens, which are inert (None: all)."""
        stack = self.config.stack
        kind, index = stack[u % len(stack)]
        layer = self.layers[index] if kind == "attn" else self.jet_layers[index]
        h, layer_state = layer(h, layer_state, positions, valid)
        if u % len(stack) == len(stack) - 1:
            h = self.norm(h)
        return h, layer_state

    def gate(self, h: jax.Array) -> jax.Array:
        """Early-exit gate logit [batch, time] (float32) of a loop's normed output."""
        return self.early_exit_gate(h)[..., 0].astype(jnp.float32)


class OuroLM(StagedLM):
    """Ouro causal LM with the HybridLM stage interface (module docstring).

    Attributes:
      config: OuroConfig.
      window: the sleep window L: attention mask window (a query sees itself and L - 1
        earlier tokens) and default KV cache length.
    """

    config: OuroConfig
    window: int = 2048

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def sleep_loop_blocks(self) -> str:
        """The ``sleep.loop_blocks`` value that realises ``config.sleep_loops``."""
        if self.config.sleep_loops == "all":
            return "all"
        size = len(self.config.stack)
        return f"{(self.config.total_ut_steps - 1) * size}:"

    def setup(self):
        self.model = OuroModel(self.config, self.window)
        self.lm_head = self.config.dense(self.config.vocab_size)

    def embed(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
        """tokens [batch, time] int -> h [batch, time, width] (positions enter via RoPE)."""
        del positions
        return self.model.embed(tokens)

    def blocks(
        self,
        h: jax.Array,
        state: ModelState,
        positions: jax.Array,
        start: int,
        stop: int,
        valid: jax.Array | None = None,
    ) -> tuple[jax.Array, ModelState]:
        """Runs units start..stop-1 (Python ints) once; other units' states pass through.
        ``valid`` [batch, time] bool: False at padded tokens, which are inert (None: all).

        Two or more complete loops inside the range run as one ``nn.scan`` over loops (the
        parameters are shared, the loops' states stacked), so the program holds one copy of
        the stack instead of one per loop: compile time does not grow with total_ut_steps.
        """
        layers = list(state.layers)
        size = len(self.config.stack)
        first, last = -(-start // size), stop // size  # the complete loops [first, last)
        if last - first < 2 or self.is_initializing():
            first = last = start // size  # unrolled (init creates the parameters)
        ranges = (range(start, min(stop, first * size)), range(max(start, last * size), stop))
        for u in ranges[0]:
            h, layers[u] = self.model.unit(u, h, layers[u], positions, valid)
        if last > first:
            per_loop = [tuple(layers[i * size : (i + 1) * size]) for i in range(first, last)]
            stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *per_loop)

            def one_loop(mdl, h, loop_states):
                new = []
                for i, layer_state in enumerate(loop_states):
                    h, layer_state = mdl.model.unit(i, h, layer_state, positions, valid)
                    new.append(layer_state)
                return h, tuple(new)

            scan = nn.scan(
                one_loop,
                variable_broadcast="params",
                split_rngs={"params": False},
                length=last - first,
            )
            h, stacked = scan(self, h, stacked)
            for n, i in enumerate(range(first, last)):
                loop_states = jax.tree.map(lambda x, n=n: x[n], stacked)
                layers[i * size : (i + 1) * size] = list(loop_states)
        for u in ranges[1]:
            h, layers[u] = self.model.unit(u, h, layers[u], positions, valid)
        return h, ModelState(layers=tuple(layers))

    def head(self, h: jax.Array) -> jax.Array:
        """h [batch, time, width] (already normed by the last loop) -> float32 logits."""
        return self.lm_head(h).astype(jnp.float32)

    def exit_logits(self, tokens: jax.Array, positions: jax.Array, state: ModelState):
        """Every loop's readout, for Ouro's early-exit alternatives.

        Returns (logits [loops, batch, time, vocab] float32, exit_pdf [batch, time, loops],
        state): exit_pdf[..., i] = lambda_i * prod_{j<i} (1 - lambda_j) with lambda_i =
        sigmoid(gate(loop i output)), the last loop taking the remaining mass. The
        "expected" logits of Ouro's training loss are sum_i exit_pdf[..., i, None] *
        logits[i]; ``logits[-1]`` is ``__call__``'s.
        """
        size = len(self.config.stack)
        h = self.embed(tokens, positions)
        logits, gates = [], []
        for loop in range(self.config.total_ut_steps):
            h, state = self.blocks(h, state, positions, loop * size, (loop + 1) * size)
            logits.append(self.head(h))
            gates.append(self.model.gate(h))
        remaining = jnp.ones_like(gates[0])
        pdf = []
        for i, g in enumerate(gates):
            if i == len(gates) - 1:
                pdf.append(remaining)
            else:
                lam = jax.nn.sigmoid(g)
                pdf.append(lam * remaining)
                remaining = remaining * (1.0 - lam)
        return jnp.stack(logits), jnp.stack(pdf, axis=-1), state

    @nn.nowrap
    def init_params(self, rng: jax.Array) -> dict:
        """Initial parameters (float32), the early-exit gate included."""
        tokens = jnp.zeros((1, 1), jnp.int32)
        positions = jnp.zeros((1,), jnp.int32)
        state = self.init_state(1, cache_len=0)

        init = lambda r: self.init(r, tokens, positions, state, method=self.exit_logits)["params"]
        return jax.jit(init)(rng)
