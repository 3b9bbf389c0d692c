"""One place that turns a single-device K-EXAONE model into the model a (multi-)process training step runs, and
owns everything that depends on how it was split: materialisation, state dicts, loading, gradient clipping, export.

    pm = parallelize(model, dist, strategy="fsdp", expert_parallel=False, fp8_format=None,
                     activation_checkpointing=False, mixed_precision=None)
    pm.materialize(seed=cfg.seed, init_from=None)     # only when `model` was built on the meta device
    pm.module          # what the training step calls (DDP wrapper, the FSDP2-sharded model, or the model)
    pm.model           # the underlying KExaoneForCausalLM (sharded / expert-sliced parameters)

Order (torchtitan's): the model may be built on the `meta` device (no memory); then, from the inside out, FP8
(module swap) -> expert parallelism (each rank keeps its experts) -> activation checkpointing -> FSDP2
`fully_shard` per decoder layer and root (or DDP) on one 1-D device mesh over the world; then `to_empty` and
either the seeded initialisation or a streamed load of an HF checkpoint. DDP needs materialised parameters, so
under DDP the materialisation comes before the wrap.

Initialisation equals the single-process one bit for bit: the parameters are visited in the order
`KExaoneForCausalLM.reset_parameters` visits them, each is drawn in full on the CPU from the same seeded RNG and
only this rank's part is kept. The largest transient is one parameter (for K-EXAONE-236B a stacked expert tensor
of one layer), never the model. The HF import reads one parameter at a time the same way.

State: `model_state()` / `optimizer_state()` give DCP-ready state dicts (FSDP parameters are DTensors; rank-local
expert slices are wrapped as DTensors sharded on the expert dimension, so Distributed Checkpoint can save them
shard by shard and reshard them on load for any world size). `full_model_state()` gathers one full tensor at a time
(a generator; collective). `clip_grad_norm_` is the global norm in every layout. `export_hf` streams the HF layout.

Not here: the optimizer, the loop, checkpoint files (kexaone.train.checkpoint), tensor/pipeline/context parallelism,
torch.compile.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn

from kexaone.train.distributed import DistInfo

STRATEGIES = ("ddp", "fsdp")


@dataclass
class ParallelModel:
    """A parallelized model and what depends on its layout (built by `parallelize`)."""

    module: nn.Module
    model: nn.Module
    dist: DistInfo
    strategy: str
    expert_parallel: bool
    mesh: Any = None
    find_unused_parameters: bool = False
    _wrapped: bool = False

    # ------------------------------------------------------------------ layout queries
    @property
    def sharded(self) -> bool:
        """True when parameters live on several ranks in parts (FSDP shards or expert slices)."""
        return self.dist.distributed and (self.strategy == "fsdp" or self.expert_parallel)

    @property
    def is_meta(self) -> bool:
        return any(p.is_meta for p in self.model.parameters())

    # ------------------------------------------------------------------ materialisation
    @torch.no_grad()
    def materialize(self, seed: int | None = None, init_from: str | Path | None = None) -> None:
        """Allocate this rank's parameters on its device and fill them: from the HF checkpoint `init_from` (streamed,
        one parameter at a time), else the seeded initialisation (equal to the single-process one). A no-op for a
        model that is not on the meta device (except the DDP wrap that waits for it)."""
        if self.is_meta:
            self.model.to_empty(device=self.dist.device)
            cfg = self.model.config
            if cfg.tie_word_embeddings and not (self.dist.distributed and self.strategy == "fsdp"):
                self.model.lm_head.weight = self.model.model.embed_tokens.weight
            if init_from is not None:
                load_hf_streamed(self, init_from)
            else:
                if seed is not None:
                    from kexaone.train.distributed import seed_all

                    seed_all(seed)  # the RNG state the single-process build initialised from
                init_streamed(self)
            self.model.reset_buffers()
            if self.expert_parallel:
                from kexaone.train.expert_parallel import ensure_expert_grad_scaling

                ensure_expert_grad_scaling(self.model)  # to_empty made new parameter objects: hooks again
        if not self._wrapped:
            self._wrap_ddp()

    def _wrap_ddp(self) -> None:
        self._wrapped = True
        if not (self.dist.distributed and self.strategy == "ddp"):
            return
        from torch.nn.parallel import DistributedDataParallel as DDP

        if self.expert_parallel:
            from kexaone.train.expert_parallel import ddp_ignored_expert_params

            # Each rank owns different experts: DDP must neither broadcast nor average them.
            DDP._set_params_and_buffers_to_ignore_for_model(self.model, ddp_ignored_expert_params(self.model))
        ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
        # broadcast_buffers=False: each rank counts its own routed tokens in a buffer (balance.py all-reduces them).
        self.module = DDP(self.model, device_ids=ids, broadcast_buffers=False,
                          find_unused_parameters=self.find_unused_parameters)

    # ------------------------------------------------------------------ per-parameter placement
    def full_shape(self, module: nn.Module, name: str, p: torch.Tensor) -> tuple[int, ...]:
        """The single-process shape of `module.<name>` (DTensors report it; expert slices have E/W rows)."""
        from kexaone.train.expert_parallel import ExpertParallelExperts

        if isinstance(module, ExpertParallelExperts) and name in ("gate_up_proj", "down_proj"):
            return (module.num_experts_global, *p.shape[1:])
        return tuple(p.shape)

    def place(self, module: nn.Module, name: str, p: torch.Tensor, full: torch.Tensor) -> None:
        """Copy this rank's part of the full tensor `full` into parameter/buffer `p` of `module`."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        from kexaone.train.expert_parallel import ExpertParallelExperts

        if isinstance(p, DTensor):
            # Every rank holds the same `full` (same seed / same file): no communication needed.
            part = distribute_tensor(full.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
            p.to_local().copy_(part.to_local())
            return
        if isinstance(module, ExpertParallelExperts) and name in ("gate_up_proj", "down_proj"):
            full = full[module.first_expert:module.first_expert + module.num_experts]
        p.copy_(full)

    def gather(self, module: nn.Module, name: str, p: torch.Tensor) -> torch.Tensor:
        """The full (single-process) value of `p`, on the CPU. A collective for sharded tensors."""
        from torch.distributed.tensor import DTensor

        from kexaone.train.expert_parallel import ExpertParallelExperts

        if isinstance(p, DTensor):
            return p.full_tensor().detach().cpu()
        if isinstance(module, ExpertParallelExperts) and name in ("gate_up_proj", "down_proj"):
            local = p.detach().contiguous()
            parts = [torch.empty_like(local) for _ in range(module.ep_world)]
            tdist.all_gather(parts, local, group=module.ep_group)
            return torch.cat(parts, dim=0).cpu()
        return p.detach().cpu()

    def reshard(self) -> None:
        """Put every FSDP2 module back in its sharded state. FSDP2 leaves the root's parameters gathered after a
        forward without backward (evaluation); state dicts, exports and optimizers must see the shards."""
        if self.dist.distributed and self.strategy == "fsdp":
            from torch.distributed.fsdp import FSDPModule

            for m in self.model.modules():
                if isinstance(m, FSDPModule):
                    m.reshard()

    def named_tensors(self) -> Iterator[tuple[str, nn.Module, str, torch.Tensor]]:
        """(state-dict key, owning module, attribute name, tensor) for every persistent parameter and buffer, in the
        state-dict order, each tied tensor once (sharded: see `reshard`)."""
        self.reshard()
        seen: set[int] = set()
        for mod_name, m in self.model.named_modules():
            for name, t in list(m._parameters.items()) + [
                    (n, b) for n, b in m._buffers.items() if n not in m._non_persistent_buffers_set]:
                if t is None or id(t) in seen:
                    continue
                seen.add(id(t))
                yield (f"{mod_name}.{name}" if mod_name else name), m, name, t

    # ------------------------------------------------------------------ state dicts (DCP)
    def model_state(self) -> dict[str, Any]:
        """The model's state dict for Distributed Checkpoint: sharded tensors stay sharded (DTensors)."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        self.reshard()
        sd = get_model_state_dict(self.model)
        return self._wrap_expert_slices(sd)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer's state dict keyed by parameter name, for Distributed Checkpoint."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        osd = get_optimizer_state_dict(self.model, optimizer)
        if self.expert_parallel and self.dist.distributed:
            per = osd["state"]
            for fqn, local_e in self._expert_slices():
                if fqn in per:
                    per[fqn] = {k: (self._as_dtensor(v) if torch.is_tensor(v) and v.dim() >= 1
                                    and v.shape[0] == local_e else v) for k, v in per[fqn].items()}
        return osd

    def load_model_state(self, sd: dict[str, Any]) -> None:
        """Inverse of model_state (after dcp.load filled it in place)."""
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(self.model, self._unwrap(sd))

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, osd: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        if self.expert_parallel and self.dist.distributed:
            osd = {**osd, "state": {k: self._unwrap(v) if isinstance(v, dict) else v
                                    for k, v in osd["state"].items()}}
        set_optimizer_state_dict(self.model, optimizer, osd)

    def _expert_slices(self) -> Iterator[tuple[str, int]]:
        from kexaone.train.expert_parallel import _EXPERT_PARAMS, expert_parallel_modules

        for name, m in expert_parallel_modules(self.model).items():
            for p in _EXPERT_PARAMS:
                yield f"{name}.{p}", m.num_experts

    def _as_dtensor(self, t: torch.Tensor) -> Any:
        from torch.distributed.tensor import DTensor, Shard

        # Rank r holds rows [r*E/W, (r+1)*E/W): exactly Shard(0) of the full tensor on the world mesh.
        return DTensor.from_local(t, self.mesh, [Shard(0)], run_check=False)

    def _wrap_expert_slices(self, sd: dict[str, Any]) -> dict[str, Any]:
        if self.expert_parallel and self.dist.distributed:
            for fqn, _ in self._expert_slices():
                if fqn in sd:
                    sd[fqn] = self._as_dtensor(sd[fqn])
        return sd

    def _unwrap(self, sd: dict[str, Any]) -> dict[str, Any]:
        """Expert slices back to plain local tensors (under expert parallelism no other DTensors exist)."""
        if not (self.expert_parallel and self.dist.distributed):
            return sd
        from torch.distributed.tensor import DTensor

        return {k: (v.to_local() if isinstance(v, DTensor) else v) for k, v in sd.items()}

    def load_full_model_state(self, full: dict[str, torch.Tensor]) -> None:
        """Load a single-process (full) state dict into any layout, one tensor at a time."""
        missing = []
        with torch.no_grad():
            for key, m, name, t in self.named_tensors():
                if key not in full:
                    if key == "lm_head.weight" and self.model.config.tie_word_embeddings:
                        continue
                    missing.append(key)
                    continue
                want = self.full_shape(m, name, t)
                if tuple(full[key].shape) != want:
                    raise ValueError(f"the checkpoint's {key} has shape {tuple(full[key].shape)}, this model {want} "
                                     "(resume with the same --preset, model_overrides and tokenizer)")
                self.place(m, name, t, full[key].to(t.dtype))
        if missing:
            raise ValueError(f"the checkpoint does not fit this model: missing {missing[:5]} (resume with the same "
                             "--preset, model_overrides and tokenizer)")

    def full_model_state(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(key, full CPU tensor) in state-dict order, one gathered at a time (collective on every rank)."""
        for key, m, name, t in self.named_tensors():
            yield key, self.gather(m, name, t)

    # ------------------------------------------------------------------ training-step helpers
    def clip_grad_norm_(self, max_norm: float | None) -> float:
        """Pre-clip global L2 norm of all gradients (every rank gets the same), clipping to max_norm when > 0."""
        if self.expert_parallel and self.dist.distributed:
            from kexaone.train.expert_parallel import clip_grad_norm_expert_parallel_

            return float(clip_grad_norm_expert_parallel_(self.model, max_norm))
        from kexaone.train.optim import clip_grad_norm_

        return float(clip_grad_norm_(self.model, max_norm))

    @contextlib.contextmanager
    def no_sync(self, skip_sync: bool) -> Iterator[None]:
        """Skip the gradient reduction on the first micro-batches of an accumulation."""
        from kexaone.train.distributed import maybe_no_sync

        with maybe_no_sync(self.module, skip_sync):
            yield

    @property
    def eval_sharded_batches(self) -> bool:
        """Whether evaluation may give each rank its own batches and call the unwrapped model (not under FSDP,
        whose forward is a collective every rank must run on the same number of batches)."""
        return not (self.dist.distributed and self.strategy == "fsdp")

    # ------------------------------------------------------------------ export
    def export_hf(self, path: str | Path, dtype: torch.dtype | None = None,
                  max_shard_bytes: int = 5 * 1024**3) -> Path | None:
        """Write the HF `exaone_moe` layout to `path`, gathering one parameter at a time (rank 0 writes; every rank
        must call it). Returns the path on rank 0, None elsewhere."""
        from kexaone.model.hf import save_streamed

        tensors = dict((k, (m, n, t)) for k, m, n, t in self.named_tensors())
        if self.model.config.tie_word_embeddings and "lm_head.weight" not in tensors:
            tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]

        def fetch(mem_name: str) -> torch.Tensor:
            m, n, t = tensors[mem_name]
            return self.gather(m, n, t)

        save_streamed(self.model.config, fetch, path, write=self.dist.is_main, dtype=dtype,
                      max_shard_bytes=max_shard_bytes, main_dtype=self.model.lm_head.weight.dtype)
        if self.dist.distributed:
            tdist.barrier()
        return Path(path) if self.dist.is_main else None


