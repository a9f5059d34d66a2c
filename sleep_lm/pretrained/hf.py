"""Hugging Face checkpoint directories <-> (model, params): `load_hf` and `save_hf`.

A directory holds `config.json` and the weights as `model.safetensors`, or as shards
listed in `model.safetensors.index.json` ({"weight_map": {tensor name: shard file}}),
in bfloat16 or float32 (loaded as float32: sleep_lm keeps parameters in float32 and
computes in `model.dtype`). `tokenizer.json`, when present, is read by
`sleep_lm.pretrained.tokenizer.load_tokenizer`.

Names: one generic rule maps a flax parameter path to the HF tensor name, so a family
needs no table:

    ("model", "layers_3", "self_attn", "q_proj", "kernel")
        <->  model.layers.3.self_attn.q_proj.weight

  - a path element `<name>_<digits>` (Linen's name for the i-th module of a list) is
    `<name>.<digits>`;
  - leaf `kernel` is `weight`, TRANSPOSED when 2-D (flax Dense kernels are [in, out], torch
    Linear weights [out, in]); `scale` (RMSNorm) and `embedding` (Embed) are `weight`;
    every other leaf (`bias`, `A_log`, `dt_bias`, ...) keeps its name.
Checkpoints of tied models may still hold `lm_head.weight`; it is ignored when the model
has no `lm_head`, as are non-persistent buffers (`rotary_emb.inv_freq`).

Validation happens before any weight is read or anything compiled: the expected tree
comes from `jax.eval_shape(model.init_params)`, and every problem (missing directory or
file, unsupported model_type, missing / unexpected tensors, shape mismatch) is a one-line
ValueError naming the file or tensor.

Mesh: with `mesh=` (and optionally `rules=`, default parallel.DEFAULT_RULES) every
parameter is created with `jax.make_array_from_callback` on the NamedSharding that
`parallel.tree_shardings` gives it; the callback reads only the requested slice of the
tensor from the memory-mapped file (safetensors `get_slice`), so no process ever holds
more than the slices its devices need (plus one slice in flight).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from sleep_lm.pretrained import registry

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
DEFAULT_WINDOW = 2048
# HF tensors with no parameter in our tree that a valid checkpoint may contain.
_IGNORED = (re.compile(r"(^|\.)rotary_emb\.inv_freq$"),)
_LIST_ELEMENT = re.compile(r"^(.+)_(\d+)$")
# Module names that end in _<digits> in the HF checkpoint itself, not list elements
# (Ouro's sandwich norms): they keep their name.
_NOT_LIST_ELEMENTS = frozenset({"input_layernorm_2", "post_attention_layernorm_2"})


# ------------------------------------------------------------------------------ names


def hf_name(path: tuple[str, ...]) -> str:
    """Flax parameter path -> HF tensor name (the generic rule above)."""
    parts = []
    for element in path[:-1]:
        m = None if element in _NOT_LIST_ELEMENTS else _LIST_ELEMENT.match(element)
        parts.extend([m.group(1), m.group(2)] if m else [element])
    leaf = path[-1]
    parts.append("weight" if leaf in ("kernel", "scale", "embedding") else leaf)
    return ".".join(parts)


def _transposed(path: tuple[str, ...], ndim: int) -> bool:
    return path[-1] == "kernel" and ndim == 2


def _path_keys(path) -> tuple[str, ...]:
    return tuple(getattr(k, "key", getattr(k, "name", str(k))) for k in path)


def hf_layout(abstract_params) -> dict[str, tuple[tuple[str, ...], tuple[int, ...], bool]]:
    """{HF name: (flax path, HF shape, transposed)} for a tree of arrays / ShapeDtypeStructs."""
    layout = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
        keys = _path_keys(path)
        shape = tuple(leaf.shape)
        transposed = _transposed(keys, len(shape))
        layout[hf_name(keys)] = (keys, shape[::-1] if transposed else shape, transposed)
    return layout


# ------------------------------------------------------------------------------ files


def checkpoint_file(path, name: str) -> str:
    """The path of file `name` in checkpoint directory `path` (ValueError if either is
    missing)."""
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isdir(path):
        raise ValueError(f"checkpoint directory {path!r} does not exist")
    file = os.path.join(path, name)
    if not os.path.isfile(file):
        raise ValueError(f"checkpoint directory {path!r} has no {name}")
    return file


def read_config(path) -> dict:
    """config.json of checkpoint directory `path` (ValueError if missing or unreadable)."""
    file = checkpoint_file(path, CONFIG)
    try:
        with open(file) as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ValueError(f"{file}: no model_type field")
    return config


def weight_files(path) -> dict[str, str]:
    """{tensor name: safetensors file path}: from the shard index, else model.safetensors."""
    path = os.path.expanduser(os.fspath(path))
    index = os.path.join(path, INDEX)
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: no weight_map")
        for shard in sorted(set(weight_map.values())):
            if not os.path.isfile(os.path.join(path, shard)):
                raise ValueError(f"{index} lists shard {shard!r}, which is missing")
        return {name: os.path.join(path, shard) for name, shard in weight_map.items()}
    single = os.path.join(path, WEIGHTS)
    if not os.path.isfile(single):
        raise ValueError(f"checkpoint directory {path!r} has neither {WEIGHTS} nor {INDEX}")
    from safetensors import safe_open

    with safe_open(single, "numpy") as f:
        return dict.fromkeys(f.keys(), single)


class _Reader:
    """Open safetensors files (memory-mapped), one handle per file, slices on demand."""

    def __init__(self, files: Mapping[str, str]):
        from safetensors import safe_open

        self._files = files
        self._open = {f: safe_open(f, "numpy") for f in sorted(set(files.values()))}

    def slice(self, name: str):
        return self._open[self._files[name]].get_slice(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.slice(name).get_shape())

    def dtype(self, name: str) -> str:
        return self.slice(name).get_dtype()


# ------------------------------------------------------------------------------ load


def family_config(path, **options):
    """(family, family config, hf config) of the checkpoint at `path`: its config.json read,
    no module built, no weight read. `options` as `build` (`window` and `seed` are not
    the config's and are ignored here)."""
    hf_config = read_config(path)
    family = registry.for_model_type(hf_config["model_type"])
    options = {k: v for k, v in options.items() if k not in ("window", "seed")}
    return family, family.config_from_hf(hf_config, **options), hf_config


def build(path, **options):
    """(family, family config, model, hf config) for the checkpoint at `path`, no weights.

    Options: `window` (sleep window L, default DEFAULT_WINDOW), `seed` (of inserted layers:
    used by `load_hf`, ignored here); every other option goes to the family's
    `config_from_hf` (e.g. dtype, gdn_impl, chunk_size, gdn_precision).
    """
    window = options.get("window", DEFAULT_WINDOW)
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window: allowed a positive int, got {window!r}")
    family, cfg, hf_config = family_config(path, **options)
    model = family.build(cfg).clone(window=window)
    return family, cfg, model, hf_config


def check_tensors(layout: Mapping, reader: _Reader, names, has_lm_head: bool) -> None:
    """Missing / unexpected tensors and shape mismatches, one-line ValueErrors."""
    available = set(names)
    missing = sorted(set(layout) - available)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"checkpoint is missing tensor {missing[0]!r}{more}")
    unexpected = sorted(
        n
        for n in available - set(layout)
        if not any(p.search(n) for p in _IGNORED)
        and not (n == "lm_head.weight" and not has_lm_head)
    )
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise ValueError(f"checkpoint has unexpected tensor {unexpected[0]!r}{more}")
    for name, (_, shape, _) in sorted(layout.items()):
        got = reader.shape(name)
        if got != shape:
            raise ValueError(
                f"tensor {name!r} has shape {list(got)} in the checkpoint, the model "
                f"expects {list(shape)}"
            )
        dtype = reader.dtype(name)
        if dtype not in ("F32", "BF16", "F16"):
            raise ValueError(f"tensor {name!r} has dtype {dtype}; allowed F32, BF16, F16")


