"""Benchmark of sleep_lm.ops: gated delta rule and gated linear rule, every impl.

    python benchmarks/ops.py                       # backend defaults (below)
    python benchmarks/ops.py --quick               # < 1 minute on a 2-core CPU
    python benchmarks/ops.py --shapes 2x2048x4x64,512x24x4x64 --chunk_sizes 32,64 \\
        --dtype bfloat16 --out results.json

Shapes are batch x time x heads x head_dim (key = value = head_dim). Defaults: on CPU
(2, 2048, 4, 64) in float32; on GPU / TPU (4, 4096, 16, 128), (8, 2048, 16, 128) and
(512, 24, 4, 64) (one Rule 110 window) in bfloat16.

Timing: each function is jitted, called once to compile (the compile time is reported),
then timed ``repeats`` times with ``block_until_ready``; the table shows the minimum.
"fwd" is ``rule(q, k, v, g, beta, initial_state=S0)``; "fwd+bwd" is ``jax.grad`` with
respect to all six inputs (q, k, v, g, beta, S0) of the scalar loss
``sum(o * do) + sum(S * dS)`` with fixed random cotangents do, dS.

FLOP counts (analytic, matmul flops only, 2 per multiply-add; elementwise work ignored).
Per (batch, head), with C the chunk size, n = ceil(time / C) chunks (padding counted),
K = key, V = value:

  chunked delta rule, per chunk:
      k k^T (A)                          2 C^2 K
      triangular solve for u, w          C^2 (K + V)   (forward substitution; not the
                                                        implementation's actual method)
      q k^T (intra-chunk scores)         2 C^2 K
      scores @ v_new                     2 C^2 V
      w @ S, q @ S, k^T @ v_new          3 * 2 C K V
    = C^2 (5K + 3V) + 6 C K V
  chunked linear rule, per chunk:  C^2 (2K + 2V) + 4 C K V     (no A, no solve, no w @ S)
  recurrent, per token:  delta 6 K V (S^T k, k u^T, S^T q), linear 4 K V
  associative (linear rule): counted as the recurrent linear rule (its useful work)

fwd+bwd is counted as 3x the forward flops (every matmul's backward is two matmuls of its
size). GFLOP/s = these counts / measured time: a measure of useful work, comparable across
impls, not of what the implementation actually executes (e.g. recomputation in a custom
VJP, or the power-series inverse in place of a triangular solve, is not counted).

Precision (column "prec", the ops' ``precision=``): the library's default "highest" makes
every dot full float32 on every backend; "default" is the backend's own float32 dot (TF32
on Ampere and later NVIDIA GPUs, one bfloat16 pass on TPU, float32 on CPU), faster and
less exact; "BF16_BF16_F32" rounds every dot's operands to bfloat16 and accumulates in
float32 on GPU and TPU (computed in float32 on CPU). The chunked impl is timed at every
chunk size at the first of --precisions and at the first chunk size at the others (on an
accelerator: highest, default, BF16_BF16_F32); the recurrent baseline at the first.

Accuracy (columns "err o", "err S"): each row's forward against the recurrent scan on the
same inputs cast to float32 at precision "highest", as max |x - x_ref| / max |x_ref| for
the outputs and the final state. Outputs come back in
the input dtype, so with bfloat16 inputs "err o" includes o's own rounding (~3e-3).

The machine's matmul rate is measured in the same run: a batched matmul of the chunked
algorithm's intra-chunk products, [B*H*n, C, K] @ [B*H*n, K, C] for the largest chunk size,
and one of its chunk-state products over the whole sequence, [B*H, T, K] @ [B*H, K, V],
both in the benchmark dtype.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import jax
import jax.numpy as jnp
import machine
import numpy as np

from sleep_lm import ops

CPU_SHAPES = [(2, 2048, 4, 64)]
ACCEL_SHAPES = [(4, 4096, 16, 128), (8, 2048, 16, 128), (512, 24, 4, 64)]
# The associative impl materialises the state at every step ([batch, time, heads, K, V]
# float32); it is run only while that tensor stays under this many bytes.
ASSOC_LIMIT = {"cpu": 64 << 20, "accel": 4 << 30}


# ----------------------------------------------------------------------------- flops


def chunked_flops(shape, chunk_size: int, delta: bool) -> float:
    """Forward flops of the chunked algorithm (formula in the module docstring)."""
    b, t, h, d = shape
    k = v = d
    c = min(chunk_size, t)
    n = math.ceil(t / c)
    per_chunk = (
        c * c * (5 * k + 3 * v) + 6 * c * k * v
        if delta
        else (c * c * (2 * k + 2 * v) + 4 * c * k * v)
    )
    return float(b * h * n * per_chunk)


def recurrent_flops(shape, delta: bool) -> float:
    b, t, h, d = shape
    return float(b * h * t * (6 if delta else 4) * d * d)


# ---------------------------------------------------------------------------- timing


def _is_oom(err: BaseException) -> bool:
    text = str(err).lower()
    return "resource_exhausted" in text or "out of memory" in text or "oom" in text.split()


def time_fn(fn, args, repeats: int):
    """(compile-and-first-call seconds, min over repeats in ms), or raises."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t0
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return compile_s, best * 1e3


