"""Where each array lives: the PartitionSpec of logical axis names under the rules
(``logical_spec``), a parameter's logical axes by its path (PARAM_AXES), NamedShardings of a
parameter or train-state tree, of batches and of replicated arrays, and ``sharding_context``
for the model's logical constraints. A dimension whose size is not a multiple of its mesh axes
(say a vocabulary of 4 over tensor=3) is replicated instead."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence

import flax.linen as nn
import jax
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sleep_lm.parallel.mesh import axes_size

# Logical axes of each parameter, by regex searched in its "/"-joined lower-case path (the
# first match wins). Shapes are the model's (sleep_lm/model/hybrid.py docstring): Dense
# kernels [in, out] with heads * head_dim fused head-major, so splitting that axis over
# `tensor` gives whole heads to each device when heads is a multiple of tensor.
PARAM_AXES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    # Tables read by a gather ([vocab, width], [max_len, width]) keep their width whole: a
    # gather from a width-split table returns width-split rows, which XLA can only turn
    # into the batch-split residual stream by replicating them ("involuntary full
    # rematerialization"). The token table's rows are split instead, over the axes that
    # split the width of the weight matrices (the "embed" rule: fsdp): a pretrained
    # vocabulary is large (Ouro's [49152, 2048] is 0.375 GiB in float32, as much again for
    # AdamW's second moment), and replicated it kept `ouro` above 12 GiB per device on 8
    # H100s (13.0 -> 11.9 GiB, benchmarks/RESULTS.md).
    (r"(^|/)(token_embed|embed_tokens)/embedding$", ("embed", None)),
    (r"(^|/)position_embed$", (None, None)),
    (r"(^|/)(q|k|v|o_gate|g)_proj/kernel$", ("embed", "heads")),  # [width, heads * head_dim]
    (r"(^|/)(q|k|v)_proj/bias$", ("heads",)),  # pretrained families' attention biases
    (r"(^|/)o_proj/kernel$", ("heads", "embed")),  # [heads * head_dim, width]
    (r"(^|/)(up|gate)_proj/kernel$", ("embed", "mlp")),  # [width, mlp_ratio * width]
    (r"(^|/)down_proj/kernel$", ("mlp", "embed")),  # [mlp_ratio * width, width]
    (r"(^|/)(a|b)_proj/kernel$", ("embed", None)),  # gates [width, heads]: tiny
    (r"(^|/)lm_head/kernel$", ("embed", "vocab")),  # [width, vocab]
    # Small leaves, replicated: the GDN convolution [conv_size, 3 * heads * head_dim] (its
    # channels are q|k|v concatenated, not head-major), per-head decay parameters [heads],
    # norm scales [width] / [head_dim].
    (r"(^|/)conv_weight$", (None, None)),
    (r"(^|/)(a_log|dt_bias)$", (None,)),
    (r"(^|/)scale$", (None,)),
    # Jet blocks' kernel generator [width, hidden] -> [hidden, channels * W] and Ouro's
    # early-exit gate [width, 1]: small, replicated.
    (r"(^|/)(kernel_generator/w1|kernel_generator/w2|early_exit_gate)/kernel$", (None, None)),
    (r"(^|/)(kernel_generator/w2|early_exit_gate)/bias$", (None,)),
)


def flax_rules(rules) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
    """Our rules as flax's `logical_axis_rules` wants them (None = replicated)."""
    return tuple((name, axes if axes else None) for name, axes in rules)


def logical_spec(logical: Sequence[str | None], rules, shape=None, sizes=None) -> P:
    """PartitionSpec of an array whose dimensions have the logical names `logical`.

    With `shape` and `sizes` ({mesh axis: size}), a dimension not divisible by its mesh
    axes is replicated instead (see the module docstring).
    """
    spec = list(nn.logical_to_mesh_axes(tuple(logical), flax_rules(rules)))
    if shape is not None and sizes is not None:
        for i, entry in enumerate(spec):
            if entry is None:
                continue
            axes = (entry,) if isinstance(entry, str) else tuple(entry)
            if shape[i] % axes_size(sizes, axes):
                spec[i] = None
    return P(*spec)


def path_name(path) -> str:
    """'/'-joined lower-case name of a pytree key path, e.g. 'params/block_0/mlp/kernel'."""
    return jax.tree_util.keystr(path, simple=True, separator="/").lower()


def param_logical_axes(name: str, ndim: int) -> tuple[str | None, ...] | None:
    """Logical axes of the array at path `name` (see PARAM_AXES); None when no rule
    matches with the right rank."""
    for pattern, axes in PARAM_AXES:
        if re.search(pattern, name) and len(axes) == ndim:
            return axes
    return None


def tree_shardings(tree, mesh: Mesh, rules, *, warn_unmatched: bool = True):
    """NamedShardings for a pytree of arrays (or ShapeDtypeStructs) laid out by path: params,
    or a whole TrainState (optimiser-state leaves end in their parameter's path). Scalars and
    leaves no rule matches are replicated; unmatched non-scalar leaves are logged."""
    sizes = dict(mesh.shape)
    unmatched = []

    def leaf(path, x):
        name = path_name(path)
        axes = param_logical_axes(name, x.ndim) if x.ndim else ()
        if axes is None:
            unmatched.append(name)
            axes = (None,) * x.ndim
        return NamedSharding(mesh, logical_spec(axes, rules, x.shape, sizes))

    shardings = jax.tree_util.tree_map_with_path(leaf, tree)
    # Optimiser-state leaves without a parameter's path (Muon's ns_coeffs, step counts)
    # are small and replicated as a matter of course; a parameter without a rule is news.
    unmatched = [name for name in unmatched if not name.startswith("opt_state/")]
    if unmatched and warn_unmatched:
        logging.warning(
            "no partitioning rule for %d arrays (replicated): %s", len(unmatched), unmatched[:5]
        )
    return shardings


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
    """Sharding of batch arrays ([batch, ...]): the leading axis over the "batch" rule."""
    return NamedSharding(mesh, logical_spec(("batch",), rules))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


@contextlib.contextmanager
def sharding_context(mesh: Mesh, rules):
    """Mesh + logical rules in context, so that the model's `nn.with_logical_constraint`
    calls (state and activations) become sharding constraints while tracing."""
    set_mesh = getattr(jax, "set_mesh", None)
    mesh_context = set_mesh(mesh) if set_mesh is not None else mesh
    with mesh_context, nn.logical_axis_rules(flax_rules(rules)):
        yield