def _read(reader: _Reader, name: str, transposed: bool, index=None) -> np.ndarray:
    """The float32 block `index` (flax-side slices; None = all) of tensor `name`."""
    sl = reader.slice(name)
    if index is None:
        index = tuple(slice(None) for _ in sl.get_shape())
    hf_index = tuple(index[::-1]) if transposed else tuple(index)
    block = sl[hf_index] if hf_index else sl[:]
    block = np.asarray(block, dtype=np.float32)
    return block.T if transposed else block


def load_hf(path, *, mesh=None, rules=None, shardings=None, seed: int = 0, **options):
    """Loads the Hugging Face checkpoint directory `path`: returns (model, params).

    Options: `window` (the sleep window L: KV cache length and full-attention mask window;
    default DEFAULT_WINDOW), `mesh` (a jax Mesh: parameters created sharded on it, each
    device's slice read from the file), `rules` (logical-axis rules, `parallel.parse_rules`
    form or a {name: "axes"} dict; default parallel.DEFAULT_RULES), `shardings` (instead of
    mesh / rules: a pytree of shardings shaped like the parameters, e.g. a train state's),
    `seed` (layers the family inserts and the checkpoint lacks, e.g. Ouro's Jet layers, are
    initialised from `jax.random.key(seed)`; a run passes `config.seed`), and the family's
    options (`dtype`, `gdn_impl`, `chunk_size`, `gdn_precision`, ...). Parameters are float32.
    """
    path = os.path.expanduser(os.fspath(path))
    family, cfg, model, _ = build(path, **options)
    abstract = jax.eval_shape(model.init_params, jax.random.key(0))
    layout = hf_layout(abstract)
    files = weight_files(path)
    reader = _Reader(files)
    layout, fresh = _inserted(family, model, layout, files, jax.random.key(seed))
    check_tensors(layout, reader, files, has_lm_head="lm_head" in abstract)

    if shardings is not None:
        if jax.tree.structure(shardings) != jax.tree.structure(abstract):
            raise ValueError("load_hf: shardings do not match the model's parameter tree")
        shardings = {
            _path_keys(p): s for p, s in jax.tree_util.tree_flatten_with_path(shardings)[0]
        }
    elif mesh is not None:
        from sleep_lm import parallel

        if rules is None:
            rules = tuple(parallel.DEFAULT_RULES.items())
        elif isinstance(rules, Mapping):
            rules = parallel.parse_rules(rules)
        shardings = parallel.tree_shardings(abstract, mesh, rules)
        shardings = {
            _path_keys(p): s for p, s in jax.tree_util.tree_flatten_with_path(shardings)[0]
        }

    flat = {}
    for name, (keys, shape, transposed) in layout.items():
        if shardings is None:
            flat[keys] = jnp.asarray(_read(reader, name, transposed))
        else:
            flax_shape = shape[::-1] if transposed else shape
            flat[keys] = jax.make_array_from_callback(
                flax_shape,
                shardings[keys],
                lambda index, name=name, transposed=transposed: _read(
                    reader, name, transposed, index
                ),
            )
    for keys, value in fresh.items():
        flat[keys] = value if shardings is None else jax.device_put(value, shardings[keys])
    return model, _unflatten(flat)