def matmul_rate(batch: int, m: int, k: int, n: int, dtype, repeats: int) -> float:
    """GFLOP/s of a jitted batched matmul [batch, m, k] @ [batch, k, n] in dtype."""
    key_a, key_b = jax.random.split(jax.random.PRNGKey(1))
    a = jax.random.normal(key_a, (batch, m, k), jnp.float32).astype(dtype)
    b = jax.random.normal(key_b, (batch, k, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda a, b: jnp.einsum("bmk,bkn->bmn", a, b, preferred_element_type=dtype))
    _, ms = time_fn(f, (a, b), max(repeats, 3))
    return 2.0 * batch * m * k * n / (ms * 1e-3) / 1e9


def make_inputs(shape, dtype, seed=0):
    """Gated DeltaNet-like inputs: L2-normalised q, k; g = log_sigmoid(N); beta = sigmoid."""
    b, t, h, d = shape
    ks = jax.random.split(jax.random.PRNGKey(seed), 8)
    unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    q = unit(jax.random.normal(ks[0], (b, t, h, d))).astype(dtype)
    k = unit(jax.random.normal(ks[1], (b, t, h, d))).astype(dtype)
    v = jax.random.normal(ks[2], (b, t, h, d)).astype(dtype)
    g = jax.nn.log_sigmoid(jax.random.normal(ks[3], (b, t, h)) + 2.0).astype(dtype)
    beta = jax.nn.sigmoid(jax.random.normal(ks[4], (b, t, h))).astype(dtype)
    s0 = 0.1 * jax.random.normal(ks[5], (b, h, d, d), jnp.float32)
    do = jax.random.normal(ks[6], (b, t, h, d), jnp.float32)
    ds = jax.random.normal(ks[7], (b, h, d, d), jnp.float32)
    return (q, k, v, g, beta, s0), (do, ds)


def make_fns(rule_fn, impl: str, chunk_size: int, precision="highest"):
    def fwd(q, k, v, g, beta, s0):
        return rule_fn(
            q,
            k,
            v,
            g,
            beta,
            initial_state=s0,
            impl=impl,
            chunk_size=chunk_size,
            precision=precision,
        )

    def loss(q, k, v, g, beta, s0, do, ds):
        o, s = fwd(q, k, v, g, beta, s0)
        return jnp.sum(o.astype(jnp.float32) * do) + jnp.sum(s * ds)

    return jax.jit(fwd), jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4, 5)))


def rule_fn_of(rule: str):
    return ops.gated_delta_rule if rule == "delta" else ops.gated_linear_rule


def reference(rule: str, shape, dtype):
    """(o, S) of the recurrent scan in float32 at matmul precision "highest": the oracle.

    The inputs are the benchmark's (rounded to `dtype`), cast to float32, so an error
    measured against this is the implementation's own, not the inputs' rounding.
    """
    inputs, _ = make_inputs(shape, dtype)
    inputs = [x.astype(jnp.float32) for x in inputs]
    fwd, _ = make_fns(rule_fn_of(rule), "recurrent", 64, precision="highest")
    o, s = fwd(*inputs)
    return jax.device_get(o), jax.device_get(s)


def max_rel_error(x, ref) -> float:
    """max |x - ref| / max |ref| (a scale-free error; 0 = exact)."""
    x = np.asarray(x, np.float64)
    ref = np.asarray(ref, np.float64)
    return float(np.max(np.abs(x - ref)) / max(np.max(np.abs(ref)), 1e-30))


