"""Attention implementations side by side (``model.attention_impl``): forward + backward
time, the compiled gradient's temporaries, and the error against the dense float32 path.

    python benchmarks/attention.py                 # CPU: xla vs chunked
    python benchmarks/attention.py --impls xla,chunked,cudnn --dtype bfloat16   # a GPU
    python benchmarks/attention.py --target=v5p-8 --impls xla,chunked,splash --dtype bfloat16

``--target`` (a `--mode=compile` target name; needs the aot extra) only compiles, for that
chip without having it, and reports the compiled gradient's temporaries and compile time
(no run, so no time or error columns).

Shape [batch, time, heads, head_dim] with ``kv_heads`` key/value heads, causal over one
window of ``time`` (hard eviction, the fine-tunes' training shape). The gradient is of
sum(out * cotangent) with respect to q, k and v. Errors are max |x - ref| / max |ref| of the
output and of the three gradients against the ``xla`` implementation in float32 on the same
device. cuDNN runs only on an NVIDIA GPU (bfloat16); elsewhere it is reported as skipped.
Prints one table; ``--out`` writes JSON.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sleep_lm.model.attention import dot_product_attention  # noqa: E402

MIB = 2**20


def _grad_fn(impl, dtype, q_pos, k_pos, window, chunk, cotangent):
    def loss(q, k, v):
        out = dot_product_attention(
            q, k, v, q_pos, k_pos, window, dtype, impl=impl, chunk=chunk, same_tokens=True
        )
        return jnp.sum(out.astype(jnp.float32) * cotangent), out

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def measure(impl, args, inputs, reference) -> dict:
    dtype = jnp.dtype(args.dtype)
    q, k, v, cotangent = inputs
    time_ = q.shape[1]
    pos = jnp.arange(time_)
    fn = _grad_fn(impl, dtype, pos, pos[None], time_, args.chunk, cotangent)
    cast = [x.astype(dtype) for x in (q, k, v)]
    row = {"impl": impl, "dtype": args.dtype}
    try:
        t0 = time.perf_counter()
        compiled = fn.lower(*cast).compile()
        row["compile_s"] = round(time.perf_counter() - t0, 2)
    except Exception as e:  # noqa: BLE001 - e.g. cuDNN on a CPU: reported, not fatal
        row["skipped"] = str(e).splitlines()[0][:100]
        return row, None
    row["temp_mib"] = round(compiled.memory_analysis().temp_size_in_bytes / MIB, 1)
    (_, out), grads = compiled(*cast)
    jax.block_until_ready(grads)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*cast))
        times.append(time.perf_counter() - t0)
    row["fwd_bwd_ms"] = round(1e3 * min(times), 2)
    if reference is not None:
        ref_out, ref_grads = reference
        row["err_out"] = _rel(out, ref_out)
        row["err_grad"] = max(_rel(g, r) for g, r in zip(grads, ref_grads, strict=True))
    return row, (out, grads)


def compile_only(impl, args, target) -> dict:
    """The gradient compiled for one device of ``target``: temporaries and compile time."""
    from jax.sharding import Mesh, SingleDeviceSharding

    from sleep_lm import compile_targets

    device = compile_targets.target_devices(target)[0]
    dtype = jnp.dtype(args.dtype)
    sharding = SingleDeviceSharding(device)
    shape = (args.batch, args.time, args.heads, args.head_dim)
    kv_shape = (args.batch, args.time, args.kv_heads, args.head_dim)
    q, k, v = (
        jax.ShapeDtypeStruct(s, dtype, sharding=sharding) for s in (shape, kv_shape, kv_shape)
    )
    cotangent = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding)
    pos = jnp.arange(args.time)

    def loss(q, k, v, cotangent):
        out = dot_product_attention(
            q,
            k,
            v,
            pos,
            pos[None],
            args.time,
            dtype,
            impl=impl,
            chunk=args.chunk,
            same_tokens=True,
        )
        return jnp.sum(out.astype(jnp.float32) * cotangent)

    row = {"impl": impl, "dtype": args.dtype, "target": target.name}
    # Under a mesh of the target's device, so "auto" and "splash" see its platform.
    with jax.set_mesh(Mesh(np.array([device]), ("data",))):
        try:
            t0 = time.perf_counter()
            grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
            compiled = grad.lower(q, k, v, cotangent).compile()
            row["compile_s"] = round(time.perf_counter() - t0, 2)
        except Exception as e:  # noqa: BLE001 - e.g. splash off a TPU: reported, not fatal
            row["skipped"] = str(e).splitlines()[0][:100]
            return row
    row["temp_mib"] = round(compiled.memory_analysis().temp_size_in_bytes / MIB, 1)
    row["kernel"] = "tpu_custom_call" in compiled.as_text()  # splash's Mosaic kernel
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--impls", default="xla,chunked")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--time", type=int, default=2048)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv_heads", type=int, default=16)
    p.add_argument("--head_dim", type=int, default=128)
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="")
    p.add_argument("--target", default="", help="compile only, for this target (aot extra)")
    args = p.parse_args(argv)
    if args.target:
        from sleep_lm import compile_targets

        target = compile_targets.parse_target(args.target)
        compile_targets.prepare_platforms(target)
        rows = [compile_only(impl, args, target) for impl in args.impls.split(",")]
        shape = (args.batch, args.time, args.heads, args.head_dim)
        print(f"target: {target.name} (compile only); shape {shape}, kv_heads {args.kv_heads}")
        print("| impl | dtype | grad temp MiB | compile s | Pallas kernel |")
        print("| --- | --- | --- | --- | --- |")
        for r in rows:
            kernel = "yes" if r.get("kernel") else "no"
            cells = (
                f"skipped: {r['skipped']} | | |"
                if "skipped" in r
                else f"{r['temp_mib']} | {r['compile_s']} | {kernel} |"
            )
            print(f"| {r['impl']} | {r['dtype']} | {cells}")
        if args.out:
            pathlib.Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
        return 0
    ks = jax.random.split(jax.random.key(0), 4)
    shape = (args.batch, args.time, args.heads, args.head_dim)
    kv_shape = (args.batch, args.time, args.kv_heads, args.head_dim)
    inputs = (
        jax.random.normal(ks[0], shape),
        jax.random.normal(ks[1], kv_shape),
        jax.random.normal(ks[2], kv_shape),
        jax.random.normal(ks[3], shape),
    )
    # The reference: dense, float32, this device.
    ref_args = argparse.Namespace(**{**vars(args), "dtype": "float32"})
    _, reference = measure("xla", ref_args, inputs, None)
    rows = []
    for impl in args.impls.split(","):
        rows.append(measure(impl, args, inputs, reference)[0])
    print(f"device: {jax.devices()[0].device_kind}; shape {shape}, kv_heads {args.kv_heads}")
    print("| impl | dtype | grad temp MiB | fwd+bwd ms | compile s | err out | err grad |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['impl']} | {r['dtype']} | skipped: {r['skipped']} | | | | |")
            continue
        print(
            f"| {r['impl']} | {r['dtype']} | {r['temp_mib']} | {r['fwd_bwd_ms']} | "
            f"{r['compile_s']} | {r['err_out']:.1e} | {r['err_grad']:.1e} |"
        )
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
