"""Expert parallelism (EP) for K-EXAONE's MoE layers, applied from outside the model (like DDP/FSDP).

Expert parallelism
------------------
`apply_expert_parallel(model, group, dispatch="all_to_all")` keeps, in every `KExaoneMoE`, only this rank's
contiguous slice of the routed experts (E / world_size of them: rank r owns global experts [r*E/W, (r+1)*E/W)) and
swaps its `GroupedExperts` for `ExpertParallelExperts`, whose forward is exact and dropless.

All-to-all dispatch (the default): each (token, slot) pair goes only to the rank owning its expert.
1. the pairs are sorted by destination rank; the per-rank pair counts are exchanged (all_to_all of W integers);
2. an autograd-aware all_to_all sends each pair's hidden state and gate weight (and, without gradient, its local
   expert id) to the owner, which runs its experts on what it received with `GroupedExperts`' grouped path;
3. a second all_to_all returns the weighted outputs to the pairs' home ranks, which add them into their tokens.
Cost per MoE layer and direction: each rank sends the hidden states of its pairs routed to other ranks, twice
(there and back) - about 2 x N x K x (W-1)/W rows of H under uniform routing - instead of receiving every token of
every rank. Ranks may hold different numbers of tokens.

All-gather dispatch (`dispatch="all_gather"`, kept as the measured baseline and as a second independent
implementation the tests compare against):

1. all-gather (autograd-aware) every rank's flattened tokens x_NH, gate weights and expert ids (routing is still
   computed locally by the replicated router; the router, its correction bias and the bias update are unchanged:
   `balance.py` all-reduces the locally counted tokens as before);
2. keep only the (token, slot) pairs routed to the local experts, remap their ids to local ids and run them through
   `GroupedExperts`' grouped-matmul path on the local weight slice;
3. scatter-add the results into a [W*N, H] buffer and sum it over ranks (autograd-aware all-reduce), keeping this
   rank's N rows: each token's output is the sum of its experts' contributions, wherever they live.

The shared expert and every other parameter stay replicated (DDP averages their gradients). The expert weights are
not replicated: they must be excluded from DDP (`ddp_ignored_expert_params`), and, because all-gather's backward
hands each rank the SUM over ranks of the loss gradients, a gradient hook divides their gradient by the world size,
so it equals the gradient of the mean loss (what one process computes on the concatenated global batch).

Cost of the all-gather dispatch: every rank receives every token (an all-gather of N*W*H activations per MoE layer,
forward and backward) and all-reduces a [W*N, H] output; compute per rank is 1/W of the routed expert work either
way. `comm_bytes` on each module counts the payload bytes this rank sends in the forward (measured from the actual
split sizes; a ring all-reduce of M bytes counts 2(W-1)/W x M). Memory for expert weights and their optimizer
state is 1/W. The all-gather dispatch needs the same number of tokens N on every rank (checked, with a clear
error). Both read split sizes / counts on the host (one sync per layer).

What it is not: no capacity factor and no token dropping, no overlap of communication with compute, no
combination with FSDP (expert weights are whole per rank; the replicated part uses DDP).
Checkpoints: kexaone.train.parallelize presents each rank's expert slices (weights and optimizer state) to
Distributed Checkpoint as shards of the full tensors, so a checkpoint holds all experts and loads into any layout;
`gather_expert_state_dict` / `slice_expert_state_dict` convert between a full state dict and the local slices.
`clip_grad_norm_expert_parallel_` computes the gradient norm over all ranks' experts, so every rank
clips by the same factor. In the trainer: `TrainConfig.expert_parallel` / `kexaone pretrain --expert-parallel`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn

from kexaone.model.moe import GroupedExperts, KExaoneMoE

_EXPERT_PARAMS = ("gate_up_proj", "down_proj")


class ExpertParallelExperts(GroupedExperts):
    """`GroupedExperts` holding experts [first, first + num_experts) of `num_experts_global`, with the EP forward.

    Attributes added: `ep_group`, `ep_rank`, `ep_world`, `num_experts_global`, `first_expert`. `num_experts` is the
    local count (the grouped path sizes its per-expert counts with it)."""

    ep_group: Any
    ep_rank: int
    ep_world: int
    num_experts_global: int
    first_expert: int
    dispatch: str = "all_to_all"
    comm_bytes: int = 0

    def forward(self, x_NH: torch.Tensor, topk_idx_NK: torch.Tensor, topk_weights_NK: torch.Tensor,
                counts_E: torch.Tensor | None = None) -> torch.Tensor:
        """Same contract as GroupedExperts.forward for this rank's tokens; `counts_E` (global counts) is ignored."""
        if self.dispatch == "all_to_all":
            return self._forward_all_to_all(x_NH, topk_idx_NK, topk_weights_NK)
        return self._forward_all_gather(x_NH, topk_idx_NK, topk_weights_NK)

    def _forward_all_to_all(self, x_NH: torch.Tensor, topk_idx_NK: torch.Tensor,
                            topk_weights_NK: torch.Tensor) -> torch.Tensor:
        n, k = topk_idx_NK.shape
        group, world, per, h = self.ep_group, self.ep_world, self.num_experts, self.hidden_size
        with torch.no_grad():
            flat_P = topk_idx_NK.reshape(-1)  # P = N*K (token, slot) pairs, global expert ids
            dest_P = torch.div(flat_P, per, rounding_mode="floor")
            order_P = torch.argsort(dest_P, stable=True)  # pairs grouped by the rank owning their expert
            send_W = torch.bincount(dest_P, minlength=world)
            recv_W = torch.empty_like(send_W)
            dist.all_to_all_single(recv_W, send_W, group=group)
            send, recv = send_W.tolist(), recv_W.tolist()  # host sync: split sizes
            token_P = order_P // k
            sorted_P = flat_P.index_select(0, order_P)
            local_ids_P = sorted_P - dest_P.index_select(0, order_P) * per  # expert id at the destination
            ids_R = torch.empty(sum(recv), dtype=local_ids_P.dtype, device=x_NH.device)
            dist.all_to_all_single(ids_R, local_ids_P, recv, send, group=group)
        x_PH = x_NH.index_select(0, token_P)
        w_P = topk_weights_NK.reshape(-1).index_select(0, order_P)
        x_RH = dist_nn.all_to_all_single(x_PH.new_empty(sum(recv), h), x_PH.contiguous(), recv, send, group=group)
        w_R = dist_nn.all_to_all_single(w_P.new_empty(sum(recv)), w_P.contiguous(), recv, send, group=group)
        y_RH = super().forward(x_RH, ids_R.unsqueeze(1), w_R.unsqueeze(1))
        if y_RH.shape[0] == 0 and x_RH.requires_grad:
            y_RH = x_RH * 0  # keep the return trip in the autograd graph: its backward is a collective
        y_PH = dist_nn.all_to_all_single(y_RH.new_empty(n * k, h), y_RH.contiguous(), send, recv, group=group)
        mine = self.ep_rank
        rows_out = sum(c for r, c in enumerate(send) if r != mine)
        rows_back = sum(c for r, c in enumerate(recv) if r != mine)
        self.comm_bytes += (rows_out * (h * x_PH.element_size() + w_P.element_size() + local_ids_P.element_size())
                            + rows_back * h * y_RH.element_size() + 2 * world * send_W.element_size())
        return y_PH.new_zeros(n, h).index_add(0, token_P, y_PH)

    def _forward_all_gather(self, x_NH: torch.Tensor, topk_idx_NK: torch.Tensor,
                            topk_weights_NK: torch.Tensor) -> torch.Tensor:
        n, k = topk_idx_NK.shape
        group, world = self.ep_group, self.ep_world
        with torch.no_grad():
            n_W = [torch.zeros(1, dtype=torch.long, device=x_NH.device) for _ in range(world)]
            dist.all_gather(n_W, torch.tensor([n], dtype=torch.long, device=x_NH.device), group=group)
            sizes = [int(t.item()) for t in n_W]
        if any(s != n for s in sizes):
            raise ValueError(f"expert parallelism needs the same number of tokens on every rank (fixed-shape packed "
                             f"batches), got {sizes} tokens per rank")
        x_all = torch.cat(dist_nn.all_gather(x_NH.contiguous(), group=group), dim=0)  # [W*N, H]
        w_all = torch.cat(dist_nn.all_gather(topk_weights_NK.contiguous(), group=group), dim=0)  # [W*N, K]
        with torch.no_grad():
            idx_W = [torch.empty_like(topk_idx_NK) for _ in range(world)]
            dist.all_gather(idx_W, topk_idx_NK.contiguous(), group=group)
            idx_all = torch.cat(idx_W, dim=0)  # [W*N, K] global expert ids
            local_all = idx_all - self.first_expert
            keep_all = (local_all >= 0) & (local_all < self.num_experts)
            pair_P = keep_all.reshape(-1).nonzero().squeeze(1)  # (token, slot) pairs routed here (host sync)
            token_P = pair_P // k
            local_P1 = local_all.reshape(-1).index_select(0, pair_P).unsqueeze(1)
        x_PH = x_all.index_select(0, token_P)
        w_P1 = w_all.reshape(-1).index_select(0, pair_P).unsqueeze(1)
        # One slot per pair: the grouped path sorts the pairs by local expert and runs the grouped matmuls.
        y_PH = super().forward(x_PH, local_P1, w_P1)
        y_all = y_PH.new_zeros(world * n, self.hidden_size).index_add(0, token_P, y_PH)
        # Sum over ranks (each rank contributed its experts' share of every token), keep this rank's rows. An
        # all-reduce rather than a reduce-scatter: gloo has no reduce-scatter; the result is identical.
        y_all = dist_nn.all_reduce(y_all, group=group)
        self.comm_bytes += ((world - 1) * n * (self.hidden_size * x_NH.element_size() + k * (
            topk_weights_NK.element_size() + topk_idx_NK.element_size())) + world * 8
            + 2 * (world - 1) * n * self.hidden_size * y_all.element_size())
        return y_all[self.ep_rank * n:(self.ep_rank + 1) * n]

    def extra_repr(self) -> str:
        return (f"experts [{self.first_expert}, {self.first_expert + self.num_experts}) of {self.num_experts_global}, "
                f"ep_rank={self.ep_rank}, ep_world={self.ep_world}, dispatch={self.dispatch}, "
                f"hidden_size={self.hidden_size}, "
                f"intermediate_size={self.intermediate_size}")


