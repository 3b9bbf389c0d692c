"""The K-EXAONE multi-token-prediction (MTP) block and its loss.

Input at position t: the main model's final-normed hidden state h[t] and the embedding of token t+1; output: a
hidden state whose logits (through the shared lm_head) predict token t+2. Weight names follow SPEC section 8:
`mtp.fc` (Linear 2H -> H, no bias) over `concat(pre_fc_norm_embedding(embed(t+1)), pre_fc_norm_hidden(h[t]))`,
`mtp.layers.0.*` (a decoder layer with a dense SwiGLU of `intermediate_size`), `mtp.norm`.

Choices checked against the serving engines that read `mtp.*` of exaone_moe checkpoints:
- concatenation order embedding first, hidden second: vLLM's ExaoneMoeMultiTokenPredictor does
  `cat([pre_fc_norm_embedding(embeds), pre_fc_norm_hidden(hidden)])` before `fc`;
- attention of the MTP layer: global (no window) and NoPE, as TensorRT-LLM's ExaoneMoe MTP layer ("A MTP layer uses
  the global attention"; RoPE only on sliding layers); with `sliding_window=None` every layer, this one included,
  uses RoPE, transformers' rule for all-global models;
- its KV entries live in the model's KVCache as an extra slot (index num_hidden_layers), so one cache covers both.

Training gradient flows into h (it is not detached), as in DeepSeek-V3.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kexaone.model.attention import AttentionInputs
from kexaone.model.layer import DecoderLayer
from kexaone.model.mlp import SwiGLU
from kexaone.model.norm import RMSNorm

IGNORE_INDEX = -100


class MTPBlock(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        H = config.hidden_size
        self.fc = nn.Linear(2 * H, H, bias=False)
        self.pre_fc_norm_embedding = RMSNorm(H, config.rms_norm_eps)
        self.pre_fc_norm_hidden = RMSNorm(H, config.rms_norm_eps)
        self.layers = nn.ModuleList([
            DecoderLayer(config, config.num_hidden_layers + i, sliding=False,
                         use_rope=config.sliding_window is None,
                         mlp=SwiGLU(H, config.intermediate_size))
            for i in range(config.num_nextn_predict_layers)
        ])
        self.norm = RMSNorm(H, config.rms_norm_eps)

    def forward(self, embed_BTH: torch.Tensor, hidden_BTH: torch.Tensor, rope, inputs: AttentionInputs,
                cache=None) -> torch.Tensor:
        """Returns the MTP hidden state after `mtp.norm` [B, T, H]."""
        x = self.fc(torch.cat((self.pre_fc_norm_embedding(embed_BTH), self.pre_fc_norm_hidden(hidden_BTH)), dim=-1))
        for layer in self.layers:
            x = layer(x, rope, inputs, cache)
        return self.norm(x)


def shifted_targets(labels_BT: torch.Tensor, shift: int, doc_ids_BT: torch.Tensor | None = None,
                    length: int | None = None) -> torch.Tensor:
    """targets[:, t] = labels[:, t + shift], or -100 where t + shift is past the end or lies in another document
    than t (documents are contiguous runs of one id, so comparing the two ends is enough).

    Returns [B, length] (default T - shift), padded with -100: callers pass the length of their predictions so the
    logits never need slicing (a slice of [B, T, V] logits would cost a copy of the whole tensor)."""
    B, T = labels_BT.shape
    length = T - shift if length is None else length
    tgt = labels_BT[:, shift:]
    if doc_ids_BT is not None:
        tgt = tgt.masked_fill(doc_ids_BT[:, shift:] != doc_ids_BT[:, :T - shift], IGNORE_INDEX)
    if tgt.shape[1] < length:
        tgt = F.pad(tgt, (0, length - tgt.shape[1]), value=IGNORE_INDEX)
    return tgt[:, :length]


def masked_cross_entropy(logits_BTV: torch.Tensor, targets_BT: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in fp32 over targets != -100; 0 (with a graph) when there is none."""
    flat_t = targets_BT.reshape(-1)
    n = (flat_t != IGNORE_INDEX).sum()
    total = F.cross_entropy(logits_BTV.reshape(-1, logits_BTV.shape[-1]).float(), flat_t,
                            ignore_index=IGNORE_INDEX, reduction="sum")
    return total / n.clamp_min(1)


def mtp_loss(mtp_logits_BTV: torch.Tensor, labels_BT: torch.Tensor,
             doc_ids_BT: torch.Tensor | None = None) -> torch.Tensor:
    """Loss of MTP logits computed at positions 0..T-2 ([B, T-1, V]): position t is scored on labels[t + 2]
    (the last position has no target)."""
    tgt = shifted_targets(labels_BT, 2, doc_ids_BT, length=mtp_logits_BTV.shape[1])
    return masked_cross_entropy(mtp_logits_BTV, tgt)
