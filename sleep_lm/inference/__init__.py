"""Wake/sleep streaming inference: feed tokens, decode one at a time, sleep when the window fills.

The session state (``SessionState``) is explicit and every function is pure (state in, state
out), so the same code serves a notebook (``SleepSession``), a server and the eval loop:

    state = init_state(model, spec, batch)
    state = feed(model, params, spec, state, prompt[:, :-1])      # prefill; sleeps on full windows
    logits, state = decode_step(model, params, spec, state, prompt[:, -1])   # one wake pass
    tokens, logits, state = generate(model, params, spec, state, logits, rng, steps=32)
    state = sleep(model, params, spec, state)                     # e.g. while idle

``spec`` is a ``sleep.SleepSpec`` (passes N, window L, eviction, loop_blocks; its schedule is
only used by ``streaming_logits`` / ``streaming_loss``).

Modules: ``state`` (SessionState, init_state, window_full), ``stream`` (feed, decode_step,
sleep), ``generate``, ``sequence`` (Algorithm 1 streamed: streaming_logits, streaming_loss,
evaluate), ``session`` (SleepSession).

Streaming semantics. The token stream is cut into windows of at most L tokens. Within a
window every token gets one *wake* pass (``decode_step``, or a chunked wake inside ``feed``)
that reads the state at the window start plus the window's earlier tokens (attention over
the KV ring buffer, GDN conv tails and fast weights) and writes the token into that "live"
state. When the window holds L tokens (or when ``sleep`` is called on a partial window), the
model sleeps: ``sleep.consolidate`` -- the very function training uses -- embeds the whole
window once and runs the looped blocks N times over it, starting from the state at the
window start, and the result is evicted (hard: only fast weights survive; sliding: the ring
buffer of the last pass survives too). That state starts the next window. So the live state's
own writes of the window are discarded at sleep: they only serve predictions inside the
window, exactly as a training wake pass does.

Equivalence with Algorithm 1 (``sleep.run_sequence``), which the tests check numerically.
Take a sequence, its window schedule (``spec.schedule``) and the state S_w at the start of
window w. Then:

* Logits. Training's wake pass over window w reads S_w and the window causally, so its output
  at position p depends only on S_w and tokens up to p of window w. Streaming decodes token
  p from the live state = S_w plus the same earlier tokens of the window: the same function,
  evaluated token by token instead of in parallel. The attention mask is by global positions
  stored in the ring buffer, so "plus the window's tokens" means the same keys in both.
* Transitions. A training *sleep* window maps S_w to evict(consolidate(window, S_w, N)):
  that is what streaming ``sleep`` computes. A training *wake* window maps S_w to
  evict(wake-pass state), with no consolidation: streaming's ``sleep(..., consolidate=False)``
  (evict the live state). With N = 1 the two coincide (consolidate with one pass *is* the
  wake pass's state update), so a plain stream that sleeps on every full window is
  Algorithm 1 for any schedule; with N > 1 they differ only after a wake window that is
  followed by more windows (never the case in Rule 110 or Depo, whose wake window is last).
* Hard eviction trains with no KV cache (``cache_len=0``); streaming needs L slots to decode
  a window token by token. At a window start the cache is empty, and an empty slot is a
  masked key (weight exp(-1e30 - max) = 0 exactly), so both give the same numbers; sleep
  under hard eviction runs ``consolidate`` on cache-free state, like training.
* Numerics: decoding uses the recurrent GDN op for one token and the chunked op (when
  configured) for chunks, so float32 results agree to rounding (~1e-6), not bit for bit.

``streaming_logits`` / ``streaming_loss`` drive exactly this over a batch with a schedule
(sleep windows fed, wake windows decoded token by token and closed without consolidation)
and are the streaming counterparts of ``sleep.sequence_logits`` / ``sleep.sequence_loss``.

Padding (a batch of left-padded variable-length examples, ``batch["valid"]``): a session made
with ``init_state(..., padded=True)`` also records which of the window's tokens are real
(``window_valid``) and how many real tokens came before the window (``valid_base``, for the
learned position-table index, ``sleep.embed_positions``); ``feed`` and ``decode_step`` take a
``valid`` mask (default: all real), and padded tokens are inert exactly as in training
(README.md, "Variable-length examples"). Without ``padded`` both fields are None and the
programs are the ones without padding support.

Costs. ``decode_step`` is one wake pass for one token: its program does not contain
``consolidate`` and does not depend on N (a test compares its lowered HLO across N). All
N-dependent work is in ``sleep``, which ``feed`` and ``generate`` call when a window fills.
``decode_step`` never sleeps: called on a full window it returns NaN logits (a usage error:
sleep first; ``window_full`` tells) rather than hiding a sleep inside the latency path.
The state holds two model states (the live one and the one at the window start, which the
sleep consolidates from): under sliding eviction that is two KV ring buffers of L slots.

Windows inside ``feed``: the number of tokens already in the window is data (a traced
int), not a compile-time constant, so one program per fed length serves every alignment.
Windows that fill inside ``feed`` are slept on without a wake pass (nothing reads their
wake state); the remainder (< L tokens) gets its wake pass in power-of-two chunks, each
behind a ``lax.cond``, so a prefill is never token by token. ``sleep`` on a *partial*
window needs its length as a Python int (a static shape for ``consolidate``): it reads it
from the state (one scalar transfer) unless ``length=`` is given. Where a window is known to
start empty (``streaming_logits``: a wake window's prompt right after a sleep under hard
eviction), ``stream.prefill_fresh`` feeds it with its KV caches marked empty
(``model.state.FreshCache``): the prompt attends to itself alone, with the causal key ranges
of a training wake window, instead of to the cache's L empty slots as well.
"""

from sleep_lm.inference.generate import generate
from sleep_lm.inference.sequence import evaluate, streaming_logits, streaming_loss
from sleep_lm.inference.session import SleepSession
from sleep_lm.inference.state import SessionState, init_state, window_full
from sleep_lm.inference.stream import decode_step, feed, sleep

__all__ = [
    "SessionState",
    "SleepSession",
    "decode_step",
    "evaluate",
    "feed",
    "generate",
    "init_state",
    "sleep",
    "streaming_logits",
    "streaming_loss",
    "window_full",
]
