"""`keep_freed_memory`: glibc keeps large freed blocks for reuse instead of unmapping them (so the next large CPU
tensor does not page-fault its memory in again; timings are in benchmarks/bench_train.py), the command line turns it
on, and KEXAONE_KEEP_FREED_MEMORY=0 leaves the allocator alone. Each case runs in a fresh
interpreter because the setting is process-wide."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is a glibc interface")

PROBE = """
import sys, torch
from kexaone.utils.cpu import keep_freed_memory
on = keep_freed_memory() if sys.argv[1] == "call" else False

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

y = torch.ones(4096, 4096)  # 64 MiB: above glibc's default mmap ceiling (32 MiB)
held = rss_mib()
del y
print(on, held - rss_mib())
"""


def _probe(mode: str, env: dict | None = None) -> tuple[bool, float]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})}).stdout.split()
    return out[0] == "True", float(out[1])


def test_keep_freed_memory_keeps_a_freed_large_block_for_reuse():
    on, released_tuned = _probe("call")
    off, released_default = _probe("skip")
    assert on and not off
    # default: the 64 MiB block was its own mapping, unmapped on free (the next one faults its pages in again);
    # tuned: it stays in the heap for the next allocation
    assert released_default > 60, released_default
    assert released_tuned < 4, released_tuned


def test_environment_opt_out():
    on, _ = _probe("call", {"KEXAONE_KEEP_FREED_MEMORY": "0"})
    assert not on


def test_the_command_line_turns_it_on(monkeypatch):
    from kexaone import cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1) or True)
    assert cli.main(["info", "--preset", "tiny"]) == 0
    assert calls == [1]