def _world(group: Any) -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("expert parallelism needs an initialised torch.distributed process group (launch with "
                         "torchrun and a world size > 1)")
    return dist.get_rank(group), dist.get_world_size(group)


def apply_expert_parallel(model: nn.Module, group: Any = None, dispatch: str = "all_to_all") -> list[str]:
    """Shard the routed experts of every KExaoneMoE in `model` over the ranks of `group` (default: the world), in
    place, with the given token `dispatch` ("all_to_all" or "all_gather"). Returns the names of the expert
    parameters (now rank-local; exclude them from DDP).

    Raises ValueError for an unknown dispatch, when no process group is initialised, when the world size is 1, or
    when the number of experts is not divisible by the world size."""
    if dispatch not in ("all_to_all", "all_gather"):
        raise ValueError(f"expert-parallel dispatch must be 'all_to_all' or 'all_gather', got {dispatch!r}")
    rank, world = _world(group)
    if world < 2:
        raise ValueError(f"expert parallelism needs a world size > 1, got {world}")
    names: list[str] = []
    for mod_name, mod in model.named_modules():
        if not isinstance(mod, KExaoneMoE):
            continue
        experts = mod.experts
        if isinstance(experts, ExpertParallelExperts):
            raise ValueError(f"{mod_name}: expert parallelism is already applied")
        e = experts.num_experts
        if e % world != 0:
            raise ValueError(f"expert parallelism needs num_experts divisible by the world size: {e} experts over "
                             f"{world} ranks (choose a world size dividing {e})")
        per = e // world
        first = rank * per
        for p_name in _EXPERT_PARAMS:
            full = getattr(experts, p_name)
            local = nn.Parameter(full.detach()[first:first + per].clone(), requires_grad=full.requires_grad)
            setattr(experts, p_name, local)
            names.append(f"{mod_name}.experts.{p_name}" if mod_name else f"experts.{p_name}")
        # Class swap (as FSDP2 does): parameter names, fp8_recipe and everything else are kept.
        experts.__class__ = ExpertParallelExperts
        experts.ep_group, experts.ep_rank, experts.ep_world = group, rank, world
        experts.num_experts_global, experts.first_expert, experts.num_experts = e, first, per
        experts.dispatch, experts.comm_bytes = dispatch, 0
    ensure_expert_grad_scaling(model)
    return names