def bench_one(
    rule: str,
    impl: str,
    chunk_size,
    precision,
    shape,
    dtype,
    repeats: int,
    ref=None,
    profile=False,
) -> dict:
    rule_fn = rule_fn_of(rule)
    delta = rule == "delta"
    inputs, cots = make_inputs(shape, dtype)
    fwd, grad = make_fns(rule_fn, impl, chunk_size or 64, precision)
    if impl == "chunked":
        flops = chunked_flops(shape, chunk_size, delta)
    else:
        flops = recurrent_flops(shape, delta)
    row = dict(
        rule=rule,
        impl=impl,
        chunk_size=chunk_size,
        precision=precision,
        shape=list(shape),
        flops_fwd=flops,
    )
    for name, fn, args, mult in (("fwd", fwd, inputs, 1), ("fwdbwd", grad, inputs + cots, 3)):
        try:
            compile_s, ms = time_fn(fn, args, repeats)
        except Exception as err:  # noqa: BLE001 -- only out-of-memory is tolerated
            if not _is_oom(err):
                raise
            row[f"{name}_ms"], row[f"{name}_error"] = None, "OOM"
            row[f"{name}_gflops"] = None
            continue
        row[f"{name}_ms"] = ms
        row[f"{name}_compile_s"] = compile_s
        row[f"{name}_gflops"] = mult * flops / (ms * 1e-3) / 1e9
    if ref is not None and row.get("fwd_ms") is not None:
        # Accuracy at this precision against the float32 "highest" recurrent oracle.
        o, s = jax.device_get(fwd(*inputs))
        row["err_o"], row["err_state"] = max_rel_error(o, ref[0]), max_rel_error(s, ref[1])
    if profile and row.get("fwdbwd_ms") is not None:
        args = inputs + cots

        def run():
            jax.block_until_ready(grad(*args))

        row["profile_fwdbwd"] = machine.profile(run, steps=3)
    return row


# ----------------------------------------------------------------------------- main


def parse_shapes(text: str):
    shapes = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise argparse.ArgumentTypeError(f"shape must be BxTxHxD, got {item!r}")
        shapes.append(tuple(int(p) for p in parts))
    return shapes


def parse_ints(text: str):
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from err
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive ints, got {text!r}")
    return values


