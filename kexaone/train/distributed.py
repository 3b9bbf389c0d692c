"""torch.distributed for the trainer: set up a process group from the `torchrun` environment, tear it down cleanly,
and small collective helpers. How a model is split (DDP, FSDP2, expert parallelism) is `kexaone.train.parallelize`.

Model code stays single-device; parallelism is applied from outside. Single-process runs go through the same
functions as a world of size 1 (every helper is then a cheap no-op). With DDP or FSDP every rank holds (a shard of)
every expert; expert parallelism (each rank owns a slice of the experts, with DDP) is in `expert_parallel.py`.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank, world size, device and backend (backend None when single-process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    owns_group: bool = False
    """True when init_distributed created the process group (and so destroy_distributed should tear it down)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()


def resolve_device(pref: str, local_rank: int = 0) -> torch.device:
    """'auto' -> CUDA (this rank's GPU) when available, else CPU; 'cuda' without a GPU is a clear error."""
    if pref not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {pref!r}")
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but torch.cuda.is_available() is False; use --device cpu")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> DistInfo:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT): gloo on CPU, nccl on CUDA. Without those variables (or WORLD_SIZE=1) this is a single process.
    A process group that already exists (e.g. created by a test harness) is reused, not re-created."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
        dev = resolve_device(device, local_rank)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return DistInfo(rank, world, local_rank, dev, dist.get_backend(), owns_group=False)
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistInfo(0, 1, 0, dev, None, owns_group=False)
    if not dist.is_available():
        raise ValueError(f"WORLD_SIZE={world} but this torch build has no torch.distributed")
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise ValueError(f"WORLD_SIZE={world} but {var} is not set; launch with torchrun")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    # A process that leaves without destroying its group (an uncaught error, sys.exit in user code) would let
    # interpreter finalisation race gloo's worker threads: destroy it at exit while Python is still whole.
    atexit.register(shutdown_process_group, False)
    return DistInfo(rank, world, local_rank, dev, backend, owns_group=True)


def shutdown_process_group(clean: bool = True) -> None:
    """Tear the process group down so that a run that did its work exits 0.

    Gloo runs collectives on C++ worker threads; a rank that destroys its group (or exits) while a peer is still
    inside a collective, or while Python objects still reference pending work, can make a worker thread hit
    `std::terminate` ("terminate called without an active exception", SIGABRT) during teardown. So, on a clean
    exit: one last barrier (no peer is still communicating), a garbage collection (autograd graphs and work
    handles holding tensors are freed while the group and the interpreter are alive), then destroy the group,
    which joins the worker threads. After an error (`clean=False`) the peers may be gone: no barrier, just destroy.
    A no-op when no group exists."""
    import gc

    if not (dist.is_available() and dist.is_initialized()):
        return
    if clean:
        dist.barrier()
    gc.collect()
    dist.destroy_process_group()


def destroy_distributed(info: DistInfo, clean: bool = True) -> None:
    """`shutdown_process_group` for a group init_distributed created (a reused group is left to its owner)."""
    if info.owns_group:
        shutdown_process_group(clean)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def any_true(flag: bool, info: DistInfo) -> bool:
    """True on every rank when the flag is true on at least one (so all ranks take the same branch)."""
    if not info.distributed:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=_collective_device(info))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    if not info.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device(info))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def _collective_device(info: DistInfo) -> torch.device:
    return info.device if info.backend == "nccl" else torch.device("cpu")


def wrap_model(model: nn.Module, info: DistInfo, strategy: str = "ddp",
               find_unused_parameters: bool = False) -> nn.Module:
    """The module to call in the training step for a materialised model: the model itself in one process, else
    DDP or FSDP2 as applied by `kexaone.train.parallelize` (which also owns the state dicts of that layout)."""
    from kexaone.train.parallelize import parallelize

    return parallelize(model, info, strategy=strategy, find_unused_parameters=find_unused_parameters).module


@contextlib.contextmanager
def maybe_no_sync(model: nn.Module, skip_sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce of DDP for the first micro-batches of an accumulation (FSDP2: reduce-scatter
    only on the last micro-batch via set_requires_gradient_sync)."""
    if skip_sync and hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(not skip_sync)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def seed_all(seed: int) -> None:
    """Seed every RNG the trainer uses (same seed on every rank: identical initial weights without a broadcast)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