def ensure_expert_grad_scaling(model: nn.Module) -> None:
    """Make every rank-local expert parameter divide its gradient by the world size. The dispatch's backward sums
    every rank's loss gradient into the local experts; divided by W it is the gradient of the mean loss (DDP's
    convention for the replicated parameters). Hooks live on parameter objects, and materialising a meta-built
    model (`to_empty`) replaces them: call this again afterwards (kexaone.train.parallelize does). Idempotent."""
    for m in expert_parallel_modules(model).values():
        for p_name in _EXPERT_PARAMS:
            p = getattr(m, p_name)
            if not getattr(p, "_kexaone_ep_grad_scaled", False):
                p.register_hook(lambda g, w=m.ep_world: g / w)
                p._kexaone_ep_grad_scaled = True


def expert_parallel_modules(model: nn.Module) -> dict[str, ExpertParallelExperts]:
    """{qualified name: module} of the expert-parallel expert stacks of `model` (empty when EP is not applied)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, ExpertParallelExperts)}


def ddp_ignored_expert_params(model: nn.Module) -> list[str]:
    """Names (relative to `model`) of the rank-local expert parameters, for
    `DistributedDataParallel._set_params_and_buffers_to_ignore_for_model` (they must not be averaged)."""
    return [f"{n}.{p}" for n, m in expert_parallel_modules(model).items() for p in _EXPERT_PARAMS]


def gather_expert_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of `state` (the model's state dict, rank-local expert slices) with full expert tensors: the slices of
    all ranks concatenated in rank order. A collective: every rank must call it; every rank gets the full tensors."""
    out = dict(state)
    for name, m in expert_parallel_modules(model).items():
        for p in _EXPERT_PARAMS:
            key = f"{name}.{p}"
            local = state[key].detach().contiguous()
            parts = [torch.empty_like(local) for _ in range(m.ep_world)]
            dist.all_gather(parts, local, group=m.ep_group)
            out[key] = torch.cat(parts, dim=0)
    return out


