"""Machine facts recorded next to every benchmark result (shared by the scripts here)."""

import os


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
