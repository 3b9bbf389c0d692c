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

# Without autograd (prefill, evaluation), the FFN runs over at most this many tokens at a time: its intermediate
# activations (3 x intermediate_size per token for the dense layer, K copies per token for the MoE) would otherwise
# dominate peak memory on long prompts. The FFN is per token, so the output is the same; the MoE's sequence aux
# loss (meaningless without training) becomes the token-weighted mean of the chunks' losses.
FFN_CHUNK_TOKENS = 4096


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
        B, T, _ = h.shape
        if torch.is_grad_enabled() or B * T <= FFN_CHUNK_TOKENS:
            return x_BTH + self._ffn(h, valid_BT)
        step = max(1, FFN_CHUNK_TOKENS // B)
        aux = []
        for t0 in range(0, T, step):
            t1 = min(T, t0 + step)
            x_BTH[:, t0:t1] += self._ffn(h[:, t0:t1], None if valid_BT is None else valid_BT[:, t0:t1])
            if self.is_moe:
                aux.append(self.mlp.last_aux_loss * ((t1 - t0) / T))
        if self.is_moe:
            self.mlp.last_aux_loss = torch.stack(aux).sum()
        return x_BTH

    def _ffn(self, h_BTH: torch.Tensor, valid_BT: torch.Tensor | None) -> torch.Tensor:
        # valid_BT keeps padding out of the MoE balance statistics (it never changes the output)
        return self.mlp(h_BTH, valid_BT) if self.is_moe else self.mlp(h_BTH)
