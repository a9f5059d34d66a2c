"""Machine facts and memory readings recorded next to every benchmark result (shared by the
scripts here)."""

import collections
import glob
import gzip
import json
import os
import platform
import sys
import tempfile
from datetime import UTC, datetime

import jax


def cpu_count() -> int | None:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def load_average() -> float | None:
    """1-minute load average: other work on the machine skews timings."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def host_gib() -> float:
    """Physical memory of the host in GiB (16 if unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (AttributeError, ValueError, OSError):
        return 16.0


def compiled_bytes(compiled) -> int | None:
    """Arguments + outputs - aliased (donated) + temporaries, from XLA's buffer assignment."""
    try:
        m = compiled.memory_analysis()
        return int(
            m.argument_size_in_bytes
            + m.output_size_in_bytes
            - m.alias_size_in_bytes
            + m.temp_size_in_bytes
        )
    except Exception:  # noqa: BLE001 -- not every backend reports it
        return None


def device_peak() -> int | None:
    """The device allocator's high-water mark (process-wide; None where not reported)."""
    stats = jax.local_devices()[0].memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def facts() -> dict:
    """Date, versions, backend, device and host, recorded with every result."""
    return dict(
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        jax=jax.__version__,
        python=platform.python_version(),
        backend=jax.default_backend(),
        device_kind=jax.devices()[0].device_kind,
        device_count=jax.device_count(),
        host=platform.node(),
        cpus=cpu_count(),
        load_average=load_average(),
    )


def write_json(path, obj) -> None:
    """Writes obj as JSON to path. The scripts call it after every row (with "complete":
    false until the last), so a run stopped at a time limit still leaves its rows."""
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def profile(run, steps: int = 3, top: int = 25) -> dict:
    """Where the time of `run()` goes: a ``jax.profiler`` trace of `steps` calls, summarised.

    For each traced device ("/device:GPU:0", ...; on CPU, the XLA:CPU worker threads of
    "/host:CPU") the ops per step, the busy time per step (sum of op durations: next to the
    step time it shows how much of the step the device idles, e.g. between small kernel
    launches) and the `top` ops by time. `run` must block until its work is done. A profile
    is optional: any failure comes back as {"error": ...} instead of raising.
    """
    try:
        return _profile(run, steps, top)
    except Exception as err:  # noqa: BLE001
        return {"error": f"{type(err).__name__}: {err}"[:500]}


def print_profile(summary: dict, indent: str = "  ", top: int = 10) -> None:
    """Prints a `profile` summary: per device, ops and busy ms per step, then the top ops."""
    if "error" in summary:
        print(f"{indent}profile failed: {summary['error']}")
        return
    for lane, prof in summary.items():
        print(
            f"{indent}{lane}: {prof['ops_per_step']:,.0f} ops and "
            f"{prof['busy_ms_per_step']:.2f} ms busy per step; top ops:"
        )
        for op in prof["top"][:top]:
            print(
                f"{indent}  {op['ms_per_step']:8.3f} ms {op['per_step']:6.0f}x  {op['name'][:90]}"
            )
    sys.stdout.flush()


def _profile(run, steps: int, top: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(steps):
                run()
        files = sorted(glob.glob(os.path.join(tmp, "**", "*.trace.json.gz"), recursive=True))
        if not files:
            return {"error": "the profiler wrote no perfetto trace"}
        with gzip.open(files[-1]) as f:
            events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    names = {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") in ("process_name", "thread_name"):
            names[(e.get("pid"), e.get("tid") if e["name"] == "thread_name" else None)] = e[
                "args"
            ].get("name", "")
    devices = {pid for (pid, tid), name in names.items() if tid is None and "/device:" in name}

    def lane(e):
        """The summary an op event belongs to, or None (host-side Python and runtime)."""
        pid, name = e.get("pid"), e.get("name", "")
        if pid in devices:
            return names[(pid, None)]
        thread = names.get((pid, e.get("tid")), "")
        # On CPU: the XLA ops on the worker threads, without the runtime's own entries
        # (ThunkExecutor::Execute, SlinkyThreadPool::Await, Python frames "$...").
        if devices or "XLAEigen" not in thread or name.startswith("$") or "::" in name:
            return None
        return "/host:CPU (XLA:CPU worker threads)"

    durations = collections.defaultdict(collections.Counter)
    counts = collections.defaultdict(collections.Counter)
    for e in events:
        if e.get("ph") == "X" and (key := lane(e)) is not None:
            durations[key][e["name"]] += e.get("dur", 0)
            counts[key][e["name"]] += 1
    summary = {}
    for key, per_op in durations.items():
        summary[key] = dict(
            ops_per_step=sum(counts[key].values()) / steps,
            busy_ms_per_step=sum(per_op.values()) / steps / 1e3,
            top=[
                dict(
                    name=name[:200],
                    ms_per_step=us / steps / 1e3,
                    per_step=counts[key][name] / steps,
                )
                for name, us in per_op.most_common(top)
            ],
        )
    return summary
