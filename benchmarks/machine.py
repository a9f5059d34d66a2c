"""Machine facts and memory readings recorded next to every benchmark result (shared by the
scripts here)."""

import json
import os
import platform
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