def slice_expert_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of a full state dict (all experts) cut to this rank's expert slices, for `load_state_dict`."""
    out = dict(state)
    for name, m in expert_parallel_modules(model).items():
        for p in _EXPERT_PARAMS:
            key = f"{name}.{p}"
            full = state[key]
            if full.shape[0] != m.num_experts_global:
                raise ValueError(f"{key}: expected {m.num_experts_global} experts in the full state dict, got "
                                 f"shape {tuple(full.shape)}")
            out[key] = full[m.first_expert:m.first_expert + m.num_experts]
    return out


def clip_grad_norm_expert_parallel_(model: nn.Module, max_norm: float | None) -> torch.Tensor:
    """Global L2 gradient norm (and clipping to `max_norm`) of an expert-parallel model: the replicated gradients
    (identical on every rank after DDP) count once, the rank-local expert gradients are summed over ranks, so every
    rank gets the norm of the full gradient and applies the same clipping factor (a rank-local norm would give each
    rank a different factor and the replicated weights would drift apart). A collective; returns the pre-clip norm
    (0-d fp32). A non-finite norm leaves the gradients untouched."""
    mods = expert_parallel_modules(model)
    local = {id(getattr(m, p)) for m in mods.values() for p in _EXPERT_PARAMS}
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return torch.zeros((), dtype=torch.float32)
    group = next(iter(mods.values())).ep_group if mods else None
    device = params[0].grad.device
    rep_sq = torch.zeros((), dtype=torch.float32, device=device)
    exp_sq = torch.zeros((), dtype=torch.float32, device=device)
    for p in params:
        sq = p.grad.detach().float().pow(2).sum()
        if id(p) in local:
            exp_sq = exp_sq + sq
        else:
            rep_sq = rep_sq + sq
    if mods:
        dist.all_reduce(exp_sq, group=group)
    total = (rep_sq + exp_sq).sqrt()
    if max_norm is not None and max_norm > 0 and torch.isfinite(total):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total.detach().float()
