"""One pre-norm K-EXAONE decoder block: x + attn(rmsnorm(x)), then x + ffn(rmsnorm(x)).

The FFN is whatever the caller passes (dense SwiGLU or the MoE layer); the MTP block reuses this class for its one
layer. Parameter names (`input_layernorm`, `self_attn`, `post_attention_layernorm`, `mlp`) are those of the Hugging
Face `exaone_moe` layout, so hf.py only has to rename the expert tensors.
"""

from __future__ import annotations

import torch
from torch import nn

from kexaone.model.attention import Attention, AttentionInputs
from kexaone.model.moe import KExaoneMoE
from kexaone.model.norm import RMSNorm


class DecoderLayer(nn.Module):
    def __init__(self, config, layer_idx: int, *, sliding: bool, use_rope: bool, mlp: nn.Module) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx, sliding=sliding, use_rope=use_rope)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = mlp
        self.is_moe = isinstance(mlp, KExaoneMoE)

    def forward(self, x_BTH: torch.Tensor, rope, inputs: AttentionInputs, cache=None,
                valid_BT: torch.Tensor | None = None) -> torch.Tensor:
        x_BTH = x_BTH + self.self_attn(self.input_layernorm(x_BTH), rope, inputs, cache)
        h = self.post_attention_layernorm(x_BTH)
        # valid_BT keeps padding out of the MoE balance statistics (it never changes the output)
        return x_BTH + (self.mlp(h, valid_BT) if self.is_moe else self.mlp(h))