def parse_precisions(text: str):
    values = []
    for name in (x.strip() for x in text.split(",") if x.strip()):
        value = None if name.lower() == "none" else name
        try:
            ops.check_precision(value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        values.append(value)
    if not values:
        raise argparse.ArgumentTypeError(f"expected precision names, got {text!r}")
    return values


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer impls and repeats")
    parser.add_argument("--out", help="write all results as JSON to this file")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="input dtype")
    parser.add_argument("--shapes", type=parse_shapes, help="e.g. 2x2048x4x64,512x24x4x64")
    parser.add_argument("--chunk_sizes", type=parse_ints, help="e.g. 16,32,64")
    parser.add_argument("--repeats", type=int, help="timed calls per function (min is kept)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile the chunked delta rule's forward+backward (first chunk size and "
        "precision) at each shape: kernels per call, busy time, top kernels",
    )
    parser.add_argument(
        "--precisions",
        type=parse_precisions,
        help='the ops\' precision= values to time the chunked impl at, e.g. "highest,default" '
        '("none": JAX\'s global default). Default: highest on CPU (where float32 dots are '
        "exact anyway), highest,default on an accelerator",
    )
    args = parser.parse_args(argv)

    backend = jax.default_backend()
    accel = backend != "cpu"
    dtype_name = args.dtype or ("bfloat16" if accel else "float32")
    dtype = jnp.dtype(dtype_name)
    shapes = args.shapes or (ACCEL_SHAPES if accel else CPU_SHAPES)
    chunk_sizes = args.chunk_sizes or ([64] if args.quick else [16, 32, 64])
    repeats = args.repeats or (3 if args.quick else (20 if accel else 5))
    precisions = args.precisions or (
        ["highest", "default", "BF16_BF16_F32"] if accel else ["highest"]
    )
    meta = dict(
        **machine.facts(),
        jaxlib=getattr(jax.lib, "__version__", None) or _jaxlib_version(),
        dtype=dtype_name,
        repeats=repeats,
        precisions=precisions,
        quick=args.quick,
    )
    print(
        f"jax {meta['jax']} (jaxlib {meta['jaxlib']}), backend {backend}, device "
        f"{meta['device_kind']} x{meta['device_count']}, {meta['cpus']} host CPUs, "
        f"dtype {dtype_name}, min of {repeats} after a compile call, {meta['date']}"
    )

    rows, matmuls = [], []
    for si, shape in enumerate(shapes):
        b, t, h, d = shape
        c_max = min(max(chunk_sizes), t)
        n = math.ceil(t / c_max)
        mm_small = matmul_rate(b * h * n, c_max, d, c_max, dtype, repeats)
        mm_large = matmul_rate(b * h, t, d, d, dtype, repeats)
        matmuls.append(dict(shape=list(shape), chunk=mm_small, large=mm_large))
        print(
            f"\nshape (batch, time, heads, key=value) = {shape}: matmul rate "
            f"[{b * h * n}, {c_max}, {d}]@[., {d}, {c_max}] {mm_small:.1f} GFLOP/s, "
            f"[{b * h}, {t}, {d}]@[., {d}, {d}] {mm_large:.1f} GFLOP/s ({dtype_name})"
        )
        print(
            f"{'rule':6} {'impl':11} {'chunk':>5} {'prec':>13} {'fwd ms':>9} {'f+b ms':>9} "
            f"{'fwd/rec':>15} {'f+b/rec':>15} {'fwd GF/s':>9} {'f+b GF/s':>9} "
            f"{'compile s':>9} {'err o':>8} {'err S':>8}"
        )
        # The linear rule at the first shape only (it shares the chunked machinery).
        rules = ["delta", "linear"] if si == 0 else ["delta"]
        for rule in rules:
            # The recurrent baseline and the associative form at the first precision only;
            # every chunk size at the first precision, the other precisions at the first
            # chunk size.
            first = precisions[0]
            chunked = [("chunked", c, first) for c in chunk_sizes]
            chunked += [("chunked", chunk_sizes[0], p) for p in precisions[1:]]
            plan = [("recurrent", None, first)] + chunked
            skipped = None
            if rule == "linear":
                if args.quick:
                    plan = plan[:2]
                assoc_bytes = b * t * h * d * d * 4
                if assoc_bytes <= ASSOC_LIMIT["accel" if accel else "cpu"]:
                    plan.append(("associative", None, first))
                else:
                    skipped = f"{assoc_bytes / 2**20:.0f} MiB of states"
            base = None
            ref = reference(rule, shape, dtype)
            for impl, chunk, precision in plan:
                profile = (
                    args.profile
                    and rule == "delta"
                    and (impl, chunk, precision) == ("chunked", chunk_sizes[0], first)
                )
                row = bench_one(
                    rule, impl, chunk, precision, shape, dtype, repeats, ref, profile=profile
                )
                row["dtype"] = dtype_name
                if impl == "recurrent":
                    base = row
                cells = {}
                for key in ("fwd", "fwdbwd"):
                    num, den = row[f"{key}_ms"], base and base[f"{key}_ms"]
                    r = row[f"{key}_over_recurrent"] = num / den if num and den else None
                    cells[key] = "-" if r is None else f"{r:.3f} ({1 / r:.3g}x)"
                    if row.get(f"{key}_error"):
                        cells[key] = row[f"{key}_error"]
                    elif base is not None and base.get(f"{key}_error"):
                        cells[key] = f"rec {base[f'{key}_error']}"
                compile_s = "/".join(
                    fmt(row.get(f"{k}_compile_s"), ".1f") for k in ("fwd", "fwdbwd")
                )
                print(
                    f"{rule:6} {impl:11} {fmt(chunk, '>5') if chunk else '-':>5} "
                    f"{str(precision).lower():>13} "
                    f"{row.get('fwd_error') or fmt(row['fwd_ms'], '.2f'):>9} "
                    f"{row.get('fwdbwd_error') or fmt(row['fwdbwd_ms'], '.2f'):>9} "
                    f"{cells['fwd']:>15} {cells['fwdbwd']:>15} "
                    f"{fmt(row['fwd_gflops'], '.1f'):>9} {fmt(row['fwdbwd_gflops'], '.1f'):>9} "
                    f"{compile_s:>9} {fmt(row.get('err_o'), '.1e'):>8} "
                    f"{fmt(row.get('err_state'), '.1e'):>8}",
                    flush=True,
                )
                if "profile_fwdbwd" in row:
                    print("    profile of this fwd+bwd (a step = one call):")
                    machine.print_profile(row["profile_fwdbwd"], indent="      ", top=8)
                rows.append(row)
                if args.out:
                    result = dict(meta=meta, matmul_gflops=matmuls, rows=rows, complete=False)
                    machine.write_json(args.out, result)
            if skipped:
                print(f"{rule:6} {'associative':11} skipped: it would materialise {skipped}")
    print(
        "\nfwd/rec, f+b/rec: time of the impl / time of the recurrent scan (speedup in "
        "parentheses). GF/s: analytic flops (see the module docstring) / time; fwd+bwd "
        "counted as 3x fwd. compile s: first call of fwd / fwd+bwd. err o, err S: "
        "max |x - x_ref| / max |x_ref| of the outputs and the final state at the row's "
        "precision (prec), x_ref from the recurrent scan on the same inputs in float32 "
        'at precision "highest".'
    )
    if args.out:
        result = dict(meta=meta, matmul_gflops=matmuls, rows=rows, complete=True)
        machine.write_json(args.out, result)
        print(f"wrote {args.out}")
    return 0


def _jaxlib_version():
    try:
        import jaxlib

        return jaxlib.__version__
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    sys.exit(main())
