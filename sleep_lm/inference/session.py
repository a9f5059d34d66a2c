"""``SleepSession``: a stateful wrapper of the streaming functions for notebooks and servers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sleep_lm.inference.generate import _generate
from sleep_lm.inference.state import check_window, init_state
from sleep_lm.inference.stream import _STATIC, _decode_step, _feed, _sleep_now


class SleepSession:
    """A stateful wrapper for notebooks and simple servers.

        session = SleepSession(model, params, spec)        # batch 1
        session.feed(prompt_tokens)                         # -> logits for the next token
        tokens = session.generate(20, temperature=0.8)      # continues from those logits
        session.sleep()                                     # consolidate the partial window

    The session mirrors the window fill level on the host (no device round trips) and
    sleeps as soon as a window fills (``auto_sleep=True``). With ``auto_sleep=False`` it
    does not sleep after a decode: a ``decode`` on a full window raises, and the caller decides
    when to ``sleep`` (e.g. while idle); ``feed`` and ``generate`` always sleep on the windows
    that fill inside them. The state is donated to each call, so the previous
    ``session.state`` must not be reused.
    """

    def __init__(
        self,
        model,
        params,
        spec,
        batch_size: int = 1,
        *,
        auto_sleep: bool = True,
        padded: bool = False,
    ):
        check_window(model, spec)
        self.model, self.params, self.spec = model, params, spec
        self.batch_size = batch_size
        self.auto_sleep = auto_sleep
        self.padded = padded  # feed/decode take valid= (left-padded prompts of a batch)
        donate = dict(static_argnames=_STATIC, donate_argnames=("state",))
        self._feed = jax.jit(_feed, **donate)
        self._decode = jax.jit(_decode_step, **donate)
        self._sleep = jax.jit(
            _sleep_now,
            static_argnames=(*_STATIC, "length", "consolidate"),
            donate_argnames=("state",),
        )
        self._generate = jax.jit(
            _generate,
            static_argnames=(*_STATIC, "steps", "temperature"),
            donate_argnames=("state",),
        )
        self.reset()

    def reset(self) -> None:
        """Back to an empty context at position 0."""
        self.state = init_state(self.model, self.spec, self.batch_size, padded=self.padded)
        self.count = 0  # host mirror of state.count
        self.position = 0
        self.logits = None  # prediction for the next token, after the last token seen

    def _tokens(self, tokens) -> jax.Array:
        tokens = np.asarray(tokens, np.int32)
        if tokens.ndim == 1 and self.batch_size == 1:
            tokens = tokens[None]
        if tokens.ndim != 2 or tokens.shape[0] != self.batch_size:
            raise ValueError(f"tokens must be [{self.batch_size}, n], got {tokens.shape}")
        return jnp.asarray(tokens)

    def feed(self, tokens, valid=None) -> jax.Array:
        """Appends tokens ([batch, n], or [n] for batch 1); returns the logits
        [batch, vocab] predicting the token after the last one. valid: the same shape,
        False at padding (a session made with ``padded=True``; default all real)."""
        tokens = self._tokens(tokens)
        if valid is not None:
            valid = jnp.asarray(np.reshape(np.asarray(valid, bool), tokens.shape))
        n = tokens.shape[1]
        if n == 0:
            return self.logits
        if n > 1:
            part = () if valid is None else (valid[:, :-1],)
            self.state = self._feed(
                self.model, self.params, self.spec, self.state, tokens[:, :-1], *part
            )
            total = self.count + n - 1
            self.count = total % self.spec.window
            self.position += n - 1
        return self.decode(tokens[:, -1], None if valid is None else valid[:, -1])

    def decode(self, token, valid=None) -> jax.Array:
        """One wake pass for token [batch] (or a scalar for batch 1): logits [batch, vocab].
        valid: [batch] bool, as for ``feed``."""
        token = self._tokens(np.reshape(np.asarray(token), (self.batch_size, 1)))[:, 0]
        if self.count == self.spec.window:
            if not self.auto_sleep:
                raise RuntimeError("the window is full: call sleep() before decoding")
            self.sleep()
        part = () if valid is None else (jnp.asarray(valid, bool).reshape(self.batch_size),)
        logits, self.state = self._decode(
            self.model, self.params, self.spec, self.state, token, *part
        )
        self.count += 1
        self.position += 1
        self.logits = logits
        if self.auto_sleep and self.count == self.spec.window:
            self.sleep()
        return logits

    def sleep(self, *, consolidate: bool = True) -> None:
        """Sleeps on the current window now (see ``sleep``)."""
        if self.count:
            self.state = self._sleep(
                self.model, self.params, self.spec, self.state, self.count, consolidate
            )
            self.count = 0

    def generate(self, steps: int, *, prompt=None, temperature: float = 0.0, seed: int = 0):
        """Feeds ``prompt`` (if given), then samples ``steps`` tokens: [batch, steps] NumPy."""
        if prompt is not None:
            self.feed(prompt)
        if self.logits is None:
            raise ValueError("nothing to continue from: feed a prompt first")
        tokens, self.logits, self.state = self._generate(
            self.model,
            self.params,
            self.spec,
            self.state,
            self.logits,
            jax.random.key(seed),
            steps,
            float(temperature),
        )
        for _ in range(steps):  # the same window accounting as _generate
            self.count = 1 if self.count == self.spec.window else self.count + 1
        self.position += steps
        if self.auto_sleep and self.count == self.spec.window:
            self.sleep()
        return np.asarray(tokens)
