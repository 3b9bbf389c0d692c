"""Rotary position embedding (RoPE), rotate-half convention, as used by K-EXAONE's sliding-window layers.

`inv_freq = 1 / theta ** (arange(0, d, 2) / d)`; the angle table is computed in fp32 and cast to the activation
dtype, exactly as the reference does, so bf16 models rotate with the same rounded cos/sin. Only the plain
("default") RoPE type is implemented; scaled variants (linear, YaRN, ...) raise a clear error.
"""

from __future__ import annotations

import torch
from torch import nn

SUPPORTED_ROPE_TYPES = ("default",)


class RotaryEmbedding(nn.Module):
    """Produces (cos, sin) of shape [B, T, 1, head_dim] for integer positions [B, T]."""

    def __init__(self, head_dim: int, rope_parameters: dict) -> None:
        super().__init__()
        rope_type = rope_parameters.get("rope_type", rope_parameters.get("type", "default"))
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(f"rope_parameters.rope_type = {rope_type!r} is not supported; "
                             f"supported: {SUPPORTED_ROPE_TYPES}")
        self.head_dim = head_dim
        self.theta = float(rope_parameters["rope_theta"])
        # Non-persistent: derived from the config, never saved; recomputed by reset_buffers() after meta init.
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)

    def _inv_freq(self, device: torch.device | str | None = None) -> torch.Tensor:
        exps = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=device).float() / self.head_dim
        return 1.0 / (self.theta ** exps)

    def reset_buffers(self) -> None:
        self.inv_freq = self._inv_freq(self.inv_freq.device)

    @torch.no_grad()
    def forward(self, position_ids_BT: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs_BTd = position_ids_BT[..., None].float() * self.inv_freq.float()
        emb_BTD = torch.cat((freqs_BTd, freqs_BTd), dim=-1)
        return emb_BTD.cos().to(dtype)[:, :, None, :], emb_BTD.sin().to(dtype)[:, :, None, :]


    def tables(self, position_ids_BT: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin with the rotate-half sign folded in), the form `apply_rope_tables` takes: computed once per
        forward, it saves every attention layer the negation and concatenation of `rotate_half`."""
        cos, sin = self(position_ids_BT, dtype)
        half = sin.shape[-1] // 2
        return cos, torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x_BTHD: torch.Tensor, cos_BT1D: torch.Tensor, sin_BT1D: torch.Tensor) -> torch.Tensor:
    return x_BTHD * cos_BT1D + rotate_half(x_BTHD) * sin_BT1D


def apply_rope_tables(x_BTHD: torch.Tensor, cos_BT1D: torch.Tensor, signed_sin_BT1D: torch.Tensor) -> torch.Tensor:
    """`apply_rope` with `RotaryEmbedding.tables`: rotate_half(x) * sin equals roll(x, half) * signed sin element for
    element ((-a) * b == a * (-b) in IEEE arithmetic), so the result is bit-identical in two fewer kernels."""
    return x_BTHD * cos_BT1D + torch.roll(x_BTHD, x_BTHD.shape[-1] // 2, dims=-1) * signed_sin_BT1D
