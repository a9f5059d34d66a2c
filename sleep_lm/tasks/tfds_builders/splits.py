"""A data set's splits on disk: materialising them (``build``) and reading them back as the
tasks' batch dicts (``data_source``, ``to_batch``; ``read_split`` for a held-out set,
``batches`` for training: per-host shares, epochs, resumable by step)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds


def _builder(name, data_dir, **kwargs) -> tfds.core.DatasetBuilder:
    if isinstance(name, tfds.core.DatasetBuilder):
        return name
    if isinstance(name, type):
        return name(data_dir=data_dir, file_format="array_record", **kwargs)
    return tfds.builder(name, data_dir=data_dir, file_format="array_record", **kwargs)


def build(name, data_dir, **kwargs) -> tfds.core.DatasetBuilder:
    """Materialises every split of `name` ('rule110/t8', a builder class or instance) under
    `data_dir` as array_record files (a no-op when already there); returns the builder.
    `kwargs` go to the builder, e.g. `config=Rule110Config(...)`."""
    builder = _builder(name, data_dir, **kwargs)
    builder.download_and_prepare()
    return builder


def data_source(name, split: str, data_dir, **kwargs):
    """The split as a random-access source (`len`, `[i]`, `__getitems__`) of records."""
    builder = _builder(name, data_dir, **kwargs)
    if not builder.is_prepared():
        full_name = f"{builder.name}/{builder.builder_config.name}"
        raise FileNotFoundError(
            f"{full_name} is not built under {data_dir}; run "
            f"sleep_lm.tasks.tfds_builders.build({full_name!r}, data_dir) first"
        )
    return builder.as_data_source(split=split)


def to_batch(records: list[dict]) -> dict[str, np.ndarray]:
    """Stored records -> the tasks' batch dict: inputs, targets int32 [batch, seq_len],
    loss_mask bool [batch, seq_len] (and hops int32 [batch, num_queries] for Depo; op int32
    [batch] and valid bool [batch, seq_len] for GSM-Infinite)."""
    tokens = np.stack([r["tokens"] for r in records]).astype(np.int32)
    batch = {
        "inputs": np.ascontiguousarray(tokens[:, :-1]),
        "targets": np.ascontiguousarray(tokens[:, 1:]),
        "loss_mask": np.stack([r["loss_mask"] for r in records]).astype(bool),
    }
    for key in ("hops", "op"):
        if key in records[0]:
            batch[key] = np.stack([r[key] for r in records]).astype(np.int32)
    if "valid" in records[0]:  # GSM-Infinite's inert padding
        batch["valid"] = np.stack([r["valid"] for r in records]).astype(bool)
    return batch


def _check_process(process_index: int, process_count: int) -> None:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in 0..{process_count - 1} (got {process_index})")


def read_split(
    name, split: str, data_dir, *, process_index: int = 0, process_count: int = 1, **kwargs
) -> dict[str, np.ndarray]:
    """This host's contiguous share of a whole split as one batch dict (for held-out sets):
    rows [i * n // P, (i + 1) * n // P) for process i of P."""
    _check_process(process_index, process_count)
    source = data_source(name, split, data_dir, **kwargs)
    n = len(source)
    rows = range(process_index * n // process_count, (process_index + 1) * n // process_count)
    if not rows:
        raise ValueError(f"split {split!r} has {n} examples: none for process {process_index}")
    return to_batch(source.__getitems__(list(rows)))


def batches(
    name,
    split: str,
    data_dir,
    *,
    batch_size: int,
    start_step: int = 0,
    num_steps: int | None = None,
    shuffle_seed: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    **kwargs,
) -> Iterator[dict[str, np.ndarray]]:
    """This host's part of the global batches of steps start_step, start_step + 1, ...

    The global batch of step s holds `batch_size` rows; process i of P gets its i-th
    contiguous block of batch_size / P rows, so the hosts' batches, concatenated in process
    order, are the global batch. Epochs wrap around (a last partial batch is dropped). Without
    `shuffle_seed` each epoch reads the split in order; with it, epoch e reads it in the order
    of `default_rng([shuffle_seed, e]).permutation`. A step's batch depends only on s, so
    `start_step` resumes exactly. Stops after `num_steps` batches (default: never).
    """
    _check_process(process_index, process_count)
    if batch_size < 1 or batch_size % process_count:
        raise ValueError(
            f"batch_size must be a positive multiple of process_count={process_count} "
            f"(got {batch_size})"
        )
    source = data_source(name, split, data_dir, **kwargs)
    steps_per_epoch = len(source) // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"split {split!r} has {len(source)} examples, fewer than one batch")
    local = batch_size // process_count
    order, order_epoch = None, None
    step = start_step
    while num_steps is None or step < start_step + num_steps:
        epoch, within = divmod(step, steps_per_epoch)
        start = within * batch_size + process_index * local
        if shuffle_seed is None:
            rows = list(range(start, start + local))
        else:
            if order_epoch != epoch:
                order = np.random.default_rng([shuffle_seed, epoch]).permutation(len(source))
                order_epoch = epoch
            rows = order[start : start + local].tolist()
        yield to_batch(source.__getitems__(rows))
        step += 1
