"""Sleep: the paper's Algorithm 1. The only package that knows passes, windows and eviction.

A sequence is cut into consecutive windows of L tokens (the last may be shorter). Each
window is either

* **sleep** (no loss position in it): ``consolidate`` embeds the window once and runs the
  looped blocks N times over it, each pass writing the increasingly refined features into
  the fast weights; the features are then discarded; or
* **wake** (some loss position): one ordinary forward pass, logits, masked cross-entropy.

After every window the state is evicted: ``hard`` drops all local context (KV caches and
GDN conv tails), so only the fast weights cross the boundary; ``sliding`` keeps it, and
the attention mask then lets each query see L keys (itself and the previous L - 1 tokens).

Modules: ``spec`` (``SleepSpec``, its parsing from ``config.sleep``, the static wake/sleep
schedule of windows), ``passes`` (one window: ``consolidate``, ``wake``, ``evict``, the
model stages) and ``sequence`` (Algorithm 1 over a sequence: ``run_sequence``,
``sequence_loss``, ``sequence_logits``). Every name is re-exported here: callers use
``sleep.X``.

Shapes: tokens, targets, loss_mask, valid [batch, time]; h [batch, window, width]; logits
[batch, window, vocab]. Design decisions (local context across passes, ``loop_blocks``,
the static schedule), inert padding (``batch["valid"]``), activation rematerialisation
(``remat``) and truncated gradients (``grad_passes``, ``grad_windows``) are described in
README.md, "How sleep runs"; their measured memory in benchmarks/RESULTS.md.
"""

from sleep_lm.sleep.passes import (
    _blocks,
    _embed,
    _frozen_layers,
    _head,
    _scan,
    consolidate,
    embed_positions,
    evict,
    wake,
)
from sleep_lm.sleep.sequence import (
    _segments,
    _window_stats,
    run_sequence,
    sequence_logits,
    sequence_loss,
)
from sleep_lm.sleep.spec import (
    EVICTIONS,
    REMATS,
    SleepSpec,
    check_schedule,
    parse_loop_blocks,
    resolve_loop_blocks,
    window_bounds,
    window_schedule,
)

__all__ = [
    "EVICTIONS",
    "REMATS",
    "SleepSpec",
    "_blocks",
    "_embed",
    "_frozen_layers",
    "_head",
    "_scan",
    "_segments",
    "_window_stats",
    "check_schedule",
    "consolidate",
    "embed_positions",
    "evict",
    "parse_loop_blocks",
    "resolve_loop_blocks",
    "run_sequence",
    "sequence_logits",
    "sequence_loss",
    "wake",
    "window_bounds",
    "window_schedule",
]