# ---------------------------------------------------------------------------------------------- building
def parallelize(model: nn.Module, dist: DistInfo, *, strategy: str = "ddp", expert_parallel: bool = False,
                fp8_format: str | None = None, activation_checkpointing: bool | None = None,
                mixed_precision: torch.dtype | None = None, find_unused_parameters: bool = False) -> ParallelModel:
    """Apply FP8 -> expert parallelism -> activation checkpointing -> FSDP2 (or DDP, at `materialize`) to `model`
    (on the meta device or already materialised). `mixed_precision`: FSDP2 parameter dtype for compute and
    all-gathers (gradients are reduced in fp32); None keeps fp32 parameters (autocast still applies)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"parallel strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
    if expert_parallel and not dist.distributed:
        raise ValueError("expert_parallel needs torchrun with a world size > 1 (this run has 1 process)")
    if expert_parallel and strategy != "ddp":
        raise ValueError(f"expert_parallel works with parallel='ddp' only, got parallel={strategy!r}")
    if not any(p.is_meta for p in model.parameters()):
        model.to(dist.device)
    if fp8_format is not None:
        from kexaone.train.fp8 import apply_fp8

        apply_fp8(model, mode="torchao" if dist.device.type == "cuda" else "emulate", fmt=fp8_format)
    mesh = None
    if dist.distributed:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(dist.device.type, (dist.world_size,))
    if expert_parallel:
        from kexaone.train.expert_parallel import apply_expert_parallel

        apply_expert_parallel(model, group=mesh.get_group() if mesh is not None else None)
    if activation_checkpointing is not None:
        model.gradient_checkpointing = bool(activation_checkpointing)
    pm = ParallelModel(module=model, model=model, dist=dist, strategy=strategy, expert_parallel=expert_parallel,
                       mesh=mesh, find_unused_parameters=find_unused_parameters)
    if dist.distributed and strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=mixed_precision, reduce_dtype=torch.float32) \
            if mixed_precision is not None else MixedPrecisionPolicy()
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh, mp_policy=mp)
        if getattr(model, "mtp", None) is not None:
            fully_shard(model.mtp, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp)
        pm._wrapped = True
    if not pm.is_meta and not pm._wrapped:
        pm._wrap_ddp()  # a meta model is wrapped by materialize(), once it holds weights
    return pm


# ---------------------------------------------------------------------------------------------- streamed fills
_RNG_INITS = ("normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "trunc_normal_", "xavier_uniform_",
              "xavier_normal_", "orthogonal_", "sparse_")


def construction_draws(config: Any) -> list[tuple[str, tuple[int, ...], torch.dtype, tuple, dict]]:
    """The random initialisations `KExaoneForCausalLM(config)` performs while its modules are constructed (each
    nn.Linear, nn.Embedding, router and expert bank draws once in its constructor, before the model's final
    `reset_parameters` overwrites them), in order: (torch.nn.init function, shape, dtype, args, kwargs). Found by
    building the model on the meta device with the init functions wrapped (meta tensors draw nothing)."""
    from kexaone.model.transformer import KExaoneForCausalLM

    calls: list[tuple[str, tuple[int, ...], torch.dtype, tuple, dict]] = []
    originals = {n: getattr(nn.init, n) for n in _RNG_INITS}

    depth = [0]

    def wrap(name: str) -> Any:
        def recorder(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if depth[0] == 0:  # an init function may call another one (dispatch): record the outer call only
                calls.append((name, tuple(tensor.shape), tensor.dtype, args, kwargs))
            depth[0] += 1
            try:
                return originals[name](tensor, *args, **kwargs)
            finally:
                depth[0] -= 1
        return recorder

    try:
        for n in _RNG_INITS:
            setattr(nn.init, n, wrap(n))
        KExaoneForCausalLM.from_config(config, device="meta")
    finally:
        for n, f in originals.items():
            setattr(nn.init, n, f)
    return calls


@torch.no_grad()
def init_streamed(pm: ParallelModel) -> None:
    """The initialisation of a single-process `KExaoneForCausalLM(config)` built right after seeding, parameter by
    parameter: first the constructors' draws are replayed into scratch tensors one at a time (their values are
    overwritten, but they advance the RNG), then `reset_parameters`' pass runs with each module's parameters
    swapped for full-size CPU tensors, by the same code in the same order, and this rank's part is copied in."""
    from kexaone.model.moe import GroupedExperts, TopKRouter
    from kexaone.model.norm import RMSNorm

    for name, shape, dtype, args, kwargs in construction_draws(pm.model.config):
        getattr(nn.init, name)(torch.empty(shape, dtype=dtype), *args, **kwargs)
    std = pm.model.config.initializer_range
    for m in pm.model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            names = ["weight"]

            def run(m: nn.Module = m) -> None:
                nn.init.normal_(m.weight, mean=0.0, std=std)
        elif isinstance(m, (RMSNorm, TopKRouter, GroupedExperts)):
            names = [n for n, p in m._parameters.items() if p is not None]
            run = m.reset_parameters
        else:
            continue
        real = {n: m._parameters[n] for n in names}
        full = {n: torch.empty(pm.full_shape(m, n, p), dtype=p.dtype) for n, p in real.items()}
        try:
            for n, t in full.items():
                m._parameters[n] = nn.Parameter(t, requires_grad=False)
            run()
        finally:
            for n, p in real.items():
                m._parameters[n] = p
        for n, p in real.items():
            pm.place(m, n, p, full[n])


