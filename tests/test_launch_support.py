"""Shared helpers for the multi-process trainer tests (no tests here): a free port, torchrun launches, the
single-process reference run, and the metrics records a run wrote."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, *target: str, env: dict[str, str] | None = None,
             timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run` with `nproc` local ranks on a free port, running `target` (a script and its
    arguments, or "-m", module, arguments); one torch thread per rank."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **(env or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *target]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def torchrun_pretrain(args: Sequence[str], out: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    """`kexaone pretrain` on 2 gloo ranks of 2 rows each (a global batch of 4), with the shared cache."""
    return torchrun(2, "-m", "kexaone", "pretrain", *args, "--batch-size", "2", "--out", str(out), *extra,
                    env={"KEXAONE_CACHE": str(cache)})


def pretrain_in_process(args: Sequence[str], out: Path, cache: Path, steps: int) -> Path:
    """`kexaone pretrain` in this process with 4 rows per step (the reference the ranks must match); restores the
    cache variable and the torch thread count afterwards."""
    import argparse

    from kexaone.train.pretrain import add_arguments, config_from_args, run_pretraining

    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = config_from_args(p.parse_args([*args, "--batch-size", "4", "--out", str(out)]))
    old_env, old_threads = os.environ.get("KEXAONE_CACHE"), torch.get_num_threads()
    os.environ["KEXAONE_CACHE"] = str(cache)
    try:
        assert run_pretraining(cfg).steps == steps
    finally:
        torch.set_num_threads(old_threads)
        os.environ.pop("KEXAONE_CACHE") if old_env is None else os.environ.__setitem__("KEXAONE_CACHE", old_env)
    return out


def records(out: Path, kind: str) -> list[dict]:
    """The metrics.jsonl records of `kind` ("train", "eval", ...) a run wrote to `out`."""
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]
