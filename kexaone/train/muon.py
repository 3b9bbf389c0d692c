"""Muon (MomentUm Orthogonalized by Newton-Schulz) combined with AdamW in one optimizer.

K-EXAONE trains its hidden 2-D matrices with Muon and everything else (embeddings, lm_head, norms, router, biases)
with AdamW (SPEC section 3). This module holds the maths and the optimizer class:

- `zeropower_via_newtonschulz(G)`: the quintic Newton-Schulz iteration (3.4445, -4.7750, 2.0315) that maps a
  matrix, or a batch of matrices [..., rows, cols], to an approximately orthogonal one (U S' V^T with the singular
  values S' pushed into roughly [0.68, 1.13] after 5 steps, for singular values not too close to zero). A stack of
  expert matrices [E, out, in] is one batched call: every expert is orthogonalised on its own, no Python loop.
- `muon_scale(rows, cols)`: 0.2 * sqrt(max(rows, cols)), the update scale that makes Muon's per-element update RMS
  match AdamW's (about 0.2), so AdamW learning rates and weight decay carry over (Moonlight, "Muon is scalable").
- `MuonAdamW`: one `torch.optim.Optimizer` whose param groups are tagged `kind="muon"` or `kind="adamw"`, so a
  single `state_dict()` / `load_state_dict()` and any LR scheduler cover both halves.

Which parameter goes where is decided by `kexaone.train.optim.build_optimizer`; this module does not look at names.
Under FSDP2 (DTensor parameters) an expert stack sharded along the expert dim is orthogonalised on the local shard
(each rank holds whole experts: no communication); a sharded 2-D matrix is gathered, orthogonalised identically on
every rank, and re-sharded. Plain tensors (single device, DDP) take the direct path.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""Quintic Newton-Schulz coefficients (a, b, c): X <- a X + b (X X^T) X + c (X X^T)^2 X."""

_NS_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def zeropower_via_newtonschulz(G: torch.Tensor, steps: int = 5, eps: float = 1e-7,
                               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Approximately orthogonalise the last two dims of `G` ([..., rows, cols]) with `steps` quintic iterations.

    Each matrix is first divided by its Frobenius norm (so every singular value is <= 1), then iterated in `dtype`;
    tall matrices are transposed so the Gram matrix X X^T is the smaller one. Leading dims are a batch: the result
    for G[i] equals the result for G[i] alone. Returns a tensor of `dtype` with G's shape.
    """
    if G.ndim < 2:
        raise ValueError(f"Newton-Schulz needs a matrix or a batch of matrices, got shape {tuple(G.shape)}")
    if steps < 1:
        raise ValueError(f"Newton-Schulz steps must be >= 1, got {steps}")
    a, b, c = NS_COEFFICIENTS
    X = G.to(dtype)
    transposed = X.size(-2) > X.size(-1)
    if transposed:
        X = X.mT
    # Normalise in fp32 even when iterating in bf16: the norm of a large matrix overflows bf16's precision.
    norm = G.float().norm(dim=(-2, -1), keepdim=True)
    if transposed:
        norm = norm.mT
    X = X / (norm + eps).to(dtype)
    batch_shape = X.shape[:-2]
    if X.ndim > 3:
        X = X.reshape(-1, *X.shape[-2:])
    # Fused multiply-adds (addmm/baddbmm) save two elementwise passes per iteration over `b*A + c*A@A` etc.
    mm_add = torch.addmm if X.ndim == 2 else torch.baddbmm
    for _ in range(steps):
        A = X @ X.mT  # [..., r, r] with r = min(rows, cols)
        B = mm_add(A, A, A, beta=b, alpha=c)  # b*A + c*A@A
        X = mm_add(X, B, X, beta=a, alpha=1.0)  # a*X + B@X
    X = X.reshape(*batch_shape, *X.shape[-2:])
    if transposed:
        X = X.mT
    return X.contiguous()


def muon_scale(rows: int, cols: int) -> float:
    """Update multiplier 0.2 * sqrt(max(rows, cols)): gives an orthogonalised update the RMS of an AdamW update."""
    return 0.2 * math.sqrt(max(rows, cols))


def resolve_ns_dtype(ns_dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`None`/"auto": bf16 on CUDA (fast, what the reference uses), fp32 on CPU. On CPUs that multiply bf16 natively
    (AMX, AVX512_BF16) "bfloat16" is 2.3-3.3x faster for the `small` preset's expert stacks (measured here), but it
    is not the CPU default: bf16 rounding amplifies the last-bit differences between one process and several ranks
    (fp32 training runs then agree to ~2e-6 relative, not 1e-6), and a default should not depend on the CPU model.
    The Trainer asks for bf16 itself when it trains in bf16."""
    if ns_dtype is None or ns_dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(ns_dtype, torch.dtype):
        if ns_dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"ns_dtype must be float32 or bfloat16, got {ns_dtype}")
        return ns_dtype
    if ns_dtype not in _NS_DTYPES:
        raise ValueError(f"ns_dtype must be 'auto', 'float32' or 'bfloat16', got {ns_dtype!r}")
    return _NS_DTYPES[ns_dtype]


