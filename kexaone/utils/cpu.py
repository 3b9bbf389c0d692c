"""How many CPU cores this process may use, how many of them are busy right now, whether they multiply bf16
natively, and the C allocator setting that CPU training and inference want.

Thread choices read these: oversubscribed OpenMP threads spin against each other (10-100x slower per small matmul
on a loaded 2-core machine), so automatic thread counts leave busy cores alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import time

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Allocations below this come from the heap and freed memory up to this much stays there for reuse.
_KEEP_BYTES = 1 << 30
_KEEP_FREED_ENV = "KEXAONE_KEEP_FREED_MEMORY"
_kept = False


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX or AVX512_BF16): there bf16 matmuls are several times faster
    than fp32 (benchmarks/bench_train.py measures both peaks); elsewhere they are emulated and no faster."""
    import torch

    checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    if any(c is not None for c in checks):
        return any(bool(c()) for c in checks if c is not None)
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel; True when now in effect.

    PyTorch's CPU tensors come straight from malloc. glibc serves blocks above its mmap threshold (at most 32 MB by
    default) with fresh mmaps and unmaps them on free, so every large activation, logits or gradient buffer of every
    step page-faults its memory in again: measured on this machine, a 67 MB copy took 100-125 ms that way and
    18-23 ms with this setting (the time the copy itself needs). Raising the mmap and trim thresholds to 1 GiB keeps
    such blocks in the heap, as the caching allocators that PyTorch recommends for CPU (jemalloc, tcmalloc) would.
    The cost is resident memory that stays at the peak instead of shrinking between steps.

    Process-wide, so the command-line entry point calls it, not the library. No effect (False) off glibc, or when
    the environment sets KEXAONE_KEEP_FREED_MEMORY=0."""
    global _kept
    if _kept:
        return True
    if os.environ.get(_KEEP_FREED_ENV, "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return False
    _kept = bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
    return _kept


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
