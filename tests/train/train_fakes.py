"""A tiny stand-in task and model, so the loop's tests compile in a second.

FakeTask: repeat the last token. inputs int32 [batch, 8] over a vocabulary of 4, the target at
the last position is inputs[:, -1], loss_mask is true there only. The fake model is an
embedding plus its causal running mean + one hidden matrix + output head, with parameter names
like the real model's (embed, a 2-D matrix, head, norm scale, bias).
"""

import os
import signal
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_dict

from sleep_lm.config import load_config
from sleep_lm.train.loop import Components

VOCAB, SEQ_LEN, WIDTH = 4, 8, 16
REPO = Path(__file__).resolve().parents[2]


def experiment_config(arg: str | None = None, name: str = "rule110") -> config_dict.ConfigDict:
    """get_config(arg) of experiments/<name>.py, loaded by path as config_flags does."""
    return load_config(f"{REPO / 'experiments' / name}.py:{arg or ''}")


class FakeTask:
    name = "fake"
    vocab_size = VOCAB
    seq_len = SEQ_LEN

    def __init__(self, poison_call: int | None = None, kill_call: int | None = None):
        # Stateful hooks for failure tests: the `poison_call`-th sample() returns a batch that
        # makes the loss NaN; the `kill_call`-th sends SIGTERM to this process.
        self.calls = 0
        self.poison_call = poison_call
        self.kill_call = kill_call

    def sample(self, rng: np.random.Generator, batch_size: int) -> dict:
        call, self.calls = self.calls, self.calls + 1
        inputs = rng.integers(0, VOCAB, size=(batch_size, SEQ_LEN)).astype(np.int32)
        targets = np.zeros_like(inputs)
        targets[:, :-1] = inputs[:, 1:]
        targets[:, -1] = inputs[:, -1]
        loss_mask = np.zeros(inputs.shape, bool)
        loss_mask[:, -1] = True
        if call == self.poison_call:
            inputs[0, 0] = -1
        if call == self.kill_call:
            os.kill(os.getpid(), signal.SIGTERM)
        return {"inputs": inputs, "targets": targets, "loss_mask": loss_mask}

    def eval_batch(self, size: int, seed: int = 0) -> dict:
        return FakeTask().sample(np.random.default_rng([seed, 99]), size)


def fake_init(rng):
    k1, k2, k3 = jax.random.split(rng, 3)
    return {
        "embed": {"embedding": jax.random.normal(k1, (VOCAB, WIDTH))},
        "block_0": {
            "norm": {"scale": jnp.ones((WIDTH,))},
            "mlp_in": {"kernel": jax.random.normal(k2, (WIDTH, WIDTH)) / WIDTH**0.5},
        },
        "lm_head": {
            "kernel": jax.random.normal(k3, (WIDTH, VOCAB)) / WIDTH**0.5,
            "bias": jnp.zeros((VOCAB,)),
        },
    }


def fake_loss(params, batch):
    inputs = batch["inputs"]
    h = params["embed"]["embedding"][jnp.maximum(inputs, 0)]  # [batch, time, width]
    h = h + jnp.cumsum(h, axis=1) / jnp.arange(1, SEQ_LEN + 1)[None, :, None]
    h = h * params["block_0"]["norm"]["scale"]
    h = h + jax.nn.gelu(h @ params["block_0"]["mlp_in"]["kernel"])
    logits = h @ params["lm_head"]["kernel"] + params["lm_head"]["bias"]
    logp = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]
    mask = batch["loss_mask"].astype(jnp.float32)
    loss = jnp.sum(nll * mask) / jnp.sum(mask)
    loss = jnp.where(jnp.any(inputs < 0), jnp.nan, loss)  # the poisoned batch
    right = (jnp.argmax(logits, -1) == batch["targets"]) | ~batch["loss_mask"]
    token_accuracy = jnp.sum(right * mask) / jnp.sum(mask)
    accuracy = jnp.mean(jnp.all(right, axis=1))
    return loss, {"loss": loss, "token_accuracy": token_accuracy, "accuracy": accuracy}


def fake_components(**task_kwargs) -> Components:
    return Components(task=FakeTask(**task_kwargs), init_params=fake_init, loss_fn=fake_loss)


def tiny_config(**train_overrides) -> config_dict.ConfigDict:
    """The smoke config with a tiny training section (the model/task fields are unused by the
    fake components)."""
    config = experiment_config("smoke")
    config.train.steps = 6
    config.train.batch_size = 8
    config.train.warmup_steps = 2
    config.train.log_every = 1
    config.train.eval_every = 3
    config.train.eval_size = 12  # not a multiple of the batch: exercises the last chunk
    config.train.checkpoint_every = 2
    config.train.keep_checkpoints = 2
    for key, value in train_overrides.items():
        config.train[key] = value
    return config