def orthogonalized_update(update: torch.Tensor, steps: int, ns_dtype: torch.dtype, split: int = 1) -> torch.Tensor:
    """Orthogonalise a momentum update of shape [rows, cols] or [E, rows, cols] and apply the Muon scale.

    `split` > 1 treats each matrix as `split` matrices stacked along the rows (for example a fused expert
    `gate_up_proj` [E, 2I, H] is the gate [I, H] and up [I, H] matrices of each expert): each part is
    orthogonalised on its own, in the same batched call. Returns a tensor of update's dtype and shape.
    """
    rows, cols = update.shape[-2], update.shape[-1]
    if rows % split:
        raise ValueError(f"cannot split a matrix of {rows} rows into {split} equal parts")
    part_rows = rows // split
    batch_shape = update.shape[:-2]
    if update.ndim == 2 and split == 1:
        parts = update
    else:
        # [..., split*r, c] -> [(... * split), r, c]: one batched Newton-Schulz call over experts and parts.
        parts = update.reshape(-1, split, part_rows, cols).reshape(-1, part_rows, cols)
    ortho = zeropower_via_newtonschulz(parts, steps=steps, dtype=ns_dtype)
    ortho = ortho.reshape(*batch_shape, rows, cols)
    return ortho.mul_(muon_scale(part_rows, cols)).to(update.dtype)


def _is_dtensor(t: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch built without distributed
        return False
    return isinstance(t, DTensor)


def _orthogonalize_any(update: torch.Tensor, steps: int, ns_dtype: torch.dtype, split: int) -> torch.Tensor:
    """Newton-Schulz needs whole matrices: a sharded DTensor is gathered, orthogonalised (identically on every
    rank) and re-sharded to its original placements."""
    if _is_dtensor(update):
        from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

        if update.ndim == 3 and all(isinstance(pl, (Replicate, Shard)) and (not isinstance(pl, Shard) or pl.dim == 0)
                                    for pl in update.placements):
            # An expert stack sharded along the expert dim holds whole experts locally: orthogonalise them in place,
            # no gather (this is what makes Muon cheap under FSDP2 / expert parallelism).
            local = orthogonalized_update(update.to_local(), steps, ns_dtype, split)
            return DTensor.from_local(local, update.device_mesh, update.placements, run_check=False,
                                      shape=update.shape, stride=update.stride())
        full = update.full_tensor()
        ortho = orthogonalized_update(full, steps, ns_dtype, split)
        return distribute_tensor(ortho, update.device_mesh, update.placements)
    return orthogonalized_update(update, steps, ns_dtype, split)


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer holding Muon groups (`kind="muon"`) and AdamW groups (`kind="adamw"`).

    Muon group options: lr, weight_decay (decoupled: p *= 1 - lr*wd), momentum (0.95), nesterov (True),
    ns_steps (5), ns_dtype ("auto" | "float32" | "bfloat16"), split (1; see `orthogonalized_update`).
    Muon parameters must be 2-D [out, in] or 3-D stacks [E, out, in] (each expert orthogonalised on its own).
    Update: buf = mu*buf + g; u = g + mu*buf (Nesterov) or buf; p -= lr * 0.2*sqrt(max(out, in)) * NS(u).

    AdamW group options: lr, betas, eps, weight_decay (decoupled). The arithmetic is exactly that of
    `torch.optim.AdamW(foreach=False)`, so an AdamW group here steps bit-identically to torch's optimizer.
    """

    def __init__(self, params: Iterable[Any], lr: float = 3e-4, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = 5, ns_dtype: str = "auto", split: int = 1,
                 kind: str = "adamw") -> None:
        if lr < 0:
            raise ValueError(f"learning rate must be >= 0, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must each lie in [0, 1), got {betas}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        if ns_steps < 1:
            raise ValueError(f"ns_steps must be >= 1, got {ns_steps}")
        defaults = dict(lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps, momentum=momentum,
                        nesterov=nesterov, ns_steps=ns_steps, ns_dtype=ns_dtype, split=split, kind=kind)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        kind = param_group.get("kind", self.defaults.get("kind"))
        if kind not in ("muon", "adamw"):
            raise ValueError(f"param group kind must be 'muon' or 'adamw', got {kind!r}")
        super().add_param_group(param_group)
        if kind == "muon":
            for p in param_group["params"]:
                if p.ndim not in (2, 3):
                    raise ValueError(f"Muon handles 2-D matrices and 3-D expert stacks, got a parameter of shape "
                                     f"{tuple(p.shape)}; put it in an 'adamw' group")

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["kind"] == "muon":
                self._muon_group(group)
            else:
                self._adamw_group(group)
        return loss

    def _muon_group(self, group: dict[str, Any]) -> None:
        lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
        for p in group["params"]:
            if p.grad is None:
                continue
            g = p.grad
            if g.is_sparse:
                raise RuntimeError("Muon does not support sparse gradients")
            state = self.state[p]
            if not state:
                state["step"] = 0.0
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] = float(state["step"]) + 1.0  # a Python number, as in the AdamW groups
            buf = state["momentum_buffer"]
            buf.mul_(mu).add_(g)
            update = g.add(buf, alpha=mu) if group["nesterov"] else buf
            ns_dtype = resolve_ns_dtype(group["ns_dtype"], p.device)
            ortho = _orthogonalize_any(update, group["ns_steps"], ns_dtype, group["split"])
            if wd != 0:
                p.mul_(1.0 - lr * wd)
            p.add_(ortho.to(p.dtype), alpha=-lr)

    def _adamw_group(self, group: dict[str, Any]) -> None:
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            g = p.grad
            if g.is_sparse:
                raise RuntimeError("AdamW does not support sparse gradients")
            state = self.state[p]
            if not state:
                state["step"] = 0.0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            # The step count is a Python number, not a tensor read back every step (one host read per parameter);
            # float() also takes the tensor older checkpoints stored, once.
            step = state["step"] = float(state["step"]) + 1.0
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            # Same operation order as torch.optim.AdamW's single-tensor path, so results match it to the bit.
            p.mul_(1.0 - lr * wd)
            exp_avg.lerp_(g, 1.0 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
            bias_correction1 = 1.0 - beta1 ** step
            bias_correction2 = 1.0 - beta2 ** step
            denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(eps)
            p.addcdiv_(exp_avg, denom, value=-(lr / bias_correction1))
