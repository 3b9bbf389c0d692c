"""SwiGLU feed-forward block: the dense FFN of layer 0, the MTP layer, and the shared expert of each MoE layer.

Only the dense block lives here; routed experts (many SwiGLUs executed together) are in `moe.py`.
Weight names (`gate_proj`, `up_proj`, `down_proj`, no biases) are those of the Hugging Face `exaone_moe` layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    """down_proj(silu(gate_proj(x)) * up_proj(x)), the FFN of every K-EXAONE dense layer.

    Input and output are [..., hidden_size]; the intermediate activation is [..., intermediate_size].
    """

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        if hidden_size < 1 or intermediate_size < 1:
            raise ValueError(
                f"SwiGLU needs hidden_size >= 1 and intermediate_size >= 1, got {hidden_size} and {intermediate_size}"
            )
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, intermediate_size={self.intermediate_size}"