@torch.no_grad()
def load_hf_streamed(pm: ParallelModel, path: str | Path) -> None:
    """Fill a materialised (sharded) model from an HF `exaone_moe` checkpoint directory, one parameter at a time:
    its disk tensors (one per expert for stacked experts) are read into a full CPU tensor and this rank keeps its
    part. Raises ValueError for a missing tensor or a shape mismatch."""
    from kexaone.model.hf import _open, _select, disk_entries, read_weight_map
    from kexaone.model.transformer import KExaoneForCausalLM

    d = Path(path)
    files = read_weight_map(d)
    ref = KExaoneForCausalLM.from_config(pm.model.config, device="meta")  # global names and shapes, no memory
    by_mem: dict[str, list[tuple[str, tuple[int, ...], Any]]] = {}
    for disk_name, mem_name, shape, index in disk_entries(ref):
        by_mem.setdefault(mem_name, []).append((disk_name, shape, index))
    missing = [dn for entries in by_mem.values() for dn, _, _ in entries if dn not in files]
    if missing:
        raise ValueError(f"{d} is missing {len(missing)} tensor(s) the model needs, e.g. {missing[:5]}")
    with contextlib.ExitStack() as stack:
        handles: dict[Path, Any] = {}
        for key, m, name, t in pm.named_tensors():
            if key not in by_mem:
                continue  # buffers that are not stored (recomputed by reset_buffers)
            full = torch.empty(pm.full_shape(m, name, t), dtype=t.dtype)
            for disk_name, shape, index in by_mem[key]:
                file = files[disk_name]
                if file not in handles:
                    handles[file] = stack.enter_context(_open(file))
                got = handles[file].get_tensor(disk_name)
                if tuple(got.shape) != shape:
                    raise ValueError(f"tensor {disk_name} in {file.name} has shape {tuple(got.shape)}; the model "
                                     f"expects {shape}")
                _select(full, index).copy_(got.to(full.dtype))
            pm.place(m, name, t, full)
            del full
