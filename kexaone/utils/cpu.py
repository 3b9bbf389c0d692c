"""How many CPU cores this process may use, and how many of them are busy right now.

Thread choices read these: oversubscribed OpenMP threads spin against each other (10-100x slower per small matmul
on a loaded 2-core machine), so automatic thread counts leave busy cores alone.
"""

from __future__ import annotations

import os
import time


def usable_cores() -> int:
    """Cores in this process's CPU affinity (all cores where affinity is not available)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def busy_cores(sample_seconds: float = 0.5) -> float:
    """Busy cores among the usable ones, averaged over `sample_seconds` from two reads of /proc/stat. The 1-minute
    load average lags by a minute (just after another job it counts cores that are already idle again), so it is
    only the estimate where /proc/stat cannot be read; 0.0 where neither can."""
    busy = _sampled_busy_cores(sample_seconds)
    if busy is not None:
        return busy
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return 0.0


def _sampled_busy_cores(seconds: float) -> float | None:
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None

    def read() -> dict[int, tuple[int, int]] | None:
        times: dict[int, tuple[int, int]] = {}
        try:
            with open("/proc/stat", encoding="ascii") as f:
                for line in f:
                    name, _, rest = line.partition(" ")
                    if not (name.startswith("cpu") and name[3:].isdigit()):
                        continue
                    cpu = int(name[3:])
                    if allowed is None or cpu in allowed:
                        v = [int(x) for x in rest.split()]
                        times[cpu] = (sum(v), v[3] + (v[4] if len(v) > 4 else 0))  # (all, idle + iowait)
        except (OSError, ValueError, IndexError):
            return None
        return times or None

    first = read()
    if first is None:
        return None
    time.sleep(seconds)
    second = read()
    if second is None:
        return None
    busy = 0.0
    for cpu, (total, idle) in second.items():
        if cpu in first and total > first[cpu][0]:
            busy += 1.0 - (idle - first[cpu][1]) / (total - first[cpu][0])
    return busy
