"""RMSNorm with the exact numerics of the `exaone_moe` reference: normalise in fp32, cast back to the input dtype,
then multiply by the weight (so a bf16 model multiplies in bf16, as the released checkpoints were trained).

In fp32 (input and weight) `F.rms_norm` computes the same numbers bit for bit (tested against transformers) in one
call from Python instead of seven (on CPU it is a C++ composite of the same kernels, not a fused one); a decode step
runs ~33 of these norms. In other dtypes the reference's order (normalise in fp32, cast, then multiply) is kept.

It does not fuse with residual adds or quantisation; those are left to kernels applied from outside.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """y = weight * (x / sqrt(mean(x^2) + eps)) over the last dimension."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_dtype = x.dtype
        if in_dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(in_dtype)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