def _inserted(family, model, layout: Mapping, files: Mapping, rng):
    """Layers a family inserts into a checkpoint that lacks them (Ouro's Jet layers:
    ``family.inserted_paths(model)``): each such subtree that has NO tensor in the checkpoint
    is taken from ``family.init_inserted(model, rng)``. Returns (layout left to read,
    {path: array})."""
    if family.inserted_paths is None:
        return layout, {}
    prefixes = tuple(family.inserted_paths(model))
    absent = [
        p
        for p in prefixes
        if not any(k[: len(p)] == p and n in files for n, (k, _, _) in layout.items())
    ]
    if not absent:
        return layout, {}
    init = family.init_inserted(model, rng)
    fresh = {
        _path_keys(p): leaf
        for p, leaf in jax.tree_util.tree_flatten_with_path(init)[0]
        if any(_path_keys(p)[: len(a)] == a for a in absent)
    }
    left = {n: v for n, v in layout.items() if v[0] not in fresh}
    return left, fresh


def _unflatten(flat: Mapping[tuple[str, ...], jax.Array]) -> dict:
    tree: dict = {}
    for keys, value in flat.items():
        node = tree
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return tree


# ------------------------------------------------------------------------------ save


def family_of(model) -> registry.Family:
    """The registered family whose `build` makes modules of `model`'s type."""
    for family in registry.FAMILIES.values():
        try:
            if type(family.build(model.config)) is type(model):
                return family
        except Exception:  # noqa: BLE001  (another family's build rejects this config)
            continue
    raise ValueError(f"save_hf: {type(model).__name__} is not a registered pretrained family")


def save_hf(model, params, path, *, dtype: str = "float32", shard_bytes: int | None = None):
    """Writes `model` + `params` as a Hugging Face directory (config.json + safetensors).

    dtype: "float32" (exact round trip) or "bfloat16". shard_bytes: when given, tensors are
    split over files of at most about that many bytes with a model.safetensors.index.json
    (default: one model.safetensors). Parameters are gathered to the host one at a time.
    """
    from safetensors.numpy import save_file

    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype: allowed float32, bfloat16, got {dtype!r}")
    family = family_of(model)
    os.makedirs(path, exist_ok=True)
    hf_config = family.config_to_hf(model.config)
    hf_config["torch_dtype"] = dtype
    with open(os.path.join(path, CONFIG), "w") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
        f.write("\n")

    np_dtype = np.float32 if dtype == "float32" else jnp.bfloat16
    tensors = {}
    for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = _path_keys(p)
        array = np.asarray(jax.device_get(leaf)).astype(np_dtype)
        if _transposed(keys, array.ndim):
            array = array.T
        tensors[hf_name(keys)] = np.ascontiguousarray(array)
    metadata = {"format": "pt"}
    if shard_bytes is None:
        save_file(tensors, os.path.join(path, WEIGHTS), metadata=metadata)
        return
    shards, current, size = [], {}, 0
    for name in sorted(tensors):
        nbytes = tensors[name].nbytes
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensors[name]
        size += nbytes
    shards.append(current)
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(path, file), metadata=metadata)
        weight_map.update(dict.fromkeys(shard, file))
    total = sum(math.prod(t.shape) * t.itemsize for t in tensors.values())
    with open(os.path.join(path, INDEX), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        f.write("\n")
